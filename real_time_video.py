"""Detect faces in a video or webcam stream, classify their emotions, draw boxes and top-3 probability bars: `fer video` as a script.

    python real_time_video.py --video Test_files/Video_Test_1.mp4 --model_type advanced --save_output output.mp4
    python real_time_video.py --video in.mp4 --no_display --log_csv faces.csv --summary faces.json --plot faces.png
    python real_time_video.py --summary_from faces.csv --plot faces.png      # from a log, without the video

The command line lives in fer_common.commands.video (python real_time_video.py --help lists every flag).
"""

from fer_common.cli import run_main
from fer_common.commands.video import get_args_parser, main

if __name__ == "__main__":
    run_main(main, get_args_parser())
