"""The options of a video run, checked once for real_time_video.py and the Python API alike, and the flags.

Each check raises FERError in one line naming the option; add_video_args is the video flags of the scripts.
"""

import math
import numbers
import os

from fer_common import cli
from fer_common.errors import FERError

# real_time_video.py's detector: one YuNet pass per frame on a copy 240 px on its shorter side (faces from
# 16 / 240 = 7% of it: 24 px at 360p, 48 px at 720p). Measurements: benchmarks/README.md.
VIDEO_MIN_FACE = 0
VIDEO_DETECT_SIZE = 240


def _integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FERError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise FERError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_source(source):
    """A webcam index (0-99: OpenCV reads -1 as 'any camera' and 100 up as backend ids) or a video file path."""
    if isinstance(source, numbers.Integral) and not isinstance(source, bool):
        if not 0 <= source <= 99:
            raise FERError(f"webcam index must be from 0 to 99, got {source}")
        return int(source)
    if not isinstance(source, (str, os.PathLike)) or not str(source).strip() or "\0" in str(source):
        raise FERError(f"a video source is a file path or a webcam index (0-99), got {source!r}")
    return source


def check_max_frames(max_frames):
    """None (all frames) or a positive number of frames."""
    if max_frames is None:
        return None
    max_frames = _integer(max_frames, "max_frames")
    if max_frames < 1:
        raise FERError(f"max_frames must be 1 or more (None: all frames), got {max_frames}")
    return max_frames


def check_pipeline_options(detect_every=3, smooth=0.5) -> tuple[int, float]:
    detect_every = _integer(detect_every, "detect_every")
    if not 1 <= detect_every <= 1000:
        raise FERError(f"detect_every must be from 1 to 1000, got {detect_every}")
    smooth = _number(smooth, "smooth")
    if not 0 <= smooth < 1:
        raise FERError(f"smooth must be in [0, 1) (0: no smoothing), got {smooth}")
    return detect_every, smooth


MIN_SPEED = 0.01     # a hundredth of real time: one frame of a 20 fps clip stays up 5 s; slower is no playback


def check_speed(speed) -> float:
    speed = _number(speed, "speed")
    if speed < 0 or 0 < speed < MIN_SPEED:
        raise FERError(f"speed must be 0 (as fast as possible) or from {MIN_SPEED} up, got {speed}")
    return speed


def check_video_options(source, detect_every=3, smooth=0.5, max_frames=None, speed=1.0) -> None:
    """The one check of a video run's options, for real_time_video.py and the Python API alike (FERError)."""
    check_source(source)
    check_pipeline_options(detect_every, smooth)
    check_max_frames(max_frames)
    check_speed(speed)


def add_video_args(parser):
    g = parser.add_argument_group("Video")
    g.add_argument("--video", metavar="PATH", type=cli.path_arg, help="video file to process (default: the webcam)")
    g.add_argument("--camera", type=cli.camera_index, default=0, help="webcam index, when no --video is given")
    g.add_argument("--max_frames", type=cli.non_negative_int, default=0, help="stop after this many frames (0: all)")
    g.add_argument("--detect_every", type=cli.int_range(1, 1000, name="detect_every"), default=3,
                   help="run the face detector every N frames; boxes are tracked in between")
    g.add_argument("--smooth", type=cli.unit_interval_open_top, default=0.5, metavar="ALPHA",
                   help="smooth each face's probabilities over frames: ALPHA * previous + (1 - ALPHA) * now (0: off)")
    g.add_argument("--threaded", dest="threaded", action="store_true", default=True,
                   help="detect faces on a background thread, overlapping decoding, classifying, drawing and "
                        "encoding (about 2x the FPS; boxes may lag a frame or two behind fast motion)")
    g.add_argument("--no_threaded", dest="threaded", action="store_false",
                   help="detect in the main loop, exactly every --detect_every frames (reproducible logs)")
    g.add_argument("--speed", type=cli.float_range(0, 100, name="speed"), default=1.0,
                   help="a file shown in a window plays at this multiple of its own frame rate (0: as fast as "
                        "possible); runs without a window always go as fast as possible")
    g.add_argument("--close_at_end", action="store_true",
                   help="close the window at the end of a file (default: the last frame stays until q or Esc)")
    return g
