"""Training throughput (images/s) of the default model on the CPU: in-memory data vs JPEG decoding, fp32 vs bf16.

A synthetic folder data set (48x48 JPEGs, seven classes) is made in a temporary folder. Each row trains
whole epochs with the real train_one_epoch (augmentation, AdamW, class-weighted loss as in fine_tuning.py);
the first epoch is a warm-up, the figure is the median of the rest.
"""

import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from fer_common.datasets import folders
from fer_common.train import loaders as fdata
from fer_common.device import amp_dtype, grad_scaler
from fer_common.labels import EMOTIONS
from fer_common.model.networks import FERNet, default_preprocessing
from fer_common.train.loop import EpochOptions, train_one_epoch

from .common import cpu_cores, fmt, table, torch_threads

BATCH_SIZE = 64


def make_dataset(root: Path, per_class: int, seed: int = 0) -> Path:
    """root/<Emotion>/img_XXX.jpg: noisy 48x48 gray images with a class-dependent bar (learnable, not faces)."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(EMOTIONS):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.normal(110, 30, (48, 48)).clip(0, 255).astype(np.uint8)
            angle = label * np.pi / len(EMOTIONS)
            dx, dy = int(18 * np.cos(angle)), int(18 * np.sin(angle))
            cv2.line(image, (24 - dx, 24 - dy), (24 + dx, 24 + dy), 250, 4)
            cv2.imwrite(str(folder / f"img_{i:04d}.jpg"), image)
    return root


def epochs_per_second(loader, images: int, epochs: int, amp_mode: str) -> dict:
    device = torch.device("cpu")
    prep = default_preprocessing("default")
    torch.manual_seed(0)
    model = FERNet().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    amp = amp_dtype(device, amp_mode)
    scaler = grad_scaler(device, amp)
    times = []
    for epoch in range(epochs + 1):      # epoch 0: warm-up (allocator, oneDNN kernels, worker start)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        t0 = time.perf_counter()
        train_one_epoch(model, loader, EpochOptions(optimizer, loss_fn, device, prep, amp, scaler), quiet=True)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times[1:])
    return {"images_per_s": images / median, "epoch_s": median, "epochs": epochs}


def run(args, workdir: Path, log=print) -> dict:
    quick = args.quick
    per_class = 10 if quick else 64
    epochs = 1 if quick else 2
    root = make_dataset(workdir / "train_synthetic", per_class)
    samples, _ = folders.list_samples(root)
    n = len(samples)
    cores = cpu_cores()
    t0 = time.perf_counter()
    images, labels, _ = fdata.load_into_memory(samples, [48, 48], 1, quiet=True)
    cache_s = time.perf_counter() - t0

    loaders = [("memory (MemoryLoader)", lambda: fdata.MemoryLoader(images, labels, BATCH_SIZE, True, drop_last=True))]
    worker_counts = [0] if quick else sorted({0, min(2, cores)})
    for w in worker_counts:
        loaders.append((f"JPEG folder (streaming_loader, {w} workers)",
                        lambda w=w: fdata.streaming_loader(samples, [48, 48], 1, BATCH_SIZE, True, w, drop_last=True)))
    used = (n // BATCH_SIZE) * BATCH_SIZE            # drop_last: images actually trained per epoch
    # Training uses every core (set_cpu_threads); one thread is measured too: on a shared machine it is the fair figure.
    thread_options = [1] if quick else sorted({cores, 1}, reverse=True)
    rows = []
    for threads in thread_options:
        with torch_threads(threads):
            for name, make in loaders:
                for amp_mode, label in (("off", "fp32"), ("bf16", "bf16 autocast")):
                    result = epochs_per_second(make(), used, epochs, amp_mode)
                    rows.append({"loader": name, "precision": label, "threads": threads, **result})
    text = table(["loader", "precision", "threads", "images / s", "s / epoch"],
                 [[r["loader"], r["precision"], r["threads"], fmt(r["images_per_s"], 0), fmt(r["epoch_s"], 3)]
                  for r in rows])
    text += (f"\n\n{n} synthetic 48x48 JPEGs ({used} trained per epoch, batch {BATCH_SIZE}, median of {epochs} epoch(s) "
             f"after a warm-up); caching them in memory took {cache_s:.2f} s once")
    return {"title": "Training throughput (default model, CPU)", "images": n, "cache_seconds": cache_s,
            "rows": rows, "table": text}
