"""int8 quantization of the default model's ONNX file with ONNX Runtime's quantization tools.

    info = quantize_onnx("fer_model.onnx", "fer_model.int8.onnx", calibration_images=crops)

From the command line (calibrating on training-side face crops, never on test images):

    fer quantize fer_model.onnx fer_model.int8.onnx --calibration dataset/val_new

Two candidates are made: static QDQ quantization (activations calibrated on face crops, per-channel int8
weights: QLinearConv kernels, which use VNNI on CPUs that have it) and dynamic quantization (weights only,
activations quantized on the fly). Each is checked against the fp32 model on held-out crops; the fastest one
that agrees with fp32 on at least `min_agreement` of them is kept. The int8 file keeps the fp32 file's
metadata (model type, class names, preprocessing), so the Predictor loads it like any other ONNX file.
"""

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from fer_common.errors import FERError
from fer_common.files import atomic_path, strict_json
from fer_common.model_info import set_metadata
from fer_common.model_info import read_onnx_metadata
from fer_common.preprocess import prepare_batch
from fer_common.runtime import make_session

CALIBRATION_BATCH = 16
MAX_CALIBRATION_IMAGES = 400


def quantize_onnx(src, dst, calibration_images=None, method: str = "auto", min_agreement: float = 0.95,
                  verbose: bool = True) -> dict:
    """Quantize the default-model ONNX file `src` to int8 at `dst`; returns what was tried and what was kept.

    calibration_images: face crops (uint8 48x48 gray arrays, or any size / BGR: prepare_batch resizes);
        a few hundred are plenty. One in four is held out to compare each candidate with the fp32 model.
        Without them only dynamic quantization is possible (it needs no calibration).
    method: 'auto' (try both, keep the fastest acceptable), 'static' or 'dynamic'.
    min_agreement: the share of held-out crops whose top emotion must match the fp32 model's. A proxy for
        accuracy: flips go both ways (on FER-2013 test, 98.6% agreement cost 0.2 accuracy points).

    Returns {"method", "path", "candidates": {name: {"agreement", "max_logits_diff", "ms_batch1", "ms_batch8"}}}.
    """
    import onnx

    src, dst = Path(src), Path(dst)
    meta = read_onnx_metadata(src)
    check_not_quantized(src)
    if meta["model_type"] != "default":
        raise FERError(f"{src} holds a '{meta['model_type']}' model: int8 quantization is for the default CNN")
    if method not in ("auto", "static", "dynamic"):
        raise FERError(f"unknown quantization method '{method}' (use auto, static or dynamic)")
    images = list(calibration_images) if calibration_images is not None else []
    if method == "static" and not images:
        raise FERError("static quantization needs calibration images (a few hundred face crops)")
    calibration, held_out = split_calibration(images, meta["preprocessing"])
    names = {"auto": ["static", "dynamic"] if images else ["dynamic"]}.get(method, [method])
    with tempfile.TemporaryDirectory(prefix="fer_quant_") as tmp:
        candidates = make_candidates(src, Path(tmp), names, calibration, held_out, verbose)
        chosen = choose(candidates, min_agreement, verbose)
        proto = onnx.load(str(candidates[chosen]["file"]))
        source_meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
        source_meta["quantization"] = strict_json({"method": chosen, "weights": "int8",
                                                  "agreement_with_fp32": round(candidates[chosen]["agreement"], 4)})
        set_metadata(proto, source_meta)
        with atomic_path(dst, suffix=".onnx") as out:
            onnx.save(proto, str(out))
    for c in candidates.values():
        del c["file"]
    if verbose:
        for name, c in candidates.items():
            print(f"int8 {name}: agreement with fp32 {c['agreement']:.1%}, max |logits diff| {c['max_logits_diff']:.3f}, "
                  f"{c['ms_batch1']:.3f} ms (batch 1), {c['ms_batch8']:.3f} ms (batch 8)" + ("  <- kept" if name == chosen else ""))
    return {"method": chosen, "path": str(dst), "candidates": candidates}


def split_calibration(images: list, prep: dict) -> tuple:
    """(calibration batch or None, held-out batch): one crop in four is held out to compare each candidate with
    the fp32 model. Without images (dynamic quantization needs none) the held-out batch is seeded noise, only
    for the speed and agreement check."""
    if images:
        batch = prepare_batch(images[:MAX_CALIBRATION_IMAGES + MAX_CALIBRATION_IMAGES // 3], prep, bgr=True)
        if len(batch) < 8:
            return batch, batch
        return np.delete(batch, np.s_[::4], axis=0), batch[::4]
    c, (h, w) = prep["channels"], prep["input_size"]
    return None, np.random.default_rng(0).normal(size=(64, c, h, w)).astype(np.float32)


def make_candidates(src: Path, tmp: Path, names: list, calibration, held_out, verbose: bool) -> dict:
    """Each quantization method's int8 file in `tmp`, with its agreement with fp32 on held_out and its speed."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = tmp / "prepared.onnx"
    try:
        # Folds BatchNorm into the convolutions and infers shapes, so every tensor gets a quantization range.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
    except Exception as e:  # noqa: BLE001 - pre-processing is an optimisation; quantize the plain file then
        if verbose:
            print(f"quant_pre_process failed ({type(e).__name__}); quantizing the file as exported")
        prepared = src
    reference = _run(_session(src), held_out)
    candidates = {}
    for name in names:
        out = tmp / f"{name}.onnx"
        if name == "static":
            quantize_static(str(prepared), str(out), _Reader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        else:
            # ConvInteger (what dynamic quantization makes of a Conv) only has a uint8-weight CPU kernel.
            quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QUInt8)
        session = _session(out)
        logits = _run(session, held_out)
        candidates[name] = {
            "agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
            "max_logits_diff": float(np.abs(logits - reference).max()),
            "ms_batch1": _median_ms(session, held_out[:1]),
            "ms_batch8": _median_ms(session, held_out[:8]),
            "file": out,
        }
    return candidates


def choose(candidates: dict, min_agreement: float, verbose: bool) -> str:
    """The fastest candidate that agrees with fp32 on min_agreement of the held-out crops, else the closest."""
    acceptable = [n for n, c in candidates.items() if c["agreement"] >= min_agreement]
    if acceptable:
        return min(acceptable, key=lambda n: candidates[n]["ms_batch1"] + candidates[n]["ms_batch8"] / 8)
    chosen = max(candidates, key=lambda n: candidates[n]["agreement"])
    if verbose:
        print(f"warning: no int8 candidate agrees with fp32 on {min_agreement:.0%} of the held-out crops; "
              f"keeping the closest ({chosen})")
    return chosen


# Operators that only a quantized graph holds (QDQ, QOperator and dynamic quantization).
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                 "ConvInteger", "MatIntegerToFloat", "MatMulInteger", "QGemm", "QLinearAdd"}


def check_not_quantized(path) -> None:
    """Refuse an ONNX file that is already int8 (quantizing it again fails deep inside ONNX Runtime)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    marked = any(p.key == "quantization" for p in proto.metadata_props)
    ops = sorted({node.op_type for node in proto.graph.node} & QUANTIZED_OPS)
    if marked or ops:
        raise FERError(f"{path} is already quantized (int8{': ' + ', '.join(ops[:3]) if ops else ''}): "
                       f"quantize the fp32 ONNX file it was made from (e.g. fer_model.onnx)")


class _Reader:
    """CalibrationDataReader over a preprocessed N x C x H x W array, a batch at a time."""

    def __init__(self, batch: np.ndarray):
        self.batches = [batch[i:i + CALIBRATION_BATCH] for i in range(0, len(batch), CALIBRATION_BATCH)]
        self.position = 0

    def get_next(self):
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return {"input": self.batches[self.position - 1]}

    def rewind(self):
        self.position = 0


def _session(path):
    # One thread: a stable comparison on a busy machine; the ranking holds for more threads.
    return make_session(path, "cpu", threads=1)[0]


def _run(session, batch: np.ndarray, chunk: int = 64) -> np.ndarray:
    return np.concatenate([session.run(["logits"], {"input": batch[i:i + chunk]})[0]
                           for i in range(0, len(batch), chunk)])


def _median_ms(session, batch: np.ndarray, warmup: int = 5, repeats: int = 30) -> float:
    feed = {"input": np.ascontiguousarray(batch)}
    for _ in range(warmup):
        session.run(["logits"], feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(["logits"], feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000
