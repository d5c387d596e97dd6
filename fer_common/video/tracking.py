"""Face tracks across video frames: ids by IoU matching, boxes extrapolated between detections, smoothed probabilities.

Rectangles are [x, y, w, h] everywhere; their overlap and IoU come from fer_common.boxes.

    tracker = FaceTracker(smooth=0.5)
    tracker.update_detections(detector.detect(frame), frame=i)      # every few frames
    tracker.end_tracks()                                             # at a scene cut
    boxes, ids = tracker.boxes(i, frame.shape), tracker.ids          # every frame
    shown = tracker.smooth_probabilities(predictor(crop_faces(frame, boxes)).probabilities)
"""

from dataclasses import dataclass, field

import numpy as np

from fer_common.boxes import iou


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
    iou_threshold: the least IoU between a track's predicted box and a detection for them to be one face.
    max_missed: detection rounds a face may go undetected before it is dropped (Haar misses single frames).
        A track that missed its latest round is kept, so the face gets its id back when it is found again,
        but it is not shown: its extrapolated box may hold no face at all (a scene cut, a face that left).
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

    def end_tracks(self) -> None:
        """Forget every face (a scene cut): the next detection round starts new ids, nothing is carried over."""
        self.tracks = []

    @property
    def visible(self) -> list:
        """The tracks found in the latest detection round: the faces shown and classified."""
        return [t for t in self.tracks if t.missed == 0]

    def boxes(self, frame: int, shape) -> np.ndarray:
        """Each visible track's box at `frame` (extrapolated), as ints clipped into an image of `shape`."""
        h, w = shape[:2]
        out = []
        for t in self.visible:
            x, y, bw, bh = t.box_at(frame)
            x0, y0 = np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)
            x1, y1 = np.clip(x + bw, x0 + 1, w), np.clip(y + bh, y0 + 1, h)
            out.append([x0, y0, x1 - x0, y1 - y0])
        return np.round(np.asarray(out, np.float64).reshape(-1, 4)).astype(np.int32)

    def smooth_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """EMA per visible track (rows in `boxes` order); a new face starts from its first probabilities."""
        out = np.empty_like(probabilities)
        for k, (t, p) in enumerate(zip(self.visible, probabilities)):
            t.probabilities = p if t.probabilities is None else self.smooth * t.probabilities + (1 - self.smooth) * p
            out[k] = t.probabilities
        return out

    @property
    def ids(self) -> list[int]:
        return [t.id for t in self.visible]
