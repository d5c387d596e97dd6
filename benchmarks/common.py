"""What every benchmark shares: the machine line, a timing helper, tables, and where the model comes from."""

import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CHECKPOINT = REPO / "models" / "fer_model.pth"


def cpu_cores() -> int:
    from fer_common.device import cpu_count
    return cpu_count()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def busy_processes() -> list[str]:
    """Other heavy jobs we know of (a training run) that are running, so a table taken under load says so.

    A run paused for the benchmark (kill -STOP: state T in /proc) does not count."""
    try:
        out = subprocess.run(["pgrep", "-f", "fine_tuning.py"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [pid for pid in out.split() if pid.isdigit() and int(pid) != os.getpid() and not _stopped(pid)]


def _stopped(pid: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] in "tT"
    except (OSError, ValueError, IndexError):
        return False


def peak_rss_kb(pid: int) -> int:
    """A process's peak resident memory so far (Linux /proc; 0 elsewhere or once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
    except OSError:
        return 0


def machine_info() -> dict:
    import cv2
    import numpy as np
    import onnxruntime as ort
    import torch

    flags = cpu_flags()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return {"cpu": cpu_model(), "cores": cpu_cores(), "isa": isa, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "onnxruntime": ort.__version__, "opencv": cv2.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "device": device,
            "load_avg_1min": round(load, 2), "training_running": bool(busy_processes())}


def machine_line(info: dict) -> str:
    load = f"load avg {info['load_avg_1min']:.1f}" + (" (a training run shares the CPU)" if info["training_running"] else "")
    return (f"machine: {info['cpu']}, {info['cores']} cores ({' '.join(info['isa']) or 'no AVX'}); "
            f"torch {info['torch']}, onnxruntime {info['onnxruntime']}, opencv {info['opencv']}; "
            f"device {info['device']}; {load}")


def time_it(fn, warmup: int = 3, repeats: int = 20, min_seconds: float = 0.0) -> dict:
    """Median (and spread) of `fn()`'s wall time in seconds, after `warmup` untimed calls.

    Runs at least `repeats` times, and keeps going until `min_seconds` have passed (short calls on a
    noisy machine need many samples for a steady median).
    """
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 100 * max(repeats, 1):
            break
    times.sort()
    return {"median": statistics.median(times), "p10": times[len(times) // 10], "p90": times[(len(times) * 9) // 10],
            "n": len(times)}


def table(headers: list[str], rows: list[list]) -> str:
    """A plain Markdown table (readable in a terminal, pasteable into the README)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def load_default_model(checkpoint=None):
    """(model, class_names, preprocessing, description, model_config): the given checkpoint, else the shipped
    model, else a randomly initialised default model."""
    import torch

    from fer_common.model.checkpoint import load_checkpoint, model_from_checkpoint
    from fer_common.labels import EMOTIONS
    from fer_common.model.networks import FERNet, default_preprocessing

    path = Path(checkpoint) if checkpoint else (SHIPPED_CHECKPOINT if SHIPPED_CHECKPOINT.is_file() else None)
    if path is None:
        torch.manual_seed(0)
        return FERNet().eval(), sorted(EMOTIONS), default_preprocessing("default"), \
            "randomly initialised default model (no models/fer_model.pth; pass --checkpoint)", {}
    ckpt = load_checkpoint(path, expected_type="default")
    model = model_from_checkpoint(ckpt, path)
    return model, list(ckpt["class_names"]), dict(ckpt["preprocessing"]), f"checkpoint {path}", dict(ckpt.get("model_config", {}))


class torch_threads:
    """Set torch's intra-op thread count for a block (the Predictor changes it globally)."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        import torch
        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch
        torch.set_num_threads(self.saved)
