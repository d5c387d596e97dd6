"""Tiny synthetic FER-style data sets for tests: one learnable pattern per emotion, no real faces."""

from pathlib import Path

import cv2
import numpy as np

from fer_common.labels import EMOTIONS


def pattern(label: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A 48x48 gray image whose class is visible: a bright bar whose angle depends on the label, plus noise."""
    image = rng.normal(100, 20, (size, size)).clip(0, 255).astype(np.uint8)
    centre = (size // 2 + int(rng.integers(-3, 4)), size // 2 + int(rng.integers(-3, 4)))
    angle = label * np.pi / len(EMOTIONS)
    dx, dy = int(18 * np.cos(angle)), int(18 * np.sin(angle))
    cv2.line(image, (centre[0] - dx, centre[1] - dy), (centre[0] + dx, centre[1] + dy), 250, 5)
    return image


def make_crops(folder, n, bad=(), seed=0) -> list[str]:
    """n 48x48 gray PNG crops named 000.png ...; the indices in `bad` hold bytes that are no image."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.png"
        if i in bad:
            path.write_bytes(b"\x89PNG truncated")
        else:
            cv2.imwrite(str(path), pattern(i % len(EMOTIONS), rng))
        paths.append(str(path))
    return paths


def make_folder_dataset(root, per_class=(12, 4), splits=("train_new", "val_new"), seed=0,
                        class_folder=lambda name: name, ext=".png", classes=EMOTIONS) -> Path:
    """root/<split>/<Class>/img_XXX.png with per_class[i] images per class in splits[i] (classes: folder names)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, n in zip(splits, per_class):
        for label, name in enumerate(classes):
            folder = root / split / class_folder(name)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                cv2.imwrite(str(folder / f"img_{i:03d}{ext}"), pattern(label, rng))
    return root


REPO = Path(__file__).resolve().parents[1]


def run_script(*args, cwd=None, timeout=600, env=None):
    """Run a top-level script as a user types it: `python SCRIPT ARGS...`; returns the CompletedProcess."""
    import os
    import subprocess
    import sys

    script, *rest = args
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, str(REPO / script), *map(str, rest)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def frame_result(k: int, time: float, boxes, ids, probabilities, class_names, embeddings=None):
    """A video frame's Result, as the pipeline makes it (make_result with track ids, frame and time)."""
    from fer_common.results import make_result

    return make_result("video", class_names, np.asarray(boxes).reshape(-1, 4), probabilities, embeddings,
                       track_ids=ids, size=(480, 360), frame=k, time=time, no_face_error=False)
