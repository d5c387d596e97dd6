import json

import cv2
import numpy as np
import pytest

from fer_common.model.checkpoint import make_checkpoint, save_checkpoint
from fer_common.labels import EMOTIONS
from fer_common.metrics import classification_report, confusion_matrix, draw_confusion_matrix
from fer_common.model.networks import FERNet, default_preprocessing
from fer_common.infer.predictor import Predictor
from synthetic import make_folder_dataset, run_script


def test_report_by_hand():
    cm = confusion_matrix([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    report = classification_report(cm, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(3 / 5)
    a, b, c = (report["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"]) == (pytest.approx(1 / 2), pytest.approx(1 / 2))
    assert (b["precision"], b["recall"], b["f1"]) == (pytest.approx(2 / 3), 1.0, pytest.approx(0.8))
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0.0, 0.0, 0.0, 1)
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_confusion_matrix_picture(tmp_path):
    draw_confusion_matrix(np.arange(49).reshape(7, 7), EMOTIONS, tmp_path / "cm.png", title="test")
    image = cv2.imread(str(tmp_path / "cm.png"))
    assert image is not None and image.shape[0] > 400 and image.shape[1] > 400

    # Each cell is shaded by its share of the row: a corner of a cell (away from its text) shows it.
    cm = np.array([[4, 0], [1, 3]])
    draw_confusion_matrix(cm, ["A", "B"], tmp_path / "cm2.png")
    image = cv2.imread(str(tmp_path / "cm2.png")).astype(int)
    cell, top, left = 72, 40, 110                                  # the layout without a title
    corner = lambda i, j: image[top + i * cell + 4, left + j * cell + 4]   # noqa: E731
    assert list(corner(0, 0)) == [255, 0, 0]                       # 100% of row A: full blue (BGR)
    assert list(corner(0, 1)) == [255, 255, 255]                   # 0%: white
    assert list(corner(1, 1)) == [255, 63, 63]                     # 75%: shade 255 * 0.25


def test_evaluate_script_matches_a_count_by_hand(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_class=(5,), splits=("test",), class_folder=str.lower)
    # A model whose class order is neither the folders' nor FER-2013's: evaluate must map by name.
    names = list(reversed(EMOTIONS))
    model = FERNet(widths=(8, 16, 16, 32)).eval()
    ckpt_path = tmp_path / "m.pth"
    save_checkpoint(make_checkpoint(model, "default", {"widths": (8, 16, 16, 32)}, names,
                                    default_preprocessing("default")), ckpt_path)
    predictor = Predictor(ckpt_path)
    correct = total = 0
    for folder in sorted((data / "test").iterdir()):
        true_name = folder.name.capitalize()
        crops = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in sorted(folder.iterdir())]
        predicted = predictor.predict(crops).probabilities.argmax(1)
        correct += sum(names[p] == true_name for p in predicted)
        total += len(crops)

    out = tmp_path / "eval"
    r = run_script("evaluate.py", "--data", data / "test", "--checkpoint", ckpt_path, "--output_dir", out)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == total == 35
    assert metrics["accuracy"] == pytest.approx(correct / total)
    assert f"accuracy {correct / total * 100:.2f}%" in r.stdout
    assert (out / "confusion_matrix.png").is_file()
    assert np.array(metrics["confusion_matrix"]).sum() == 35

    r = run_script("evaluate.py", "--data", data / "test", "--checkpoint", ckpt_path, "--output_dir", out)
    assert r.returncode == 1 and "--overwrite" in r.stderr


def test_the_confusion_matrix_keeps_its_whole_title_for_few_classes(tmp_path):
    import cv2
    import numpy as np

    from fer_common.metrics import draw_confusion_matrix

    title = "default model on a two-class folder: accuracy 80.00%, macro F1 79.51%"
    draw_confusion_matrix(np.array([[5, 1], [2, 7]]), ["Happy", "Sad"], tmp_path / "cm.png", title=title)
    image = cv2.imread(str(tmp_path / "cm.png"))
    width = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)[0][0]
    assert image.shape[1] >= width + 8                      # the accuracy, its headline, is not cut off
    assert (image[:, -4:] == 255).all()                     # and nothing is drawn up to the right edge
