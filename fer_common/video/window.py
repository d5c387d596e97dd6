"""The playback window: frames of a file shown on the file's own clock (Pacer), keys, and the headless check."""

import contextlib
import os
import sys
import time

import cv2

from fer_common.errors import FERError
from fer_common.video.sinks import Sink

WINDOW_TITLE = "FER - q or Esc: quit, space: pause"


def display_available() -> bool:
    """False on a Linux/BSD machine without an X11 or Wayland display (then imshow would abort)."""
    if sys.platform.startswith(("linux", "freebsd")):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class Pacer:
    """When each frame of a file is due on screen: the source's clock (Result.time) divided by `speed`,
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
