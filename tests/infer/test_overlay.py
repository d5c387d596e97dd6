import itertools

import numpy as np
import pytest

from synthetic import frame_result

from fer_common.labels import EMOTIONS
from fer_common.infer.overlay import Overlay, emotion_colour, inside, make_layout, place_panels, upscale_small
from fer_common.boxes import overlap_area


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


def one_hot_ish(top: str, p: float = 0.75):
    row = np.full(len(EMOTIONS), (1 - p) / (len(EMOTIONS) - 1), np.float32)
    row[EMOTIONS.index(top)] = p
    return row[None]


def test_what_is_drawn_for_one_face():
    frame = np.zeros((360, 480, 3), np.uint8)
    box = [100, 120, 80, 80]
    result = frame_result(0, 0.0, [box], [7], one_hot_ish("Happy"), EMOTIONS)
    overlay = Overlay(EMOTIONS)
    (panel,) = overlay.draw_result(frame, result, fps=12.5)
    L = overlay.layout(480, 360)
    happy = emotion_colour("Happy")

    x, y, w, h = panel
    assert inside(panel, 480, 360) and (x, y) == (100 + 80 + L.gap, 120)     # right of the face, inside the frame
    assert overlap_area(panel, box) == 0
    # the box's left edge is drawn (anti-aliased) in the top emotion's colour; inside the box nothing is drawn
    assert np.abs(frame[160, 100].astype(int) - happy).max() <= 40 and not frame[160, 98].any()
    assert not frame[140:190, 110:170].any()
    # first row of the panel: Happy's bar, 75% filled in its colour, the rest of the bar grey
    bx = x + L.pad + L.name_w + L.pad
    mid = y + L.pad + 1 + (L.text_h - 1) // 2
    filled = round(0.75 * L.bar_w)
    assert tuple(frame[mid, bx + 1]) == happy
    assert tuple(frame[mid, bx + filled - 2]) == happy
    assert tuple(frame[mid, bx + filled + 1]) == (90, 90, 90)
    # the FPS label is in the top-left corner; one face: no group label
    assert len(overlay.hud) == 1 and overlay.hud[0][:2] == (0, 0) and frame[:overlay.hud[0][3], :overlay.hud[0][2]].any()
    # the label tab above the box, in the top emotion's colour
    lx, ly, lw, lh = overlay.labels[0]
    assert ly + lh <= 120 and tuple(frame[ly + 1, lx + 1]) == happy


def test_panel_bars_follow_the_probabilities():
    frame = np.zeros((360, 480, 3), np.uint8)
    overlay = Overlay(EMOTIONS)
    overlay.draw(frame, [[100, 120, 80, 80]], one_hot_ish("Sad", 1.0))
    L = overlay.layout(480, 360)
    x, y, _, _ = overlay.panels[0]
    bx = x + L.pad + L.name_w + L.pad
    rows = [y + L.pad + 1 + r * L.row_h + (L.text_h - 1) // 2 for r in range(3)]
    assert tuple(frame[rows[0], bx + L.bar_w - 2]) == emotion_colour("Sad")     # 100%: filled to the end
    assert tuple(frame[rows[1], bx + 1]) == (90, 90, 90)                       # 0%: an empty grey bar


def test_a_still_with_three_faces_has_numbered_boxes_and_panels_beside_them(monkeypatch):
    """Three faces in a row near the top: each panel touches its own face's box, and faces are numbered."""
    import fer_common.infer.overlay as overlay_module
    from fer_common.infer.overlay import _touches, annotate
    from fer_common.results import make_result

    texts = []
    put_text = overlay_module.cv2.putText
    monkeypatch.setattr(overlay_module.cv2, "putText", lambda img, text, *a, **k: (texts.append(text),
                                                                                   put_text(img, text, *a, **k))[1])

    frame = np.full((360, 1080, 3), 60, np.uint8)
    boxes = [[120, 45, 80, 80], [480, 45, 80, 80], [840, 45, 80, 80]]
    result = make_result("three.jpg", EMOTIONS, boxes, probs(3), size=(1080, 360))
    overlay = Overlay(EMOTIONS)
    canvas = annotate(frame, result, overlay)
    assert canvas is not frame and not np.array_equal(canvas, frame)
    check(canvas, overlay, 3)
    for box, panel in zip(boxes, overlay.panels):
        assert _touches(panel, box, make_layout(1080, 360, EMOTIONS).gap), (box, panel)
    assert len(overlay.labels) == 3 and [t.split()[0] for t in texts if t.startswith("#")] == ["#1", "#2", "#3"]
