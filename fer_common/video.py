"""Video and webcam: a pipeline that turns frames into plain per-frame results, and the outputs that consume them.

Computing apart from presenting (detectron2's demo: the predictor predicts, the visualizer draws).
VideoPipeline detects faces (every `detect_every` frames, tracked in between), classifies all faces of a
frame in one batch and smooths each face's probabilities; it returns a FrameResult and draws nothing.
Sinks consume (frame, result) pairs: Annotator draws the overlay, VideoFile writes the video, CsvLog the
log, Window shows the frames (and fer_common.summary.FaceSummary collects per-face summaries); run_video is
the loop that feeds them. Heavy objects (capture, detector, predictor, writer) are made once.

    for frame, result in analyse_video("Test_files/Video_Test_1.mp4", predictor, detector):
        print(result.index, result.time, result.ids, result.probabilities.argmax(1))

    with VideoReader("in.mp4") as reader:                    # what real_time_video.py does
        pipeline = VideoPipeline(predictor, detector, fps=reader.fps)
        sinks = output_sinks(reader, predictor.class_names, save_output="out.mp4", log_csv="faces.csv")
        stats = run_video(pipeline.run(reader), sinks, total=reader.total)
"""

import contextlib
import csv
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
from .tracking import FaceTracker

# real_time_video.py's detector: one YuNet pass per frame on a copy 240 px on its shorter side (faces from
# 16 / 240 = 7% of it: 24 px at 360p, 48 px at 720p). 320 px cost 3.4 against 2.3 ms per 480x360 frame,
# 3.2x instead of 2.6x the decode+encode floor with default flags (benchmarks/README.md).
VIDEO_MIN_FACE = 0
VIDEO_DETECT_SIZE = 240
FOURCCS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
# The --log_csv columns before the class names (one row per face per frame); fer_common.summary reads them back.
LOG_COLUMNS = ["frame", "time_s", "face_id", "x", "y", "w", "h", "top_emotion"]
WINDOW_TITLE = "FER - press q or Esc to quit"


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
    """

    def __init__(self, predictor, detector, detect_every: int = 3, smooth: float = 0.5, threaded: bool = False,
                 fps: float | None = None):
        if detect_every < 1:
            raise FERError(f"detect_every must be 1 or more, got {detect_every}")
        if not 0 <= smooth < 1:
            raise FERError(f"smooth must be in [0, 1) (0: no smoothing), got {smooth}")
        self.predictor, self.detector = predictor, detector
        self.detect_every, self.fps, self.threaded = detect_every, fps, threaded
        self.tracker = FaceTracker(smooth=smooth)
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
            if i % self.detect_every == 0:
                boxes, seconds = self._detect(frame)
                self.tracker.update_detections(boxes, i)
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
    if not path.is_file():
        raise FERError(f"video not found: {path}")
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
        self.cap, self._first = open_capture(source)
        self.live = isinstance(source, int)
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

    The source is opened at the call (a missing or unreadable one raises FERError here); the capture and
    the detection thread are released when the loop ends, or when the generator is closed.
    """
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
    return [*LOG_COLUMNS, *class_names]


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


class VideoFile(Sink):
    """Writes the frames to a video file at the source's fps and size (.mp4: mp4v, .avi/.mkv: MJPG)."""

    def __init__(self, path, fps: float, size: tuple[int, int]):
        self.path, self.fps, self.size = Path(path), fps, tuple(size)
        self.writer = None
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        ext = self.path.suffix.lower() or ".mp4"
        with self._stack as stack:        # undone at once if the encoder cannot open
            tmp = stack.enter_context(atomic_path(self.path, suffix=ext))
            self.writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*FOURCCS.get(ext, "mp4v")), self.fps,
                                          self.size)
            stack.callback(self.writer.release)      # runs before the rename: the file is complete when it appears
            if not self.writer.isOpened():
                raise FERError(f"cannot write video {self.path} (no encoder for '{ext}' here? use .mp4 or .avi)")
            self._stack = stack.pop_all()
        return self

    def write(self, frame, result=None, fps=None) -> None:
        self.writer.write(frame)

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)


class CsvLog(Sink):
    """One row per face per frame: frame, time_s, face_id, x, y, w, h, top_emotion, then each class's probability."""

    def __init__(self, path, class_names):
        self.path, self.class_names = Path(path), list(class_names)
        self._stack = contextlib.ExitStack()
        self.rows = None

    def __enter__(self):
        with self._stack as stack:
            tmp = stack.enter_context(atomic_path(self.path, suffix=".csv"))
            self.rows = csv.writer(stack.enter_context(open(tmp, "w", newline="", encoding="utf-8")))
            self.rows.writerow(csv_header(self.class_names))
            self._stack = stack.pop_all()
        return self

    def write(self, frame, result, fps=None) -> None:
        t = round(result.time, 4)
        for face_id, box, probs in zip(result.ids, result.boxes, result.probabilities):
            top = self.class_names[int(np.argmax(probs))]
            self.rows.writerow([result.index, t, face_id, *map(int, box), top, *(f"{p:.6f}" for p in probs)])

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)


class Window(Sink):
    """cv2.imshow in one window; q, Esc or closing the window stops the run. Turns itself off (headless)
    when the GUI cannot open."""

    def __init__(self, title: str = WINDOW_TITLE):
        self.title, self.enabled, self.stop = title, True, False

    def write(self, frame, result=None, fps=None) -> None:
        if not self.enabled:
            return
        try:
            cv2.imshow(self.title, frame)
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), 27) or cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                self.stop = True
        except cv2.error:
            print("no display available: running headless (--no_display)", file=sys.stderr)
            self.enabled = False

    def __exit__(self, *exc):
        if self.enabled:
            with contextlib.suppress(cv2.error):
                cv2.destroyWindow(self.title)
        return False


def output_sinks(reader: VideoReader, class_names, save_output=None, log_csv=None,
                 display: bool | None = None) -> list:
    """The sinks for real_time_video.py's outputs, in the order they see a frame: the overlay is drawn
    (only when a video file or window shows it), then the video file, the CSV log, the window.

    display=None opens a window only when a display exists. Paths are not checked here: the script checks
    all its outputs once, before loading the model (files.check_output_files)."""
    window = Window() if (display is None and display_available()) or display else None
    sinks = []
    if save_output or window is not None:
        sinks.append(Annotator(class_names))
    if save_output:
        sinks.append(VideoFile(save_output, reader.fps, reader.size))
    if log_csv:
        sinks.append(CsvLog(log_csv, class_names))
    if window is not None:
        sinks.append(window)
    return sinks


def run_video(results: Iterable[tuple[np.ndarray, FrameResult]], sinks=(), total: int | None = None) -> dict:
    """Feed each (frame, result) to every sink, in order; returns frames, faces, fps, seconds, interrupted.

    The FPS handed to the sinks (the overlay shows it) is a running average of the loop's own rate. Ctrl-C
    ends the run like the end of the source, its files complete (stats["interrupted"] is then True); a
    sink's `stop` (the window closed) ends it too. `results` is closed at the end (a generator's capture
    and detection thread are released).
    """
    frames = faces = 0
    fps = None
    interrupted = False
    with contextlib.ExitStack() as stack:
        if hasattr(results, "close"):
            stack.callback(results.close)
        for sink in sinks:
            stack.enter_context(sink)
        bar = stack.enter_context(tqdm(total=total or None, unit="frame", disable=None, leave=False))
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
    return g
