"""Detect faces in a video or webcam stream, classify their emotions, draw boxes and top-3 probability bars.

    python real_time_video.py --video Test_files/Video_Test_1.mp4 --model_type advanced --save_output output.mp4
    python real_time_video.py --video in.mp4 --no_display --log_csv faces.csv --summary faces.json --plot faces.png
    python real_time_video.py --summary_from faces.csv --plot faces.png      # from a log, without the video

Without --video it opens webcam 0 (--camera N). A file shown in a window plays at its own frame rate
(--speed; space pauses) and its last frame stays until q or Esc (--close_at_end: it closes); q or Esc quits
at any time. With no display (or --no_display) it runs headless, as fast as it can, with a progress bar.
--save_output keeps the source's size and fps (.mp4: H.264 when PyAV is installed, else mp4v; .avi: MJPG);
--log_csv writes one row per face per frame. At the end, a table per tracked face: when it was seen, the
share of its frames per emotion, its dominant emotion (--summary: as JSON; --plot: its probabilities over
time, a PNG, needs matplotlib). Model files are found as in inference.py.
"""

import json

from fer_common.cli import FERError, existing_file, make_parser, output_file, video_output
from fer_common.infer.detection import add_detector_args, detector_from_args
from fer_common.files import check_outputs, native_path, printable, write_json
from fer_common.infer.predictor import add_predictor_args, model_inputs, predictor_from_args
from fer_common.video.summary import FaceSummary, plot_summary, require_matplotlib, summarise_csv
from fer_common.video.options import VIDEO_DETECT_SIZE, VIDEO_MIN_FACE, add_video_args, check_video_options
from fer_common.video.pipeline import VideoPipeline
from fer_common.video.run import output_sinks, run_video
from fer_common.video.sinks import VideoFile
from fer_common.video.source import VideoReader
from fer_common.video.window import Window


def get_args_parser():
    parser = make_parser(__doc__)
    add_video_args(parser)
    add_predictor_args(parser)
    add_detector_args(parser, min_face=VIDEO_MIN_FACE, detect_size=VIDEO_DETECT_SIZE)    # one small pass per frame
    g = parser.add_argument_group("Output")
    g.add_argument("--save_output", metavar="PATH", type=video_output, help="write the annotated video here (.mp4 or .avi)")
    g.add_argument("--log_csv", metavar="PATH", type=output_file(),
                   help="CSV log, one row per face per frame, in the columns of inference.py's .csv output "
                        "(source, frame, time, ..., track_id, top_emotion, confidence, each class, error)")
    g.add_argument("--summary", metavar="PATH", type=output_file(".json"),
                   help="per tracked face: first and last time seen, share of frames per emotion, dominant emotion (JSON)")
    g.add_argument("--plot", metavar="PATH", type=output_file(".png"),
                   help="each tracked face's emotion probabilities over time, one panel per face (PNG; needs matplotlib)")
    g.add_argument("--summary_from", metavar="CSV", type=existing_file,
                   help="summarise an existing --log_csv file instead of running a video (with --summary / --plot)")
    g.add_argument("--no_display", action="store_true",
                   help="do not open a window (automatic when there is no display)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing --save_output / --log_csv / --summary / --plot file")
    return parser


def report(summary: FaceSummary, args, source) -> None:
    """The per-face table, and the --summary / --plot files."""
    print(summary.table())
    if args.summary:
        source = printable(source)                 # a name that is not UTF-8: its bytes escaped
        data = summary.to_dict(source=source)
        json.dumps(data, allow_nan=False)          # strict JSON: a NaN or Infinity is a bug, never a file
        try:
            write_json(args.summary, data)
        except OSError as e:
            raise FERError(f"cannot write summary {args.summary} ({e.strerror or e})") from None
        print(f"summary -> {args.summary}")
    if args.plot:
        plot_summary(summary, args.plot, title=f"{source}")
        print(f"plot -> {args.plot}")


def main(args):
    # before minutes of model loading, not after; and never the same file twice, nor an input
    check_outputs({"output video": args.save_output, "CSV log": args.log_csv, "summary JSON": args.summary,
                        "plot": args.plot}, args.overwrite,
                       inputs={"--video": args.video, "--summary_from": args.summary_from, **model_inputs(args)})
    if args.save_output:                   # OpenCV's and FFmpeg's writers take the path itself
        native_path(args.save_output, "--save_output", "the video encoder")
    if args.plot:
        require_matplotlib()
    if args.summary_from:
        if args.video or args.save_output or args.log_csv:
            raise FERError("--summary_from summarises a log without running a video: drop --video, --save_output "
                           "and --log_csv (or drop --summary_from)")
        summary = summarise_csv(args.summary_from)
        report(summary, args, summary.source or args.summary_from)      # the video the log says it came from
        return 0
    source = args.video if args.video else args.camera
    check_video_options(source, args.detect_every, args.smooth, args.max_frames or None, args.speed)
    predictor = predictor_from_args(args)
    predictor.set_threads()                            # the script owns the process's thread count
    detector = detector_from_args(args)
    summary = FaceSummary(predictor.class_names)
    with VideoReader(source, args.max_frames or None) as reader:
        pipeline = VideoPipeline(predictor, detector, detect_every=args.detect_every, smooth=args.smooth, source=reader.name,
                                 threaded=args.threaded, fps=reader.clock_fps)
        sinks = output_sinks(reader, predictor.class_names, save_output=args.save_output, log_csv=args.log_csv,
                             display=False if args.no_display else None, speed=args.speed,
                             close_at_end=args.close_at_end)
        window = next((s for s in sinks if isinstance(s, Window)), None)
        for video in (s for s in sinks if isinstance(s, VideoFile)):
            print(f"output video: {video.codec} ({video.encoder}) -> {video.path}")
            if video.note:
                print(video.note)
        stats = run_video(pipeline.run(reader), [*sinks, summary], total=reader.total,
                          progress=window is None and not reader.live)
    end = "interrupted" if stats["interrupted"] else "done"
    print(f"{end}: {stats['frames']} frames, {stats['faces']} faces, average {stats['fps']:.1f} FPS"
          + (f"; annotated video -> {args.save_output}" if args.save_output else "")
          + (f"; log -> {args.log_csv}" if args.log_csv else ""))
    report(summary, args, args.video if args.video else f"webcam {args.camera}")
    if window is not None:
        if not stats["interrupted"] and window.hold and window.enabled and not window.stop:
            print("end of the video: q or Esc closes the window")
        window.close() if stats["interrupted"] else window.wait_at_end()
    return 130 if stats["interrupted"] else 0

