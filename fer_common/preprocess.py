"""Preprocessing: the config each model type carries, and the one function that applies it.

A preprocessing config is a plain dict stored in every checkpoint and ONNX file:
    {"input_size": [H, W], "channels": 1 or 3, "mean": [...], "std": [...]}
Inference reads it from the model file; no flag repeats it. The NumPy/OpenCV path (prepare_batch) is what
inference runs, without PyTorch; `normalize` is the training side's, on torch tensors (its augmentation is in
augmentation.py).
"""

from __future__ import annotations

import os
import stat

import cv2
import numpy as np

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# FER-2013's pixel statistics are close to mean 0.5, std 0.25 on the [0, 1] scale.
DEFAULT_PREPROCESSING = {"input_size": [48, 48], "channels": 1, "mean": [0.5], "std": [0.25]}
ADVANCED_PREPROCESSING = {"input_size": [224, 224], "channels": 3, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}

# Decoding a header that claims 60000 x 60000 pixels would take 10 GB: refuse images above this many pixels.
MAX_IMAGE_PIXELS = 1 << 26      # 67 M pixels (8192 x 8192), 200 MB as BGR


def image_header_size(data) -> tuple[int, int] | None:
    """(width, height) an image file's header claims, read without decoding the pixels; None if unknown."""
    try:
        return _header_size(data)
    except Exception:   # Pillow does not know the format, the header is damaged, or it claims gigapixels
        return None


def image_pixels_problem(data) -> str | None:
    """Why an image is refused undecoded for the size its header claims (more than MAX_IMAGE_PIXELS: decoding
    could exhaust memory); None when within the limit or unknown (then OpenCV decides, with its own limit)."""
    import re

    try:
        size = _header_size(data)
    except Exception as e:
        # Pillow refuses to open a header over twice its own limit, naming the pixels it claims.
        claimed = re.search(r"\((\d+) pixels\)", str(e)) if type(e).__name__ == "DecompressionBombError" else None
        if claimed is None:
            return None
        pixels, what = int(claimed.group(1)), f"{int(claimed.group(1)):,} pixels"
    else:
        if size is None:
            return None
        pixels, what = size[0] * size[1], f"{size[0]} x {size[1]} pixels"
    if pixels <= MAX_IMAGE_PIXELS:
        return None
    return f"the image claims {what}, more than the {MAX_IMAGE_PIXELS / 1e6:.0f} M pixels accepted"


# JPEG's start-of-frame markers (baseline, progressive, lossless, arithmetic), which carry the image's size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _jpeg_png_size(data) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's frame header, read in microseconds (Pillow takes 0.1 ms
    for a photo: a bulk run's 2%); None for any other format or layout, which Pillow then reads."""
    view = memoryview(data).cast("B")
    if view[:8] == _PNG_SIGNATURE and view[12:16] == b"IHDR":
        size = int.from_bytes(view[16:20], "big"), int.from_bytes(view[20:24], "big")
        return size if all(size) else None
    if view[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(view) and view[i] == 0xFF:
        marker = view[i + 1]
        if marker == 0xFF:                              # a fill byte before the marker
            i += 1
        elif marker in _JPEG_SOF:
            size = int.from_bytes(view[i + 7:i + 9], "big"), int.from_bytes(view[i + 5:i + 7], "big")
            return size if all(size) else None          # a height of 0 is given later (DNL): let Pillow say
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a segment
            i += 2
        elif marker in (0xD9, 0xDA):                    # end of image or start of scan before any frame
            return None
        else:
            i += 2 + int.from_bytes(view[i + 2:i + 4], "big")
    return None


def _header_size(data) -> tuple[int, int] | None:
    size = _jpeg_png_size(data)
    if size is not None:
        return size
    try:
        from PIL import Image
    except ImportError:
        return None
    import io
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(bytes(data[:1 << 20]) if len(data) > 1 << 20 else bytes(data))) as im:
            return im.size


def decode_problem(data) -> str | None:
    """Why image bytes are refused before decoding: empty, or a header claiming more than MAX_IMAGE_PIXELS
    (decoding it could exhaust memory); None when they may be decoded. One rule for files and bodies."""
    if not len(data):
        return "empty: no image bytes"
    return image_pixels_problem(data)


def decode_image(data, channels: int, bgr: bool = False) -> np.ndarray | None:
    """Decode image bytes (a file's, or a request body's) as read_image does; None if refused (decode_problem)
    or unreadable (not an image, truncated, damaged)."""
    data = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if decode_problem(data) is not None:
        return None
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    try:
        image = cv2.imdecode(data, flag)
    except cv2.error:   # OpenCV raises, rather than returning None, for some damaged files
        return None
    if image is not None and channels == 3 and not bgr:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def read_image(path, channels: int, bgr: bool = False) -> np.ndarray | None:
    """Decode an image file as uint8 HxW (channels=1) or HxWx3 (channels=3: RGB as models take it, or BGR as
    OpenCV frames are with bgr=True); None if unreadable or not a regular file (a FIFO would never end)."""
    # np.fromfile + imdecode also handles non-ASCII paths, which cv2.imread does not on Windows.
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        data = np.fromfile(str(path), dtype=np.uint8)
    except (OSError, ValueError):
        return None
    return decode_image(data, channels, bgr)


def to_channels(image: np.ndarray, channels: int, bgr: bool = True) -> np.ndarray:
    """Gray HxW or colour HxWx3 (BGR as OpenCV gives it, unless bgr=False) -> HxW gray or HxWx3 RGB."""
    if channels == 1:
        return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else image


def small_input(prep: dict) -> bool:
    """A model input too small to split across cores (the 48x48 CNN): one thread runs it fastest, and several
    such forward passes may run side by side (benchmarks/README.md)."""
    h, w = prep["input_size"]
    return h * w <= 64 * 64


def resize(image: np.ndarray, size) -> np.ndarray:
    """Resize to (H, W): area averaging when shrinking (no aliasing), bilinear when enlarging."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrinking = image.shape[0] > h or image.shape[1] > w
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


# Training caches images at the model's input size, but at most this big (a 224 px input is upsampled from the
# cache on the fly, rather than storing FER-2013 at 3 x 224 x 224); inference resizes through the same size.
MAX_CACHE_SIDE = 112


def cache_size(input_size) -> list[int]:
    """The size training caches images at, and inference passes crops through: input size, capped."""
    return [min(s, MAX_CACHE_SIDE) for s in input_size]


def to_input_size(image: np.ndarray, size) -> np.ndarray:
    """Resize a crop to the model's input size along the path training takes: to the cache size, then up.

    For a 48x48 model that is one resize; for a 224 px backbone it is crop -> 112 -> 224, as in training,
    so a face looks the same to the model in training and in inference.
    """
    return resize(resize(image, cache_size(size)), size)


def prepare_batch(crops, prep: dict, bgr: bool = True) -> np.ndarray:
    """Face crops (uint8, BGR from OpenCV by default, or gray) -> float32 N x C x H x W, normalised."""
    size, channels = prep["input_size"], prep["channels"]
    batch = np.stack([to_input_size(to_channels(c, channels, bgr), size) for c in crops]).astype(np.float32)
    if channels == 1:
        batch = batch[:, None]                 # N,1,H,W
    else:
        batch = batch.transpose(0, 3, 1, 2)    # N,H,W,3 -> N,3,H,W
    mean = np.asarray(prep["mean"], np.float32).reshape(1, -1, 1, 1) * 255.0
    std = np.asarray(prep["std"], np.float32).reshape(1, -1, 1, 1) * 255.0
    return np.ascontiguousarray((batch - mean) / std)


def normalize(images: torch.Tensor, prep: dict) -> torch.Tensor:
    """uint8 N x C x h x w (any size) -> float N x C x H x W at the model's input size, normalised."""
    import torch
    import torch.nn.functional as F

    x = images.float().div_(255.0)
    if tuple(x.shape[-2:]) != tuple(prep["input_size"]):
        x = F.interpolate(x, size=tuple(prep["input_size"]), mode="bilinear", align_corners=False, antialias=True)
    mean, std = mean_std(prep, x.device)
    return (x - mean) / std


def mean_std(prep: dict, device) -> tuple:
    """A preprocessing config's mean and std as 1 x C x 1 x 1 tensors on `device` (the [0, 1] scale)."""
    import torch

    return (torch.tensor(prep["mean"], device=device).view(1, -1, 1, 1),
            torch.tensor(prep["std"], device=device).view(1, -1, 1, 1))
