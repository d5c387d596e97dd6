"""Frames in, per-frame results out: detect (every few frames, tracked in between), classify, smooth.

Computing apart from presenting (detectron2's demo: the predictor predicts, the visualizer draws): the
pipeline draws nothing; the sinks (fer_common.video.sinks, .window) consume what it returns. A scene cut
(SceneCuts) ends every track, so no face outlives its scene.

    for frame, result in analyse_frames("Test_files/Video_Test_1.mp4", predictor, detector):
        print(result.frame, result.time, [(f.track_id, f.top_emotion) for f in result.faces], result.speed)

Each frame's result is the toolkit's one Result (fer_common.results), with the faces' track ids, the frame's
index and time, and `speed` (milliseconds per stage), so images, folders and frames share every output.
"""

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import cv2
import numpy as np

from fer_common.infer.detection import crop_faces
from fer_common.results import Result, make_result
from fer_common.video.options import check_pipeline_options, check_video_options
from fer_common.video.source import VideoReader
from fer_common.video.tracking import FaceTracker


class SceneCuts:
    """Hard cuts between consecutive frames: called with each frame in order, True at the first frame of a new shot.

    A 32x24 gray thumbnail is compared with the previous one: a cut is a mean absolute difference above
    `threshold` grey levels and `ratio` times the recent level. On Test_files/Video_Test_1.mp4 the cut at
    frame 50 scores 58, every other frame at most 12; the ratio keeps a fast pan, whose every frame differs a
    lot, from counting as a cut at each frame. The thumbnail is averaged from every k-th pixel (about 64 x 48
    of them), so the check costs a small fraction of a frame's time (benchmarks/README.md, video).
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
    """Frame in, Result out: detect every `detect_every` frames (tracked in between), classify all faces
    in one batch, smooth per face. Draws nothing and never changes the frame. Made once per video; call
    process(frame) for each frame in order, or iterate run(frames).

    predictor: a Predictor (or anything called with a list of BGR crops that returns probabilities, embeddings).
    detector: a FaceDetector (anything with detect(frame) -> boxes); its boxes are the crops the model expects.
    smooth: weight of a face's previous probabilities (0: off), see FaceTracker.
    threaded: the detector runs on a worker thread (OpenCV releases the GIL), overlapping the caller's decode,
        classify, draw and encode; its boxes arrive at most `detect_every` frames late.
    fps: the source's frame rate, for Result.time; None (a webcam): seconds since the first frame.
    source: the name each Result carries (the video's path, "camera 0").
    scene_cuts: at a hard cut (SceneCuts) every track ends and the frame waits for its own detection, so a
        face of the scene before is never shown, logged or summarised over the next one, threaded or not.
    """

    def __init__(self, predictor, detector, detect_every: int = 3, smooth: float = 0.5, threaded: bool = False,
                 fps: float | None = None, scene_cuts: bool = True, source: str = "video"):
        detect_every, smooth = check_pipeline_options(detect_every, smooth)
        self.predictor, self.detector = predictor, detector
        self.detect_every, self.fps, self.threaded, self.source = detect_every, fps, threaded, str(source)
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

    def process(self, frame: np.ndarray, time_s: float | None = None) -> Result:
        """The faces of the next frame (BGR uint8, as OpenCV reads it); `time_s`: its time in the source
        (default: index / fps, or the wall clock for a live source)."""
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
        when = time_s if time_s is not None else i / self.fps if self.fps else t0 - self._start
        result = make_result(self.source, self.predictor.class_names, boxes, probabilities, embeddings,
                             track_ids=self.tracker.ids, size=(frame.shape[1], frame.shape[0]), frame=i, time=when,
                             no_face_error=False)
        # milliseconds: detect = the detector's run for the boxes taken in this frame (0 when none was; on the
        # worker thread when threaded), classify = the predictor (preprocessing included), track = the rest in
        # the caller's thread (matching, cropping, smoothing, waiting for a threaded detection)
        result.speed = {"detect": detect * 1e3, "classify": (t2 - t1) * 1e3, "track": max(track, 0.0) * 1e3}
        return result

    def run(self, frames: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, Result]]:
        """(frame, result) for each frame, in order; the frame is the caller's to draw on. A VideoReader's
        frames take their time from the file's clock (its `time`). Closes the pipeline at the end (also when
        the caller stops early and closes the generator)."""
        try:
            for frame in frames:
                yield frame, self.process(frame, getattr(frames, "time", None))
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


def analyse_frames(source, predictor, detector, *, detect_every: int = 3, smooth: float = 0.5,
                   threaded: bool = True, max_frames: int | None = None) -> Iterator[tuple[np.ndarray, Result]]:
    """(frame, Result) for each frame of a video file (path) or webcam (int), in order; nothing drawn.

    The options are checked and the source is opened at the call (FERError here for a bad option, a missing
    or unreadable source); the capture and the detection thread are released when the loop ends, or when the
    generator is closed. max_frames: None for all, else 1 or more.
    """
    check_video_options(source, detect_every, smooth, max_frames)
    reader = VideoReader(source, max_frames)
    try:
        pipeline = VideoPipeline(predictor, detector, detect_every, smooth, threaded=threaded, fps=reader.clock_fps,
                                 source=reader.name)
    except BaseException:
        reader.close()
        raise
    return _read_and_run(reader, pipeline)


def _read_and_run(reader, pipeline):
    with reader:
        yield from pipeline.run(reader)
