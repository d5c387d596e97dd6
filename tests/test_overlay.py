import itertools

import numpy as np
import pytest

from fer_common.labels import EMOTIONS
from fer_common.overlay import Overlay, inside, make_layout, overlap_area, place_panels, upscale_small


def probs(n, seed=0):
    p = np.random.default_rng(seed).random((n, len(EMOTIONS))).astype(np.float32)
    return p / p.sum(1, keepdims=True)


def check(frame, overlay, n):
    h, w = frame.shape[:2]
    panels = overlay.panels
    assert len(panels) == n
    for r in panels + overlay.hud:
        assert inside(r, w, h), r
    for a, b in itertools.combinations(panels + overlay.hud, 2):
        assert overlap_area(a, b) == 0, (a, b)


@pytest.mark.parametrize("size", [(360, 480), (720, 1280), (240, 320)])
def test_panels_stay_inside_for_faces_at_the_edges(size):
    h, w = size
    frame = np.zeros((h, w, 3), np.uint8)
    s = max(30, h // 6)
    boxes = [[0, 0, s, s], [w - s, 0, s, s], [0, h - s, s, s], [w - s, h - s, s, s]]
    overlay = Overlay(EMOTIONS)
    panels = overlay.draw(frame, boxes, probs(4), fps=25.0)
    assert panels == overlay.panels
    check(frame, overlay, 4)
    assert frame.any()


def test_adjacent_faces_do_not_overlap():
    frame = np.zeros((360, 480, 3), np.uint8)
    boxes = [[20 + 70 * i, 120, 64, 64] for i in range(6)]          # a row of touching faces
    overlay = Overlay(EMOTIONS)
    overlay.draw(frame, boxes, probs(6), fps=10.0)
    check(frame, overlay, 6)
    assert len(overlay.hud) == 2                                    # FPS and the group emotion


def test_first_choice_is_right_of_the_face():
    panels = place_panels([[100, 100, 50, 50]], 640, 480, 120, 60, gap=4)
    assert panels == [(154, 100, 120, 60)]


def test_layout_is_cached_per_frame_size_and_fits_small_frames():
    overlay = Overlay(EMOTIONS)
    assert overlay.layout(480, 360) is overlay.layout(480, 360)
    assert make_layout(1920, 1080, EMOTIONS).font_scale > make_layout(480, 360, EMOTIONS).font_scale
    tiny = make_layout(160, 120, EMOTIONS)
    assert tiny.panel_w <= 160 and tiny.panel_h <= 120


def test_upscale_small_face_crop():
    frame, boxes = upscale_small(np.zeros((48, 48, 3), np.uint8), [[0, 0, 48, 48]])
    assert frame.shape[:2] == (360, 360) and boxes.tolist() == [[0, 0, 360, 360]]
