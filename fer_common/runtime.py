"""ONNX Runtime: which execution providers to ask for, and the one place an InferenceSession is made."""

import os
from pathlib import Path

from fer_common.device import cpu_count, cuda_available
from fer_common.errors import FERError
from fer_common.files import printable, utf8_name
from fer_common.preprocess import small_input

PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
_ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def onnx_providers(provider: str = "auto", device: str = "auto") -> list:
    """The ONNX Runtime providers to ask for, GPU ones only where they can actually run.

    onnxruntime-gpu lists CUDA and TensorRT even on machines without a GPU, so 'available' is not enough:
    a GPU provider is only requested when a CUDA device is there (device.cuda_available, without PyTorch). TensorRT is never picked by 'auto':
    it builds an engine (minutes for Swin-Base) on first use, so it is one flag away (--provider tensorrt).
    """
    import onnxruntime as ort

    provider = (provider or "auto").lower()
    if provider not in PROVIDERS:
        raise FERError(f"unknown provider '{provider}' (use {', '.join(PROVIDERS)})")
    available = ort.get_available_providers()
    gpu = cuda_available()
    device = (device or "auto").lower()
    if provider == "cpu" or (provider == "auto" and device == "cpu"):
        return ["CPUExecutionProvider"]
    flag = f"--provider {provider}"
    if provider == "auto" and device.startswith("cuda"):     # --device cuda asks for the GPU as --provider cuda does
        provider, flag = "cuda", f"--device {device}"
    if provider == "auto":
        return (["CUDAExecutionProvider"] if gpu and "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]
    name = _ORT_NAMES[provider]
    if not gpu or name not in available:
        why = ("no CUDA GPU is visible" if not gpu else
               f"this onnxruntime build has no {name} (pip install 'fer-toolkit[gpu]')")
        raise FERError(f"{flag}: {why} (use {flag.split()[0]} auto or cpu)")
    chain = [name] + (["CUDAExecutionProvider"] if provider == "tensorrt" else []) + ["CPUExecutionProvider"]
    return chain


def _provider_options(name: str, preprocessing: dict | None):
    if name == "TensorrtExecutionProvider" and preprocessing:
        # One engine for batches of 1..64 faces (TTA doubles the batch), cached across runs.
        c, (h, w) = preprocessing["channels"], preprocessing["input_size"]
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fer_common" / "tensorrt"
        cache.mkdir(parents=True, exist_ok=True)
        shape = lambda n: f"input:{n}x{c}x{h}x{w}"  # noqa: E731
        return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                "trt_profile_min_shapes": shape(1), "trt_profile_opt_shapes": shape(8),
                "trt_profile_max_shapes": shape(64)}
    return {}


def make_session(path, provider: str = "cpu", device: str = "auto", preprocessing: dict | None = None,
                 threads: int | None = None, spin: bool = False, name: str | None = None):
    """An InferenceSession, made once per model file; returns (session, provider actually used).

    path: the model file, or the model's bytes (then `name` says what it is in errors).
    threads: intra-op threads; default 1 for a model with a small input (the 48x48 CNN is too small to split
        across cores), every core for bigger ones.
    spin: let idle threads spin-wait. Off by default: spinning threads steal the core that OpenCV decodes
        and detects on (benchmarks/README.md).
    """
    import onnxruntime as ort

    providers = onnx_providers(provider, device)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is None:
        threads = 1 if preprocessing is not None and small_input(preprocessing) else cpu_count()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3                # errors only: no warnings about unused GPU providers
    try:
        if isinstance(path, (bytes, bytearray)):
            model, path = bytes(path), name or "the model"
        else:                                                 # ORT refuses names that are not UTF-8: bytes
            model = str(path) if utf8_name(path) else Path(path).read_bytes()
        session = ort.InferenceSession(model, sess_options=options,
                                       providers=[(p, _provider_options(p, preprocessing)) for p in providers])
    except Exception as e:
        raise FERError(f"ONNX Runtime cannot load {printable(path)} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    used = session.get_providers()[0]
    if (device or "").lower().startswith("cuda") and provider == "auto":
        provider = "cuda"
    if provider not in ("auto", "cpu") and used != _ORT_NAMES[provider]:
        raise FERError(f"--provider {provider}: ONNX Runtime could not start {_ORT_NAMES[provider]} "
                       f"(CUDA/cuDNN/TensorRT libraries missing?); use --provider auto or cpu")
    return session, used
