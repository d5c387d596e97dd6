"""Bulk inference: images per second and peak memory of `inference.py FOLDER --output results.jsonl`.

Rows are the real script run as a user types it (a fresh process each, timed by its own summary line, so
start-up and model loading are left out; peak RSS from the OS). Inputs are made in the run's temporary
folder: 48x48 gray PNG face crops cut from Test_files/IMG_test_1.jpg (shifted, so no two are alike) for
--no_detect, and 640x480 JPEG photos with one or two faces for detection. The "before" row is the loop
inference.py ran until issue 14 (one image per forward pass, the fp32 .pth model, no TTA), in this process.
CPU ms / image (the run's CPU time less a one-image run's) is the figure to compare on a shared machine;
the stage table sums the worker threads' time per image (read = file read + decode), from fer_common.infer.bulk.

    python -m benchmarks.run --only bulk                    # 10,000 crops; memory at 2,000 / 10,000 / 100,000
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from fer_common.infer.bulk import iter_results, list_images
from fer_common.infer.detection import FaceDetector
from fer_common.infer.predictor import Predictor
from fer_common.preprocess import read_image
from fer_common.results import make_result

from .bench_models import default_model_files
from .common import REPO, fmt, peak_rss_kb, table, torch_threads

IMAGE = REPO / "Test_files" / "IMG_test_1.jpg"
SHIPPED = {"pth": REPO / "models" / "fer_model.pth", "onnx": REPO / "models" / "fer_model.onnx",
           "int8": REPO / "models" / "fer_model.int8.onnx"}
SUMMARY = re.compile(r"(\d+) images: (\d+) read.* in ([\d.]+) s, (\d+) images/s")


def make_crops(folder: Path, n: int) -> Path:
    """n distinct 48x48 gray PNG crops of the test image's face, 1000 per sub-folder (as data sets are laid out)."""
    face = cv2.cvtColor(cv2.imread(str(IMAGE))[40:190, 150:300], cv2.COLOR_BGR2GRAY)
    for i in range(n):
        sub = folder / f"{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        dx, dy = i % 31, (i // 31) % 31
        crop = cv2.resize(face[dy:dy + 110, dx:dx + 110], (48, 48), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(sub / f"{i:07d}.png"), crop)
    return folder


def make_photos(folder: Path, n: int) -> Path:
    """n 640x480 JPEG photos, alternately one face (the test image) and two (it, and its mirror image)."""
    folder.mkdir(parents=True, exist_ok=True)
    src = cv2.imread(str(IMAGE))
    one = np.full((480, 640, 3), 90, np.uint8)
    one[:, 80:560] = cv2.resize(src, (480, 480), interpolation=cv2.INTER_AREA)
    two = np.full((480, 640, 3), 90, np.uint8)
    half = cv2.resize(src, (320, 320), interpolation=cv2.INTER_AREA)
    two[80:400, :320], two[80:400, 320:] = half, half[:, ::-1]
    rng = np.random.default_rng(0)
    for i in range(n):
        base = one if i % 2 == 0 else two
        noisy = cv2.add(base, rng.integers(0, 6, base.shape, dtype=np.uint8))   # distinct files, same faces
        cv2.imwrite(str(folder / f"photo_{i:05d}.jpg"), noisy, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return folder


def make_large_photos(folder: Path, n: int) -> Path:
    """n 4032x3024 JPEG photos (a phone's 12 M pixels): make_photos' scaled up, faces of about 450-650 px."""
    small = make_photos(folder / "small", n)
    for path in sorted(small.iterdir()):
        large = cv2.resize(cv2.imread(str(path)), (4032, 3024), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(folder / path.name), large, [cv2.IMWRITE_JPEG_QUALITY, 90])
        path.unlink()
    small.rmdir()
    return folder


def run_cli(argv: list, out: Path) -> dict:
    """inference.py in a fresh process; images/s from its summary line, peak RSS from wait4."""
    cmd = [sys.executable, str(REPO / "inference.py"), *map(str, argv), "--output", str(out), "--overwrite"]
    log_out, log_err = out.with_suffix(".stdout"), out.with_suffix(".stderr")
    t0 = time.perf_counter()
    with open(log_out, "w") as fo, open(log_err, "w") as fe:
        proc = subprocess.Popen(cmd, cwd=str(out.parent), stdout=fo, stderr=fe)
        # ru_maxrss is inherited through fork and exec (it would report this big benchmark process), so the
        # child's own high-water mark is read from /proc while it runs; reaped here to read its CPU time.
        peak_kb = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak_kb = max(peak_kb, peak_rss_kb(proc.pid))
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    stdout, stderr = log_out.read_text(), log_err.read_text()
    match = SUMMARY.search(stdout)
    if proc.returncode not in (0, 2) or not match:
        raise RuntimeError(f"inference.py {' '.join(map(str, argv))} failed:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    images, seconds, rate = int(match.group(1)), float(match.group(3)), float(match.group(4))
    model = next((line.split("model: ", 1)[1] for line in stdout.splitlines() if line.startswith("model: ")), "")
    return {"images": images, "seconds": seconds, "images_per_s": rate, "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": (peak_kb or usage.ru_maxrss) / 1024, "model": model}


def run_one_photo() -> float:
    """Wall seconds of `inference.py Test_files/IMG_test_1.jpg` as a user runs it: the whole process."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(REPO / "inference.py"), str(REPO / "Test_files" / "IMG_test_1.jpg")],
                       cwd=str(REPO), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"inference.py on the test image failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0


def run_cli_cpu(argv: list, out: Path, one: Path) -> dict:
    """run_cli, plus CPU ms per image: the run's CPU time less that of the same command on a one-image folder
    (start-up, imports, model loading). Unlike images/s, it hardly changes when other jobs share the CPU."""
    r = run_cli(argv, out)
    startup = run_cli([one, *argv[1:]], out.with_name("one_image.jsonl"))["cpu_s"]
    r["cpu_ms_per_image"] = max(r["cpu_s"] - startup, 0.0) * 1000 / r["images"]
    return r


def before_loop(predictor, images: list) -> tuple:
    """(images/s, CPU ms per image) of the loop inference.py had before issue 14: decode, BGR, one forward pass."""
    with torch_threads(1):                  # as the Predictor set it then
        return _before_loop(predictor, images)


def _before_loop(predictor, images: list) -> tuple:
    t0, c0 = time.perf_counter(), time.process_time()
    for path in images:
        frame = read_image(path, 3, bgr=True)
        p = predictor([frame])
        r = make_result(path, predictor.class_names, [[0, 0, frame.shape[1], frame.shape[0]]], p.probabilities,
                        p.embeddings, size=(frame.shape[1], frame.shape[0]))
        r.to_json(embedding=False)
    return len(images) / (time.perf_counter() - t0), (time.process_time() - c0) * 1000 / len(images)


def stage_times(predictor, images: list, detector, batch_size: int, workers: int) -> dict:
    """Worker-thread seconds per stage from iter_results, and the main thread's JSONL line per image."""
    timings, write, n = {}, 0.0, 0
    t0 = time.perf_counter()
    for r in iter_results(predictor, images, detector, batch_size, workers, timings):
        t1 = time.perf_counter()
        r.to_json(embedding=False)
        write += time.perf_counter() - t1
        n += 1
    wall = time.perf_counter() - t0
    return {"images": n, "images_per_s": n / wall, "write_ms": write * 1000 / n,
            **{f"{k}_ms": v * 1000 / n for k, v in timings.items()}}


def run(args, workdir: Path, log=print) -> dict:
    quick = args.quick
    n = args.bulk_images or (120 if quick else 10000)
    n_slow = max(n // 5, 40)                    # the slow configurations run on a fifth of the crops
    n_photos = 16 if quick else 200
    files = SHIPPED if not args.checkpoint and all(p.is_file() for p in SHIPPED.values()) \
        else {k: default_model_files(args, workdir, log)[k] for k in ("pth", "onnx", "int8")}
    log(f"bulk: making {n} face crops and {n_photos} photos in {workdir}")
    crops = make_crops(workdir / "crops", n)
    slow = make_crops(workdir / "crops_small", n_slow)
    photos = make_photos(workdir / "photos", n_photos)
    one_crop, one_photo = make_crops(workdir / "one_crop", 1), make_photos(workdir / "one_photo", 1)
    out = workdir / "results.jsonl"
    crop_args = ["--recursive", "--no_detect"]

    # (label, folder, extra flags). The defaults come first: what `inference.py FOLDER --output x.jsonl` does.
    configs = [("defaults (int8 ONNX, TTA, batch 64, workers = cores)", crops, []),
               ("--no_tta", crops, ["--no_tta"])]
    if not quick:
        configs += [(f"--batch_size {b}", crops, ["--batch_size", str(b)]) for b in (8, 16, 256)]
        configs += [(f"--workers {w}", crops, ["--workers", str(w)]) for w in (1, 3)]
        configs += [("fp32 ONNX", slow, ["--checkpoint", files["onnx"]]),
                    ("fp32 .pth", slow, ["--checkpoint", files["pth"]]),
                    ("fp32 .pth, --no_tta, --batch_size 1 --workers 1", slow,
                     ["--checkpoint", files["pth"], "--no_tta", "--batch_size", "1", "--workers", "1"])]
    if files is not SHIPPED:
        configs = [(label, folder, extra if "--checkpoint" in extra else extra + ["--checkpoint", files["int8"]])
                   for label, folder, extra in configs]
    results = []
    for label, folder, extra in configs:
        log(f"bulk: {label}")
        r = run_cli_cpu([folder, *crop_args, *extra], out, one_crop)
        results.append({"input": f"48x48 crops, --no_detect ({r['images']})", "config": label, **r})
    with open(out, "rb") as f:
        lines = sum(1 for _ in f)
    # The per-image loop of before, in this process, on the fp32 .pth without TTA (the old defaults).
    slow_images = list_images([slow], recursive=True)
    before, before_cpu = before_loop(Predictor(files["pth"], device="cpu"), slow_images)
    results.append({"input": f"48x48 crops, --no_detect ({len(slow_images)})",
                    "config": "before: one image per forward pass, fp32 .pth (in-process loop)",
                    "images_per_s": before, "cpu_ms_per_image": before_cpu, "images": len(slow_images)})

    # Full photos with detection: the default detector, and Haar.
    default_kind = FaceDetector().kind
    detectors = [(f"defaults ({default_kind}, int8 ONNX, TTA)", [])]
    if not quick:
        detectors += [(f"--detector {k}", ["--detector", k]) for k in ("yunet", "haar") if k != default_kind]
    for label, extra in detectors:
        log(f"bulk: photos, {label}")
        r = run_cli_cpu([photos, *extra], out, one_photo)
        results.append({"input": f"640x480 photos, 1-2 faces ({r['images']})", "config": label, **r})

    # Start-up: one photo, the whole process timed from outside (imports, model and detector loading, one face).
    startup = sorted(run_one_photo() for _ in range(3 if quick else 7))
    startup_s = startup[len(startup) // 2]

    # Memory: the same run at 10x the images.
    memory = []
    if not quick:
        big_n = args.bulk_memory_images or 10 * n
        log(f"bulk: memory run, making {big_n} crops")
        big = make_crops(workdir / "crops_big", big_n)
        for folder, count in ((slow, n_slow), (crops, n), (big, big_n)):
            r = run_cli([folder, *crop_args], out)
            memory.append({"images": count, "peak_rss_mb": r["peak_rss_mb"], "images_per_s": r["images_per_s"],
                           "output_mb": out.stat().st_size / 2**20})

    # Where the time goes, per image, summed over the worker threads (in this process).
    int8 = Predictor(files["int8"], device="cpu", tta=True)
    crop_list = list_images([crops], recursive=True)
    photo_list = list_images([photos])
    stages = [{"input": "48x48 crops, --no_detect", **stage_times(int8, crop_list, None, 64, None)}]
    for kind in ("yunet", "haar")[:1 if quick else 2]:
        detector = lambda kind=kind: FaceDetector(kind)   # noqa: E731  (one per worker thread)
        stages.append({"input": f"640x480 photos, {kind}", **stage_times(int8, photo_list, detector, 64, None)})

    rows = [[r["input"], r["config"], fmt(r["images_per_s"], 0),
             fmt(r["images"] / r["wall_s"], 0) if r.get("wall_s") else "-", fmt(r.get("cpu_ms_per_image"), 3),
             fmt(r.get("seconds"), 1), fmt(r.get("peak_rss_mb"), 0),
             r.get("model", "").split(" (")[0].replace(str(REPO) + "/", "")] for r in results]
    text = (f"Start-up: `inference.py Test_files/IMG_test_1.jpg`, whole process timed from outside: "
            f"{startup_s:.2f} s (median of {len(startup)}).\n\n")
    text += table(["input", "inference.py flags", "images / s", "whole process images / s", "CPU ms / image", "s",
                   "peak RSS MB", "model"], rows)
    text += "\n\n" + table(["input (in-process, defaults)", "images / s", "read ms", "detect ms", "classify ms",
                            "JSON ms"],
                           [[s["input"], fmt(s["images_per_s"], 0), fmt(s.get("read_ms")), fmt(s.get("detect_ms")),
                             fmt(s.get("classify_ms")), fmt(s.get("write_ms"), 3)] for s in stages])
    text += ("\n\nCPU ms / image: the run's CPU time less a one-image run's (start-up, model loading); steadier "
             "than images/s when other jobs share the CPU, and on an idle machine images/s is at most "
             "1000 x cores / CPU ms. Stage columns: wall ms per image in each stage, summed over the worker "
             "threads (they overlap, so they add up to more than the wall time; on a busy CPU they include "
             "waiting for it); read = file read + decode; classify includes preprocessing and TTA's mirror "
             "pass; JSON = the main thread's record and JSONL line.")
    if memory:
        text += "\n\n" + table(["images (--no_detect to .jsonl)", "peak RSS MB", "images / s", "output MB"],
                               [[m["images"], fmt(m["peak_rss_mb"], 0), fmt(m["images_per_s"], 0),
                                 fmt(m["output_mb"], 1)] for m in memory])
    return {"title": "Bulk inference", "rows": results, "stages": stages, "memory": memory, "startup_s": startup_s,
            "jsonl_lines": lines, "table": text}
