"""One place for the device: which one, autocast and grad scaler for it, clearing its memory, CPU cores.

PyTorch is imported by the functions that need it, never at import time: the ONNX inference path uses this
module (cpu_count, cuda_available) without PyTorch installed.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import os
import sys

from fer_common.errors import FERError


def cuda_available() -> bool:
    """Whether a CUDA GPU is usable: PyTorch's answer when PyTorch is loaded, else the driver's (no import)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.cuda.is_available()
    return _driver_device_count() > 0


@functools.lru_cache(maxsize=None)
def _driver_device_count() -> int:
    """CUDA devices the driver reports (cuInit + cuDeviceGetCount); 0 without a driver."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' -> torch.device, checking that it exists."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FERError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FERError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FERError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise FERError(f"--device {name}: MPS is not available on this machine (use --device cpu)")
    elif device.type != "cpu":
        raise FERError(f"unsupported device '{name}' (use auto, cpu, cuda, cuda:N or mps)")
    return device


def amp_dtype(device: torch.device, mode: str = "auto") -> torch.dtype | None:
    """The autocast dtype for `mode` ('auto' | 'bf16' | 'fp16' | 'off'), or None for no autocast.

    auto: bf16 on GPUs that have it, else fp16; off on the CPU. bf16 on a CPU with AVX512-BF16 or
    AMX is worth asking for (benchmarks/README.md, training throughput), so it is one flag away.
    """
    import torch

    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16" or (mode == "auto" and not torch.cuda.is_bf16_supported()):
        if device.type == "cpu":
            raise FERError("--amp fp16 needs a GPU; on the CPU use --amp bf16 or off")
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast context; a no-op when dtype is None, so the training loop never branches on AMP."""
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A GradScaler that only scales for fp16 (bf16 and fp32 need none)."""
    import torch

    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def clear_gpu_memory() -> None:
    """Release cached GPU memory (the original project did this between stages). No-op without CUDA."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask, e.g. under taskset or a container limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # macOS, Windows
        return os.cpu_count() or 1


def set_cpu_threads(threads: int | None = None) -> None:
    """PyTorch's intra-op threads: `threads`, or every core; the user's OMP_NUM_THREADS wins.

    For scripts only: the thread count belongs to the process, so library code never calls this.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(max(1, threads or cpu_count()))


def default_num_workers() -> int:
    """Data-loading processes for training: one per core, at most 4."""
    return min(4, cpu_count())
