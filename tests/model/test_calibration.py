"""Temperature scaling, the expected calibration error and the reliability diagram."""

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from fer_common.errors import FERError

from fer_common.commands.calibrate import calibrate_file
from fer_common.model.calibration import (draw_reliability_diagram, expected_calibration_error, fit_calibration,
                                         fit_temperature)
from fer_common.model.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from fer_common.metrics import softmax
from fer_common.model.networks import default_preprocessing
from fer_common.model.onnx_export import export_onnx
from fer_common.model_info import read_onnx_metadata
from fer_common.infer.predictor import Predictor
from helpers_models import save_default
from synthetic import REPO, make_folder_dataset


def run_module(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def overconfident(n=4000, classes=5, factor=3.0, seed=0):
    """Labels drawn from softmax(z) (z is calibrated by construction) and a model that says factor * z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, classes))
    p = softmax(z)
    labels = np.array([rng.choice(classes, p=row / row.sum()) for row in p.astype(np.float64)])
    return z * factor, labels


def test_ece_by_hand():
    # two images at confidence 0.9 (one right) and two at 0.6 (both right): |0.9-0.5|*2/4 + |0.6-1|*2/4 = 0.4
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    assert abs(expected_calibration_error(probs, labels, bins=10) - 0.4) < 1e-9


def test_temperature_undoes_overconfidence():
    logits, labels = overconfident()
    t = fit_temperature(logits, labels)
    assert 2.5 < t < 3.5
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits, t), labels)
    assert after < before / 3
    # the top emotion never changes
    assert (softmax(logits, t).argmax(1) == logits.argmax(1)).all()


def test_calibrate_file_lowers_ece_of_an_overconfident_model(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_class=(0, 10), splits=("skip", "val"))
    model = save_default(tmp_path / "m.pth")
    with torch.no_grad():                      # make it over-confident: sharp logits, near-chance accuracy
        model.classifier[-1].weight.mul_(40)
        model.classifier[-1].bias.mul_(40)
    ckpt = load_checkpoint(tmp_path / "m.pth")
    save_checkpoint(make_checkpoint(model, "default", {}, ckpt["class_names"], ckpt["preprocessing"]), tmp_path / "m.pth")
    export_onnx(model, tmp_path / "m.onnx", "default", ckpt["class_names"], default_preprocessing("default"), verbose=False)

    for name in ("m.pth", "m.onnx"):
        out = tmp_path / f"calibrated_{name}"
        result = calibrate_file(tmp_path / name, data / "val", out, min_images=1)
        assert result["temperature"] > 1.5 and result["ece_after"] < result["ece_before"]
        predictor, raw = Predictor(out), Predictor(tmp_path / name)
        assert predictor.temperature == result["temperature"] and raw.temperature == 1.0
        crop = [np.full((48, 48), 128, np.uint8)]
        np.testing.assert_allclose(predictor.predict(crop).probabilities, raw.predict(crop, temperature=predictor.temperature).probabilities, atol=1e-5)
    assert read_onnx_metadata(tmp_path / "calibrated_m.onnx")["calibration"]["temperature"] > 1.5
    assert load_checkpoint(tmp_path / "calibrated_m.pth")["calibration"]["images"] == 70

    # the model file itself is only replaced when asked
    r = run_module("fer_common", "calibrate", tmp_path / "m.pth", "--data", data / "val", "--output", tmp_path / "m.pth")
    assert r.returncode == 1 and "already exists" in r.stderr
    r = run_module("fer_common", "calibrate", tmp_path / "m.pth", "--data", data / "val", "--output",
                   tmp_path / "m.pth", "--overwrite", "--min_images", 50)
    assert r.returncode == 0, r.stderr
    assert "expected calibration error" in r.stdout and "calibration" in load_checkpoint(tmp_path / "m.pth")


def test_reliability_diagram_draws_each_curve(tmp_path):
    logits, labels = overconfident(n=800)
    path = tmp_path / "reliability.png"
    draw_reliability_diagram({"before": softmax(logits), "after": softmax(logits, 3.0)}, labels, path, title="t")
    image = cv2.imread(str(path))
    red = (image[:, :, 2] > 180) & (image[:, :, 1] < 100) & (image[:, :, 0] < 100)    # the "before" curve
    blue = (image[:, :, 0] > 170) & (image[:, :, 1] > 90) & (image[:, :, 1] < 150) & (image[:, :, 2] < 60)
    assert red.sum() > 50 and blue.sum() > 50


def test_a_temperature_is_never_fitted_on_a_handful_of_images(tmp_path):
    # 24 images once fitted T = 0.05 (every prediction 100%): fer calibrate refuses, training leaves T at 1
    data = make_folder_dataset(tmp_path / "data", per_class=(0, 3), splits=("skip", "val"))
    save_default(tmp_path / "m.pth")
    with pytest.raises(FERError, match="fewer than 200"):
        calibrate_file(tmp_path / "m.pth", data / "val", tmp_path / "c.pth")
    assert not (tmp_path / "c.pth").exists()
    logits, labels = overconfident()
    result = fit_calibration(logits[:24], labels[:24], "val")
    assert result["temperature"] == 1.0 and "not fitted" in result["note"]
    assert fit_calibration(logits, labels, "val")["temperature"] > 2


def test_the_numpy_fit_finds_the_likelihood_minimum():
    logits, labels = overconfident()
    t = fit_temperature(logits, labels)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    nll = [-np.log(softmax(logits, g)[np.arange(len(labels)), labels]).mean() for g in grid]
    assert t == pytest.approx(grid[int(np.argmin(nll))], rel=0.01)
