"""ONNX export in one call: export, embed metadata, check with ONNX Runtime, then move into place."""

import warnings

import numpy as np
import torch

from fer_common.errors import FERError
from fer_common.model_info import set_metadata
from fer_common.files import atomic_path, strict_json

LOGITS_TOLERANCE = 1e-4


class _Outputs(torch.nn.Module):
    """Gives the exporter a plain (logits, embedding) tuple, whatever the model's forward takes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits, embedding = self.model(x)
        return logits, embedding


def export_onnx(model: torch.nn.Module, path, model_type: str, class_names, preprocessing: dict,
                opset: int = 18, batch_size: int = 2, verbose: bool = True, calibration: dict | None = None) -> float:
    """Export `model` to ONNX at `path` and check it against PyTorch; returns the max |logits| difference.

    The parameters are what the file must say about itself (type, classes, preprocessing, calibration) and
    three export settings with defaults, as timm's onnx_export takes them.

    Input `input` is N x C x H x W with a dynamic batch; outputs are `logits` and `embedding`.
    Class names, preprocessing, model type and calibration (the fitted temperature) go into the file's
    metadata so the file stands alone.
    The file only appears at `path` once ONNX Runtime agrees with PyTorch within 1e-4.
    """
    import onnx

    model = getattr(model, "module", model).float().eval().cpu()
    wrapped = _Outputs(model).eval()
    h, w = preprocessing["input_size"]
    sample = torch.randn(batch_size, preprocessing["channels"], h, w, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref_logits, ref_embedding = wrapped(sample)
    with atomic_path(path, suffix=".onnx") as tmp:
        _export(wrapped, sample, tmp, opset)
        proto = onnx.load(str(tmp))
        meta = {"model_type": model_type, "class_names": strict_json(list(class_names)),
                "preprocessing": strict_json(preprocessing), "producer": "fer_common"}
        if calibration:
            meta["calibration"] = strict_json(calibration)
        set_metadata(proto, meta)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        logits, embedding = _run_onnxruntime(tmp, sample.numpy())
        diff = float(np.abs(logits - ref_logits.numpy()).max())
        emb_diff = float(np.abs(embedding - ref_embedding.numpy()).max())
        if verbose:
            print(f"ONNX check: max |logits diff| = {diff:.2e}, max |embedding diff| = {emb_diff:.2e} (ONNX Runtime vs PyTorch)")
        if not diff <= LOGITS_TOLERANCE:
            raise FERError(f"ONNX export of {path} disagrees with PyTorch: max logits difference {diff:.2e} > {LOGITS_TOLERANCE:g}")
    return diff


def _export(module, sample, path, opset):
    """torch.onnx.export through the dynamo exporter (the maintained path), with a dynamic batch."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (sample,), dynamo=True, opset_version=opset,
                                    input_names=["input"], output_names=["logits", "embedding"],
                                    dynamic_shapes={"x": {0: batch}}, external_data=False, verbose=False)
    program.save(str(path))


def _run_onnxruntime(path, x: np.ndarray):
    from fer_common.runtime import make_session

    session, _ = make_session(path, "cpu")
    logits, embedding = session.run(["logits", "embedding"], {"input": x})
    return logits, embedding


