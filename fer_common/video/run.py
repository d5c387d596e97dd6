"""The run loop of a video: the sinks for real_time_video.py's outputs, and the loop that feeds them.

    with VideoReader("in.mp4") as reader:                    # what real_time_video.py does
        pipeline = VideoPipeline(predictor, detector, fps=reader.clock_fps, source=reader.name)
        sinks = output_sinks(reader, predictor.class_names, save_output="out.mp4", log_csv="faces.csv")
        stats = run_video(pipeline.run(reader), sinks, total=reader.total)
"""

import contextlib
import time
from typing import Iterable

import numpy as np
from tqdm import tqdm

from fer_common.video.options import check_speed
from fer_common.results import Result
from fer_common.video.sinks import Annotator, CsvLog, VideoFile
from fer_common.video.source import VideoReader
from fer_common.video.window import Pacer, Window, display_available


def output_sinks(reader: VideoReader, class_names, save_output=None, log_csv=None,
                 display: bool | None = None, speed: float = 1.0, close_at_end: bool = False) -> list:
    """The sinks for real_time_video.py's outputs, in the order they see a frame: the overlay is drawn
    (only when a video file or window shows it), then the video file, the CSV log, the window.

    display=None opens a window only when a display exists. A file shown in a window plays at `speed` times
    its own frame rate (0: as fast as possible) and its last frame stays up (Window.wait_at_end) unless
    close_at_end; a webcam is shown as it comes. Paths are not checked here: the script checks all its
    outputs once, before loading the model (files.check_outputs)."""
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
        sinks.append(CsvLog(log_csv, class_names))
    if window is not None:
        sinks.append(window)
    return sinks


def run_video(results: Iterable[tuple[np.ndarray, Result]], sinks=(), total: int | None = None,
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
                faces += len(result.faces)
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
