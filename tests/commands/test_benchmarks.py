import json
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fer_common.model.checkpoint import make_checkpoint, save_checkpoint
from fer_common.cli import FERError
from fer_common.labels import EMOTIONS
from fer_common.model.networks import FERNet, default_preprocessing
from fer_common.model.onnx_export import export_onnx
from fer_common.model_info import read_onnx_metadata
from fer_common.preprocess import prepare_batch
from fer_common.model.quantize import quantize_onnx

from synthetic import REPO, pattern

TINY = {"widths": [8, 16, 32, 64], "embedding_dim": 16}


def calibrated_tiny_model(crops) -> FERNet:
    """A tiny random default model whose BatchNorm statistics come from real-looking inputs, so its
    logits spread like a trained model's (a fresh one's are all near zero, which makes any comparison trivial)."""
    torch.manual_seed(0)
    model = FERNet(**TINY)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.momentum = None                     # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        x = torch.from_numpy(prepare_batch(crops, default_preprocessing("default")))
        for i in range(0, len(x), 32):
            model(x[i:i + 32])
    return model.eval()


def face_like_crops(n, seed=0):
    rng = np.random.default_rng(seed)
    return [pattern(i % len(EMOTIONS), rng) for i in range(n)]


def test_quantize_onnx_keeps_metadata_and_outputs(tmp_path):
    crops = face_like_crops(160)
    model = calibrated_tiny_model(crops)
    prep = default_preprocessing("default")
    export_onnx(model, tmp_path / "fp32.onnx", "default", sorted(EMOTIONS), prep, verbose=False)
    info = quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", crops, verbose=False)
    assert info["method"] in ("static", "dynamic") and set(info["candidates"]) == {"static", "dynamic"}
    assert read_onnx_metadata(tmp_path / "int8.onnx") == read_onnx_metadata(tmp_path / "fp32.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx", "int8.onnx"]    # no temporary left behind

    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    x = prepare_batch(face_like_crops(64, seed=1), prep)
    logits, embedding = session.run(["logits", "embedding"], {"input": x})
    with torch.inference_mode():
        ref_logits, ref_embedding = model(torch.from_numpy(x))
    ref_logits = ref_logits.numpy()
    assert embedding.shape == ref_embedding.shape == (64, TINY["embedding_dim"])
    spread = ref_logits.std()
    assert spread > 1e-3
    assert np.abs(logits - ref_logits).max() <= 0.5 * spread + 0.05
    assert (logits.argmax(1) == ref_logits.argmax(1)).mean() >= 0.8


def test_quantize_onnx_refuses_the_advanced_model(tmp_path, monkeypatch):
    import fer_common.model.quantize as quantize

    shutil.copy(REPO / "models" / "fer_model.onnx", tmp_path / "a.onnx")      # an fp32 file: not quantized yet
    monkeypatch.setattr(quantize, "read_onnx_metadata", lambda path: {"model_type": "advanced",
                                                                      "preprocessing": {}, "class_names": []})
    with pytest.raises(FERError, match="int8 quantization is for the default CNN"):
        quantize_onnx(tmp_path / "a.onnx", tmp_path / "b.onnx")


def test_benchmarks_quick_run(tmp_path):
    """`python benchmarks/run.py --quick` as a user types it, on a tiny model and a few video frames."""
    model = FERNet(**TINY).eval()
    save_checkpoint(make_checkpoint(model, "default", TINY, sorted(EMOTIONS), default_preprocessing("default")),
                    tmp_path / "tiny.pth")
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--checkpoint", str(tmp_path / "tiny.pth"),
         "--skip_advanced", "--max_frames", "6", "--calibration_data", str(tmp_path / "none"),
         "--json", str(tmp_path / "bench.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for title in ("## Model latency", "## Video pipeline", "## Training throughput", "## Bulk inference"):
        assert title in out
    assert out.count("machine: ") >= 4                    # once at the start, then with every table
    assert f"checkpoint {tmp_path / 'tiny.pth'}" in out
    for runtime in ("PyTorch eager", "ONNX Runtime fp32", "ONNX Runtime int8", "Predictor .onnx int8"):
        assert runtime in out
    assert "floor: decode + encode only" in out and "MemoryLoader" in out
    results = json.loads((tmp_path / "bench.json").read_text())
    assert set(results["results"]) == {"models", "video", "training", "bulk"}
    assert results["results"]["bulk"]["jsonl_lines"] == 120 and results["results"]["bulk"]["rows"][0]["images_per_s"] > 0
    assert results["results"]["video"]["detection"]["frames"] == 6
