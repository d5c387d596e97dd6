"""Hard detection cases made from the test portrait, with the true face centres: shared by the tests
(tests/infer/test_detection.py) and the threshold study (benchmarks/framing_study.py).

    for name, image, centres in detection_cases(cv2.imread("Test_files/IMG_test_1.jpg")): ...

The portrait (512 x 512) has one face, centred near FACE_CENTRE and about FACE_SIZE px wide.
"""

import cv2
import numpy as np

FACE_CENTRE = (225.0, 115.0)
FACE_SIZE = 95.0


def _rotate(image, degrees, centre):
    m = cv2.getRotationMatrix2D(centre, degrees, 1.0)
    return cv2.warpAffine(image, m, image.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)


def grid(portrait, cols=4, rows=3, tile=128, gap=24, size=(1280, 720)):
    """cols x rows copies of the portrait, each `tile` px (a face of tile * 95 / 512 px), on a gray canvas."""
    canvas = np.full((size[1], size[0], 3), 128, np.uint8)
    small = cv2.resize(portrait, (tile, tile), interpolation=cv2.INTER_AREA)
    x0 = (size[0] - cols * tile - (cols - 1) * gap) // 2
    y0 = (size[1] - rows * tile - (rows - 1) * gap) // 2
    centres = []
    for r in range(rows):
        for c in range(cols):
            x, y = x0 + c * (tile + gap), y0 + r * (tile + gap)
            canvas[y:y + tile, x:x + tile] = small
            centres.append((x + FACE_CENTRE[0] * tile / 512, y + FACE_CENTRE[1] * tile / 512))
    return canvas, centres


def detection_cases(portrait) -> list[tuple[str, np.ndarray, list]]:
    """(name, BGR image, true face centres) for the cases a default detector must get right."""
    cx, cy = FACE_CENTRE
    cases = [("portrait", portrait, [FACE_CENTRE])]
    for degrees in (30, -30):
        cases.append((f"tilted {degrees} degrees", _rotate(portrait, degrees, FACE_CENTRE), [FACE_CENTRE]))
    cases.append(("grid of 12 faces of 24 px, 1280x720", *grid(portrait)))
    cases.append(("grid of 12 faces of 36 px, 640x480", *grid(portrait, tile=192, gap=12, size=(840, 640))))
    half = 66      # a 132 px square around the face, blown up to 720 x 720: the face is about 520 px wide
    close = cv2.resize(portrait[int(cy) - half:int(cy) + half, int(cx) - half:int(cx) + half], (720, 720),
                       interpolation=cv2.INTER_CUBIC)
    cases.append(("close-up filling 720x720", close, [(360.0, 360.0)]))
    dim = np.clip(portrait.astype(np.float32) * 0.25, 0, 255).astype(np.uint8)
    cases.append(("dim (25% brightness)", dim, [FACE_CENTRE]))
    cases.append(("big photo 2048x2048", cv2.resize(portrait, (2048, 2048)), [(cx * 4, cy * 4)]))
    suit = cv2.resize(portrait[260:512, :], (480, 360))           # the space suit and flag, no face
    cases.append(("no face: space suit", suit, []))
    cases.append(("no face: gray frame", np.full((360, 480, 3), 127, np.uint8), []))
    return cases


def match(boxes, centres, tolerance: float = 0.5) -> tuple[int, int]:
    """(faces found, false boxes): a box finds the nearest unclaimed true centre inside it (grown by tolerance)."""
    found, false = set(), 0
    for x, y, w, h in np.asarray(boxes, np.float64).reshape(-1, 4):
        hits = [k for k, (px, py) in enumerate(centres) if k not in found
                and abs(px - (x + w / 2)) < w * tolerance and abs(py - (y + h / 2)) < h * tolerance]
        if hits:
            found.add(min(hits, key=lambda k: (centres[k][0] - x - w / 2) ** 2 + (centres[k][1] - y - h / 2) ** 2))
        else:
            false += 1
    return len(found), false
