"""A stratified train/validation split of `dataset/train` into `dataset/train_new` and `dataset/val_new`.

Each class is split on its own (so validation has the training set's class balance), from its file names
sorted and then shuffled by a random.Random seeded with the seed and the class name: the split depends only
on the seed and the files, never on the order the file system lists them in or on the other classes.
The source is only read. Both halves are built in hidden temporary folders and renamed into place at the end.
"""

import os
import random
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from fer_common.datasets.folders import class_folders
from fer_common.errors import FERError
from fer_common.files import (check_outside, is_image_name, make_temp_dir, os_error_text, printable,
                              replace_dir, write_json)
from fer_common.labels import EMOTIONS

MODES = ("copy", "hardlink", "symlink")
SPLIT_INFO = ".split.json"


def list_class_files(train_dir) -> tuple[dict[str, list[Path]], list[Path]]:
    """Image files per class name (sorted by name), and the non-image files that were passed over.

    The classes are the class-folder walk's (fer_common.datasets.folders.class_folders)."""
    folder_of, skipped = class_folders(train_dir, hint="run download_dataset.py first, or give --dataset_path")
    files: dict[str, list[Path]] = {}
    for cls, folder in folder_of.items():
        files[cls] = []
        for f in sorted(folder.iterdir(), key=lambda p: p.name):
            (files[cls] if f.is_file() and is_image_name(f.name) else skipped).append(f)
    return files, skipped


def plan_split(files: dict[str, list[Path]], val_ratio: float, seed: int) -> dict[str, tuple[list, list]]:
    """(train files, validation files) per class; each class gives round(n * val_ratio) images, at least 1,
    to validation and keeps at least 1 for training."""
    if not 0 < val_ratio < 1:
        raise FERError(f"--val_ratio must be between 0 and 1, got {val_ratio}")
    plan = {}
    for cls, paths in files.items():
        if len(paths) < 2:
            raise FERError(f"class {cls} has {len(paths)} image(s); a split needs at least 2 per class")
        order = sorted(paths, key=lambda p: p.name)
        random.Random(f"{seed}:{cls}").shuffle(order)
        n_val = min(max(1, round(len(order) * val_ratio)), len(order) - 1)
        plan[cls] = (sorted(order[n_val:]), sorted(order[:n_val]))
    return plan


def _place(src: Path, dst: Path, mode: str) -> None:
    if mode == "copy":
        shutil.copy2(src, dst)
    elif mode == "hardlink":
        try:
            os.link(src, dst)
        except OSError as e:
            raise FERError(f"cannot hard-link {src} ({e.strerror}); use --mode copy or symlink") from None
    else:
        # Relative, so the links still work after the whole data set folder is moved.
        os.symlink(os.path.relpath(src.resolve(), dst.parent.resolve()), dst)


def split_dataset(dataset_path="dataset", val_ratio: float = 0.1, seed: int = 42, mode: str = "copy",
                  force: bool = False) -> dict:
    """Split dataset_path/train into dataset_path/train_new and dataset_path/val_new.

    Returns {"counts": {"train_new": {Class: n}, "val_new": {Class: n}}, "skipped": [non-image paths]}.
    """
    if mode not in MODES:
        raise FERError(f"--mode must be one of {', '.join(MODES)}, got {mode}")
    root = Path(dataset_path)
    files, skipped = list_class_files(root / "train")
    outputs = {"train_new": root / "train_new", "val_new": root / "val_new"}
    # train_new or val_new as a link into train/ would put the halves inside the data they are made from.
    check_outside(outputs, {"train": root / "train"})
    for path in outputs.values():
        if path.exists() and not force:
            raise FERError(f"{path} already exists; use --force to replace it")
    for path in skipped:
        print(f"warning: skipping {printable(path)}: not an image", file=sys.stderr)
    missing = [e for e in EMOTIONS if e not in files]
    if missing and all(c in EMOTIONS for c in files):
        # FER-2013-style data short of an emotion is legal (CK+ has no Neutral), but may be a lost folder.
        print(f"warning: {root / 'train'} has no folder for {', '.join(missing)}: the model will know "
              f"{len(files)} classes", file=sys.stderr)
    plan = plan_split(files, val_ratio, seed)

    temps = {}
    try:
        for name, path in outputs.items():
            temps[name] = make_temp_dir(path)
        counts = {name: {} for name in outputs}
        total = sum(len(t) + len(v) for t, v in plan.values())
        with tqdm(total=total, desc=f"{mode} split", unit="img") as bar:
            for cls, halves in plan.items():
                for name, paths in zip(outputs, halves):
                    folder = temps[name] / cls
                    folder.mkdir()
                    for src in paths:
                        _place(src, folder / src.name, mode)
                        bar.update()
                    counts[name][cls] = len(paths)
        write_json(temps["val_new"] / SPLIT_INFO, {"val_ratio": val_ratio, "seed": seed, "mode": mode,
                                                    "counts": counts})
        for name, path in outputs.items():
            replace_dir(temps[name], path)
    except OSError as e:    # the disk side: full, read-only, no permission
        raise FERError(f"cannot write the split into {printable(root)}: {os_error_text(e)}") from None
    finally:
        for tmp in temps.values():
            shutil.rmtree(tmp, ignore_errors=True)
    return {"counts": counts, "skipped": skipped}
