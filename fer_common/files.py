"""File helpers: which files are images, and atomic writes (a file appears complete under its final name, or not at all)."""

import contextlib
import json
import os
import tempfile
from pathlib import Path

from .cli import FERError

# The image files every reader of the toolkit accepts (data sets, inference folders, archive import).
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    The temporary file lives in the same folder so the final `os.replace` is atomic.
    `suffix` keeps an extension that a writer may need (cv2.VideoWriter picks the codec from it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def save_torch(obj, path) -> None:
    """torch.save, atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def check_writable(path, what: str = "output", overwrite: bool = False) -> Path:
    """Fail early, in one line, if `path` cannot be written, or exists and may not be replaced."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FERError(f"cannot write {what} {path}: cannot create folder {path.parent} ({e.strerror})") from None
    if path.is_dir():
        raise FERError(f"cannot write {what} {path}: it is a folder")
    if path.exists() and not overwrite:
        raise FERError(f"{what} {path} already exists: pass --overwrite to replace it")
    if not os.access(path.parent, os.W_OK):
        raise FERError(f"cannot write {what} {path}: folder {path.parent} is not writable")
    return path
