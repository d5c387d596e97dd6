"""Detect faces in a video or webcam stream, classify their emotions, draw boxes and top-3 probability bars.

    python real_time_video.py --video Test_files/Video_Test_1.mp4 --model_type advanced --save_output output.mp4

Without --video it opens webcam 0 (--camera N). Press q or Esc in the window to quit; with no display
(or --no_display) it runs headless. --save_output keeps the source's size and fps (.mp4: mp4v, .avi: MJPG);
--log_csv writes one row per face per frame. Model files are found as in inference.py.
"""

from fer_common.cli import make_parser, output_file, run_main, video_output
from fer_common.detection import add_detector_args, detector_from_args
from fer_common.predictor import add_predictor_args, predictor_from_args
from fer_common.files import check_output_files
from fer_common.video import VIDEO_DETECT_SIZE, VIDEO_MIN_FACE, add_video_args, run_video


def get_args_parser():
    parser = make_parser(__doc__)
    add_video_args(parser)
    add_predictor_args(parser)
    add_detector_args(parser, min_face=VIDEO_MIN_FACE, detect_size=VIDEO_DETECT_SIZE)    # one small pass per frame
    g = parser.add_argument_group("Output")
    g.add_argument("--save_output", metavar="PATH", type=video_output, help="write the annotated video here (.mp4 or .avi)")
    g.add_argument("--log_csv", metavar="PATH", type=output_file(),
                   help="CSV log: frame, time_s, face_id, x, y, w, h, top_emotion and each emotion's probability")
    g.add_argument("--no_display", action="store_true",
                   help="do not open a window (automatic when there is no display)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --save_output / --log_csv file")
    return parser


def main(args):
    # before minutes of model loading, not after; and never the same file twice, nor the input video
    check_output_files({"output video": args.save_output, "CSV log": args.log_csv}, args.overwrite,
                       inputs={"--video": args.video})
    predictor = predictor_from_args(args, fast=True)   # the shipped int8 model, when no model of yours is here
    detector = detector_from_args(args)
    source = args.video if args.video else args.camera
    stats = run_video(predictor, detector, source, save_output=args.save_output, log_csv=args.log_csv,
                      display=False if args.no_display else None, max_frames=args.max_frames,
                      detect_every=args.detect_every, smooth=args.smooth, threaded=args.threaded,
                      overwrite=args.overwrite)
    return 130 if stats["interrupted"] else 0


if __name__ == "__main__":
    run_main(main, get_args_parser())
