"""Where frames come from: a video file or a webcam, opened with a one-line error, read in order."""

import contextlib
import os
import stat
import sys
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from fer_common.errors import FERError
from fer_common.files import native_path
from fer_common.video.options import check_max_frames, check_source

# The highest frame rate a file's header is believed (high-speed phone video records 240 and more).
MAX_FPS = 1000


@contextlib.contextmanager
def quiet_stderr():
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
        with quiet_stderr():
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
    with quiet_stderr():
        cap = cv2.VideoCapture(native_path(path, "video"))
        ok, frame = cap.read() if cap.isOpened() else (False, None)
    if not ok or frame is None:
        cap.release()
        raise FERError(f"cannot read video {path} (not a video, or a format this OpenCV build cannot decode)")
    return cap, frame


class VideoReader:
    """The frames of a video file (path) or webcam (int), in order. Opening reads the first frame, so a bad
    source fails here, in one line. Iterate once; stops after `max_frames` (None or 0: all), at the end of
    the source, or at a frame a damaged file cannot decode (what came before is kept).

    fps: the source's average frame rate (30 when it does not say); live: a webcam; size: (width, height);
    total: the frames expected (0: unknown), for a progress bar; time: the seconds of the frame last yielded,
    from the container's own timestamps (a phone's variable frame rate), index / fps only where the file
    gives none that go forward (a broken header); None for a webcam.
    """

    def __init__(self, source, max_frames: int | None = None):
        source = check_source(source)
        max_frames = None if max_frames in (None, 0) else check_max_frames(max_frames)    # 0: all, as --max_frames
        self.cap, self._first = open_capture(source)
        self.live = isinstance(source, int)
        self.name = f"camera {source}" if self.live else str(source)      # a result's source
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and np.isfinite(fps) and 0 < fps <= MAX_FPS else 30.0
        self.time = None
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

    def _frame_time(self, n: int, previous: float | None) -> float | None:
        """Seconds of frame n: the container's timestamp when it moves forward, else n / fps."""
        if self.live:
            return None
        ms = self.cap.get(cv2.CAP_PROP_POS_MSEC)
        t = ms / 1000 if ms is not None and np.isfinite(ms) and ms >= 0 else None
        if t is None or (previous is not None and t <= previous) or (n > 0 and t == 0):
            return n / self.fps if previous is None or n / self.fps > previous else previous + 1 / self.fps
        return t

    def __iter__(self) -> Iterator[np.ndarray]:
        frame, self._first = self._first, None
        n = 0
        self.time = self._frame_time(0, None)
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
            else:
                self.time = self._frame_time(n, self.time)

    def close(self) -> None:
        self.cap.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
