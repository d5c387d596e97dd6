"""File helpers: which files are images, and atomic writes (a file appears complete under its final name, or not at all)."""

import contextlib
import functools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .errors import FERError

# The image files every reader of the toolkit accepts (data sets, inference folders, archive import):
# every format OpenCV's imdecode reads (OpenEXR is off in OpenCV's wheels, so it is not here).
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".pgm", ".ppm",
                    ".pbm", ".pnm", ".sr", ".ras", ".jp2", ".hdr", ".pic", ".avif", ".gif"}
# Video containers the video writer has a codec for (see video.FOURCCS).
VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".avi", ".mkv"}
# Decoding a header that claims 60000 x 60000 pixels would take 10 GB: refuse images above this many pixels.
MAX_IMAGE_PIXELS = 1 << 26      # 67 M pixels (8192 x 8192), 200 MB as BGR


@functools.lru_cache(maxsize=None)
def writable_image_extension(suffix: str) -> bool:
    """True if this OpenCV build encodes a colour image as `suffix` (.pbm is black-and-white only, ...)."""
    import cv2
    import numpy as np

    suffix = suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        return False
    try:
        ok, _ = cv2.imencode(suffix, np.full((64, 64, 3), 128, np.uint8))
    except cv2.error:
        return False
    return bool(ok)


def image_header_size(data) -> tuple[int, int] | None:
    """(width, height) an image file's header claims, read without decoding the pixels; None if unknown."""
    try:
        from PIL import Image
    except ImportError:
        return None
    import io
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(bytes(data[:1 << 20]) if len(data) > 1 << 20 else bytes(data))) as im:
                return im.size
    except Exception:   # Pillow does not know the format, or the header is damaged: OpenCV decides
        return None


def check_image_size(data, what="image") -> None:
    """Refuse an image whose header claims more than MAX_IMAGE_PIXELS pixels, before decoding a byte of it."""
    size = image_header_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise FERError(f"{what} claims {size[0]} x {size[1]} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                       f"this toolkit decodes (a damaged or hostile file?)")


def write_image(path, image, params=()) -> None:
    """Encode `image` (as OpenCV would save it, format from the extension) and write it atomically."""
    import cv2

    path = Path(path)
    try:
        ok, data = cv2.imencode(path.suffix or ".png", image, list(params))
    except cv2.error:
        ok = False
    if not ok:
        raise FERError(f"cannot encode {path} (unsupported extension?)")
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:
            tmp.write_bytes(data.tobytes())
    except OSError as e:
        raise FERError(f"cannot write {path} ({e.strerror})") from None


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


def same_file(a, b) -> bool:
    """True if paths a and b name the same file (also through links, `./`, or case on a case-blind disk)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _key(path) -> str:
    return os.path.normcase(os.path.realpath(path))


def check_outputs_distinct(outputs: dict, inputs: dict | None = None) -> None:
    """Refuse two outputs with the same path (one would silently replace the other), and an output that
    is one of the inputs. `outputs` and `inputs` map a flag (or a description) to a path; None is skipped."""
    seen = {}
    for flag, path in outputs.items():
        if not path:
            continue
        key = _key(path)
        if key in seen:
            raise FERError(f"{seen[key]} and {flag} are the same file ({path}): one would replace the other; "
                           f"give them different paths")
        seen[key] = flag
    for flag, path in (inputs or {}).items():
        if path and _key(path) in seen:
            raise FERError(f"{seen[_key(path)]} {path} is also the input {flag}: writing it would destroy "
                           f"the input; give another path")


def check_output_files(outputs: dict, overwrite: bool = False, inputs: dict | None = None,
                       replaceable=()) -> list[Path]:
    """Everything a run will write, checked before the work starts: distinct, writable, and not replacing
    an existing file without `overwrite` (paths in `replaceable` may be replaced: the run's own files)."""
    check_outputs_distinct(outputs, inputs)
    checked = []
    for flag, path in outputs.items():
        if path:
            own = any(same_file(path, r) for r in replaceable)
            checked.append(check_writable(path, flag, overwrite or own))
    return checked


# ---------------------------------------------------------------- folders written whole

def make_temp_dir(final: Path) -> Path:
    """A hidden, empty folder next to `final`, to be renamed onto it once complete."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    # mkdtemp makes it private (0700); the data set should get the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def replace_dir(new: Path, output: Path) -> None:
    """Rename new onto output; an old output is removed only once the new one is in place."""
    if not output.exists():
        os.rename(new, output)
        return
    old = output.with_name(f".{output.name}.old-{os.getpid()}-{int(time.time())}")
    os.rename(output, old)
    try:
        os.rename(new, output)
    except OSError:
        os.rename(old, output)
        raise
    shutil.rmtree(old, ignore_errors=True)
