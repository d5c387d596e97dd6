"""benchmarks/bench_gpu.py: the quick run as a user types it, a GPU row that fails, and the GPU / CPU ratios.

On the CPU-only test machine the CPU rows must give figures and every GPU row must say why it was skipped;
where a GPU is there, a GPU row may run instead, and then it has figures or says why it failed.
"""

import json
import subprocess
import sys

from benchmarks import bench_gpu

from synthetic import REPO


def test_bench_gpu_quick_run(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--quick",
                             "--json", str(tmp_path / "gpu.json")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "## GPU against CPU" in out and "machine: " in out and "\nGPU: " in out
    figures = json.loads((tmp_path / "gpu.json").read_text())
    assert figures["sizes"] == {"crops": 200, "photos": 8, "frames": 60, "rounds": 1}
    rows = {row["key"]: row for row in figures["rows"]}
    assert list(rows) == [rt.key for rt in bench_gpu.RUNTIMES]
    for row in rows.values():
        if not row["gpu"]:
            assert row["skipped"] is None
            assert all(row["cases"][case]["median"] > 0 for case in bench_gpu.CASE_NAMES), row
        elif row["skipped"]:
            assert row["skipped"].startswith("skipped: ") and len(row["skipped"]) > 20
            assert f"{row['label']}: {row['skipped']}" in out               # one line per skipped row
        else:
            assert all(c["median"] or c["error"] for c in row["cases"].values()), row
    if figures["gpu"] == "no GPU":
        assert all(row["skipped"] for row in rows.values() if row["gpu"])
        assert figures["ratios"] == [] and "no GPU row ran" in out


def test_a_failing_row_is_reported_and_not_run_again(tmp_path, monkeypatch):
    calls = []
    run_case = bench_gpu.run_case
    monkeypatch.setattr(bench_gpu, "run_case", lambda *a: calls.append(a) or run_case(*a))
    broken = bench_gpu.Runtime("broken", "a model file that is not there", ("--checkpoint", tmp_path / "none.onnx"))
    todo = {"crops": ("inference.py", [bench_gpu.make_crops(tmp_path / "crops", 2), "--recursive", "--no_detect",
                                       "--output", "{out}.jsonl"], "images/s")}
    lines = []
    figures = bench_gpu.measure([broken], todo, rounds=2, work=tmp_path, log=lines.append)
    cell = figures["broken"]["crops"]
    assert cell["runs"] == [] and cell["median"] is None and cell["error"].startswith("exit 1: error:")
    assert len(calls) == 1 and any("failed: exit 1" in line for line in lines)


def test_ratios_compare_with_the_defaults_and_the_same_model_on_the_cpu():
    def row(key, gpu, medians, same_on_cpu=None, skipped=None):
        return {"key": key, "label": key, "gpu": gpu, "same_on_cpu": same_on_cpu, "skipped": skipped,
                "cases": {case: {"median": m} for case, m in medians.items()}}

    rows = [row("cpu", False, {"crops": 1000.0, "video": 100.0}),
            row("cpu-torch", False, {"crops": 250.0, "video": 50.0}),
            row("torch-cuda", True, {"crops": 5000.0, "video": 40.0, "photos": None}, "cpu-torch"),   # photos failed
            row("cuda", True, {}, "cpu-onnx", skipped="skipped: no CUDA GPU is visible")]
    assert [(r["key"], r["case"], r["vs_cpu_defaults"], r["vs_same_model_on_cpu"]) for r in bench_gpu.ratios(rows)] \
        == [("torch-cuda", "crops", 5.0, 20.0), ("torch-cuda", "video", 0.4, 0.8)]
