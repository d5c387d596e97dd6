"""Video and webcam: a pipeline that turns frames into plain per-frame results, and the outputs that consume them.

Computing apart from presenting (detectron2's demo: the predictor predicts, the visualizer draws).
VideoPipeline detects faces (every `detect_every` frames, tracked in between), classifies all faces of a
frame in one batch and smooths each face's probabilities; it returns a FrameResult and draws nothing.
Sinks consume (frame, result) pairs: Annotator draws the overlay, VideoFile writes the video, CsvLog the
log, Window shows the frames (a file on its own clock, see Pacer), and fer_common.summary.FaceSummary collects
per-face summaries; run_video is the loop that feeds them. Heavy objects (capture, detector, predictor,
writer) are made once. A scene cut (SceneCuts) ends every track, so no face outlives its scene.

    for frame, result in analyse_video("Test_files/Video_Test_1.mp4", predictor, detector):
        print(result.index, result.time, result.ids, result.probabilities.argmax(1))

    with VideoReader("in.mp4") as reader:                    # what real_time_video.py does
        pipeline = VideoPipeline(predictor, detector, fps=reader.fps)
        sinks = output_sinks(reader, predictor.class_names, save_output="out.mp4", log_csv="faces.csv")
        stats = run_video(pipeline.run(reader), sinks, total=reader.total)
"""

import contextlib
import csv
import math
import numbers
import os
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from . import cli
from .errors import FERError
from .detection import crop_faces
from .files import atomic_path
from .overlay import Overlay
from .results import Result, make_result, table_columns, table_rows
from .tracking import FaceTracker

# real_time_video.py's detector: one YuNet pass per frame on a copy 240 px on its shorter side (faces from
# 16 / 240 = 7% of it: 24 px at 360p, 48 px at 720p). 320 px cost 3.4 against 2.3 ms per 480x360 frame,
# 3.2x instead of 2.6x the decode+encode floor with default flags (benchmarks/README.md).
VIDEO_MIN_FACE = 0
VIDEO_DETECT_SIZE = 240
# What --save_output writes, the first that this installation can encode: (library, codec, name shown).
# H.264 in .mp4 and VP9 in .webm play in browsers and Jupyter; they need PyAV (pip install av), whose wheels
# carry FFmpeg with libx264 and libvpx. OpenCV's own wheel has no H.264 encoder (only mp4v, which VLC plays
# but browsers do not) and encodes VP9 at about 80 ms a frame. Measurements: benchmarks/README.md.
ENCODERS = {
    ".mp4": [("pyav", "libx264", "H.264"), ("opencv", "mp4v", "MPEG-4 Part 2 (mp4v)")],
    ".m4v": [("pyav", "libx264", "H.264"), ("opencv", "mp4v", "MPEG-4 Part 2 (mp4v)")],
    ".mov": [("pyav", "libx264", "H.264"), ("opencv", "mp4v", "MPEG-4 Part 2 (mp4v)")],
    ".webm": [("pyav", "libvpx-vp9", "VP9"), ("pyav", "libsvtav1", "AV1"), ("opencv", "VP90", "VP9")],
    ".avi": [("opencv", "MJPG", "Motion JPEG")],
    ".mkv": [("opencv", "MJPG", "Motion JPEG")],
}
BROWSER_CODECS = {"H.264", "VP9", "AV1"}
FOURCCS = {ext: next(c for lib, c, _ in encoders if lib == "opencv") for ext, encoders in ENCODERS.items()}
# libx264's "superfast" preset: 1.8 ms a 480x360 frame and a third of mp4v's size ("veryfast": 2.8 ms, "medium": 7.6).
PYAV_OPTIONS = {"libx264": {"preset": "superfast", "crf": "23"},
                "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "row-mt": "1"},
                "libsvtav1": {"preset": "10"}}
# The --log_csv columns before the class names (one row per face per frame); fer_common.summary reads them back.
WINDOW_TITLE = "FER - q or Esc: quit, space: pause"


@dataclass
class FrameResult:
    """What the pipeline found in one frame; rows of boxes, ids, probabilities and embeddings are the same faces."""
    index: int                  # frame number in the source, from 0
    time: float                 # seconds: the source's own clock (index / fps), or since the first frame when live
    boxes: np.ndarray           # K x 4 int [x, y, w, h]: the crops the model saw, clipped to the frame
    ids: list                   # K face ids, each kept by its face across frames
    probabilities: np.ndarray   # K x num_classes in the model's class order (smoothed when smoothing is on)
    embeddings: np.ndarray      # K x embedding_dim
    # Seconds per stage: detect = the detector's run for the boxes taken in this frame (0 when none was;
    # on the worker thread when threaded), classify = the predictor (preprocessing included), track = the
    # rest in the caller's thread (matching, cropping, smoothing, waiting for a threaded detection).
    timings: dict = field(default_factory=dict)


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


def check_speed(speed) -> float:
    speed = _number(speed, "speed")
    if speed < 0:
        raise FERError(f"speed must be 0 (as fast as possible) or more, got {speed}")
    return speed


def check_video_options(source, detect_every=3, smooth=0.5, max_frames=None, speed=1.0) -> None:
    """The one check of a video run's options, for real_time_video.py and the Python API alike (FERError)."""
    check_source(source)
    check_pipeline_options(detect_every, smooth)
    check_max_frames(max_frames)
    check_speed(speed)


class SceneCuts:
    """Hard cuts between consecutive frames: called with each frame in order, True at the first frame of a new shot.

    A 32x24 gray thumbnail is compared with the previous one: a cut is a mean absolute difference above
    `threshold` grey levels and `ratio` times the recent level. On Test_files/Video_Test_1.mp4 the cut at
    frame 50 scores 58, every other frame at most 12; the ratio keeps a fast pan, whose every frame differs a
    lot, from counting as a cut at each frame. The thumbnail is averaged from every k-th pixel (about 64 x 48
    of them), so the check costs about 0.04 ms of CPU a frame at 480x360 and 0.06 ms at 720p.
    """

    def __init__(self, threshold: float = 30.0, ratio: float = 3.0):
        self.threshold, self.ratio = threshold, ratio
        self._previous, self._level = None, None

    def __call__(self, frame: np.ndarray) -> bool:
        k = max(1, min(frame.shape[1] // 64, frame.shape[0] // 48))
        small = cv2.resize(frame[::k, ::k], (32, 24), interpolation=cv2.INTER_AREA)
        if small.ndim == 3:
            small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        small = small.astype(np.float32)
        previous, self._previous = self._previous, small
        if previous is None:
            return False
        change = float(np.mean(np.abs(small - previous)))
        if change > self.threshold and (self._level is None or change > self.ratio * self._level):
            return True
        self._level = change if self._level is None else 0.8 * self._level + 0.2 * change
        return False


class VideoPipeline:
    """Frame in, FrameResult out: detect every `detect_every` frames (tracked in between), classify all faces
    in one batch, smooth per face. Draws nothing and never changes the frame. Made once per video; call
    process(frame) for each frame in order, or iterate run(frames).

    predictor: a Predictor (or anything called with a list of BGR crops that returns probabilities, embeddings).
    detector: a FaceDetector (anything with detect(frame) -> boxes); its boxes are the crops the model expects.
    smooth: weight of a face's previous probabilities (0: off), see FaceTracker.
    threaded: the detector runs on a worker thread (OpenCV releases the GIL), overlapping the caller's decode,
        classify, draw and encode; its boxes arrive at most `detect_every` frames late.
    fps: the source's frame rate, for FrameResult.time; None (a webcam): seconds since the first frame.
    scene_cuts: at a hard cut (SceneCuts) every track ends and the frame waits for its own detection, so a
        face of the scene before is never shown, logged or summarised over the next one, threaded or not.
    """

    def __init__(self, predictor, detector, detect_every: int = 3, smooth: float = 0.5, threaded: bool = False,
                 fps: float | None = None, scene_cuts: bool = True):
        detect_every, smooth = check_pipeline_options(detect_every, smooth)
        self.predictor, self.detector = predictor, detector
        self.detect_every, self.fps, self.threaded = detect_every, fps, threaded
        self.tracker = FaceTracker(smooth=smooth)
        self.cuts = SceneCuts() if scene_cuts else None
        self.frame_index = 0
        self._start = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="face-detect") if threaded else None
        self._pending = None          # (frame index, future) of the detection in flight
        self._last_detection = -detect_every

    @property
    def class_names(self) -> list:
        return list(self.predictor.class_names)

    def _detect(self, frame):
        t0 = time.perf_counter()
        boxes = self.detector.detect(frame)
        return boxes, time.perf_counter() - t0

    def _update_faces(self, frame: np.ndarray, i: int) -> float:
        """Take a detection if one is due or ready; returns the detector's seconds for it (0: none taken)."""
        if self._pool is None:
            if i - self._last_detection >= self.detect_every:
                boxes, seconds = self._detect(frame)
                self.tracker.update_detections(boxes, i)
                self._last_detection = i
                return seconds
            return 0.0
        seconds = 0.0
        # A detection is taken when it is ready, and waited for once it is detect_every frames old: boxes
        # never lag more than that, even when frames come faster than the detector (a file, not a webcam).
        if self._pending is not None and (self._pending[1].done() or i - self._pending[0] >= self.detect_every):
            seconds += self._take_detection()
        if self._pending is None and i - self._last_detection >= self.detect_every:
            # a copy: the caller may draw on its frame while the worker still reads it
            self._pending = (i, self._pool.submit(self._detect, frame.copy()))
            self._last_detection = i
        if self._pending is not None and not self.tracker.visible:
            seconds += self._take_detection()    # no face known: wait, there are no boxes to classify without it
        return seconds

    def _scene_cut(self, i: int) -> None:
        """End every track, drop a detection of the scene before, and detect in frame i before showing a face."""
        self.tracker.end_tracks()
        if self._pending is not None:
            self._pending[1].cancel()         # when already running, its boxes are simply never taken
            self._pending = None
        self._last_detection = i - self.detect_every

    def _take_detection(self) -> float:
        j, future = self._pending
        self._pending = None
        boxes, seconds = future.result()
        self.tracker.update_detections(boxes, j)
        return seconds

    def process(self, frame: np.ndarray) -> FrameResult:
        """The faces of the next frame (BGR uint8, as OpenCV reads it)."""
        i = self.frame_index
        self.frame_index += 1
        t0 = time.perf_counter()
        if self._start is None:
            self._start = t0
        if self.cuts is not None and self.cuts(frame):
            self._scene_cut(i)
        detect = self._update_faces(frame, i)
        boxes = self.tracker.boxes(i, frame.shape)
        crops = crop_faces(frame, boxes)
        t1 = time.perf_counter()
        probabilities, embeddings = self.predictor(crops)
        t2 = time.perf_counter()
        probabilities = self.tracker.smooth_probabilities(probabilities)
        t3 = time.perf_counter()
        track = (t1 - t0) + (t3 - t2) - (0.0 if self.threaded else detect)
        when = i / self.fps if self.fps else t0 - self._start
        return FrameResult(i, when, boxes, self.tracker.ids, probabilities, embeddings,
                           {"detect": detect, "classify": t2 - t1, "track": max(track, 0.0)})

    def run(self, frames: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, FrameResult]]:
        """(frame, result) for each frame, in order; the frame is the caller's to draw on. Closes the pipeline
        at the end (also when the caller stops early and closes the generator)."""
        try:
            for frame in frames:
                yield frame, self.process(frame)
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def display_available() -> bool:
    """False on a Linux/BSD machine without an X11 or Wayland display (then imshow would abort)."""
    if sys.platform.startswith(("linux", "freebsd")):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


@contextlib.contextmanager
def _quiet_stderr():
    """Silence OpenCV/FFmpeg's own stderr chatter while probing a source, so our one line is the message."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def open_capture(source) -> tuple[cv2.VideoCapture, np.ndarray]:
    """Open a video file (path) or webcam (int) and read its first frame; one-line errors otherwise."""
    if isinstance(source, int):
        with _quiet_stderr():
            cap = cv2.VideoCapture(source)
            ok, frame = cap.read() if cap.isOpened() else (False, None)
        if not ok:
            cap.release()
            raise FERError(f"cannot open webcam {source} (no camera there?): pass --video PATH or another --camera N")
        return cap, frame
    path = Path(source)
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        raise FERError(f"video not found: {path}") from None
    if not stat.S_ISREG(mode):        # a FIFO or a device would block or never end
        raise FERError(f"cannot read video {path}: not a regular file")
    with _quiet_stderr():
        cap = cv2.VideoCapture(str(path))
        ok, frame = cap.read() if cap.isOpened() else (False, None)
    if not ok or frame is None:
        cap.release()
        raise FERError(f"cannot read video {path} (not a video, or a format this OpenCV build cannot decode)")
    return cap, frame


class VideoReader:
    """The frames of a video file (path) or webcam (int), in order. Opening reads the first frame, so a bad
    source fails here, in one line. Iterate once; stops after `max_frames` (None or 0: all), at the end of
    the source, or at a frame a damaged file cannot decode (what came before is kept).

    fps: the source's frame rate (30 when it does not say); live: a webcam; size: (width, height);
    total: the frames expected (0: unknown), for a progress bar.
    """

    def __init__(self, source, max_frames: int | None = None):
        source = check_source(source)
        max_frames = None if max_frames in (None, 0) else check_max_frames(max_frames)    # 0: all, as --max_frames
        self.cap, self._first = open_capture(source)
        self.live = isinstance(source, int)
        self.name = f"camera {source}" if self.live else str(source)      # a result's source
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and np.isfinite(fps) and 0 < fps <= 240 else 30.0
        self.size = (self._first.shape[1], self._first.shape[0])
        self.max_frames = max_frames or None
        total = 0 if self.live else max(int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        if self.max_frames:
            total = min(total, self.max_frames) if total > 0 else self.max_frames
        self.total = total

    @property
    def clock_fps(self) -> float | None:
        """The frame rate that gives each frame its time: the file's own; None for a webcam (real time)."""
        return None if self.live else self.fps

    def __iter__(self) -> Iterator[np.ndarray]:
        frame, self._first = self._first, None
        n = 0
        while frame is not None:
            yield frame
            n += 1
            if self.max_frames and n >= self.max_frames:
                return
            try:
                ok, frame = self.cap.read()
            except cv2.error:       # a damaged file: stop here, keep what was done
                ok = False
            if not ok:
                frame = None

    def close(self) -> None:
        self.cap.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def analyse_video(source, predictor, detector, *, detect_every: int = 3, smooth: float = 0.5,
                  threaded: bool = True, max_frames: int | None = None) -> Iterator[tuple[np.ndarray, FrameResult]]:
    """(frame, FrameResult) for each frame of a video file (path) or webcam (int), in order; nothing drawn.

    The options are checked and the source is opened at the call (FERError here for a bad option, a missing
    or unreadable source); the capture and the detection thread are released when the loop ends, or when the
    generator is closed. max_frames: None for all, else 1 or more.
    """
    check_video_options(source, detect_every, smooth, max_frames)
    reader = VideoReader(source, max_frames)
    try:
        pipeline = VideoPipeline(predictor, detector, detect_every, smooth, threaded=threaded, fps=reader.clock_fps)
    except BaseException:
        reader.close()
        raise
    return _read_and_run(reader, pipeline)


def _read_and_run(reader, pipeline):
    with reader:
        yield from pipeline.run(reader)


# ------------------------------------------------------------------ sinks: what consumes the results
# Each sink has write(frame, result, fps) and is a context manager around the run: files are written under a
# temporary name and appear complete when the run ends normally or on Ctrl-C, and not at all after an error.
# A sink whose `stop` turns true (the window closed) ends the run.

def csv_header(class_names) -> list[str]:
    """--log_csv's columns: those of every results table (fer_common.results.table_columns)."""
    return table_columns(class_names)


def to_result(result: FrameResult, source: str, class_names, size) -> Result:
    """A pipeline's FrameResult as the toolkit's one result model (a frame without a face has no error)."""
    return make_result(source, class_names, result.boxes, result.probabilities, result.embeddings,
                       track_ids=result.ids, size=size, frame=result.index, time=result.time, no_face_error=False)


class Sink:
    stop = False

    def write(self, frame: np.ndarray, result: FrameResult, fps: float | None = None) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Annotator(Sink):
    """Draws each result onto its frame, in place: boxes, ids, top emotions, top-k bars, FPS, group emotion."""

    def __init__(self, class_names, top_k: int = 3):
        self.overlay = Overlay(class_names, top_k)

    def write(self, frame, result, fps=None) -> None:
        self.overlay.draw_result(frame, result, fps=fps)


def pyav_encoders() -> set:
    """The PyAV (FFmpeg) video encoders installed here; empty without PyAV."""
    try:
        import av
        return set(av.codecs_available)
    except Exception:       # not installed, or its FFmpeg libraries do not load
        return set()


def choose_encoder(path) -> tuple[str, str, str, str | None]:
    """(library, codec, name, note) for a video file: the first of ENCODERS[suffix] this installation has.

    note is None for a codec that browsers play, else one line saying what was written instead and how to
    get better (install PyAV)."""
    ext = Path(path).suffix.lower() or ".mp4"
    candidates = ENCODERS.get(ext, ENCODERS[".mp4"])
    installed = pyav_encoders()
    for library, codec, name in candidates:
        if library == "opencv" or codec in installed:
            break
    note = None
    if library == "opencv" and candidates[0][0] == "pyav":
        why = "PyAV is not installed here" if not installed else f"this PyAV has no {candidates[0][1]}"
        if name in BROWSER_CODECS:      # OpenCV's VP9: plays everywhere, but about 80 ms a frame
            note = f"note: writing {name} through OpenCV, which is slow ({why}): pip install av"
        else:
            note = (f"note: writing {name}: " + ("VLC plays it, " if codec == "mp4v" else "")
                    + f"browsers and Jupyter do not; {why}: pip install av for {candidates[0][2]}")
    return library, codec, name, note


class _OpenCVWriter:
    def __init__(self, path, codec: str, fps: float, size):
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, tuple(size))
        if not self.writer.isOpened():
            self.writer.release()
            raise FERError(f"no '{codec}' encoder in this OpenCV build")

    def write(self, frame) -> None:
        self.writer.write(frame)        # OpenCV reports no write error: VideoFile checks the file at the end

    def close(self) -> None:
        self.writer.release()


class _PyAVWriter:
    """FFmpeg through PyAV: write errors (a full disk) raise OSError at once. yuv420p, which every player
    decodes, needs an even width and height: an odd last row or column is left out."""

    def __init__(self, path, codec: str, fps: float, size):
        import av

        self.av = av
        rate = Fraction(fps).limit_denominator(1001)
        self.width, self.height = size[0] // 2 * 2, size[1] // 2 * 2
        self.container = av.open(str(path), "w")
        try:
            self.stream = self.container.add_stream(codec, rate=rate, options=dict(PYAV_OPTIONS.get(codec, {})))
            self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
            self.stream.codec_context.time_base = 1 / rate
        except BaseException:
            self.container.close()
            raise
        self.count = 0

    def write(self, frame) -> None:
        if frame.shape[0] != self.height or frame.shape[1] != self.width:
            frame = frame[:self.height, :self.width]
        picture = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
        picture.pts = self.count
        self.count += 1
        self.container.mux(self.stream.encode(picture))

    def close(self) -> None:
        try:
            self.container.mux(self.stream.encode(None))     # flush the encoder's delayed frames
        finally:
            self.container.close()


def open_video_writer(path, library: str, codec: str, fps: float, size):
    """A writer with write(frame) and close(), both raising OSError (or FERError) when the file cannot be written."""
    return _PyAVWriter(path, codec, fps, size) if library == "pyav" else _OpenCVWriter(path, codec, fps, size)


def _write_errors():
    try:
        import av
        return (OSError, av.FFmpegError)
    except (ImportError, AttributeError):
        return (OSError,)


class VideoFile(Sink):
    """Writes the frames to a video file at the source's fps and size: .mp4/.m4v/.mov as H.264 and .webm as
    VP9 with PyAV installed (browsers and Jupyter play them), else OpenCV's mp4v / VP9; .avi/.mkv: MJPG.
    `codec` names what is written, `note` (None when fine) says what a fallback lacks.

    The file is written under a temporary name and appears when the run ends, complete: a write that fails
    (a full disk) is a FERError and the partial file is removed; so is one the OpenCV writer (which reports
    no error) left unreadable or short.
    """

    def __init__(self, path, fps: float, size: tuple[int, int]):
        self.path, self.fps, self.size = Path(path), fps, tuple(size)
        self.library, self.encoder, self.codec, self.note = choose_encoder(self.path)
        self.writer = None
        self.frames = 0
        self._atomic = None

    def _error(self, e) -> FERError:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        return FERError(f"cannot write output video {self.path} ({reason}); the partial file was removed")

    def __enter__(self):
        ext = self.path.suffix.lower() or ".mp4"
        self._atomic = atomic_path(self.path, suffix=ext)
        tmp = self._atomic.__enter__()
        try:
            self.writer = open_video_writer(tmp, self.library, self.encoder, self.fps, self.size)
        except BaseException as e:
            self._atomic.__exit__(type(e), e, e.__traceback__)
            if isinstance(e, Exception):
                raise FERError(f"cannot write video {self.path} (no {self.codec} encoder for '{ext}' here: {e}; "
                               f"use .mp4 or .avi)") from None
            raise
        self._tmp = tmp
        return self

    def write(self, frame, result=None, fps=None) -> None:
        try:
            self.writer.write(frame)
        except _write_errors() as e:
            raise self._error(e) from None
        self.frames += 1

    def _check_file(self) -> None:
        """The OpenCV writer swallows write errors: the finished file must open and hold the frames written."""
        if self.library != "opencv" or not self.frames:
            return
        with _quiet_stderr():
            cap = cv2.VideoCapture(str(self._tmp))
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else -1
            cap.release()
        if count < self.frames:
            raise FERError("the file is unreadable or short (disk full?)")

    def __exit__(self, *exc):
        failure = None
        try:
            self.writer.close()
            if exc[0] is None:
                self._check_file()
        except (*_write_errors(), FERError) as e:
            if exc[0] is None:
                failure = self._error(e)
        if failure is not None:
            self._atomic.__exit__(FERError, failure, None)      # removes the partial file
            raise failure
        try:
            return self._atomic.__exit__(*exc)
        except OSError as e:                                     # the final rename failed
            raise self._error(e) from None


class CsvLog(Sink):
    """One row per face per frame (a frame without a face: one row, faces 0), in the columns of every results
    table (fer_common.results.table_rows: source, frame, time, ..., track_id, top_emotion, confidence, one
    column per class, error). A write that fails (a full disk) is a FERError, and no partial log is left."""

    def __init__(self, path, class_names, source: str = "video"):
        self.path, self.class_names, self.source = Path(path), list(class_names), str(source)
        self._stack = contextlib.ExitStack()
        self.rows = None

    def _error(self, e) -> FERError:
        return FERError(f"cannot write CSV log {self.path} ({getattr(e, 'strerror', None) or e}); "
                        f"the partial file was removed")

    def __enter__(self):
        with self._stack as stack:
            tmp = stack.enter_context(atomic_path(self.path, suffix=".csv"))
            self.rows = csv.writer(stack.enter_context(open(tmp, "w", newline="", encoding="utf-8")))
            self.rows.writerow(csv_header(self.class_names))
            self._stack = stack.pop_all()
        return self

    def write(self, frame, result, fps=None) -> None:
        size = (frame.shape[1], frame.shape[0])
        try:
            self.rows.writerows(table_rows(to_result(result, self.source, self.class_names, size), self.class_names))
        except OSError as e:
            raise self._error(e) from None

    def __exit__(self, *exc):
        try:
            return self._stack.__exit__(*exc)
        except OSError as e:           # the last buffered rows or the rename failed: removed by atomic_path
            raise self._error(e) from None


class Pacer:
    """When each frame of a file is due on screen: the source's clock (FrameResult.time) divided by `speed`,
    from the first frame shown. A pause moves the clock on by its length; a frame more than `max_lag`
    seconds late moves it on too (a pipeline slower than the source plays slower, it does not freeze).

    clock: seconds, monotonic (injectable for tests).
    """

    def __init__(self, speed: float = 1.0, clock=time.monotonic, max_lag: float = 0.25):
        if not speed > 0:
            raise FERError(f"a paced playback needs a speed above 0, got {speed}")
        self.speed, self.clock, self.max_lag = speed, clock, max_lag
        self._origin = None
        self._paused_at = None

    def delay(self, t: float) -> float:
        """Seconds until the frame at source time t is due (negative: that late)."""
        now = self.clock()
        if self._origin is None:
            self._origin = now - t / self.speed
        late = now - (self._origin + t / self.speed)
        if late > self.max_lag:
            self._origin += late
            late = 0.0
        return -late

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self.clock()

    def resume(self) -> None:
        if self._paused_at is not None:
            if self._origin is not None:
                self._origin += self.clock() - self._paused_at
            self._paused_at = None

    @property
    def paused(self) -> bool:
        return self._paused_at is not None


class OpenCVGui:
    """The few HighGUI calls the Window makes (a stand-in replaces them in tests)."""

    @staticmethod
    def show(title, frame) -> None:
        cv2.imshow(title, frame)

    @staticmethod
    def wait_key(ms: int) -> int:
        return cv2.waitKey(max(int(ms), 1)) & 0xFF

    @staticmethod
    def visible(title) -> bool:
        return cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) >= 1

    @staticmethod
    def destroy(title) -> None:
        cv2.destroyWindow(title)


class Window(Sink):
    """cv2.imshow in one window; q, Esc or closing the window stops the run. Turns itself off (headless)
    when the GUI cannot open.

    pacer: a Pacer for a file: each frame is shown when it is due on the source's clock; a frame that is
        already late by more than `late` seconds is processed but not shown (the window catches up), though
        the picture is refreshed at least every `refresh` seconds; space pauses and resumes. None (a webcam,
        or --speed 0): every frame at once.
    hold: at the end of a file, wait_at_end() keeps the last frame up until q, Esc or the window is closed.
    """

    KEYS_QUIT = (ord("q"), ord("Q"), 27)
    KEY_PAUSE = ord(" ")

    def __init__(self, title: str = WINDOW_TITLE, pacer: Pacer | None = None, hold: bool = False,
                 late: float = 0.06, refresh: float = 0.1, gui=OpenCVGui):
        self.title, self.enabled, self.stop = title, True, False
        self.pacer, self.hold, self.late, self.refresh, self.gui = pacer, hold, late, refresh, gui
        self.shown = self.skipped = 0
        self._polled = self._shown_at = None

    def _poll(self, ms: int) -> None:
        """Handle keys and a closed window for up to `ms` milliseconds; space toggles the pause (files only)."""
        key = self.gui.wait_key(ms)
        self._polled = time.monotonic() if self.pacer is None else self.pacer.clock()
        if key in self.KEYS_QUIT or not self.gui.visible(self.title):
            self.stop = True
        elif key == self.KEY_PAUSE and self.pacer is not None:
            self.pacer.resume() if self.pacer.paused else self.pacer.pause()

    def write(self, frame, result=None, fps=None) -> None:
        if not self.enabled:
            return
        try:
            if self.pacer is None or result is None:
                self.gui.show(self.title, frame)
                self.shown += 1
                self._poll(1)
                return
            if not self.pacer.paused:
                wait, now = self.pacer.delay(result.time), self.pacer.clock()
                if wait < -self.late and self._shown_at is not None and now - self._shown_at < self.refresh:
                    self.skipped += 1            # behind: process this frame, show a later one
                    if now - self._polled > self.refresh:
                        self._poll(1)            # keys still work while catching up
                    return
            # wait for the frame's time on the source clock (keys work meanwhile), then show it
            while not self.stop:
                if self.pacer.paused:
                    self._poll(50)
                    continue
                wait = self.pacer.delay(result.time)
                if wait <= 0.0005:
                    break
                self._poll(wait * 1000)
            if self.stop:
                return
            self.gui.show(self.title, frame)
            self.shown += 1
            self._shown_at = self.pacer.clock()
            self._poll(1)                        # HighGUI draws the picture while it waits for a key
        except cv2.error:
            print("no display available: running headless (--no_display)", file=sys.stderr)
            self.enabled = False

    def wait_at_end(self) -> None:
        """With `hold`, keep the last frame up until q, Esc or the window is closed; then close the window."""
        try:
            while self.hold and self.enabled and not self.stop:
                self._poll(50)
        except cv2.error:
            pass
        self.close()

    def close(self) -> None:
        if self.enabled:
            self.enabled = False
            with contextlib.suppress(cv2.error):
                self.gui.destroy(self.title)

    def __exit__(self, *exc):
        if exc[0] is not None or self.stop or not self.hold:
            self.close()
        return False


def output_sinks(reader: VideoReader, class_names, save_output=None, log_csv=None,
                 display: bool | None = None, speed: float = 1.0, close_at_end: bool = False) -> list:
    """The sinks for real_time_video.py's outputs, in the order they see a frame: the overlay is drawn
    (only when a video file or window shows it), then the video file, the CSV log, the window.

    display=None opens a window only when a display exists. A file shown in a window plays at `speed` times
    its own frame rate (0: as fast as possible) and its last frame stays up (Window.wait_at_end) unless
    close_at_end; a webcam is shown as it comes. Paths are not checked here: the script checks all its
    outputs once, before loading the model (files.check_output_files)."""
    speed = check_speed(speed)
    window = None
    if (display is None and display_available()) or display:
        paced = not reader.live and speed > 0
        window = Window(pacer=Pacer(speed) if paced else None, hold=not reader.live and not close_at_end)
    sinks = []
    if save_output or window is not None:
        sinks.append(Annotator(class_names))
    if save_output:
        sinks.append(VideoFile(save_output, reader.fps, reader.size))
    if log_csv:
        sinks.append(CsvLog(log_csv, class_names, reader.name))
    if window is not None:
        sinks.append(window)
    return sinks


def run_video(results: Iterable[tuple[np.ndarray, FrameResult]], sinks=(), total: int | None = None,
              progress: bool = True) -> dict:
    """Feed each (frame, result) to every sink, in order; returns frames, faces, fps, seconds, interrupted.

    The FPS handed to the sinks (the overlay shows it) is a running average of the loop's own rate. Ctrl-C
    ends the run like the end of the source, its files complete (stats["interrupted"] is then True); a
    sink's `stop` (the window closed) ends it too. `results` is closed at the end (a generator's capture
    and detection thread are released). progress: a tqdm bar (frames, FPS, time left) on a terminal's stderr.
    """
    frames = faces = 0
    fps = None
    interrupted = False
    with contextlib.ExitStack() as stack:
        if hasattr(results, "close"):
            stack.callback(results.close)
        for sink in sinks:
            stack.enter_context(sink)
        bar = stack.enter_context(tqdm(total=total or None, unit=" frames", disable=None if progress else True,
                                       leave=False, dynamic_ncols=True))
        start = last = time.perf_counter()
        try:
            for frame, result in results:
                for sink in sinks:
                    sink.write(frame, result, fps)
                frames += 1
                faces += len(result.boxes)
                bar.update()
                now = time.perf_counter()
                instant = 1.0 / max(now - last, 1e-6)
                fps = instant if fps is None else 0.9 * fps + 0.1 * instant   # a steady on-screen figure
                last = now
                if any(sink.stop for sink in sinks):
                    break
        except KeyboardInterrupt:
            interrupted = True
        elapsed = time.perf_counter() - start
    return {"frames": frames, "faces": faces, "fps": frames / elapsed if elapsed > 0 else 0.0,
            "seconds": elapsed, "interrupted": interrupted}


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
