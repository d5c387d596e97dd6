"""The real-time video loop: capture -> detect (every N frames, tracked between) -> classify -> smooth -> draw.

Everything heavy is made once: the capture, the detector, the predictor, the overlay and the writer.
All faces of a frame go through the model in one batch. A face keeps its id, and the history its
probabilities are smoothed over, by matching boxes between frames on IoU.

    stats = run_video(predictor, detector, source="Test_files/Video_Test_1.mp4", save_output="out.mp4")
"""

import contextlib
import csv
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from . import cli
from .cli import FERError
from .detection import crop_faces
from .files import atomic_path, check_writable
from .overlay import Overlay

# real_time_video.py's detector: one YuNet pass per frame on a copy 240 px on its shorter side (faces from
# 16 / 240 = 7% of it: 24 px at 360p, 48 px at 720p). 320 px cost 3.4 against 2.3 ms per 480x360 frame,
# 3.2x instead of 2.6x the decode+encode floor with default flags (benchmarks/README.md).
VIDEO_MIN_FACE = 0
VIDEO_DETECT_SIZE = 240
FOURCCS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def iou(a, b) -> float:
    ix = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(ix, 0) * max(iy, 0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    id: int
    box: np.ndarray                       # float [x, y, w, h] at the last detection
    velocity: np.ndarray                  # box change per frame, from the last two detections
    frame: int                            # frame index of the last detection
    probabilities: np.ndarray | None = None   # smoothed
    missed: int = 0                       # detection rounds in a row without a match

    def box_at(self, frame: int) -> np.ndarray:
        return self.box + self.velocity * (frame - self.frame)


@dataclass
class FaceTracker:
    """Face ids across frames by greedy IoU matching, constant-velocity boxes between detections,
    and an exponential moving average of each face's probabilities.

    smooth: weight of the history, 0 = no smoothing; p_shown = smooth * p_previous + (1 - smooth) * p_now.
    max_missed: detection rounds a face may go undetected before it is dropped (Haar misses single frames).
    """
    smooth: float = 0.5
    iou_threshold: float = 0.3
    max_missed: int = 1
    tracks: list = field(default_factory=list)
    next_id: int = 1

    def update_detections(self, boxes, frame: int) -> None:
        """Match a detection round's boxes to the tracks; new faces get new ids, lost ones are dropped."""
        boxes = [np.asarray(b, np.float64) for b in boxes]
        pairs = sorted(((iou(t.box_at(frame), b), ti, bi) for ti, t in enumerate(self.tracks)
                        for bi, b in enumerate(boxes)), reverse=True)
        matched_t, matched_b = set(), set()
        for score, ti, bi in pairs:
            if score < self.iou_threshold:
                break
            if ti in matched_t or bi in matched_b:
                continue
            t = self.tracks[ti]
            if frame > t.frame:
                t.velocity = (boxes[bi] - t.box) / (frame - t.frame)
            t.box, t.frame, t.missed = boxes[bi], frame, 0
            matched_t.add(ti)
            matched_b.add(bi)
        kept = []
        for ti, t in enumerate(self.tracks):
            if ti not in matched_t:
                t.missed += 1
            if t.missed <= self.max_missed:
                kept.append(t)
        for bi, b in enumerate(boxes):
            if bi not in matched_b:
                kept.append(Track(self.next_id, b, np.zeros(4), frame))
                self.next_id += 1
        self.tracks = sorted(kept, key=lambda t: t.box_at(frame)[0])

    def boxes(self, frame: int, shape) -> np.ndarray:
        """Each track's box at `frame` (extrapolated), as ints clipped into an image of `shape`."""
        h, w = shape[:2]
        out = []
        for t in self.tracks:
            x, y, bw, bh = t.box_at(frame)
            x0, y0 = np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)
            x1, y1 = np.clip(x + bw, x0 + 1, w), np.clip(y + bh, y0 + 1, h)
            out.append([x0, y0, x1 - x0, y1 - y0])
        return np.round(np.asarray(out, np.float64).reshape(-1, 4)).astype(np.int32)

    def smooth_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """EMA per track (rows in self.tracks order); a new face starts from its first probabilities."""
        out = np.empty_like(probabilities)
        for k, (t, p) in enumerate(zip(self.tracks, probabilities)):
            t.probabilities = p if t.probabilities is None else self.smooth * t.probabilities + (1 - self.smooth) * p
            out[k] = t.probabilities
        return out

    @property
    def ids(self) -> list[int]:
        return [t.id for t in self.tracks]


@dataclass
class FrameResult:
    boxes: np.ndarray           # K x 4 int
    ids: list                   # K face ids
    probabilities: np.ndarray   # K x num_classes (smoothed when smoothing is on)
    embeddings: np.ndarray      # K x embedding_dim


class VideoPipeline:
    """Per frame: detect every `detect_every` frames (tracked in between), classify all faces in one batch,
    smooth per face, draw. Made once per video; call process(frame) for each frame in order.

    The detector's boxes already are the crops the model expects (FER-2013 framing); `margin` adds to them."""

    def __init__(self, predictor, detector, detect_every: int = 3, smooth: float = 0.5, margin: float = 0.0,
                 draw: bool = True, threaded: bool = False):
        if detect_every < 1:
            raise FERError("--detect_every must be 1 or more")
        if not 0 <= smooth < 1:
            raise FERError("--smooth must be in [0, 1) (0: no smoothing)")
        self.predictor, self.detector = predictor, detector
        self.detect_every, self.margin, self.draw = detect_every, margin, draw
        self.tracker = FaceTracker(smooth=smooth)
        self.overlay = Overlay(predictor.class_names)
        self.frame_index = 0
        # threaded: the detector runs on a worker thread (OpenCV releases the GIL), overlapping the
        # decode, classify, draw and encode of the next frames; its boxes arrive up to detect_every frames late.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="face-detect") if threaded else None
        self._pending = None          # (frame index, future) of the detection in flight
        self._last_detection = -detect_every

    def _update_faces(self, frame: np.ndarray, i: int) -> None:
        if self._pool is None:
            if i % self.detect_every == 0:
                self.tracker.update_detections(self.detector.detect(frame), i)
            return
        # A detection is taken when it is ready, and waited for once it is detect_every frames old: boxes
        # never lag more than that, even when frames come faster than the detector (a file, not a webcam).
        if self._pending is not None and (self._pending[1].done() or i - self._pending[0] >= self.detect_every):
            self._take_detection()
        if self._pending is None and i - self._last_detection >= self.detect_every:
            self._pending = (i, self._pool.submit(self.detector.detect, frame.copy()))
            self._last_detection = i
        if self._pending is not None and not self.tracker.tracks:
            self._take_detection()          # no face known: wait, there is nothing to draw without boxes

    def _take_detection(self) -> None:
        j, future = self._pending
        self._pending = None
        self.tracker.update_detections(future.result(), j)

    def process(self, frame: np.ndarray, fps: float | None = None) -> FrameResult:
        i = self.frame_index
        self.frame_index += 1
        self._update_faces(frame, i)
        boxes = self.tracker.boxes(i, frame.shape)
        probabilities, embeddings = self.predictor(crop_faces(frame, boxes, self.margin))
        probabilities = self.tracker.smooth_probabilities(probabilities)
        ids = self.tracker.ids
        if self.draw:
            self.overlay.draw(frame, boxes, probabilities, fps=fps, ids=ids)
        return FrameResult(boxes, ids, probabilities, embeddings)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


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


def csv_header(class_names) -> list[str]:
    return ["frame", "time_s", "face_id", "x", "y", "w", "h", "top_emotion", *class_names]


class _Display:
    """cv2.imshow in one window; turns itself off (headless) when the GUI cannot open."""

    def __init__(self, title: str):
        self.title, self.enabled, self.quit = title, True, False

    def show(self, frame) -> None:
        try:
            cv2.imshow(self.title, frame)
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), 27) or cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                self.quit = True
        except cv2.error:
            print("no display available: running headless (--no_display)", file=sys.stderr)
            self.enabled = False

    def close(self) -> None:
        if self.enabled:
            with contextlib.suppress(cv2.error):
                cv2.destroyWindow(self.title)


def run_video(predictor, detector, source=0, save_output=None, log_csv=None, display: bool | None = None,
              max_frames: int | None = None, detect_every: int = 3, smooth: float = 0.5, threaded: bool = False,
              overwrite: bool = False, log=print) -> dict:
    """Run the whole loop over a video file (path) or webcam (int) and return frames, faces, fps, outputs.

    display=None shows a window only when a display exists. The output video keeps the source's size and
    fps and is written under a temporary name, renamed when the loop ends, also when the source ends
    early or on Ctrl-C (stats["interrupted"] is then True), so a cut-short run leaves a playable file.
    """
    for path, what in ((save_output, "output video"), (log_csv, "CSV log")):
        if path:
            check_writable(path, what, overwrite)
    cap, first = open_capture(source)
    try:
        src_fps = cap.get(cv2.CAP_PROP_FPS)
        src_fps = src_fps if src_fps and np.isfinite(src_fps) and 0 < src_fps <= 240 else 30.0
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not isinstance(source, int) else 0
        if max_frames:
            total = min(total, max_frames) if total > 0 else max_frames
        pipeline = VideoPipeline(predictor, detector, detect_every=detect_every, smooth=smooth, threaded=threaded)
        screen = _Display("FER - press q or Esc to quit") if (display is None and display_available()) or display else None
        with contextlib.ExitStack() as stack:
            writer = None
            if save_output:
                ext = Path(save_output).suffix.lower() or ".mp4"
                tmp = stack.enter_context(atomic_path(save_output, suffix=ext))
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*FOURCCS.get(ext, "mp4v")), src_fps,
                                         (first.shape[1], first.shape[0]))
                stack.callback(writer.release)    # runs before the rename: the file is complete when it appears
                if not writer.isOpened():
                    raise FERError(f"cannot write video {save_output} (no encoder for '{ext}' here? use .mp4 or .avi)")
            rows = None
            if log_csv:
                tmp_csv = stack.enter_context(atomic_path(log_csv, suffix=".csv"))
                handle = stack.enter_context(open(tmp_csv, "w", newline=""))
                rows = csv.writer(handle)
                rows.writerow(csv_header(predictor.class_names))
            stack.callback(pipeline.close)
            stats = _loop(cap, first, pipeline, writer, rows, screen, src_fps, max_frames, total,
                           live=isinstance(source, int))
            if screen is not None:
                screen.close()
    finally:
        cap.release()
    stats.update(output=str(save_output) if save_output else None, log_csv=str(log_csv) if log_csv else None,
                 source_fps=src_fps)
    end = "interrupted" if stats["interrupted"] else "done"
    log(f"{end}: {stats['frames']} frames, {stats['faces']} faces, average {stats['fps']:.1f} FPS"
        + (f"; annotated video -> {save_output}" if save_output else "")
        + (f"; log -> {log_csv}" if log_csv else ""))
    return stats


def _loop(cap, first, pipeline, writer, rows, screen, src_fps, max_frames, total, live=False) -> dict:
    frames = faces = 0
    fps = None
    interrupted = False
    frame = first
    start = last = time.perf_counter()
    bar = tqdm(total=total or None, unit="frame", disable=None, leave=False)
    try:
        while frame is not None:
            result = pipeline.process(frame, fps=fps)
            if writer is not None:
                writer.write(frame)
            if rows is not None:
                # a file's own clock; a webcam's frames arrive in real time
                t = round(time.perf_counter() - start if live else frames / src_fps, 4)
                for face_id, box, probs in zip(result.ids, result.boxes, result.probabilities):
                    top = pipeline.predictor.class_names[int(np.argmax(probs))]
                    rows.writerow([frames, t, face_id, *map(int, box), top, *(f"{p:.6f}" for p in probs)])
            frames += 1
            faces += len(result.boxes)
            bar.update()
            if screen is not None and screen.enabled:
                screen.show(frame)
                if screen.quit:
                    break
            now = time.perf_counter()
            instant = 1.0 / max(now - last, 1e-6)
            fps = instant if fps is None else 0.9 * fps + 0.1 * instant   # steady on-screen figure
            last = now
            if max_frames and frames >= max_frames:
                break
            try:
                ok, frame = cap.read()
            except cv2.error:       # a damaged file: stop here, keep what was written
                ok = False
            if not ok:
                frame = None
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
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
