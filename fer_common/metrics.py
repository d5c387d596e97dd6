"""Classification metrics (softmax, confusion matrix, per-class scores) and the confusion-matrix picture."""

import cv2
import numpy as np

from .files import write_image


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature (numpy: no torch needed), as float32 probabilities."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def confusion_matrix(targets, predictions, num_classes: int) -> np.ndarray:
    """cm[i, j] = number of images of class i predicted as class j."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(targets, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return cm


def classification_report(cm: np.ndarray, class_names) -> dict:
    """Accuracy, macro F1 and per-class precision / recall / F1 / support from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    per_class = {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                 for name, p, r, f, s in zip(class_names, precision, recall, f1, support)}
    return {"accuracy": float(tp.sum() / max(cm.sum(), 1)), "macro_f1": float(f1.mean()),
            "images": int(cm.sum()), "per_class": per_class}


def format_report(report: dict) -> str:
    w = max([10] + [len(name) for name in report["per_class"]])    # any class names, not only the 7 emotions
    lines = [f"accuracy {report['accuracy'] * 100:.2f}%   macro F1 {report['macro_f1'] * 100:.2f}%   "
             f"({report['images']} images)", "",
             f"{'class':<{w}} {'precision':>9} {'recall':>7} {'F1':>7} {'images':>7}"]
    for name, m in report["per_class"].items():
        lines.append(f"{name:<{w}} {m['precision'] * 100:8.1f}% {m['recall'] * 100:6.1f}% {m['f1'] * 100:6.1f}% {m['support']:7d}")
    return "\n".join(lines)


def draw_confusion_matrix(cm: np.ndarray, class_names, path, title: str = "") -> None:
    """Save the confusion matrix as a PNG: rows = true class, columns = predicted, cells coloured by row share.

    Any number of classes: the row labels' margin fits the longest name; column labels shrink to fit a cell."""
    n = len(class_names)
    if np.shape(cm) != (n, n):
        raise ValueError(f"confusion matrix of shape {np.shape(cm)} for {n} class names")
    font = cv2.FONT_HERSHEY_SIMPLEX
    cell, top = 72, 70 if title else 40
    left = max([110] + [cv2.getTextSize(str(name), font, 0.5, 1)[0][0] + 16 for name in class_names])
    width, height = max(left + n * cell + 20, 320), top + n * cell + 90
    image = np.full((height, width, 3), 255, np.uint8)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    for i in range(n):
        for j in range(n):
            shade = int(255 * (1 - rows[i, j]))
            x0, y0 = left + j * cell, top + i * cell
            cv2.rectangle(image, (x0, y0), (x0 + cell, y0 + cell), (255, shade, shade), -1)   # blue scale (BGR)
            colour = (255, 255, 255) if rows[i, j] > 0.5 else (0, 0, 0)
            for k, text in enumerate((f"{rows[i, j] * 100:.0f}%", f"{cm[i, j]}")):
                scale = 0.5 if k == 0 else 0.38
                (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
                cv2.putText(image, text, (x0 + (cell - tw) // 2, y0 + cell // 2 - 4 + k * 20), font, scale, colour, 1, cv2.LINE_AA)
        cv2.putText(image, class_names[i], (8, top + i * cell + cell // 2 + 5), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for j, name in enumerate(class_names):
        scale = 0.45
        (tw, _), _ = cv2.getTextSize(name, font, scale, 1)
        if tw > cell - 4:       # long names under narrow columns: smaller, rather than over the neighbours
            scale = max(0.3, scale * (cell - 4) / tw)
            (tw, _), _ = cv2.getTextSize(name, font, scale, 1)
        cv2.putText(image, name, (left + j * cell + (cell - tw) // 2, top + n * cell + 20), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, "predicted", (left + n * cell // 2 - 35, top + n * cell + 50), font, 0.5, (80, 80, 80), 1, cv2.LINE_AA)
    cv2.putText(image, "true class (rows sum to 100%)", (8, height - 12), font, 0.45, (80, 80, 80), 1, cv2.LINE_AA)
    if title:
        cv2.putText(image, title, (8, 30), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (left + n * cell, top + n * cell), (0, 0, 0), 1)
    write_image(path, image)
