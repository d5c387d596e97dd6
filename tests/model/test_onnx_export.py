import numpy as np
import onnxruntime as ort
import pytest
import torch

from fer_common.cli import FERError
from fer_common.labels import EMOTIONS
from fer_common.model.networks import AdvancedFER, FERNet, default_preprocessing
from fer_common.model.onnx_export import export_onnx
from fer_common.model_info import read_onnx_metadata
import fer_common.model.onnx_export as onnx_export


def _parity(model, path, model_type, prep, batch=3):
    diff = export_onnx(model, path, model_type, sorted(EMOTIONS), prep, verbose=False)
    assert diff <= 1e-4
    meta = read_onnx_metadata(path)
    assert meta == {"model_type": model_type, "class_names": sorted(EMOTIONS), "preprocessing": prep, "calibration": None}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits", "embedding"]
    x = np.random.default_rng(0).normal(size=(batch, prep["channels"], *prep["input_size"])).astype(np.float32)
    logits, embedding = session.run(None, {"input": x})     # a batch size other than the export's
    with torch.inference_mode():
        ref_logits, ref_embedding = model.eval()(torch.from_numpy(x))
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(embedding, ref_embedding.numpy(), atol=1e-4)


def test_default_model_parity_and_metadata(tmp_path):
    _parity(FERNet().eval(), tmp_path / "d.onnx", "default", default_preprocessing("default"))


def test_advanced_model_parity_small_backbone(tmp_path):
    model = AdvancedFER(backbone="test_vit").eval()
    _parity(model, tmp_path / "a.onnx", "advanced", default_preprocessing("advanced", model), batch=2)


@pytest.mark.slow
def test_advanced_model_parity_swin_base(tmp_path):
    model = AdvancedFER().eval()                    # swin_base_patch4_window7_224, random weights
    prep = default_preprocessing("advanced", model)
    assert prep["input_size"] == [224, 224]
    _parity(model, tmp_path / "swin.onnx", "advanced", prep, batch=1)


def test_export_that_disagrees_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "LOGITS_TOLERANCE", -1.0)
    with pytest.raises(FERError, match="disagrees with PyTorch"):
        export_onnx(FERNet().eval(), tmp_path / "d.onnx", "default", EMOTIONS, default_preprocessing("default"), verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_metadata_of_foreign_or_missing_files(tmp_path):
    with pytest.raises(FERError, match="ONNX file not found"):
        read_onnx_metadata(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(FERError, match="not a readable ONNX file"):
        read_onnx_metadata(tmp_path / "junk.onnx")


def test_export_cli_re_exports_a_checkpoint_with_its_calibration(tmp_path):
    import subprocess
    import sys

    from fer_common.model.checkpoint import load_checkpoint, save_checkpoint
    from helpers_models import save_default
    from synthetic import REPO

    save_default(tmp_path / "m.pth")
    ckpt = load_checkpoint(tmp_path / "m.pth")
    ckpt["calibration"] = {"temperature": 1.5}
    save_checkpoint(ckpt, tmp_path / "m.pth")
    cmd = [sys.executable, "-m", "fer_common", "export", str(tmp_path / "m.pth"), str(tmp_path / "m.onnx")]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert read_onnx_metadata(tmp_path / "m.onnx")["calibration"] == {"temperature": 1.5}
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "already exists" in r.stderr
