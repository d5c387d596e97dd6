"""GPU against CPU: bulk crops, photos with detection and the video pipeline, the scripts as a user types them.

Each runtime row runs the same three commands in fresh processes, and takes the figure from the script's own
summary line (images/s for inference.py, average FPS for real_time_video.py; start-up and model loading left
out), the median of --rounds:

    inference.py CROPS --recursive --no_detect --output out.jsonl      (48x48 face crops, no detection)
    inference.py PHOTOS --output out.jsonl                             (640x480 photos, 1-2 faces each)
    real_time_video.py --video CLIP --no_display --save_output out.avi (the test clip looped)

The CPU rows always run: the defaults (int8 ONNX), and the fp32 models the GPU rows use, so each GPU row has
a like-for-like CPU row beside it. The GPU rows (ONNX Runtime's CUDA and TensorRT providers on the fp32 ONNX
model, since int8 QDQ runs poorly on CUDA; PyTorch on CUDA) run where they can, and otherwise say in one line
why not. A GPU row that fails says so and the rest go on.

    python -m benchmarks.bench_gpu --json bench_gpu.json        # or: python benchmarks/bench_gpu.py
    python benchmarks/bench_gpu.py --quick                      # smoke run (tests/commands/test_bench_gpu.py)

On a lent GPU machine, the one command to give the device tool's `run` (its python3 has torch with CUDA and
onnxruntime's CPU build; the scripts import fer_common from the repository root, so nothing is installed):

    python3 -m benchmarks.bench_gpu --json $OUT/bench_gpu.json | tee $OUT/bench_gpu.txt
"""

import functools
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):          # run as `python benchmarks/bench_gpu.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fer_common.cli import int_range, make_parser, run_main  # noqa: E402
from fer_common.files import write_json  # noqa: E402

from benchmarks.bench_bulk import make_crops, make_photos  # noqa: E402
from benchmarks.bench_video import DEFAULT_VIDEO, make_long_clip  # noqa: E402
from benchmarks.common import REPO, fmt, machine_info, machine_line, table  # noqa: E402
from benchmarks.side_by_side import PATTERNS  # noqa: E402

FP32_ONNX = REPO / "models" / "fer_model.onnx"
FP32_PTH = REPO / "models" / "fer_model.pth"
SIZES = {"full": {"crops": 10000, "photos": 200, "frames": 600, "rounds": 3},
         "quick": {"crops": 200, "photos": 8, "frames": 60, "rounds": 1}}
CASE_NAMES = ("crops", "photos", "video")
RAN_ON = re.compile(r"(?m)^model: .*?\b((?:onnx|torch) on [\w:]+)")
TIMEOUT_S = 300                         # one run; a stuck GPU run is a failed row, not a stuck benchmark


def ort_gpu_missing(provider: str) -> str | None:
    """Why ONNX Runtime's `provider` cannot run here (None when it can): runtime.onnx_providers' own tests."""
    import onnxruntime as ort

    from fer_common.device import cuda_available

    why = [] if cuda_available() else ["no CUDA GPU is visible"]
    if provider not in ort.get_available_providers():
        why.append(f"this onnxruntime build has no {provider} (pip install onnxruntime-gpu)")
    return "; ".join(why) or None


def torch_gpu_missing() -> str | None:
    """Why PyTorch cannot run on CUDA here (None when it can)."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (pip install 'fer-toolkit[train]')"
    return None if torch.cuda.is_available() else f"PyTorch {torch.__version__} sees no CUDA GPU"


@dataclass(frozen=True)
class Runtime:
    """One row: the flags added to every case, and on a GPU row the check that says whether it can run."""
    key: str
    label: str
    flags: tuple
    gpu_check: Callable[[], str | None] | None = None   # why it cannot run, or None; no check: a CPU row
    same_on_cpu: str | None = None                 # the CPU row with the same model file


RUNTIMES = (
    Runtime("cpu", "CPU, ONNX Runtime int8 (the defaults)", ("--provider", "cpu")),
    Runtime("cpu-onnx", "CPU, ONNX Runtime fp32", ("--checkpoint", FP32_ONNX, "--provider", "cpu")),
    Runtime("cpu-torch", "CPU, PyTorch fp32", ("--checkpoint", FP32_PTH, "--device", "cpu")),
    Runtime("cuda", "GPU, ONNX Runtime CUDA fp32", ("--checkpoint", FP32_ONNX, "--provider", "cuda"),
            functools.partial(ort_gpu_missing, "CUDAExecutionProvider"), "cpu-onnx"),
    Runtime("tensorrt", "GPU, ONNX Runtime TensorRT fp32", ("--checkpoint", FP32_ONNX, "--provider", "tensorrt"),
            functools.partial(ort_gpu_missing, "TensorrtExecutionProvider"), "cpu-onnx"),
    Runtime("torch-cuda", "GPU, PyTorch CUDA fp32", ("--checkpoint", FP32_PTH, "--device", "cuda"),
            torch_gpu_missing, "cpu-torch"),
)


def skip_reason(rt: Runtime) -> str | None:
    """'skipped: why' for a row that cannot run here, None for one that can."""
    missing = [p for p in rt.flags if isinstance(p, Path) and not p.is_file()]
    if missing:
        return f"skipped: {missing[0].relative_to(REPO)} not found"
    why = rt.gpu_check() if rt.gpu_check else None
    return f"skipped: {why}" if why else None


def gpu_name() -> str:
    """The GPU as nvidia-smi names it (name, memory), else as PyTorch does, else 'no GPU'."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            return "; ".join(line.strip() for line in out.splitlines())
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return "no GPU"


def make_cases(work: Path, crops: int, photos: int, frames: int) -> dict:
    """case -> (script, arguments, unit): the three runs of issue 35, inputs made in `work`."""
    return {
        "crops": ("inference.py", [make_crops(work / "crops", crops), "--recursive", "--no_detect",
                                   "--output", "{out}.jsonl"], "images/s"),
        "photos": ("inference.py", [make_photos(work / "photos", photos), "--output", "{out}.jsonl"], "images/s"),
        "video": ("real_time_video.py", ["--video", make_long_clip(DEFAULT_VIDEO, work / "clip.mp4", frames),
                                         "--no_display", "--save_output", "{out}.avi"], "fps"),
    }


def run_case(script: str, args: list, unit: str, flags: tuple, out: Path) -> dict:
    """One run in a fresh process: {'value', 'ran_on'} from its output, or {'error': its last line}."""
    argv = [sys.executable, str(REPO / script), *(str(a).replace("{out}", str(out)) for a in args),
            *map(str, flags), "--overwrite"]
    try:
        r = subprocess.run(argv, cwd=out.parent, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {TIMEOUT_S} s"}
    text = r.stdout + r.stderr
    match = PATTERNS[unit].search(text)
    if r.returncode != 0 or not match:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        last = next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "")
        return {"error": f"exit {r.returncode}: {last[:300]}"}
    ran_on = RAN_ON.search(r.stdout)
    return {"value": float(match.group(1)), "ran_on": ran_on.group(1) if ran_on else ""}


def measure(runtimes: list, todo: dict, rounds: int, work: Path, log=print) -> dict:
    """key -> case -> {'unit', 'runs', 'median', 'ran_on', 'error'}; the row order flips every round, so a
    machine that speeds up or slows down touches every row alike. A case that failed is not run again."""
    figures = {rt.key: {case: {"unit": unit, "runs": []} for case, (_, _, unit) in todo.items()}
               for rt in runtimes}
    for k in range(rounds):
        for case, (script, args, unit) in todo.items():
            for rt in runtimes[:: 1 if k % 2 == 0 else -1]:
                cell = figures[rt.key][case]
                if "error" in cell:
                    continue
                r = run_case(script, args, unit, rt.flags, work / "out")
                if "error" in r:
                    cell["error"] = r["error"]
                    log(f"{rt.label}, {case}: failed: {r['error']}")
                    continue
                cell["runs"].append(r["value"])
                cell["ran_on"] = r["ran_on"]
                log(f"{rt.label}, {case}: {r['value']:g} {unit.replace('fps', 'FPS')}")   # a run cut short still shows these
        log(f"round {k + 1}/{rounds} done")
    for row in figures.values():
        for cell in row.values():
            cell["median"] = statistics.median(cell["runs"]) if cell["runs"] else None
    return figures


def ratios(rows: list) -> list:
    """Each GPU row's figure over the CPU defaults' and over the same model's on the CPU, per case it ran."""
    by_key = {row["key"]: row for row in rows}
    out = []
    for row in rows:
        if not row["gpu"] or row["skipped"]:
            continue
        for case, cell in row["cases"].items():
            if not cell.get("median"):
                continue
            bases = [by_key[key]["cases"].get(case, {}).get("median") if key in by_key else None
                     for key in ("cpu", row["same_on_cpu"])]
            defaults, same = (cell["median"] / b if b else None for b in bases)
            out.append({"key": row["key"], "label": row["label"], "case": case,
                        "vs_cpu_defaults": defaults, "vs_same_model_on_cpu": same})
    return out


def flags_text(flags: tuple) -> str:
    return " ".join(str(f.relative_to(REPO)) if isinstance(f, Path) else f for f in flags)


def report(result: dict) -> str:
    """The tables: one row per runtime (figures, or why not), then GPU / CPU per case."""
    sizes = result["sizes"]
    headers = ["runtime", "flags", f"{sizes['crops']} crops, images/s", f"{sizes['photos']} photos, images/s",
               f"video {sizes['frames']} frames, FPS", "ran on / note"]
    rows = []
    for row in result["rows"]:
        cells = [row["cases"].get(case, {}) for case in CASE_NAMES]
        errors = [f"{case} failed: {c['error']}" for case, c in zip(CASE_NAMES, cells) if c.get("error")]
        ran_on = sorted({c["ran_on"] for c in cells if c.get("ran_on")})
        note = row["skipped"] or "; ".join(ran_on + errors)
        figures = (fmt(c.get("median"), 1 if c.get("unit") == "fps" else 0) for c in cells)
        rows.append([row["label"], row["flags"], *figures, note])
    text = (f"GPU: {result['gpu']}\n{sizes['crops']} crops, {sizes['photos']} photos, {sizes['frames']} video "
            f"frames; median of {sizes['rounds']} round(s), a fresh process each run\n\n"
            + table(headers, rows))
    if result["ratios"]:
        text += "\n\n" + table(["GPU runtime", "case", "GPU / CPU defaults", "GPU / same model on the CPU"],
                               [[r["label"], r["case"], fmt(r["vs_cpu_defaults"]), fmt(r["vs_same_model_on_cpu"])]
                                for r in result["ratios"]])
    else:
        text += "\n\nGPU / CPU: no GPU row ran (the rows above say why)"
    return text


def get_args_parser():
    parser = make_parser(__doc__)
    g = parser.add_argument_group("Benchmark")
    g.add_argument("--quick", action="store_true",
                   help="tiny inputs, one round: a smoke run (200 crops, 8 photos, 60 frames)")
    g.add_argument("--rounds", type=int_range(1), help="runs of each case per row, the median kept (default: 3)")
    g.add_argument("--crops", type=int_range(1), help="48x48 face crops, --no_detect (default: 10000)")
    g.add_argument("--photos", type=int_range(1), help="640x480 photos, with detection (default: 200)")
    g.add_argument("--frames", type=int_range(1), help="video frames, the test clip looped (default: 600)")
    g = parser.add_argument_group("Output")
    g.add_argument("--json", metavar="PATH", help="also write every figure as JSON here")
    return parser


def main(args):
    sizes = {k: getattr(args, k) or v for k, v in SIZES["quick" if args.quick else "full"].items()}
    info = machine_info()
    print(machine_line(info), flush=True)
    rows, runnable = [], []
    for rt in RUNTIMES:
        skipped = skip_reason(rt)
        if skipped:
            print(f"{rt.label}: {skipped}", flush=True)
        else:
            runnable.append(rt)
        rows.append({"key": rt.key, "label": rt.label, "flags": flags_text(rt.flags), "gpu": rt.gpu_check is not None,
                     "same_on_cpu": rt.same_on_cpu, "skipped": skipped, "cases": {}})
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fer_bench_gpu_") as tmp:
        work = Path(tmp)
        todo = make_cases(work, sizes["crops"], sizes["photos"], sizes["frames"])
        figures = measure(runnable, todo, sizes["rounds"], work, log=lambda *a: print(*a, flush=True))
    for row in rows:
        row["cases"] = figures.get(row["key"], {})
    result = {"machine": info, "gpu": gpu_name(), "sizes": sizes, "quick": args.quick, "argv": sys.argv[1:],
              "seconds": round(time.time() - started, 1), "rows": rows, "ratios": ratios(rows)}
    result["table"] = report(result)
    print(f"\n## GPU against CPU\n{machine_line(info)}\n{result['table']}", flush=True)
    if args.json:
        write_json(args.json, result)
        print(f"results -> {args.json}")
    cpu_failed = [row["label"] for row in rows if not row["gpu"] and not row["skipped"]
                  and any(c.get("error") for c in row["cases"].values())]
    if cpu_failed:
        print(f"error: CPU row(s) failed: {', '.join(cpu_failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main, get_args_parser())
