"""Honest confidence: temperature scaling, the expected calibration error, and the reliability diagram.

A network trained with cross-entropy is usually over-confident: of the faces it calls "Happy, 90%", fewer
than 90% are happy. Temperature scaling (Guo et al., ICML 2017) divides the logits by one number T, fitted
on the validation split, so that the probabilities users see match how often the model is right. The top
emotion never changes (dividing by T keeps the order of the logits).

    T = fit_temperature(val_logits, val_labels)        # stored in the checkpoint and the ONNX metadata
    probabilities = softmax(logits / T)                 # what the Predictor returns
"""

import cv2
import numpy as np

from fer_common.files import write_image
from fer_common.metrics import softmax

BINS = 15
# Fewer images than this fit a temperature to their noise (24 images once gave T = 0.05: every prediction
# then read 100%). Training leaves T at 1 below it; `fer calibrate` refuses (--min_images lowers it).
MIN_IMAGES = 200


def fit_temperature(logits, labels) -> float:
    """The T > 0 that minimises the negative log-likelihood of softmax(logits / T) on (logits, labels).

    The NLL is convex in 1/T, so its derivative, mean(E_p[z] - z_label), grows with 1/T: bisection finds
    its zero in [1/20, 1/0.05] (T from 0.05 to 20), in float64 and without PyTorch."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(y) == 0:
        return 1.0
    z = z - z.max(axis=1, keepdims=True)
    z_true = z[np.arange(len(y)), y]

    def slope(beta):
        p = softmax(z, 1.0 / beta)
        return float(np.mean((p * z).sum(axis=1) - z_true))

    lo, hi = 1 / 20, 1 / 0.05
    if slope(lo) >= 0:
        return 20.0
    if slope(hi) <= 0:
        return 0.05
    for _ in range(60):
        mid = (lo * hi) ** 0.5                  # bisection on a log scale
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return float(1.0 / ((lo * hi) ** 0.5))


def fit_calibration(logits, labels, fitted_on: str, min_images: int = MIN_IMAGES) -> dict:
    """Fit T on (logits, labels); the `calibration` entry a checkpoint and ONNX metadata store.

    T stays 1 when fitting does not lower the ECE, and with fewer than `min_images` images, where the fit
    follows noise (`note` then says why)."""
    if len(labels) < min_images:
        ece = expected_calibration_error(softmax(logits), labels) if len(labels) else 0.0
        return {"temperature": 1.0, "fitted_on": fitted_on, "images": int(len(labels)), "ece_before": ece,
                "ece_after": ece, "note": f"not fitted: {len(labels)} images, fewer than {min_images}"}
    temperature = fit_temperature(logits, labels)
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits, temperature), labels)
    if after > before:
        temperature, after = 1.0, before
    return {"temperature": temperature, "fitted_on": fitted_on, "images": int(len(labels)),
            "ece_before": before, "ece_after": after}


def calibration_bins(probabilities, labels, bins: int = BINS):
    """Per confidence bin (equal width on [0, 1]): (count, mean confidence, accuracy) of the top prediction."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    acc_sum = np.bincount(which, weights=correct, minlength=bins)
    safe = np.maximum(count, 1)
    return count, conf_sum / safe, acc_sum / safe


def expected_calibration_error(probabilities, labels, bins: int = BINS) -> float:
    """ECE: the gap between confidence and accuracy, averaged over confidence bins weighted by their size."""
    count, confidence, accuracy = calibration_bins(probabilities, labels, bins)
    return float((count * np.abs(confidence - accuracy)).sum() / max(count.sum(), 1))


def draw_reliability_diagram(curves: dict, labels, path, title: str = "", bins: int = BINS) -> None:
    """Save a reliability diagram as a PNG: accuracy per confidence bin for each named set of probabilities.

    curves: {"before": probabilities, "after": probabilities, ...}; a calibrated model follows the diagonal.
    """
    size, left, top, bottom = 420, 70, 60 if title else 30, 80
    width, height = left + size + 30, top + size + bottom + 22 * len(curves)
    image = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX

    def point(conf, acc):
        return int(left + conf * size), int(top + (1 - acc) * size)

    for k in range(0, 11, 2):
        v = k / 10
        cv2.line(image, point(v, 0), point(v, 1), (230, 230, 230), 1)
        cv2.line(image, point(0, v), point(1, v), (230, 230, 230), 1)
        cv2.putText(image, f"{v:.1f}", (point(v, 0)[0] - 10, top + size + 18), font, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
        cv2.putText(image, f"{v:.1f}", (left - 32, point(0, v)[1] + 4), font, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
    cv2.line(image, point(0, 0), point(1, 1), (150, 150, 150), 1, cv2.LINE_AA)            # perfect calibration
    cv2.rectangle(image, point(0, 1), point(1, 0), (0, 0, 0), 1)
    colours = [(60, 60, 220), (200, 120, 30), (40, 160, 40), (160, 40, 160)]              # BGR: red, blue, green, purple
    for i, (name, probabilities) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        count, confidence, accuracy = calibration_bins(probabilities, labels, bins)
        pts = [point(c, a) for n, c, a in zip(count, confidence, accuracy) if n > 0]
        for p, q in zip(pts, pts[1:]):
            cv2.line(image, p, q, colour, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(image, p, 4, colour, -1, cv2.LINE_AA)
        ece = expected_calibration_error(probabilities, labels, bins)
        y = top + size + 66 + 22 * i
        cv2.line(image, (left, y - 4), (left + 24, y - 4), colour, 2, cv2.LINE_AA)
        cv2.putText(image, f"{name}: ECE {ece * 100:.2f}%", (left + 32, y), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, "confidence of the top emotion", (left + size // 2 - 110, top + size + 40), font, 0.45,
                (80, 80, 80), 1, cv2.LINE_AA)
    # the y axis's label, upright along the axis (not on the plot's corner)
    (lw, lh), lb = cv2.getTextSize("accuracy", font, 0.45, 1)
    label = np.full((lh + lb + 4, lw + 4, 3), 255, np.uint8)
    cv2.putText(label, "accuracy", (2, lh + 2), font, 0.45, (80, 80, 80), 1, cv2.LINE_AA)
    label = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
    y0 = top + (size - label.shape[0]) // 2
    image[y0:y0 + label.shape[0], 6:6 + label.shape[1]] = label
    if title:
        cv2.putText(image, title, (8, 24), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    write_image(path, image)
