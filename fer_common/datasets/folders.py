"""The class-folder walk: a data set folder holds one sub-folder per class, as torchvision's ImageFolder reads it.

Any names, any number (at least 2). FER-2013's emotions may be spelt in any case (`angry/` or `Angry/` is
Angry); other names are kept as written. Class indices follow the class names sorted, as ImageFolder does; the
checkpoint stores that order as `class_names`, so nothing downstream assumes FER-2013's classes or numeric order.
No PyTorch here: evaluating or calibrating an ONNX model walks folders too.
"""

import random
from pathlib import Path

import numpy as np

from fer_common.errors import FERError
from fer_common.files import check_class_folder_name, is_image_name
from fer_common.labels import MIN_CLASSES, class_name
from fer_common.preprocess import read_image, resize


def find_classes(root) -> tuple[list[str], list[Path]]:
    """Class names (sorted) and their folders: every sub-folder is a class, at least 2, none of them empty."""
    root = Path(root)
    if not root.is_dir():
        raise FERError(f"data folder not found: {root}")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if len(folders) < MIN_CLASSES:
        found = f"only {folders[0].name}/" if folders else "none"
        raise FERError(f"{root} should hold one sub-folder of images per class, at least {MIN_CLASSES} classes; "
                       f"found {found}")
    folder_of: dict[str, Path] = {}
    for folder in folders:
        name = class_name(check_class_folder_name(folder))
        if name in folder_of:
            raise FERError(f"{folder_of[name]} and {folder} are both the class {name}: merge them into one folder")
        folder_of[name] = folder
        if not any(f.is_file() and is_image_name(f.name) for f in folder.iterdir()):
            raise FERError(f"class folder {folder} has no images")
    # Sorted by class name, as ImageFolder sorts its folder names.
    names = sorted(folder_of)
    return names, [folder_of[n] for n in names]


def list_samples(root, class_names: list[str] | None = None) -> tuple[list[tuple[Path, int]], list[str]]:
    """(path, label) for every image under root, and the class names; labels index class_names."""
    names, folders = find_classes(root)
    if class_names is not None and names != list(class_names):
        missing = [n for n in class_names if n not in names]
        extra = [n for n in names if n not in class_names]
        raise FERError(f"{root} has classes {', '.join(names)}, which differ from the training classes "
                       f"{', '.join(class_names)}" + (f"; missing: {', '.join(missing)}" if missing else "")
                       + (f"; not in training: {', '.join(extra)}" if extra else ""))
    samples = [(f, label) for label, folder in enumerate(folders)
               for f in sorted(folder.iterdir()) if f.is_file() and is_image_name(f.name)]
    return samples, names


def sample_crops(folder, n: int, size=(48, 48), channels: int = 1, seed: int = 0) -> list[np.ndarray]:
    """Up to n readable images of a class-folder data set, picked at random, as uint8 arrays at `size`
    (face crops to calibrate int8 quantization on)."""
    samples, _ = list_samples(folder)
    random.Random(seed).shuffle(samples)
    crops = []
    for path, _ in samples:
        if len(crops) == n:
            break
        image = read_image(path, channels)
        if image is not None:
            crops.append(resize(image, list(size)))
    return crops
