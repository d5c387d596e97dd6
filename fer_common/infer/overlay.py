"""Drawing results on a frame: per face a box, its top emotion and a top-3 probability panel; FPS; group mood.

Panels never leave the frame and never overlap each other (nor the FPS / group labels): each goes right
of its face, else left, else below, else above, clamped into the frame, and if it still collides with a
panel already placed, to the free spot nearest its face. Sizes come from the frame size, once per size.

    overlay = Overlay(predictor.class_names)
    panels = overlay.draw(frame, boxes, probabilities, fps=24.0)   # panel rectangles [x, y, w, h]
    overlay.draw_result(frame, result, fps=24.0)                    # a Result: a still or a video frame
    canvas = annotate(image, result, overlay)                       # a still, enlarged when small
"""

import zlib
from dataclasses import dataclass, replace

import cv2
import numpy as np

from fer_common.results import probability_matrix
from fer_common.boxes import overlap_area

FONT = cv2.FONT_HERSHEY_SIMPLEX
# BGR colours, one per emotion; names we do not know get a colour derived from their text.
EMOTION_COLOURS = {
    "Angry": (40, 40, 220), "Disgust": (40, 150, 40), "Fear": (170, 60, 150), "Happy": (0, 200, 255),
    "Sad": (200, 110, 30), "Surprise": (0, 140, 255), "Neutral": (170, 170, 170), "Contempt": (90, 170, 150),
}


def emotion_colour(name: str) -> tuple[int, int, int]:
    """The BGR colour of a class: fixed for the known emotions; for any other name a bright colour from a hash
    of its text (CRC-32, not hash(): the same name gets the same colour in every process and every run)."""
    if name in EMOTION_COLOURS:
        return EMOTION_COLOURS[name]
    h = zlib.crc32(name.encode("utf-8"))
    hue, value = h % 180, 170 + (h >> 8) % 86            # OpenCV's hue range; bright enough on a dark panel
    hsv = np.array([[[hue, 150 + (h >> 16) % 76, value]]], np.uint8)
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


@dataclass(frozen=True)
class Layout:
    """Every size the overlay needs for one frame size (pixels)."""
    font_scale: float
    thickness: int
    pad: int
    text_h: int
    row_h: int
    name_w: int
    bar_w: int
    pct_w: int
    panel_w: int
    panel_h: int
    gap: int
    box_thickness: int


def make_layout(width: int, height: int, class_names, top_k: int = 3) -> Layout:
    """Font scale from the frame's shorter side; panel sized for the longest class name; shrunk to fit small frames."""
    scale = max(0.4, min(width, height) / 800)
    while True:
        thickness = 1 if scale < 0.9 else 2
        (_, text_h), base = cv2.getTextSize("Hg", FONT, scale, thickness)
        pad = max(2, round(text_h * 0.4))
        row_h = text_h + base + pad
        name_w = max(cv2.getTextSize(n, FONT, scale, thickness)[0][0] for n in class_names)
        pct_w = cv2.getTextSize("100%", FONT, scale, thickness)[0][0]
        bar_w = max(24, round(name_w * 0.9))
        panel_w = pad + name_w + pad + bar_w + pad + pct_w + pad
        panel_h = pad + top_k * row_h + pad // 2
        if (panel_w <= width and panel_h <= height) or scale <= 0.25:
            break
        scale *= 0.85
    return Layout(scale, thickness, pad, text_h, row_h, name_w, bar_w, pct_w, panel_w, panel_h,
                  gap=max(3, pad), box_thickness=max(1, round(min(width, height) / 360)))


def clamp_rect(rect, width: int, height: int):
    x, y, w, h = rect
    return (int(min(max(x, 0), max(width - w, 0))), int(min(max(y, 0), max(height - h, 0))), int(w), int(h))


def inside(rect, width: int, height: int) -> bool:
    x, y, w, h = rect
    return x >= 0 and y >= 0 and x + w <= width and y + h <= height


def place_panels(boxes, width: int, height: int, panel_w: int, panel_h: int, gap: int = 4,
                 obstacles=()) -> list[tuple[int, int, int, int]]:
    """One panel rectangle per face box: inside the frame, beside its own face, not overlapping other panels
    or obstacles.

    Candidates touch the box (within `gap`): right of it, left, below, above, each slid along that side.
    The first that collides with nothing placed and covers the least of any face wins (right, at the box's
    top, when free). Only when no touching spot is free is the free position nearest the face taken, and only
    a frame too full for all panels can overlap.
    """
    placed = [tuple(map(int, r)) for r in obstacles]
    faces = [tuple(map(int, b)) for b in boxes]
    panels = []
    for box in faces:
        best, best_cost = None, None
        for k, (cx, cy) in enumerate(_touching(box, panel_w, panel_h, gap)):
            rect = clamp_rect((cx, cy, panel_w, panel_h), width, height)
            if not _touches(rect, box, gap):
                continue
            collides = any(overlap_area(rect, p) for p in placed)
            cost = (collides, sum(overlap_area(rect, f) for f in faces), k)
            if best_cost is None or cost < best_cost:
                best, best_cost = rect, cost
            if cost[:2] == (False, 0):
                break                       # free and covering no face: no later candidate can beat it
        if best is None or best_cost[0]:
            best = _nearest_free(placed, faces, box, width, height, panel_w, panel_h) or best \
                or clamp_rect((box[0] + box[2] + gap, box[1], panel_w, panel_h), width, height)
        placed.append(best)
        panels.append(best)
    return panels


def _touching(box, panel_w: int, panel_h: int, gap: int, steps: int = 8):
    """Panel positions beside `box`, best attached first: right, left, below and above it aligned with the
    box's top (left) edge, then the four slid along their sides a step further each time."""
    x, y, w, h = box
    for d in [0] + [d * s for d in range(1, steps + 1) for s in (1, -1)]:
        dy, dx = d * (h + panel_h) // (2 * steps), d * (w + panel_w) // (2 * steps)
        yield x + w + gap, y + dy
        yield x - gap - panel_w, y + dy
        yield x + dx, y + h + gap
        yield x + dx, y - gap - panel_h


def _touches(rect, box, gap: int) -> bool:
    """Whether rect lies within `gap` (+1) pixels of box, so a reader sees which face it belongs to."""
    rx, ry, rw, rh = rect
    bx, by, bw, bh = box
    dx = max(bx - (rx + rw), rx - (bx + bw), 0)
    dy = max(by - (ry + rh), ry - (by + bh), 0)
    return max(dx, dy) <= gap + 1


def _nearest_free(placed, faces, box, width, height, panel_w, panel_h, step: int = 4):
    """The grid position nearest `box` where a panel collides with nothing placed (least face cover first)."""
    xs = np.arange(0, max(width - panel_w, 0) + 1, step)
    ys = np.arange(0, max(height - panel_h, 0) + 1, step)
    if xs[-1] != max(width - panel_w, 0):
        xs = np.append(xs, max(width - panel_w, 0))
    if ys[-1] != max(height - panel_h, 0):
        ys = np.append(ys, max(height - panel_h, 0))
    gx, gy = np.meshgrid(xs, ys)
    gx, gy = gx.ravel(), gy.ravel()

    def overlap(r):
        dx = np.minimum(gx + panel_w, r[0] + r[2]) - np.maximum(gx, r[0])
        dy = np.minimum(gy + panel_h, r[1] + r[3]) - np.maximum(gy, r[1])
        return np.clip(dx, 0, None) * np.clip(dy, 0, None)

    free = np.ones(gx.shape, bool)
    for r in placed:
        free &= overlap(r) == 0
    if not free.any():
        return None
    cover = sum((overlap(f) for f in faces), np.zeros(gx.shape, np.int64))
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    distance = np.hypot(gx + panel_w / 2 - cx, gy + panel_h / 2 - cy)
    cost = np.where(free, cover * 1e6 + distance, np.inf)
    i = int(np.argmin(cost))
    return int(gx[i]), int(gy[i]), int(panel_w), int(panel_h)


class Overlay:
    """Draws boxes, top emotions, top-k probability panels, the FPS and the group emotion onto frames.

    After each draw(), `panels` holds the panel rectangles, `labels` the top-emotion label rectangles
    and `hud` the FPS / group-emotion rectangles, all [x, y, w, h] in the frame.
    """

    def __init__(self, class_names, top_k: int = 3):
        self.class_names = list(class_names)
        self.top_k = min(top_k, len(self.class_names))
        self._layouts = {}
        self.panels, self.labels, self.hud = [], [], []

    def layout(self, width: int, height: int) -> Layout:
        key = (width, height)
        if key not in self._layouts:     # once per frame size, not per face or per frame
            self._layouts[key] = make_layout(width, height, self.class_names, self.top_k)
        return self._layouts[key]

    def draw(self, frame: np.ndarray, boxes, probabilities, fps: float | None = None, ids=None) -> list:
        """Draw onto `frame` (BGR, in place) and return the panel rectangles, one per face."""
        height, width = frame.shape[:2]
        L = self.layout(width, height)
        boxes = [tuple(int(v) for v in b) for b in boxes]
        probabilities = np.asarray(probabilities, np.float32).reshape(len(boxes), -1) if len(boxes) else np.zeros((0, len(self.class_names)))

        self.hud = []
        if fps is not None:
            self.hud.append(self._hud_text(frame, L, f"FPS {fps:.1f}", corner="left"))
        if len(boxes) >= 2:
            group = probabilities.mean(axis=0)
            top = int(group.argmax())
            self.hud.append(self._hud_text(frame, L, f"Group: {self.class_names[top]} {group[top]:.0%}",
                                           corner="right", colour=emotion_colour(self.class_names[top])))

        tops = probabilities.argmax(axis=1) if len(boxes) else []
        self.labels = []
        for i, (box, top) in enumerate(zip(boxes, tops)):
            name = self.class_names[top]
            colour = emotion_colour(name)
            x, y, w, h = box
            cv2.rectangle(frame, (x, y), (x + w - 1, y + h - 1), colour, L.box_thickness, cv2.LINE_AA)
            text = (f"#{ids[i]} " if ids is not None else "") + name
            self.labels.append(self._label(frame, L, text, box, colour))

        self.panels = place_panels(boxes, width, height, L.panel_w, L.panel_h, L.gap,
                                   obstacles=self.hud + self.labels)
        for panel, probs in zip(self.panels, probabilities):
            self._panel(frame, L, panel, probs)
        return self.panels

    def draw_result(self, frame: np.ndarray, result, fps: float | None = None) -> list:
        """Draw a Result (fer_common.results: a still or a video frame) onto `frame`, in place. Each face is
        numbered: its track id in a video, 1, 2, ... left to right on a still (the numbers of the text and
        table outputs)."""
        boxes = [f.box for f in result.faces]
        probabilities = probability_matrix(result, self.class_names)
        ids = [f.track_id if f.track_id is not None else i for i, f in enumerate(result.faces, 1)]
        return self.draw(frame, boxes, probabilities, fps=fps, ids=ids)

    def _label(self, frame, L: Layout, text: str, box, colour):
        """The top emotion on a filled tab just above the box (inside its top edge at the frame's top)."""
        height, width = frame.shape[:2]
        (tw, th), base = cv2.getTextSize(text, FONT, L.font_scale, L.thickness)
        w, h = tw + 2 * L.pad, th + base + L.pad
        x, y = box[0], box[1] - h
        if y < 0:
            y = box[1]
        x, y, w, h = clamp_rect((x, y, min(w, width), min(h, height)), width, height)
        cv2.rectangle(frame, (x, y), (x + w - 1, y + h - 1), colour, cv2.FILLED)
        cv2.putText(frame, text, (x + L.pad, y + th + L.pad // 2), FONT, L.font_scale, (0, 0, 0), L.thickness, cv2.LINE_AA)
        return (x, y, w, h)

    def _hud_text(self, frame, L: Layout, text: str, corner: str, colour=(255, 255, 255)):
        height, width = frame.shape[:2]
        (tw, th), base = cv2.getTextSize(text, FONT, L.font_scale, L.thickness)
        w, h = min(tw + 2 * L.pad, width), min(th + base + L.pad, height)
        x, y = (0, 0) if corner == "left" else (width - w, 0)
        roi = frame[y:y + h, x:x + w]
        roi[:] = (roi * 0.3).astype(np.uint8)
        cv2.putText(frame, text, (x + L.pad, y + th + L.pad // 2), FONT, L.font_scale, colour, L.thickness, cv2.LINE_AA)
        return (x, y, w, h)

    def _panel(self, frame, L: Layout, rect, probs):
        x, y, w, h = rect
        roi = frame[y:y + h, x:x + w]
        roi[:] = (roi * 0.3).astype(np.uint8)       # darkened, so text reads on any background
        for row, k in enumerate(np.argsort(-probs, kind="stable")[:self.top_k]):
            name, p = self.class_names[k], float(probs[k])
            colour = emotion_colour(name)
            top = y + L.pad + row * L.row_h
            baseline_y = top + L.text_h
            cv2.putText(frame, name, (x + L.pad, baseline_y), FONT, L.font_scale, (255, 255, 255), L.thickness, cv2.LINE_AA)
            bx = x + L.pad + L.name_w + L.pad
            bar_top, bar_bottom = top + 1, baseline_y
            cv2.rectangle(frame, (bx, bar_top), (bx + L.bar_w - 1, bar_bottom), (90, 90, 90), cv2.FILLED)
            filled = int(round(p * L.bar_w))
            if filled > 0:
                cv2.rectangle(frame, (bx, bar_top), (bx + filled - 1, bar_bottom), colour, cv2.FILLED)
            cv2.putText(frame, f"{p:.0%}", (bx + L.bar_w + L.pad, baseline_y), FONT, L.font_scale, (255, 255, 255),
                        L.thickness, cv2.LINE_AA)


def annotate(image: np.ndarray, result, overlay: "Overlay") -> np.ndarray:
    """A copy of a still (BGR) with its Result drawn, enlarged first when small (a 48x48 crop) so it reads."""
    canvas, boxes = upscale_small(image, [f.box for f in result.faces])
    scaled = replace(result, faces=[replace(f, box=tuple(int(v) for v in b)) for f, b in zip(result.faces, boxes)])
    if canvas is image:
        canvas = image.copy()
    overlay.draw_result(canvas, scaled)
    return canvas


def upscale_small(frame: np.ndarray, boxes, min_side: int = 360):
    """Enlarge a small image (e.g. a 48x48 face crop) so an overlay fits on it; boxes scaled to match."""
    h, w = frame.shape[:2]
    if min(h, w) >= min_side:
        return frame, np.asarray(boxes, np.int32).reshape(-1, 4)
    s = min_side / min(h, w)
    frame = cv2.resize(frame, (round(w * s), round(h * s)), interpolation=cv2.INTER_CUBIC)
    return frame, np.round(np.asarray(boxes, np.float64).reshape(-1, 4) * s).astype(np.int32)
