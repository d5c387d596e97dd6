"""Video pipeline FPS, stage by stage, against the floor of decoding and encoding the same clip; the
encoders --save_output can use; peak memory of real_time_video.py on long videos.

The pipeline is the real VideoPipeline with the real FaceDetector and Predictor, drawn by the real Overlay;
detect and classify come from the speed (ms per stage) each frame's Result carries, draw is timed around the overlay, so the
order and the work are the pipeline's own. 'other' is the rest of process(): tracking, cropping, smoothing,
the scene-cut check. The stage table writes mp4v (the floor and the pipeline alike); the end-to-end run
writes what the script writes (H.264 with PyAV).

    python -m benchmarks.bench_video --memory 1000 30000      # peak RSS alone (30,000 frames: a few minutes)
"""

import argparse
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch

from fer_common.infer.detection import FaceDetector
from fer_common.infer.predictor import Predictor
from fer_common.infer.overlay import Overlay
from fer_common.video.options import VIDEO_DETECT_SIZE, VIDEO_MIN_FACE
from fer_common.video.pipeline import SceneCuts, VideoPipeline
from fer_common.video.run import output_sinks, run_video
from fer_common.video.sinks import VideoFile, pyav_encoders
from fer_common.video.source import VideoReader

from .bench_models import default_model_files
from .common import REPO, fmt, peak_rss_kb, table, torch_threads

DEFAULT_VIDEO = REPO / "Test_files" / "Video_Test_1.mp4"
DEFAULT_IMAGE = REPO / "Test_files" / "IMG_test_1.jpg"
# real_time_video.py's detector: YuNet, one pass per frame on a 240 px copy. The old default, Haar, beside it;
# and YuNet on a 320 px copy (inference.py's size) to show what the smaller copy buys.
VIDEO_DETECTOR = {"min_face": VIDEO_MIN_FACE, "detect_size": VIDEO_DETECT_SIZE}
YUNET_320 = {"min_face": VIDEO_MIN_FACE, "detect_size": 320}
HAAR_DETECTOR = {"kind": "haar"}
HAAR_LABEL = "--detector haar (the old default)"
STAGES = ["decode", "detect", "classify", "draw", "other", "encode"]
# The memory runs: frames of a long clip (the test clip looped); the 30,000-frame figure in README was run once
# with `python -m benchmarks.bench_video --memory 1000 30000`.
MEMORY_FRAMES = (1000, 5000)
QUICK_MEMORY_FRAMES = (200,)
# --save_output candidates: (label, library, codec, options, licence of what gets installed)
ENCODER_CANDIDATES = [
    ("OpenCV mp4v (.mp4)", "opencv", "mp4v", None, "opencv-python wheel: FFmpeg LGPL; no H.264 encoder in it"),
    ("OpenCV VP9 (.webm)", "opencv", "VP90", None, "opencv-python wheel: libvpx BSD"),
    ("PyAV libx264 superfast (.mp4, chosen)", "pyav", "libx264", {"preset": "superfast", "crf": "23"},
     "PyAV BSD-3; its wheel's FFmpeg links libx264: GPL"),
    ("PyAV libx264 veryfast (.mp4)", "pyav", "libx264", {"preset": "veryfast", "crf": "23"}, "as above"),
    ("PyAV libx264 medium (.mp4)", "pyav", "libx264", {"preset": "medium", "crf": "23"}, "as above"),
    ("PyAV libvpx-vp9 realtime (.webm)", "pyav", "libvpx-vp9", None, "PyAV BSD-3, libvpx BSD"),
    ("PyAV SVT-AV1 preset 10 (.webm)", "pyav", "libsvtav1", None, "PyAV BSD-3, SVT-AV1 BSD"),
]


def _writer(path, cap):
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    return cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)


def one_pass(video, out_path, max_frames: int, pipeline=None) -> dict:
    """Read, (process, draw,) write every frame once; returns total seconds per stage and the frame count."""
    timers = defaultdict(float)
    overlay = Overlay(pipeline.class_names) if pipeline is not None else None
    cap = cv2.VideoCapture(str(video))
    writer = _writer(out_path, cap)
    frames = faces = 0
    try:
        while not max_frames or frames < max_frames:
            t0 = time.perf_counter()
            ok, frame = cap.read()
            t1 = time.perf_counter()
            timers["decode"] += t1 - t0
            if not ok:
                break
            if pipeline is not None:
                result = pipeline.process(frame)
                t2 = time.perf_counter()
                overlay.draw_result(frame, result, fps=20.0)
                timers["draw"] += time.perf_counter() - t2
                timers["process"] += time.perf_counter() - t1
                timers["detect"] += result.speed["detect"] / 1e3
                timers["classify"] += result.speed["classify"] / 1e3
                faces += len(result.faces)
            t2 = time.perf_counter()
            writer.write(frame)
            timers["encode"] += time.perf_counter() - t2
            frames += 1
    finally:
        cap.release()
        writer.release()
        if pipeline is not None:
            pipeline.close()
    timers["wall"] = timers["decode"] + timers.pop("process", 0.0) + timers["encode"]
    if pipeline is not None:
        # With threaded detection the detector's time is spent on the worker thread, beside the rest:
        # it is shown, but only the main loop's wall time counts (waits for a detection land in other).
        in_loop = 0.0 if pipeline.threaded else timers["detect"]
        timers["other"] = timers["wall"] - timers["decode"] - timers["encode"] - in_loop - timers["classify"] - timers["draw"]
    return {"frames": frames, "faces": faces, **timers}


def per_frame_ms(passes: list[dict]) -> dict:
    """Median over passes of each stage's mean milliseconds per frame."""
    out = {}
    for stage in STAGES:
        values = [p[stage] / p["frames"] * 1000 for p in passes if stage in p]
        if values:
            out[stage] = statistics.median(values)
    totals = [p["wall"] / p["frames"] * 1000 for p in passes]
    out["total"] = statistics.median(totals)
    out["faces_per_frame"] = passes[0]["faces"] / max(passes[0]["frames"], 1)
    return out


def make_two_face_clip(video, path, max_frames: int = 0) -> Path:
    """The clip side by side with its mirror image: two faces per frame, twice the width."""
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (2 * w, h))
    n = 0
    while not max_frames or n < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        writer.write(np.hstack([frame, cv2.flip(frame, 1)]))
        n += 1
    cap.release()
    writer.release()
    return Path(path)


def make_scaled_clip(video, path, size, max_frames: int = 0) -> Path:
    """The clip resized to `size` (W, H): the same faces at a resolution where decoding and encoding cost more."""
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, tuple(size))
    n = 0
    while not max_frames or n < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        writer.write(cv2.resize(frame, tuple(size), interpolation=cv2.INTER_LINEAR))
        n += 1
    cap.release()
    writer.release()
    return Path(path)


def read_frames(video, max_frames: int = 0) -> tuple[list, float]:
    """Every frame of `video` (its first `max_frames`, 0: all) and its frame rate (30 when it says none)."""
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    frames = []
    while not max_frames or len(frames) < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames, fps


def encoder_report(video, workdir: Path, repeat: int = 3, max_frames: int = 0) -> list[dict]:
    """ms per frame and file size of each --save_output candidate installed here, on the clip `repeat` times
    (or its first `max_frames` frames)."""
    import fer_common.video.sinks as fv

    frames, fps = read_frames(video)
    frames = (frames * repeat)[:max_frames or None]
    size = (frames[0].shape[1], frames[0].shape[0])
    installed = pyav_encoders()
    rows = []
    for label, library, codec, options, licence in ENCODER_CANDIDATES:
        if library == "pyav" and codec not in installed:
            rows.append({"encoder": label, "licence": licence, "ms_per_frame": None, "kb": None})
            continue
        path = workdir / f"encoder_{library}_{codec}_{len(rows)}{'.webm' if 'webm' in label else '.mp4'}"
        saved = dict(fv.PYAV_OPTIONS)
        if options is not None:
            fv.PYAV_OPTIONS[codec] = options
        try:
            t0 = time.perf_counter()
            writer = fv.open_video_writer(path, library, codec, fps, size)
            for frame in frames:
                writer.write(frame)
            writer.close()
            seconds = time.perf_counter() - t0
        finally:
            fv.PYAV_OPTIONS.clear()
            fv.PYAV_OPTIONS.update(saved)
        rows.append({"encoder": label, "licence": licence, "ms_per_frame": seconds / len(frames) * 1000,
                     "kb": path.stat().st_size / 1000, "frames": len(frames), "size": f"{size[0]}x{size[1]}"})
    return rows


def scene_cut_cost(video, max_frames: int = 0) -> dict:
    """CPU ms per frame of the scene-cut check (process time: steady when other jobs share the CPU), min of 5."""
    frames, _ = read_frames(video, max_frames)
    out = {}
    for size in [(frames[0].shape[1], frames[0].shape[0]), (1280, 720)]:
        clip = [cv2.resize(f, size) for f in frames]
        times = []
        for _ in range(5):
            cuts, t0 = SceneCuts(), time.process_time()
            for frame in clip:
                cuts(frame)
            times.append((time.process_time() - t0) / len(clip) * 1000)
        out[f"{size[0]}x{size[1]}"] = min(times)
    return out


def make_long_clip(video, path, frames: int) -> Path:
    """The clip looped to `frames` frames (mp4v): a long video whose faces and cuts are known."""
    clip, fps = read_frames(video)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (clip[0].shape[1], clip[0].shape[0]))
    for k in range(frames):
        writer.write(clip[k % len(clip)])
    writer.release()
    return Path(path)


def memory_run(video, frames: int, workdir: Path) -> dict:
    """real_time_video.py with default flags, headless, writing every output, on a `frames`-frame clip, in a
    fresh process: its peak RSS (VmHWM read from /proc while it runs) and FPS."""
    clip = make_long_clip(video, workdir / f"long_{frames}.mp4", frames)
    outputs = [workdir / f"long_{frames}_out.mp4", workdir / f"long_{frames}.csv", workdir / f"long_{frames}.json"]
    cmd = [sys.executable, str(REPO / "real_time_video.py"), "--video", str(clip), "--no_display", "--overwrite",
           "--save_output", str(outputs[0]), "--log_csv", str(outputs[1]), "--summary", str(outputs[2])]
    with open(workdir / "memory.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        peak_kb = 0
        while proc.poll() is None:
            peak_kb = max(peak_kb, peak_rss_kb(proc.pid))
            time.sleep(0.05)
    text = (workdir / "memory.log").read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"real_time_video.py failed on {frames} frames:\n{text[-2000:]}")
    fps = float(text.split("average ", 1)[1].split(" FPS", 1)[0])
    result = {"frames": frames, "peak_rss_mb": peak_kb / 1024, "fps": fps,
              "log_mb": outputs[1].stat().st_size / 1e6, "video_mb": outputs[0].stat().st_size / 1e6}
    for path in [clip, *outputs]:
        path.unlink(missing_ok=True)
    return result


def memory_table(rows: list[dict]) -> str:
    return table(["frames (480x360, default flags, --save_output --log_csv --summary)", "peak RSS MB", "FPS",
                  "log MB", "video MB"],
                 [[f"{r['frames']:,}", fmt(r["peak_rss_mb"], 0), fmt(r["fps"], 1), fmt(r["log_mb"], 1),
                   fmt(r["video_mb"], 1)] for r in rows])


def encoder_table(rows: list[dict]) -> str:
    return table(["--save_output encoder", "ms / frame", "kB", "licence"],
                 [[r["encoder"], fmt(r["ms_per_frame"]) if r["ms_per_frame"] is not None else "not installed",
                   fmt(r["kb"], 0) if r["kb"] is not None else "-", r["licence"]] for r in rows])


def detector_report(video, image, max_frames: int, **detector_kwargs) -> dict:
    """Face recall of a FaceDetector on the clip and image, and its time per frame.

    On the test clip, whose faces are known (one in frames 0-49, two in 50-79), missed faces and false boxes
    are counted too; on another clip, frames with more than one box (false boxes, or more faces).
    """
    detector = FaceDetector(**detector_kwargs)
    cap = cv2.VideoCapture(str(video))
    known = Path(video).resolve() == DEFAULT_VIDEO.resolve()
    found, extra, times, n, missed, false = 0, 0, [], 0, 0, 0
    while not max_frames or n < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        t0 = time.perf_counter()
        boxes = detector.detect(frame)
        times.append(time.perf_counter() - t0)
        found += len(boxes) > 0
        extra += len(boxes) > 1
        expected = 1 if n < 50 else 2
        missed, false = missed + max(0, expected - len(boxes)), false + max(0, len(boxes) - expected)
        n += 1
    cap.release()
    report = {"settings": detector_kwargs or "default", "video": str(video), "frames": n, "frames_with_face": found,
              "frames_with_extra_boxes": extra, "recall": found / max(n, 1),
              "detect_ms_median": statistics.median(times) * 1000 if times else None}
    if known:
        report.update(faces=sum(1 if i < 50 else 2 for i in range(n)), missed_faces=missed, false_boxes=false)
    img = cv2.imread(str(image)) if Path(image).is_file() else None
    if img is not None:
        t0 = time.perf_counter()
        report["image_faces"] = int(len(detector.detect(img)))
        report["image_detect_ms"] = (time.perf_counter() - t0) * 1000
        report["image"] = str(image)
    return report


def _detector_line(d: dict, label: str) -> str:
    line = (f"{label} on {Path(d['video']).name}: a face found in {d['frames_with_face']}/{d['frames']} frames "
            f"({d['recall']:.1%}), more than one box in {d['frames_with_extra_boxes']}")
    if "false_boxes" in d:
        line += f"; {d['faces'] - d['missed_faces']}/{d['faces']} faces found, {d['false_boxes']} false boxes"
    line += f"; {fmt(d['detect_ms_median'])} ms per frame (median)"
    if "image_faces" in d:
        line += f"; {Path(d['image']).name}: {d['image_faces']} face(s) found"
    return line


def run(args, workdir: Path, log=print) -> dict:
    quick = args.quick
    video = Path(args.video or DEFAULT_VIDEO)
    max_frames = args.max_frames or (20 if quick else 0)
    repeats = 1 if quick else 3            # the floor is cheap: three passes
    pipeline_repeats = 1 if quick else 3    # the median of 3 whole-clip passes: one pass swings with the load
    files = default_model_files(args, workdir, log)

    derived_frames = max_frames or 40         # the derived clips are for the ratios, not the recall: 40 frames do
    clips = {"1 face": video}
    if not quick:
        clips["2 faces (mirrored, 2x wide)"] = make_two_face_clip(video, workdir / "two_faces.mp4", derived_frames)
        clips["1 face, upscaled to 720p"] = make_scaled_clip(video, workdir / "hd.mp4", (1280, 720), derived_frames)
    # (label, model file, detect_every, detector settings, threaded detection). The scripts' defaults:
    # the shipped int8 ONNX model, detection on a worker thread every 3 frames.
    configs = [("default flags (YuNet, int8 ONNX, threaded, detect_every 3)", "int8", 3, VIDEO_DETECTOR, True),
               ("detect_every 1 (int8 ONNX, threaded)", "int8", 1, VIDEO_DETECTOR, True)]
    if not quick:
        configs += [("--no_threaded, detect_every 3 (int8 ONNX)", "int8", 3, VIDEO_DETECTOR, False),
                    ("--no_threaded, detect_every 1 (int8 ONNX)", "int8", 1, VIDEO_DETECTOR, False),
                    ("fp32 .pth, threaded, detect_every 3", "pth", 3, VIDEO_DETECTOR, True),
                    ("--detect_size 320, threaded, detect_every 3", "int8", 3, YUNET_320, True),
                    ("--detect_size 320, threaded, detect_every 1", "int8", 1, YUNET_320, True),
                    (f"{HAAR_LABEL}, threaded, detect_every 3", "int8", 3, HAAR_DETECTOR, True)]

    rows, results = [], []
    for clip_name, clip in clips.items():
        cap = cv2.VideoCapture(str(clip))
        size = f"{int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x{int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}"
        cap.release()
        frames = max_frames if clip == video else derived_frames
        floor = per_frame_ms([one_pass(clip, workdir / "floor.mp4", frames) for _ in range(repeats)])
        entry = {"clip": clip_name, "size": size, "config": "floor: decode + encode only", **floor, "x_floor": 1.0}
        results.append(entry)
        for name, kind, every, detector_kwargs, threaded in configs:
            with torch_threads(torch.get_num_threads()):      # restored after set_threads, as the script sets them
                predictor = Predictor(files[kind], "default", device="cpu", provider="cpu")
                predictor.set_threads()
                detector = FaceDetector(**detector_kwargs)
                make = lambda: VideoPipeline(predictor, detector, detect_every=every, threaded=threaded)  # noqa: E731
                one_pass(clip, workdir / "out.mp4", 6, make())  # warm-up
                passes = [one_pass(clip, workdir / "out.mp4", frames, make()) for _ in range(pipeline_repeats)]
            stats = per_frame_ms(passes)
            results.append({"clip": clip_name, "size": size, "config": name, **stats,
                            "x_floor": stats["total"] / floor["total"]})
    # The real loop end to end (headless, saving the output as the script does), default flags, as a cross-check
    # of the stage sums; and the floor with the same writer.
    with torch_threads(torch.get_num_threads()):
        predictor = Predictor(files["int8"], "default", device="cpu", provider="cpu")
        predictor.set_threads()
        end_to_end = {}
        for _ in range(pipeline_repeats):
            with VideoReader(str(video), max_frames or None) as reader:
                pipeline = VideoPipeline(predictor, FaceDetector(**VIDEO_DETECTOR), detect_every=3, threaded=True,
                                         fps=reader.clock_fps)
                sinks = output_sinks(reader, predictor.class_names, save_output=workdir / "run_video.mp4", display=False)
                stats = run_video(pipeline.run(reader), sinks, total=reader.total, progress=False)
            if stats["fps"] > end_to_end.get("fps", 0):
                end_to_end = {"frames": stats["frames"], "fps": stats["fps"], "ms_per_frame": 1000 / stats["fps"],
                              "codec": sinks[1].codec}
        floors = []
        for _ in range(repeats):
            with VideoReader(str(video), max_frames or None) as reader:
                t0 = time.perf_counter()
                with VideoFile(workdir / "floor_writer.mp4", reader.fps, reader.size) as writer:
                    for frame in reader:
                        writer.write(frame)
                n = writer.frames
                floors.append((time.perf_counter() - t0) / n * 1000)
        end_to_end["floor_ms"] = min(floors)
        end_to_end["x_floor"] = end_to_end["ms_per_frame"] / end_to_end["floor_ms"]
    encoders = encoder_report(video, workdir, repeat=3, max_frames=max_frames if quick else 0)
    cut_cost = scene_cut_cost(video, max_frames)
    memory = [memory_run(video, n, workdir) for n in (QUICK_MEMORY_FRAMES if quick else MEMORY_FRAMES)]
    detection = detector_report(video, DEFAULT_IMAGE, max_frames, **VIDEO_DETECTOR)
    haar_detection = None if quick else detector_report(video, DEFAULT_IMAGE, max_frames, **HAAR_DETECTOR)

    for r in results:
        rows.append([r["clip"], r["size"], r["config"]] + [fmt(r.get(s)) for s in STAGES]
                    + [fmt(r["total"]), fmt(1000 / r["total"], 1), f"{r['x_floor']:.2f}x",
                       fmt(r.get("faces_per_frame"), 2) if "detect" in r else "-"])
    text = table(["clip", "size", "pipeline", *[f"{s} ms" for s in STAGES], "total ms", "FPS", "vs floor", "faces/frame"], rows)
    text += ("\n\nStage columns are mean ms per frame (detection amortised over detect_every; classify includes the "
             "Predictor's preprocessing; other = tracking, cropping, smoothing, and waits for a detection). With "
             "threaded detection the detect column is time on the worker thread, overlapped with the rest: total "
             "is the main loop's wall time.")
    text += (f"\n\nrun_video end to end (default flags, headless, saving run_video.mp4 as {end_to_end['codec']}, "
             f"best of {pipeline_repeats}): {end_to_end['frames']} frames, {end_to_end['fps']:.1f} FPS "
             f"({fmt(end_to_end['ms_per_frame'])} ms/frame); decode + the same writer alone: "
             f"{fmt(end_to_end['floor_ms'])} ms/frame, so {end_to_end['x_floor']:.2f}x that floor")
    text += "\n" + _detector_line(detection, "default video detector (YuNet, one pass on a 240 px copy, detect_every 1)")
    if haar_detection:
        text += "\n" + _detector_line(haar_detection, f"{HAAR_LABEL}, detect_every 1")
    text += ("\nscene-cut check (part of 'other'), CPU ms per frame: "
             + ", ".join(f"{fmt(ms, 3)} at {size}" for size, ms in cut_cost.items()))
    text += "\n\n" + encoder_table(encoders)
    text += "\n\n" + memory_table(memory)
    return {"title": "Video pipeline", "video": str(video), "rows": results, "run_video": end_to_end,
            "detection": detection, "detection_haar": haar_detection, "encoders": encoders, "memory": memory, "scene_cut_cpu_ms": cut_cost,
            "table": text}


def main(argv=None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description="peak RSS of real_time_video.py on long clips")
    parser.add_argument("--memory", type=int, nargs="+", default=list(MEMORY_FRAMES), metavar="FRAMES")
    parser.add_argument("--video", default=str(DEFAULT_VIDEO))
    parser.add_argument("--encoders", action="store_true", help="the encoder table too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fer_bench_video_") as tmp:
        if args.encoders:
            print(encoder_table(encoder_report(args.video, Path(tmp))), flush=True)
        rows = []
        for frames in args.memory:
            rows.append(memory_run(args.video, frames, Path(tmp)))
            print(memory_table(rows[-1:]), flush=True)
        print(memory_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
