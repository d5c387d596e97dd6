"""Per-face latency and throughput of the default and advanced models: PyTorch eager, ONNX Runtime fp32 and int8.

Each row is the median of repeated forward passes after warm-up, at batch 1 and batch 8, with the given
number of intra-op threads. The Predictor rows add what the real predictor does around the model
(preprocessing of 96x96 BGR crops, softmax) with the thread settings it picks itself.
"""

from pathlib import Path

import numpy as np
import torch

from fer_common.model.checkpoint import make_checkpoint, save_checkpoint
from fer_common.runtime import make_session
from fer_common.model.onnx_export import export_onnx
from fer_common.infer.predictor import Predictor
from fer_common.preprocess import prepare_batch
from fer_common.datasets.folders import sample_crops
from fer_common.model.quantize import quantize_onnx

from .common import REPO, cpu_cores, fmt, load_default_model, table, time_it, torch_threads

HEADERS = ["model", "runtime", "threads", "batch", "ms / batch", "ms / face", "faces / s"]
BATCHES = (1, 8)


def ort_session(path, threads: int, spin: bool = True):
    """An ONNX Runtime CPU session made as the Predictor makes its own, with `threads` intra-op threads.

    spin=False stops idle worker threads from busy-waiting (they then yield the core to other processes).
    """
    return make_session(path, "cpu", threads=threads, spin=spin)[0]


def row(model: str, runtime: str, threads, batch: int, timing: dict) -> dict:
    t = timing["median"]
    return {"model": model, "runtime": runtime, "threads": threads, "batch": batch, "ms_per_batch": t * 1000,
            "ms_per_face": t * 1000 / batch, "faces_per_s": batch / t, "p10_ms": timing["p10"] * 1000,
            "p90_ms": timing["p90"] * 1000, "n": timing["n"]}


def bench_torch(model, name, x_by_batch, threads, timing_args):
    rows = []
    with torch_threads(threads), torch.inference_mode():
        for b, x in x_by_batch.items():
            xt = torch.from_numpy(x)
            rows.append(row(name, "PyTorch eager", threads, b, time_it(lambda: model(xt), **timing_args)))
    return rows


def bench_ort(path, name, runtime, x_by_batch, threads, timing_args, spin=True):
    session = ort_session(path, threads, spin)
    runtime += "" if spin or threads == 1 else ", no spin-wait"
    return [row(name, runtime, threads, b, time_it(lambda: session.run(None, {"input": x}), **timing_args))
            for b, x in x_by_batch.items()]


def folder_accuracy(paths: dict, folder, class_names, prep, batch_size: int = 256) -> dict:
    """Top-1 accuracy of each ONNX file in `paths` on an image-folder data set of face crops (no detection)."""
    from fer_common.datasets import folders
    from fer_common.train import loaders as fdata

    samples, _ = folders.list_samples(folder, class_names)
    images, labels, bad = fdata.load_into_memory(samples, prep["input_size"], prep["channels"], quiet=True)
    crops = [im[0].numpy() if prep["channels"] == 1 else im.numpy().transpose(1, 2, 0) for im in images]
    labels = labels.numpy()
    preds = {}
    for name, path in paths.items():
        session = ort_session(path, cpu_cores())
        out = [session.run(["logits"], {"input": prepare_batch(crops[i:i + batch_size], prep, bgr=False)})[0]
               for i in range(0, len(crops), batch_size)]
        preds[name] = np.concatenate(out).argmax(1)
    result = {"images": int(len(labels)), "unreadable": len(bad),
              "accuracy": {name: float((p == labels).mean()) for name, p in preds.items()}}
    names = list(paths)
    if len(names) == 2:
        result["agreement"] = float((preds[names[0]] == preds[names[1]]).mean())
    return result


_FILES = {}


def default_model_files(args, workdir: Path, log=print) -> dict:
    """The default model as a .pth checkpoint, its fp32 ONNX export and its int8 quantization, made once per run."""
    key = str(workdir)
    if key in _FILES:
        return _FILES[key]
    model, class_names, prep, source, config = load_default_model(args.checkpoint)
    log(f"default model: {source}")
    files = {"model": model, "class_names": class_names, "prep": prep, "source": source,
             "pth": workdir / "default.pth", "onnx": workdir / "default.onnx", "int8": workdir / "default.int8.onnx"}
    save_checkpoint(make_checkpoint(model, "default", config, class_names, prep), files["pth"])
    export_onnx(model, files["onnx"], "default", class_names, prep, verbose=False)
    calib_folder = args.calibration_data or (REPO / "dataset" / "val_new")
    if Path(calib_folder).is_dir():
        crops = sample_crops(calib_folder, n=100 if args.quick else 400)
        files["calibration"] = f"{len(crops)} crops from {calib_folder}"
    else:
        rng = np.random.default_rng(0)
        crops = [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(64)]
        files["calibration"] = f"{len(crops)} random images (no calibration folder {calib_folder})"
    log(f"int8 calibration: {files['calibration']}")
    files["quantization"] = quantize_onnx(files["onnx"], files["int8"], crops, verbose=False)
    _FILES[key] = files
    return files


def run(args, workdir: Path, log=print) -> dict:
    quick = args.quick
    timing = dict(warmup=2, repeats=5, min_seconds=0.0) if quick else dict(warmup=10, repeats=30, min_seconds=1.5)
    cores = cpu_cores()
    thread_options = [1] if quick else sorted({1, cores})
    rng = np.random.default_rng(0)

    files = default_model_files(args, workdir, log)
    model, class_names, prep, source = files["model"], files["class_names"], files["prep"], files["source"]
    ckpt_path, fp32_path, int8_path = files["pth"], files["onnx"], files["int8"]
    quant, calib_source = files["quantization"], files["calibration"]
    int8_name = f"ONNX Runtime int8 ({quant['method']})"

    rows = []
    c, (h, w) = prep["channels"], prep["input_size"]
    x_by_batch = {b: rng.normal(size=(b, c, h, w)).astype(np.float32) for b in BATCHES}
    for threads in thread_options:
        rows += bench_torch(model, "default", x_by_batch, threads, timing)
        rows += bench_ort(fp32_path, "default", "ONNX Runtime fp32", x_by_batch, threads, timing)
        rows += bench_ort(int8_path, "default", int8_name, x_by_batch, threads, timing)
        if threads > 1:
            rows += bench_ort(fp32_path, "default", "ONNX Runtime fp32", x_by_batch, threads, timing, spin=False)
            rows += bench_ort(int8_path, "default", int8_name, x_by_batch, threads, timing, spin=False)

    # The real Predictor, as the scripts use it: its own thread settings, preprocessing and softmax included.
    face_crops = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(max(BATCHES))]
    for label, path in (("Predictor .pth", ckpt_path), ("Predictor .onnx fp32", fp32_path),
                        ("Predictor .onnx int8", int8_path)):
        with torch_threads(torch.get_num_threads()):        # the .pth Predictor sets 1 thread globally
            predictor = Predictor(path, "default", device="cpu", provider="cpu")
            threads = torch.get_num_threads() if predictor.runtime == "torch" else predictor.session.get_session_options().intra_op_num_threads
            for b in BATCHES:
                batch = face_crops[:b]
                rows.append(row("default", label, threads, b, time_it(lambda: predictor.predict(batch), **timing)))

    # The advanced model: slow on a CPU, so a few passes are enough.
    adv_timing = dict(warmup=1, repeats=1 if quick else 2, min_seconds=0.0)
    advanced = None
    if not args.skip_advanced:
        from fer_common.model.networks import AdvancedFER, default_preprocessing

        torch.manual_seed(0)
        adv = AdvancedFER(backbone=args.backbone, pretrained=False).eval()
        adv_prep = default_preprocessing("advanced", adv)
        c, (h, w) = adv_prep["channels"], adv_prep["input_size"]
        adv_x = {b: rng.normal(size=(b, c, h, w)).astype(np.float32) for b in BATCHES}
        name = f"advanced ({args.backbone})"
        rows += bench_torch(adv, name, adv_x, cores, adv_timing)
        advanced = {"backbone": args.backbone, "onnx": "skipped"}
        if quick and args.backbone == "swin_base_patch4_window7_224":
            log("advanced ONNX row skipped under --quick (exporting Swin-Base takes a minute; use --backbone to pick a small one)")
        else:
            adv_path = workdir / "advanced.onnx"
            export_onnx(adv, adv_path, "advanced", class_names, adv_prep, verbose=False)
            rows += bench_ort(adv_path, name, "ONNX Runtime fp32", adv_x, cores, adv_timing)
            advanced["onnx"] = "measured"
        del adv

    accuracy = None
    if args.data:
        accuracy = folder_accuracy({"fp32": fp32_path, "int8": int8_path}, args.data, class_names, prep)
        accuracy["change_points"] = (accuracy["accuracy"]["int8"] - accuracy["accuracy"]["fp32"]) * 100
        accuracy["folder"] = str(args.data)

    text = table(HEADERS, [[r["model"], r["runtime"], r["threads"], r["batch"], fmt(r["ms_per_batch"], 3),
                            fmt(r["ms_per_face"], 3), fmt(r["faces_per_s"], 0)] for r in rows])
    quant_rows = [[name, f"{q['agreement']:.1%}", fmt(q["max_logits_diff"], 3), fmt(q["ms_batch1"], 3),
                   fmt(q["ms_batch8"], 3), "kept" if name == quant["method"] else ""]
                  for name, q in quant["candidates"].items()]
    text += "\n\nint8 candidates (1 thread; agreement = top-1 equal to fp32 on held-out calibration crops):\n"
    text += table(["method", "agreement", "max abs logits diff", "ms batch 1", "ms batch 8", ""], quant_rows)
    if accuracy:
        a = accuracy["accuracy"]
        text += (f"\n\naccuracy on {accuracy['folder']} ({accuracy['images']} images, no detection): "
                 f"fp32 {a['fp32'] * 100:.2f}%, int8 {a['int8'] * 100:.2f}%, change {accuracy['change_points']:+.2f} points; "
                 f"top-1 agreement {accuracy['agreement']:.1%}")
    summary = {r["runtime"]: r["ms_per_face"] for r in rows if r["model"] == "default" and r["batch"] == 1}
    return {"title": "Model latency", "source": source, "calibration": calib_source, "rows": rows,
            "quantization": quant, "accuracy": accuracy, "advanced": advanced, "table": text, "batch1": summary}
