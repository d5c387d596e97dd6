"""File helpers: which files are images, and atomic writes (a file appears complete under its final name, or not at all)."""

import contextlib
import errno
import functools
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

from fer_common.errors import FERError

# The image files every reader of the toolkit accepts (data sets, inference folders, archive import):
# every format OpenCV's imdecode reads (OpenEXR is off in OpenCV's wheels, so it is not here).
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".pgm", ".ppm",
                    ".pbm", ".pnm", ".sr", ".ras", ".jp2", ".hdr", ".pic", ".avif", ".gif"}
# Video containers the video writer has a codec for (see video.FOURCCS).
VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm"}


def is_image_name(name) -> bool:
    """Whether a file is an image by its name, for every reader (data sets, folders to classify, archives):
    one of IMAGE_EXTENSIONS, and not hidden (.DS_Store, macOS's ._IMG.jpg copies, editors' temporary files)."""
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


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
    with atomic_path(path, suffix=path.suffix) as tmp:
        tmp.write_bytes(data.tobytes())


# Longest file name most file systems take (NAME_MAX, in bytes); temporary names are kept within it.
NAME_MAX = 255


def _temp_prefix(name: str, tag: str, room: int = 40) -> str:
    """A hidden prefix for a temporary file or folder next to `name`: `.<name>.<tag>` while the whole
    temporary name (with the random part and suffix, `room` bytes) fits NAME_MAX, else a short hash of it."""
    prefix = f".{name}.{tag}"
    if len(os.fsencode(prefix)) + room <= NAME_MAX:
        return prefix
    digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:12]
    return f".fer-{digest}.{tag}"


def _temp_suffix(suffix: str | None) -> str:
    """The extension a writer needs (cv2.VideoWriter picks the codec from it), if it is a short one."""
    suffix = suffix or ".tmp"
    return suffix if len(os.fsencode(suffix)) <= 16 else ".tmp"


def sibling_name(name: str, suffix: str) -> str:
    """`name + suffix` (a cache or log beside an output), shortened with a hash of `name` when that would be
    longer than NAME_MAX: an output may have any legal name."""
    if len(os.fsencode(name + suffix)) <= NAME_MAX:
        return name + suffix
    digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:12]
    keep = name.encode("utf-8", "surrogateescape")[:NAME_MAX - len(os.fsencode(suffix)) - 14]
    return f"{keep.decode('utf-8', 'ignore')}-{digest}{suffix}"


def os_error_text(e: OSError) -> str:
    """What went wrong, in words (`No space left on device`), with the file the OS names when it names one."""
    why = e.strerror or str(e) or type(e).__name__
    # A copy or rename names both files; the second (the destination) is where the write failed.
    name = e.filename2 or e.filename
    return why + (f" ({printable(os.fsdecode(name))})" if name else "")


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    The temporary file lives in the same folder so the final `os.replace` is atomic; its name fits the file
    system's limit however long `path`'s name is. `suffix` keeps an extension that a writer may need
    (cv2.VideoWriter picks the codec from it). A failed write (a full or read-only disk, no permission:
    any OSError in the block or in the rename) becomes one FERError naming `path`; the temporary file is
    always removed, and an existing `path` is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name, ""), suffix=_temp_suffix(suffix), dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise FERError(f"cannot write {path}: {os_error_text(e)}") from None
    try:
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            raise
        raise FERError(f"cannot write {path}: {os_error_text(e)}") from None
    finally:
        with contextlib.suppress(OSError):
            if os.path.lexists(tmp):
                os.remove(tmp)


def strict_json_value(obj):
    """`obj` made fit for strict JSON (RFC 8259, which has no NaN or Infinity): non-finite floats become None
    (null), numpy scalars and arrays plain numbers and lists, tuples lists, and strings holding lone surrogates
    (file names that are not UTF-8) their bytes written as backslash escapes (`\\xff.jpg`)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {strict_json_value(k) if isinstance(k, str) else k: strict_json_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json_value(v) for v in obj]
    if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):
        return strict_json_value(obj.tolist())
    return obj


def utf8_name(path) -> bool:
    """True when a path's name is valid UTF-8, as native libraries (OpenCV's path calls, FFmpeg) need it; a
    name copied from a Latin-1 system holds lone surrogates in Python and is not."""
    try:
        os.fspath(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def native_path(path, what: str, library: str = "OpenCV") -> str:
    """A path for a native library's path call (which would crash or fail on a name that is not UTF-8): the
    path as str, or one FERError line naming the file and saying to rename it."""
    if not utf8_name(path):
        raise FERError(f"{what} {printable(path)}: its name is not valid UTF-8 (copied from a Latin-1 system or "
                       f"a zip?), which {library} cannot open; rename it")
    return os.fspath(path)


def printable(text) -> str:
    """`text` (a str or a path) safe to print, draw, write on one line or encode as UTF-8: lone surrogates
    (bytes of a file name that is not UTF-8) and control characters (a newline in a name) as backslash
    escapes (\\xff, \\x0a)."""
    text = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
    if text.isascii() and text.isprintable():
        return text
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:      # a surrogate that is no escaped byte (from JSON's \ud800, say)
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", text)


def strict_json(obj, **kwargs) -> str:
    """json.dumps for every JSON the toolkit writes: strict (see strict_json_value), so any parser reads it."""
    return json.dumps(strict_json_value(obj), allow_nan=False, **kwargs)


def write_json(path, obj) -> None:
    """Write `obj` as indented, strict JSON (NaN and infinities as null, see strict_json_value), atomically."""
    text = strict_json(obj, indent=2) + "\n"
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_torch(obj, path) -> None:
    """torch.save, atomically (a failed write is one FERError; nothing is left behind)."""
    import torch

    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
        except RuntimeError as e:
            # torch's writer wraps a failed write (a full disk) in a RuntimeError: the OSError is the problem.
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise


def check_writable(path, what: str = "output", overwrite: bool = False) -> Path:
    """Fail early, in one line, if `path` cannot be written, or exists and may not be replaced."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FERError(f"cannot write {what} {path}: cannot create folder {path.parent} ({e.strerror})") from None
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except OSError as e:        # a name longer than the file system takes, a link loop, ...
        raise FERError(f"cannot write {what} {path}: {e.strerror or os_error_text(e)}") from None
    if is_dir:
        raise FERError(f"cannot write {what} {path}: it is a folder")
    if exists and not overwrite:
        raise FERError(f"{what} {path} already exists: pass --overwrite to replace it")
    if not os.access(path.parent, os.W_OK):
        raise FERError(f"cannot write {what} {path}: folder {path.parent} is not writable")
    return path


def check_regular_file(path, what: str = "input", folder_ok: bool = False) -> Path:
    """Refuse, in one line, what is not a regular file (or, with `folder_ok`, a folder): a FIFO, a device such as
    /dev/zero or a socket would block or never end when read. Links are followed; a missing path is refused too."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FERError(f"{what} {path} is a symbolic link loop") from None
        raise FERError(f"{what} {path} cannot be read: {os_error_text(e)}") from None
    if stat.S_ISREG(mode) or (folder_ok and stat.S_ISDIR(mode)):
        return path
    if stat.S_ISDIR(mode):
        raise FERError(f"{what} {path} is a folder, not a file")
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    raise FERError(f"{what} {path} is {kind}: give a regular file" + (" or a folder" if folder_ok else ""))


def check_class_folder_name(folder) -> str:
    """A class folder's name, refused in one line when it cannot be a class name: not valid Unicode (a lone
    surrogate: the bytes of a Latin-1 or other non-UTF-8 name) or holding control characters. Class names go
    into model files, JSON and pictures, where such a name would not survive."""
    name = Path(folder).name
    bad = [c for c in name if 0xD800 <= ord(c) <= 0xDFFF or ord(c) < 32 or ord(c) == 127]
    if bad:
        why = "is not valid UTF-8" if any(ord(c) >= 0xD800 for c in bad) else "holds control characters"
        raise FERError(f"class folder {printable(folder)}: its name {why}; rename it (class names go into the "
                       f"model file, JSON and pictures)")
    return name


def is_inside(path, folder) -> bool:
    """True if `path` is `folder` or lies anywhere below it, once links, `..` and case are resolved."""
    p, f = _key(path), _key(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def check_outside(outputs: dict, data: dict) -> None:
    """Refuse an output (file or folder) that is a data folder or lies inside one: the next run would read
    what this one wrote as data (a picture in a class folder is one more image of that class).

    `outputs` and `data` map a flag (or a description) to a path, as check_outputs_distinct; None is skipped.
    Links are resolved, so an output reached through a link into the data set is refused too."""
    for flag, path in outputs.items():
        if not path:
            continue
        for data_flag, folder in data.items():
            if folder and is_inside(path, folder):
                where = "is" if _key(path) == _key(folder) else "is inside"
                raise FERError(f"{flag} {path} {where} the data folder {data_flag} {folder}: the next run would "
                               f"read what this one writes as data; choose a path outside it")


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


def check_outputs(outputs: dict, overwrite: bool = False, inputs: dict | None = None, data: dict | None = None,
                  replaceable=(), own_rule=()) -> list[Path]:
    """May I write here? The one check of everything a command will write, before the work starts: no two
    outputs the same file, no output one of the inputs (images, videos, model files: every file the command
    reads), none inside a data folder (`data`), and each writable without replacing an existing file unless
    `overwrite` (paths in `replaceable` may be replaced: the run's own files). Outputs whose flag is in
    `own_rule` are checked for all that but writability, which their writer decides by a rule of its own (a
    results file that --resume continues: writers.check_results_file; a folder of annotated images).
    Each dict maps a flag (or a description) to a path; None is skipped."""
    check_outputs_distinct(outputs, inputs)
    check_outside(outputs, data or {})
    checked = []
    for flag, path in outputs.items():
        if path and flag not in own_rule:
            own = any(same_file(path, r) for r in replaceable)
            checked.append(check_writable(path, flag, overwrite or own))
    return checked


# ---------------------------------------------------------------- folders written whole

def make_temp_dir(final: Path) -> Path:
    """A hidden, empty folder next to `final`, to be renamed onto it once complete (its name fits NAME_MAX)."""
    final = Path(final)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final.name, "tmp-"), dir=final.parent))
    except OSError as e:
        raise FERError(f"cannot create {final}: {os_error_text(e)}") from None
    # mkdtemp makes it private (0700); the data set should get the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def replace_dir(new: Path, output: Path) -> None:
    """Rename new onto output; an old output is removed only once the new one is in place."""
    output = Path(output)
    if not output.exists():
        os.rename(new, output)
        return
    old = output.with_name(_temp_prefix(output.name, f"old-{os.getpid()}-{int(time.time())}"))
    os.rename(output, old)
    try:
        os.rename(new, output)
    except OSError:
        os.rename(old, output)
        raise
    shutil.rmtree(old, ignore_errors=True)


def sha256_file(path) -> str:
    """The SHA-256 of a file, read in 1 MB blocks (model files, downloads, the shipped detector)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
