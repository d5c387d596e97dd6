"""Test-time augmentation: the views of a face batch whose probabilities the predictor averages.

    batch = prepare_batch(crops, prep)        # N x C x H x W, the model's input
    VIEWS["zoom 0.95"](batch)                 # the same faces zoomed in: a centred 0.95 crop resized back
    view_names(True)                          # ("crop", "mirror"): the toolkit's TTA
    view_names(10)                            # all ten views (opt-in: --tta_views 10, FER(tta=10))

A TTA setting is what the `--tta`, `--no_tta` and `--tta_views N` flags store: False (one view), True (the crop
and its mirror image), or a number of views from VIEW_SETS. Measured on the shipped int8 model
(benchmarks/tta_study.py, models/README.md "More test-time views"): 10 views gain 0.7 points of PublicTest
accuracy over the mirror, at 5x its forward passes.
"""

import numpy as np

from fer_common.errors import FERError


def mirror(batch: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(batch[..., ::-1])


def zoom(batch: np.ndarray, fraction: float) -> np.ndarray:
    """A centred crop of `fraction` of each side, resized back (bilinear)."""
    import cv2
    n, c, h, w = batch.shape
    ch, cw = round(h * fraction), round(w * fraction)
    y, x = (h - ch) // 2, (w - cw) // 2
    planes = batch[:, :, y:y + ch, x:x + cw].reshape(n * c, ch, cw).transpose(1, 2, 0)
    out = [cv2.resize(np.ascontiguousarray(planes[..., i:i + 512]), (w, h), interpolation=cv2.INTER_LINEAR)
           for i in range(0, n * c, 512)]                     # OpenCV takes at most 512 channels at once
    out = np.concatenate([o.reshape(h, w, -1) for o in out], axis=2)
    return np.ascontiguousarray(out.transpose(2, 0, 1).reshape(n, c, h, w))


def shift(batch: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Each image moved by (dx, dy) pixels, the uncovered edge reflected (OpenCV's BORDER_REFLECT)."""
    h, w = batch.shape[-2:]
    p = max(abs(dx), abs(dy))
    padded = np.pad(batch, ((0, 0), (0, 0), (p, p), (p, p)), mode="symmetric")
    return np.ascontiguousarray(padded[..., p - dy:p - dy + h, p - dx:p - dx + w])


VIEWS = {
    "crop": lambda b: b,
    "mirror": mirror,
    "zoom 0.9": lambda b: zoom(b, 0.9),
    "zoom 0.9, mirrored": lambda b: mirror(zoom(b, 0.9)),
    "zoom 0.95": lambda b: zoom(b, 0.95),
    "zoom 0.95, mirrored": lambda b: mirror(zoom(b, 0.95)),
    **{f"shift {dx:+d},{dy:+d}": (lambda b, dx=dx, dy=dy: shift(b, dx, dy))
       for dx, dy in ((2, 0), (-2, 0), (0, 2), (0, -2))},
}
# The view sets a user can ask for, by size: 2 is the toolkit's TTA; 4 and 10 the best sets of those sizes
# on the validation split (benchmarks/tta_study.py).
VIEW_SETS = {
    1: ("crop",),
    2: ("crop", "mirror"),
    4: ("crop", "mirror", "zoom 0.95", "zoom 0.95, mirrored"),
    10: tuple(VIEWS),
}


def tta_setting(tta) -> bool | int:
    """A TTA setting in its one spelling: False (1 view), True (the crop and its mirror: 2 views), or 4 or 10."""
    if tta is None or isinstance(tta, bool):
        return bool(tta)
    if not isinstance(tta, int) or tta not in VIEW_SETS:
        raise FERError(f"test-time augmentation takes {', '.join(map(str, VIEW_SETS))} views (or True/False), "
                       f"not {tta!r}")
    return {1: False, 2: True}.get(tta, tta)


def view_names(tta) -> tuple:
    """The views a TTA setting averages: False -> the crop alone, True -> crop and mirror, N -> VIEW_SETS[N]."""
    tta = tta_setting(tta)
    return VIEW_SETS[2 if tta is True else 1 if tta is False else tta]
