"""Honest confidence: temperature scaling, the expected calibration error, and the reliability diagram.

A network trained with cross-entropy is usually over-confident: of the faces it calls "Happy, 90%", fewer
than 90% are happy. Temperature scaling (Guo et al., ICML 2017) divides the logits by one number T, fitted
on the validation split, so that the probabilities users see match how often the model is right. The top
emotion never changes (dividing by T keeps the order of the logits).

    T = fit_temperature(val_logits, val_labels)        # stored in the checkpoint and the ONNX metadata
    probabilities = softmax(logits / T)                 # what the Predictor returns
"""

from pathlib import Path

import cv2
import numpy as np
import torch

from fer_common.infer.bulk import iter_results
from fer_common.results import probability_matrix
from fer_common.model.checkpoint import load_checkpoint, save_checkpoint
from fer_common.datasets.folders import list_samples
from fer_common.errors import FERError
from fer_common.files import atomic_path, check_outside, check_writable, strict_json, write_image
from fer_common.metrics import softmax
from fer_common.model_info import set_metadata
from fer_common.infer.predictor import Predictor

BINS = 15


def fit_temperature(logits, labels, max_iter: int = 100) -> float:
    """The T > 0 that minimises the negative log-likelihood of softmax(logits / T) on (logits, labels)."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(labels) == 0:
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)   # optimise log T: T stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    t = float(log_t.detach().exp())
    return float(np.clip(t, 0.05, 20.0)) if np.isfinite(t) else 1.0


def fit_calibration(logits, labels, fitted_on: str) -> dict:
    """Fit T on (logits, labels); the `calibration` entry a checkpoint and ONNX metadata store.

    T stays 1 when fitting does not lower the ECE (too few images for a trustworthy fit)."""
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
    cv2.putText(image, "accuracy", (4, top - 10), font, 0.45, (80, 80, 80), 1, cv2.LINE_AA)
    if title:
        cv2.putText(image, title, (8, 24), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    write_image(path, image)


# ---------------------------------------------------------------------------- calibrating a trained model file

def calibrate_file(model_path, data, output, overwrite: bool = False, batch_size: int = 512) -> dict:
    """Fit the temperature of a .pth or .onnx model on a folder data set and write the model with it to `output`."""
    model_path, output = Path(model_path), Path(output)
    check_writable(output, "calibrated model", overwrite=overwrite)
    check_outside({"--output": output}, {"--data": data})
    if output.suffix.lower() != model_path.suffix.lower():
        raise FERError(f"{output} must have the same extension as {model_path}")
    predictor = Predictor(model_path, device="cpu")
    samples, folder_classes = list_samples(data)
    unknown = [c for c in folder_classes if c not in predictor.class_names]
    if unknown:
        raise FERError(f"{data} has classes the model {model_path} does not know: {', '.join(unknown)} "
                       f"(it predicts {', '.join(predictor.class_names)})")
    to_model = [predictor.class_names.index(c) for c in folder_classes]
    raw = predictor.with_temperature(1.0)     # the uncalibrated probabilities, through the bulk reader
    results = [r for r in iter_results(raw, [str(p) for p, _ in samples], batch_size=batch_size) if r.error is None]
    if not results:
        raise FERError(f"no readable images in {data}")
    # log-probabilities are the logits up to a shift per row, which softmax ignores
    logits = np.log(np.maximum(np.concatenate([probability_matrix(r, raw.class_names) for r in results]), 1e-12))
    labels = np.asarray([to_model[samples[r.index][1]] for r in results])
    result = fit_calibration(logits, labels, str(data))
    if model_path.suffix.lower() == ".onnx":
        import onnx
        proto = onnx.load(str(model_path))
        set_metadata(proto, {**{p.key: p.value for p in proto.metadata_props}, "calibration": strict_json(result)})
        with atomic_path(output, suffix=".onnx") as tmp:
            onnx.save(proto, str(tmp))
    else:
        ckpt = load_checkpoint(model_path)
        ckpt["calibration"] = result
        save_checkpoint(ckpt, output)
    return result
