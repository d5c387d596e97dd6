import json

import cv2
import numpy as np
import pytest

from benchmarks import robustness as rb
from fer_common.cli import FERError
from helpers_models import PERMUTED, save_default
from synthetic import make_folder_dataset, pattern


def images():
    """A gray 48x48 crop (FER-2013's size) and an RGB 64x80 one: the perturbations take any size and channels."""
    rng = np.random.default_rng(0)
    gray = pattern(2, rng)
    rgb = cv2.resize(np.stack([pattern(k, rng) for k in (0, 3, 5)], -1), (80, 64))
    return [gray, rgb]


@pytest.mark.parametrize("name", list(rb.PERTURBATIONS))
def test_each_perturbation_keeps_shape_and_dtype_repeats_and_changes_pixels(name):
    for image in images():
        before = image.copy()
        out = rb.PERTURBATIONS[name](image)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.array_equal(image, before)                          # the input is left alone
        assert np.array_equal(out, rb.PERTURBATIONS[name](image))     # no random draws: the same every time
        changed = np.mean(out != image)
        assert changed > 0.05, f"{name} changed only {changed:.1%} of the pixels"


def test_identity_settings_change_nothing():
    for image in images():
        assert np.array_equal(rb.affine(image), image)                # no half-pixel drift in the warp
        assert np.array_equal(rb.brightness(image, 1.0), image)
        assert np.array_equal(rb.contrast(image, 1.0), image)
        assert np.array_equal(rb.perturb([image], "clean")[0], image)


def test_perturbations_do_what_their_names_say():
    gray = images()[0].astype(np.float32)
    p = lambda name: rb.PERTURBATIONS[name](gray.astype(np.uint8)).astype(np.float32)  # noqa: E731
    assert p("bright+30").mean() > gray.mean() > p("bright-30").mean()
    assert p("contrast+30").std() > gray.std() > p("contrast-30").std()
    assert abs(p("contrast-30").mean() - gray.mean()) < 1                   # contrast keeps the mean grey
    assert np.abs(np.diff(p("blur"), axis=1)).mean() < np.abs(np.diff(gray, axis=1)).mean()
    # A bright square in the middle: zoom grows or shrinks it about the centre, the shift moves it right.
    square = np.zeros((48, 48), np.uint8)
    square[16:32, 16:32] = 255
    area = lambda im: int((im > 127).sum())                                  # noqa: E731
    assert area(rb.affine(square, scale=1.2)) > area(square) > area(rb.affine(square, scale=0.8))
    cols = lambda im: np.nonzero((im > 127).any(0))[0]                       # noqa: E731
    assert cols(rb.affine(square, shift_x=0.1))[0] == 16 + round(0.1 * 48)
    # +15 degrees turns a horizontal bar counter-clockwise: its right end rises (smaller row index).
    bar = np.zeros((48, 48), np.uint8)
    bar[22:26, 4:44] = 255
    turned = rb.affine(bar, angle=15)
    right_rows, left_rows = np.nonzero(turned[:, 36:] > 127)[0], np.nonzero(turned[:, :12] > 127)[0]
    assert right_rows.mean() < 24 < left_rows.mean()


def test_table_has_a_row_per_model_and_clean_is_what_evaluate_reports(tmp_path, models, capsys):
    import evaluate

    # Lower-case folders and a model whose class order is neither the folders' nor FER-2013's: mapped by name.
    data = make_folder_dataset(tmp_path / "data", per_class=(4,), splits=("test",), class_folder=str.lower) / "test"
    save_default(tmp_path / "permuted.pth", class_names=PERMUTED, seed=1)
    specs = {"pth": models / "fer_model.pth", "onnx": models / "fer_model.onnx", "permuted": tmp_path / "permuted.pth"}
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    argv = ["--data", str(data), "--batch_size", "5", "--device", "cpu", "--provider", "cpu",
            "--output", str(out_json), str(out_md)] + [a for n, p in specs.items() for a in ("--model", f"{n}={p}")]
    rb.main(rb.get_args_parser().parse_args(argv))
    printed = capsys.readouterr().out

    report = json.loads(out_json.read_text())
    assert report["images"] == 28 and report["tta"] is True and list(report["results"]) == list(specs)
    rows = [line for line in out_md.read_text().splitlines() if line.startswith("| ") and "clean" not in line]
    assert [r.split("|")[1].strip() for r in rows] == list(specs)
    assert len(rows[0].split("|")) - 2 == 1 + len(rb.CONDITIONS) + 1     # model, clean, 11 perturbations, mean
    assert len(report["ship_rule"]) == 2 and report["ship_rule"][0] in printed
    for name, path in specs.items():
        acc = report["results"][name]["accuracy"]
        assert acc["mean"] == pytest.approx(np.mean([acc[c] for c in rb.PERTURBATIONS]))
        evaluate.main(evaluate.get_args_parser().parse_args(
            ["--data", str(data), "--checkpoint", str(path), "--device", "cpu", "--provider", "cpu",
             "--output_dir", str(tmp_path / f"eval_{name}")]))
        metrics = json.loads((tmp_path / f"eval_{name}" / "metrics.json").read_text())
        assert acc["clean"] == pytest.approx(metrics["accuracy"], abs=1e-9), name


def test_model_names_and_errors(tmp_path, models):
    assert rb.parse_model("gen1=/tmp/x.onnx") == ("gen1", "/tmp/x.onnx")
    assert rb.parse_model("models/fer_model.int8.onnx") == ("fer_model.int8.onnx", "models/fer_model.int8.onnx")
    data = make_folder_dataset(tmp_path / "data", per_class=(1,), splits=("test",)) / "test"
    parse = rb.get_args_parser().parse_args
    path = str(models / "fer_model.onnx")
    with pytest.raises(FERError, match="share the name"):
        rb.main(parse(["--data", str(data), "--model", path, "--model", path]))
    with pytest.raises(FERError, match="not found"):
        rb.main(parse(["--data", str(data), "--model", str(tmp_path / "missing.onnx")]))
    other = make_folder_dataset(tmp_path / "other", per_class=(1,), splits=("test",), classes=["cat", "dog"]) / "test"
    with pytest.raises(FERError, match="does not know: cat, dog"):
        rb.main(parse(["--data", str(other), "--model", path, "--provider", "cpu"]))
