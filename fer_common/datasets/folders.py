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


def class_folders(root, hint: str = "") -> tuple[dict[str, Path], list[Path]]:
    """The class-folder walk: {class name: folder}, sorted by name, and the plain files found beside the
    folders. Every sub-folder (hidden ones aside) is a class; two folders may not spell one class; at least
    MIN_CLASSES. `hint` ends the "not found" message (what to run first)."""
    root = Path(root)
    if not root.is_dir():
        raise FERError(f"{root} not found: {hint}" if hint else f"data folder not found: {root}")
    folder_of: dict[str, Path] = {}
    loose: list[Path] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            loose.append(entry)
            continue
        name = class_name(check_class_folder_name(entry))
        if name in folder_of:
            raise FERError(f"{folder_of[name]} and {entry} are both the class {name}: merge them into one folder")
        folder_of[name] = entry
    if len(folder_of) < MIN_CLASSES:
        found = f"only {next(iter(folder_of.values())).name}/" if folder_of else "none"
        raise FERError(f"{root} should hold one sub-folder of images per class, at least {MIN_CLASSES} classes; "
                       f"found {found}" + (f" ({hint})" if hint and not folder_of else ""))
    return dict(sorted(folder_of.items())), loose


def find_classes(root) -> tuple[list[str], list[Path]]:
    """Class names (sorted, as ImageFolder sorts its folders) and their folders, none of them empty."""
    folder_of, _ = class_folders(root)
    for folder in folder_of.values():
        if not any(f.is_file() and is_image_name(f.name) for f in folder.iterdir()):
            raise FERError(f"class folder {folder} has no images")
    return list(folder_of), list(folder_of.values())


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
