"""Run the benchmarks and print their tables: model latency, the video pipeline, training throughput, bulk inference.

    python -m benchmarks.run --data dataset/test --json bench.json

--quick runs a few iterations of each (the smoke test); --only picks one group. Without --checkpoint the
shipped models/fer_model.pth is used, else a randomly initialised default model (the output says which).
The advanced model always has random weights (no download): only its speed is measured.
"""

import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):          # run as `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fer_common.cli import make_parser, run_main  # noqa: E402
from fer_common.files import write_json  # noqa: E402
from fer_common.model.config import DEFAULT_BACKBONE  # noqa: E402

from benchmarks.common import machine_info, machine_line  # noqa: E402

GROUPS = ("models", "video", "training", "bulk")


def get_args_parser():
    parser = make_parser(__doc__)
    g = parser.add_argument_group("Benchmarks")
    g.add_argument("--quick", action="store_true", help="a few iterations of everything (smoke test)")
    g.add_argument("--only", choices=GROUPS, action="append",
                   help="run only this group (repeatable; all groups when not given)")
    g = parser.add_argument_group("Model")
    g.add_argument("--checkpoint", metavar="PATH",
                   help="default-model checkpoint (.pth); when not given: models/fer_model.pth if present, else random weights")
    g.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help="timm backbone of the advanced model (random weights; e.g. test_vit for a fast smoke run)")
    g.add_argument("--skip_advanced", action="store_true", help="do not benchmark the advanced model")
    g = parser.add_argument_group("Data")
    g.add_argument("--data", metavar="FOLDER",
                   help="face-crop data set (class folders, e.g. dataset/test): accuracy of the fp32 vs int8 model")
    g.add_argument("--calibration_data", metavar="FOLDER",
                   help="face crops for int8 calibration (class folders); when not given: dataset/val_new if present")
    g.add_argument("--video", metavar="PATH", help="video for the pipeline benchmark (when not given: Test_files/Video_Test_1.mp4)")
    g.add_argument("--max_frames", type=int, default=0, help="frames of the video to use (0: all; --quick: 20)")
    g.add_argument("--bulk_images", type=int, default=0,
                   help="face crops for the bulk-inference rows (0: 10000; --quick: 120)")
    g.add_argument("--bulk_memory_images", type=int, default=0,
                   help="face crops for the bulk memory run (0: 10 x --bulk_images)")
    g = parser.add_argument_group("Output")
    g.add_argument("--json", metavar="PATH", help="also write every figure as JSON here")
    return parser


def main(args):
    groups = args.only or list(GROUPS)
    info = machine_info()
    print(machine_line(info), flush=True)
    if info["training_running"]:
        print("note: a training run (fine_tuning.py) is using the CPU: figures are taken under load", flush=True)
    results = {"machine": info, "quick": args.quick, "argv": sys.argv[1:], "results": {}}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fer_bench_") as tmp:
        workdir = Path(tmp)
        for group in groups:
            module = __import__(f"benchmarks.bench_{group}", fromlist=["run"])
            t0 = time.time()
            result = module.run(args, workdir, log=lambda *a: print(*a, flush=True))
            result["seconds"] = round(time.time() - t0, 1)
            results["results"][group] = result
            print(f"\n## {result['title']}\n{machine_line(machine_info())}\n\n{result['table']}\n", flush=True)
    print(f"benchmarks done in {time.time() - started:.0f} s")
    if args.json:
        write_json(args.json, _plain(results))
        print(f"results -> {args.json}")
    return 0


def _plain(obj):
    """JSON-safe copy: paths to strings, numpy scalars to Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


if __name__ == "__main__":
    run_main(main, get_args_parser())
