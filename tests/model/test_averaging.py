"""Weight averaging (`fer average`, a model soup): the weighted mean of compatible checkpoints, checked and recorded."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fer_common.model.averaging import average_checkpoints
from fer_common.model.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from fer_common.errors import FERError
from fer_common.model.networks import FERNet, default_preprocessing
from fer_common.infer.predictor import Predictor
from helpers_models import PERMUTED, save_default
from synthetic import REPO


def fer(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "fer_common", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_average_is_the_weighted_mean_of_the_weights(tmp_path):
    a, b = save_default(tmp_path / "a.pth", seed=1), save_default(tmp_path / "b.pth", seed=2)
    soup, history = average_checkpoints([tmp_path / "a.pth", tmp_path / "b.pth"], [3, 1])
    sa, sb = a.state_dict(), b.state_dict()
    for key, value in soup["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * sa[key] + 0.25 * sb[key])
        else:                                           # BatchNorm's batch counters: the first file's
            assert torch.equal(value, sa[key])
    first = load_checkpoint(tmp_path / "a.pth")
    for key in ("model_type", "model_config", "class_names", "preprocessing"):
        assert soup[key] == first[key]
    assert [(i["file"], i["weight"]) for i in soup["averaged_from"]] == [("a.pth", 0.75), ("b.pth", 0.25)]
    assert "calibration" not in soup and "optimizer" not in soup
    assert [(i["file"], i["weight"]) for i in history["averaged_from"]] == [("a.pth", 0.75), ("b.pth", 0.25)]


def test_averaging_a_model_with_itself_changes_nothing(tmp_path):
    save_default(tmp_path / "a.pth", seed=3)
    save_checkpoint(average_checkpoints([tmp_path / "a.pth"] * 2)[0], tmp_path / "soup.pth")
    crops = [np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(4)]
    np.testing.assert_allclose(Predictor(tmp_path / "soup.pth").predict(crops).probabilities,
                               Predictor(tmp_path / "a.pth").predict(crops).probabilities, atol=1e-6)


def test_incompatible_checkpoints_are_refused(tmp_path):
    save_default(tmp_path / "a.pth", seed=1)
    save_default(tmp_path / "permuted.pth", class_names=PERMUTED, seed=2)
    wide = FERNet(widths=(16, 32, 64, 128))
    save_checkpoint(make_checkpoint(wide, "default", {"widths": [16, 32, 64, 128]}, load_checkpoint(
        tmp_path / "a.pth")["class_names"], default_preprocessing("default")), tmp_path / "wide.pth")
    with pytest.raises(FERError, match="class names"):      # the logits' order differs: never averaged
        average_checkpoints([tmp_path / "a.pth", tmp_path / "permuted.pth"])
    with pytest.raises(FERError, match="model config"):
        average_checkpoints([tmp_path / "a.pth", tmp_path / "wide.pth"])
    with pytest.raises(FERError, match="one weight per checkpoint"):
        average_checkpoints([tmp_path / "a.pth", tmp_path / "a.pth"], [1])
    with pytest.raises(FERError, match="at least two"):
        average_checkpoints([tmp_path / "a.pth"])


def test_average_command_as_typed_then_calibrate_and_export(tmp_path, tiny_data):
    save_default(tmp_path / "a.pth", seed=1)
    save_default(tmp_path / "b.pth", seed=2)
    r = fer("average", "a.pth", "b.pth", "--weights", "0.7", "0.3", "--output", "soup.pth", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "a.pth x 0.700, b.pth x 0.300" in r.stdout
    history = json.loads((tmp_path / "soup_metrics.json").read_text())
    assert [i["file"] for i in history["averaged_from"]] == ["a.pth", "b.pth"]
    before = (tmp_path / "soup.pth").read_bytes()

    r = fer("average", "a.pth", "b.pth", "--output", "soup.pth", cwd=tmp_path)       # nothing replaced unasked
    assert r.returncode == 1 and "already exists" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "soup.pth").read_bytes() == before
    r = fer("average", "a.pth", "b.pth", "--output", "a.pth", "--overwrite", cwd=tmp_path)   # nor an input
    assert r.returncode == 1 and "input" in r.stderr
    r = fer("average", "a.pth", "missing.pth", "--output", "x.pth", cwd=tmp_path)
    assert r.returncode != 0 and "missing.pth" in r.stderr and "Traceback" not in r.stderr

    r = fer("calibrate", "soup.pth", "--data", tiny_data / "val_new", "--output", "soup.pth", "--overwrite",
            "--min_images", 1, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = fer("export", "soup.pth", "soup.onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ckpt = load_checkpoint(tmp_path / "soup.pth")
    assert "calibration" in ckpt and len(ckpt["averaged_from"]) == 2      # calibrating keeps the provenance
