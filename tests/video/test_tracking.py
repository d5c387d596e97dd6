import numpy as np
import pytest

from fer_common.boxes import iou, overlap_area
from fer_common.video.tracking import FaceTracker


@pytest.mark.parametrize("a, b, expected", [
    ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),                 # the same box
    ([0, 0, 10, 10], [5, 0, 10, 10], 50 / 150),            # half overlapping
    ([0, 0, 10, 10], [10, 0, 10, 10], 0.0),                # touching edges: no area in common
    ([0, 0, 10, 10], [30, 30, 5, 5], 0.0),                 # apart
    ([0, 0, 10, 10], [2, 2, 4, 4], 16 / 100),              # one inside the other
    ([0, 0, 0, 0], [0, 0, 0, 0], 0.0),                     # empty boxes: 0, not a division by zero
])
def test_iou(a, b, expected):
    assert iou(a, b) == pytest.approx(expected)
    assert iou(b, a) == pytest.approx(expected)            # symmetric


def test_overlap_area_is_the_intersection():
    assert overlap_area([0, 0, 10, 10], [5, 5, 10, 10]) == 25
    assert overlap_area([0, 0, 10, 10], [10, 10, 5, 5]) == 0
    assert overlap_area(np.array([0.0, 0, 4, 4]), np.array([1.0, 1, 4, 4])) == pytest.approx(9)


def test_tracker_keeps_ids_and_smooths():
    tracker = FaceTracker(smooth=0.5)
    tracker.update_detections([[10, 10, 50, 50], [200, 10, 50, 50]], frame=0)
    assert tracker.ids == [1, 2]
    p0 = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    np.testing.assert_allclose(tracker.smooth_probabilities(p0), p0)
    tracker.update_detections([[206, 12, 50, 50], [14, 10, 50, 50]], frame=3)     # moved a little, other order
    assert tracker.ids == [1, 2]
    np.testing.assert_allclose(tracker.boxes(6, (480, 640))[0], [18, 10, 50, 50])  # extrapolated between detections
    p1 = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
    np.testing.assert_allclose(tracker.smooth_probabilities(p1), [[0.5, 0.5], [0.0, 1.0]])
    tracker.update_detections([[400, 300, 50, 50]], frame=6)     # a new face; the old ones missed once
    assert tracker.ids == [3] and len(tracker.boxes(6, (480, 640))) == 1    # missed faces are kept, not shown
    assert sorted(t.id for t in tracker.tracks) == [1, 2, 3]
    tracker.update_detections([[402, 300, 50, 50], [26, 10, 50, 50]], frame=9)   # face 1 found again: its id
    assert sorted(tracker.ids) == [1, 3]                                         # face 2 missed twice: dropped
    assert sorted(t.id for t in tracker.tracks) == [1, 3]


def test_tracker_gives_a_new_id_below_the_iou_threshold():
    tracker = FaceTracker(iou_threshold=0.3)
    tracker.update_detections([[0, 0, 100, 100]], frame=0)
    tracker.update_detections([[60, 0, 100, 100]], frame=1)       # IoU 40/160 = 0.25: another face
    assert tracker.ids == [2] and sorted(t.id for t in tracker.tracks) == [1, 2]   # face 1 missed: kept, hidden
    tracker = FaceTracker(iou_threshold=0.3)
    tracker.update_detections([[0, 0, 100, 100]], frame=0)
    tracker.update_detections([[40, 0, 100, 100]], frame=1)       # IoU 60/140 = 0.43: the same face
    assert tracker.ids == [1]


def test_tracker_matches_greedily_by_best_iou():
    tracker = FaceTracker()
    tracker.update_detections([[0, 0, 100, 100], [90, 0, 100, 100]], frame=0)
    # each new box overlaps both tracks; the better pair wins first, so the ids do not swap
    tracker.update_detections([[85, 0, 100, 100], [5, 0, 100, 100]], frame=1)
    by_x = {int(t.box[0]): t.id for t in tracker.tracks}
    assert by_x == {5: 1, 85: 2}


def test_tracker_boxes_stay_inside_the_frame():
    tracker = FaceTracker()
    tracker.update_detections([[600, 400, 50, 50]], frame=0)
    tracker.update_detections([[620, 420, 50, 50]], frame=1)      # moving out of a 640x480 frame
    x, y, w, h = tracker.boxes(10, (480, 640))[0]
    assert 0 <= x and 0 <= y and w >= 1 and h >= 1 and x + w <= 640 and y + h <= 480


def test_smoothing_off_passes_probabilities_through():
    tracker = FaceTracker(smooth=0.0)
    tracker.update_detections([[0, 0, 10, 10]], frame=0)
    for p in ([[0.2, 0.8]], [[0.9, 0.1]]):
        np.testing.assert_allclose(tracker.smooth_probabilities(np.array(p, np.float32)), p)


def test_end_tracks_forgets_every_face_and_ids_go_on():
    tracker = FaceTracker()
    tracker.update_detections([[0, 0, 100, 100]], frame=0)
    tracker.end_tracks()                                       # a scene cut
    assert tracker.ids == [] and tracker.tracks == [] and len(tracker.boxes(1, (480, 640))) == 0
    tracker.update_detections([[0, 0, 100, 100]], frame=3)     # the same place, a new scene: a new face
    assert tracker.ids == [2]
