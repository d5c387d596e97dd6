"""Sinks: what consumes the pipeline's (frame, result) pairs. The overlay, the video file, the CSV log.

Each sink has write(frame, result, fps) and is a context manager around the run: files are written under a
temporary name and appear complete when the run ends normally or on Ctrl-C, and not at all after an error.
A sink whose `stop` turns true (the window closed, fer_common.video.window) ends the run.
"""

import contextlib
import queue
import threading
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from fer_common.device import cpu_count
from fer_common.errors import FERError
from fer_common.files import atomic_path
from fer_common.infer.overlay import Overlay
from fer_common.infer.writers import CsvTable
from fer_common.results import Result
from fer_common.video.source import quiet_stderr

# What --save_output writes, the first that this installation can encode: (library, codec, name shown).
# H.264 in .mp4 and VP9 in .webm play in browsers and Jupyter; they need PyAV (the [video] extra), whose wheels
# carry FFmpeg with libx264 and libvpx. OpenCV's own wheel has no H.264 encoder (only mp4v, which VLC plays
# but browsers do not) and encodes VP9 far slower than real time. Measurements: benchmarks/README.md.
ENCODERS = {
    ".mp4": [("pyav", "libx264", "H.264"), ("opencv", "mp4v", "MPEG-4 Part 2")],
    ".m4v": [("pyav", "libx264", "H.264"), ("opencv", "mp4v", "MPEG-4 Part 2")],
    ".mov": [("pyav", "libx264", "H.264"), ("opencv", "mp4v", "MPEG-4 Part 2")],
    ".webm": [("pyav", "libvpx-vp9", "VP9"), ("pyav", "libsvtav1", "AV1"), ("opencv", "VP90", "VP9")],
    ".avi": [("opencv", "MJPG", "Motion JPEG")],
    ".mkv": [("opencv", "MJPG", "Motion JPEG")],
}
BROWSER_CODECS = {"H.264", "VP9", "AV1"}
VIDEO_EXTRA = "pip install 'fer-toolkit[video]'"         # PyAV, named the way every install hint names it
FOURCCS = {ext: next(c for lib, c, _ in encoders if lib == "opencv") for ext, encoders in ENCODERS.items()}
# libx264's "superfast" preset: the fastest of the presets measured at about a third of mp4v's size
# (benchmarks/README.md, encoders). VP9 at constant quality 37, the quality of that H.264 (35.6 against 35.4 dB
# PSNR on the test clip): files 28% smaller than at libvpx's default bitrate, for the same CPU.
PYAV_OPTIONS = {"libx264": {"preset": "superfast", "crf": "23"},
                "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "crf": "37", "b": "0"},
                "libsvtav1": {"preset": "10"}}
# On a machine of this many cores or fewer the encoder runs single-threaded: the pipeline already gives it a
# thread of its own, and the encoders' own threads cost more CPU than they save (480x360 on 2 cores: H.264 1.53
# instead of 1.95 ms of CPU a frame, VP9 2.67 instead of 3.16; the same files).
FEW_CORES = 4


class Sink:
    stop = False

    def write(self, frame: np.ndarray, result: Result, fps: float | None = None) -> None:
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
        if name in BROWSER_CODECS:      # OpenCV's VP9: plays everywhere, but slow (benchmarks/README.md)
            note = f"note: writing {name} through OpenCV, which is slow ({why}): {VIDEO_EXTRA}"
        else:
            note = (f"note: writing {name}: " + ("VLC plays it, " if codec == "mp4v" else "")
                    + f"browsers and Jupyter do not; {why}: {VIDEO_EXTRA} for {candidates[0][2]}")
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
            options = dict(PYAV_OPTIONS.get(codec, {}))
            if cpu_count() <= FEW_CORES:
                options["threads"] = "1"
            self.stream = self.container.add_stream(codec, rate=rate, options=options)
            self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
            self.stream.codec_context.time_base = 1 / rate
        except BaseException:
            self.container.close()
            raise
        self.count = 0

    def prepare(self, frame):
        """The frame as an FFmpeg picture of its own, in the encoder's yuv420p: a new array, so the caller may
        draw on its frame again at once (the copy the encoder thread needs, at no extra cost). OpenCV converts
        BGR to yuv420p (BT.601, limited range, as FFmpeg's swscale does: Y within 1 level) in 0.1 ms at 480x360,
        where swscale took 0.7 ms of the encoder's thread (benchmarks/README.md)."""
        if frame.shape[0] != self.height or frame.shape[1] != self.width:
            frame = frame[:self.height, :self.width]
        return self.av.VideoFrame.from_ndarray(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420), format="yuv420p")

    def write(self, frame) -> None:
        picture = frame if isinstance(frame, self.av.VideoFrame) else self.prepare(frame)
        picture.pts = self.count
        self.count += 1
        self.container.mux(self.stream.encode(picture))

    def close(self) -> None:
        try:
            self.container.mux(self.stream.encode(None))     # flush the encoder's delayed frames
        finally:
            self.container.close()


_END = object()


class _EncoderThread:
    """A writer's write() on a thread of its own, behind a small bounded queue: the caller hands a frame over
    and goes on (FFmpeg releases the GIL while it converts, encodes and muxes, so the two overlap), waiting
    only when the encoder is QUEUE frames behind. Frames are written in order. An error in the thread is
    raised, the same exception, by the next write() or else by close(); the frames after it are dropped.

    The writer's prepare(frame), where it has one, runs in the caller's thread and returns what the thread
    writes (PyAV: a picture of its own); a writer without one is handed a copy of the array. Either way the
    caller may draw on or reuse its array as soon as write() returns.
    """
    QUEUE = 4

    def __init__(self, writer):
        self.writer = writer
        self._prepare = getattr(writer, "prepare", np.copy)
        self._queue = queue.Queue(self.QUEUE)
        self._error = None
        self._reported = False
        self._thread = threading.Thread(target=self._run, name="video-encode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not _END:
            if self._error is None:          # after an error: keep taking frames, so write() never blocks
                try:
                    self.writer.write(item)
                except BaseException as e:
                    self._error = e

    def write(self, frame) -> None:
        if self._error is not None:
            self._reported = True
            raise self._error
        self._queue.put(self._prepare(frame))

    def close(self) -> None:
        """Write what is queued, then close the writer; the thread's error if write() has not raised it."""
        if self._thread.is_alive():
            self._queue.put(_END)
            self._thread.join()
        if self._error is not None and not self._reported:
            self._reported = True
            with contextlib.suppress(Exception):
                self.writer.close()
            raise self._error
        self.writer.close()


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
    no error) left unreadable or short. Every writer encodes on a thread of its own (_EncoderThread), so the
    loop only hands frames over (benchmarks/README.md, video); a write error surfaces at the next write or at
    the end.
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
        if self.library == "pyav" and min(self.size) < 2:        # yuv420p halves each side: 1 px is nothing
            raise FERError(f"cannot write video {self.path}: the frames are {self.size[0]}x{self.size[1]} px, and "
                           f"{self.codec} needs at least 2x2; save as .avi")
        self._atomic = atomic_path(self.path, suffix=ext)
        tmp = self._atomic.__enter__()
        try:
            self.writer = _EncoderThread(open_video_writer(tmp, self.library, self.encoder, self.fps, self.size))
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
        with quiet_stderr():
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
    """--log_csv: one row per face per frame (a frame without a face: one row, faces 0), written by the
    writers' CsvTable, so the columns are those of every .csv the toolkit writes (source, frame, time, ...,
    track_id, top_emotion, confidence, one column per class, error). The log appears whole at the end of the
    run; a write that fails (a full disk) is a FERError, and no partial log is left."""

    def __init__(self, path, class_names):
        self.path, self.class_names = Path(path), list(class_names)
        self._stack = contextlib.ExitStack()
        self.rows = None

    def _error(self, e) -> FERError:
        return FERError(f"cannot write CSV log {self.path} ({getattr(e, 'strerror', None) or e}); "
                        f"the partial file was removed")

    def __enter__(self):
        with self._stack as stack:
            tmp = stack.enter_context(atomic_path(self.path, suffix=".csv"))
            self.rows = CsvTable(stack.enter_context(open(tmp, "w", newline="", encoding="utf-8")), self.class_names)
            self._stack = stack.pop_all()
        return self

    def write(self, frame, result, fps=None) -> None:
        try:
            self.rows.write(result)
        except OSError as e:
            raise self._error(e) from None

    def __exit__(self, *exc):
        try:
            return self._stack.__exit__(*exc)
        except OSError as e:           # the last buffered rows or the rename failed: removed by atomic_path
            raise self._error(e) from None
