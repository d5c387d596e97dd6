"""Classification metrics (softmax, confusion matrix, per-class scores) and the confusion-matrix picture."""

import cv2
import numpy as np

from fer_common.files import printable, write_image


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


# The picture stays readable and bounded for any number of classes: cells shrink so that the grid is at
# most MAX_GRID_PX wide (200 classes: 9 px cells, not 72), the numbers go once a cell cannot hold them,
# names longer than MAX_LABEL_CHARS are cut, and only every k-th name is written when rows are too thin.
CELL_PX = 72
MAX_GRID_PX = 1800
MAX_LABEL_CHARS = 32


def _label(name) -> str:
    """A class name as OpenCV's Hershey fonts can draw it: no lone surrogates, at most MAX_LABEL_CHARS."""
    text = printable(name).replace("\n", " ")
    return text if len(text) <= MAX_LABEL_CHARS else text[:MAX_LABEL_CHARS - 2] + ".."


def _label_strip(names, cell: int, scale: float, step: int, font) -> np.ndarray:
    """Names right-aligned one per `cell` rows (every `step`-th), on white: row labels, or column labels rotated."""
    width = max(cv2.getTextSize(name, font, scale, 1)[0][0] for name in names) + 8
    strip = np.full((len(names) * cell, width, 3), 255, np.uint8)
    for i in range(0, len(names), step):
        (tw, th), _ = cv2.getTextSize(names[i], font, scale, 1)
        cv2.putText(strip, names[i], (width - tw - 4, i * cell + (cell + th) // 2), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def draw_confusion_matrix(cm: np.ndarray, class_names, path, title: str = "") -> None:
    """Save the confusion matrix as a PNG: rows = true class, columns = predicted, cells coloured by row share.

    Any number of classes, in a bounded picture: up to 25 classes the cells are 72 px with the share and the
    count in each; more classes get smaller cells (the grid at most MAX_GRID_PX wide), the share alone, then
    colour alone, and column names written upwards."""
    n = len(class_names)
    if n == 0 or np.shape(cm) != (n, n):
        raise ValueError(f"confusion matrix of shape {np.shape(cm)} for {n} class names")
    names = [_label(name) for name in class_names]
    font = cv2.FONT_HERSHEY_SIMPLEX
    cell = max(1, min(CELL_PX, MAX_GRID_PX // n))
    grid = min(n * cell, MAX_GRID_PX)      # above MAX_GRID_PX classes: the grid shrunk, and no names
    top = 70 if title else 40
    label_scale = 0.5 if cell >= 24 else 0.35
    step = max(1, -(-12 // cell))                      # rows at least 12 px apart for 0.35-scale names
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    shade = (255 * (1 - rows)).astype(np.uint8)
    cells = np.dstack([np.full_like(shade, 255), shade, shade])                       # blue scale (BGR)
    cells = cv2.resize(cells, (grid, grid), interpolation=cv2.INTER_NEAREST if grid >= n else cv2.INTER_AREA)
    if grid < n:
        names = [""] * n
    row_labels = _label_strip(names, cell, label_scale, step, font)[:grid]
    upright = cell >= CELL_PX      # few classes: column names across, under each column; many: written upwards
    column_labels = None if upright else cv2.rotate(row_labels, cv2.ROTATE_90_COUNTERCLOCKWISE)
    left = max(110, row_labels.shape[1] + 8)
    below = 30 if upright else column_labels.shape[0] + 10
    # wide enough for the title (its accuracy is the headline) and the row caption, however few the classes
    title_width = cv2.getTextSize(printable(title), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)[0][0] + 16 if title else 0
    caption_width = cv2.getTextSize("true class (rows sum to 100%)", cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] + 16
    width, height = max(left + grid + 20, 320, title_width, caption_width), top + grid + below + 60
    image = np.full((height, width, 3), 255, np.uint8)
    image[top:top + grid, left:left + grid] = cells
    image[top:top + grid, left - row_labels.shape[1] - 4:left - 4] = row_labels
    if column_labels is not None:
        image[top + grid + 6:top + grid + 6 + column_labels.shape[0], left:left + grid] = column_labels
    if cell >= 28:                                   # numbers only where a cell can hold them
        two_lines = cell >= 44
        for i in range(n):
            for j in range(n):
                x0, y0 = left + j * cell, top + i * cell
                colour = (255, 255, 255) if rows[i, j] > 0.5 else (0, 0, 0)
                texts = (f"{rows[i, j] * 100:.0f}%", f"{cm[i, j]}") if two_lines else (f"{rows[i, j] * 100:.0f}%",)
                for k, text in enumerate(texts):
                    scale = (0.5 if k == 0 else 0.38) if two_lines else 0.35
                    (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
                    y = y0 + cell // 2 - 4 + k * 20 if two_lines else y0 + (cell + th) // 2
                    cv2.putText(image, text, (x0 + (cell - tw) // 2, y), font, scale, colour, 1, cv2.LINE_AA)
    if upright:
        for j, name in enumerate(names):
            scale = 0.45
            (tw, _), _ = cv2.getTextSize(name, font, scale, 1)
            if tw > cell - 4:       # long names under narrow columns: smaller, rather than over the neighbours
                scale = max(0.3, scale * (cell - 4) / tw)
                (tw, _), _ = cv2.getTextSize(name, font, scale, 1)
            cv2.putText(image, name, (left + j * cell + (cell - tw) // 2, top + grid + 20), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, "predicted", (left + grid // 2 - 35, top + grid + below + 20), font, 0.5, (80, 80, 80), 1, cv2.LINE_AA)
    cv2.putText(image, "true class (rows sum to 100%)", (8, height - 12), font, 0.45, (80, 80, 80), 1, cv2.LINE_AA)
    if title:
        cv2.putText(image, printable(title), (8, 30), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (left + grid, top + grid), (0, 0, 0), 1)
    write_image(path, image)
