"""Reading FER-2013 in the forms it is shared in, and writing it as `<split>/<Class>/` image folders.

Two forms exist:
    the Kaggle layout    train/ and test/, each with lowercase class folders (angry ... surprise) of JPEGs;
                         as a folder, a zip or a tar, possibly under one extra top-level folder
    the original CSV     fer2013.csv (plain or gzipped): emotion,pixels,Usage; 48x48 grayscale pixels

Each importer writes into a fresh folder `dest` and returns the images per split and class, plus how many
entries it skipped. Choosing the source and making the result appear atomically is download.py's job.
"""

import csv
import gzip
import io
import itertools
import lzma
import shutil
import tarfile
import zipfile
import zlib
from collections import Counter
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from tqdm import tqdm

from fer_common.errors import FERError
from fer_common.files import is_image_name
from fer_common.labels import EMOTIONS, canonical_name, sort_splits


# The Kaggle layout's split folders; the CSV's Usage values and where each goes.
ARCHIVE_SPLITS = ("train", "test")
CSV_SPLITS = {"Training": "train", "PublicTest": "test", "PrivateTest": "test"}
CSV_KEPT_SPLITS = {"Training": "train", "PublicTest": "public_test", "PrivateTest": "private_test"}
CSV_COLUMNS = ("emotion", "pixels", "Usage")
IMAGE_SIDE = 48
# How splits are listed (in tables and the marker); validation_split.py's halves come last.

# Folders that archivers add and that are never part of a data set.
JUNK_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db"}

# Decompression bombs: FER-2013 unpacks to ~60 MB of JPEGs or a 290 MB CSV, each image a few kB.
MAX_TOTAL_BYTES = 4 << 30        # everything an archive or a .gz may unpack to
MAX_ENTRY_BYTES = 64 << 20       # one image
MAX_RATIO = 200                  # unpacked / packed size of a whole archive or .gz (JPEGs barely compress)


class ImportResult:
    """Images written per split and class, and what was left out (and why)."""

    def __init__(self):
        self.counts: dict[str, Counter] = {}
        self.skipped: Counter = Counter()  # reason -> how many

    def add(self, split: str, emotion: str) -> None:
        self.counts.setdefault(split, Counter())[emotion] += 1

    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def plain_counts(self) -> dict[str, dict[str, int]]:
        return {split: {e: self.counts[split][e] for e in EMOTIONS} for split in sort_splits(self.counts)}


# ---------------------------------------------------------------- Kaggle layout (folder, zip, tar)

def _is_junk(part: str) -> bool:
    return part in JUNK_NAMES or part.startswith("._")


def find_layout_root(paths: list[str], what: str) -> tuple[str, ...]:
    """The path prefix under which `train/` and `test/` lie: none, or one extra top-level folder.

    `paths` are the entries' relative POSIX paths (files; folders are implied by them).
    """
    parts = [PurePosixPath(p).parts for p in paths]
    parts = [p for p in parts if p and not any(_is_junk(x) for x in p)]

    def splits_under(prefix: tuple[str, ...]) -> set[str]:
        n = len(prefix)
        return {p[n].lower() for p in parts if len(p) > n + 1 and p[:n] == prefix}

    top = sorted({p[0] for p in parts})
    if set(ARCHIVE_SPLITS) <= splits_under(()):
        return ()
    top_dirs = sorted({p[0] for p in parts if len(p) > 1})
    if len(top_dirs) == 1 and set(ARCHIVE_SPLITS) <= splits_under((top_dirs[0],)):
        return (top_dirs[0],)
    found = ", ".join(top[:10]) + (", ..." if len(top) > 10 else "") if top else "nothing"
    inner = ""
    if len(top_dirs) == 1:
        below = sorted({p[1] for p in parts if len(p) > 1})
        inner = f" (inside {top_dirs[0]}/: {', '.join(below[:10])})"
    raise FERError(f"{what} does not have the FER-2013 layout train/<class>/ and test/<class>/; "
                   f"its top level holds: {found}{inner}")


def plan_layout(paths: list[str], what: str, result: ImportResult) -> list[tuple[str, str, str, str]]:
    """(entry path, split, Class, file name) for every image of the Kaggle layout among `paths`.

    Class folders must all be emotions (any case); other files are skipped and counted in `result`.
    """
    root = find_layout_root(paths, what)
    n = len(root)
    plan, unknown = [], set()
    for path in paths:
        parts = PurePosixPath(path).parts
        if parts[:n] != root or any(_is_junk(x) for x in parts):
            continue
        rel = parts[n:]
        if len(rel) < 1 or rel[0].lower() not in ARCHIVE_SPLITS:
            continue  # a README or licence next to train/ and test/
        if len(rel) != 3:
            result.skipped["files outside the class folders"] += 1
            continue
        split, folder, name = rel[0].lower(), rel[1], rel[2]
        emotion = canonical_name(folder)
        if emotion is None:
            unknown.add(f"{rel[0]}/{folder}")
        elif not is_image_name(name):
            result.skipped["non-image files"] += 1
        else:
            plan.append((path, split, emotion, name))
    if unknown:
        raise FERError(f"{what} has class folders that are no emotion: {', '.join(sorted(unknown))} "
                       f"(expected {', '.join(e.lower() for e in EMOTIONS)})")
    if not plan:
        raise FERError(f"{what} has train/ and test/ folders but no images in them")
    return plan


def _target(dest: Path, split: str, emotion: str, name: str) -> Path:
    folder = dest / split / emotion
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def unique_names(plan: list[tuple[str, str, str, str]], result: ImportResult) -> list[tuple[str, str, str, str]]:
    """Rename entries whose target would collide with another's when case is ignored (train/angry/a.jpg and
    train/Angry/A.JPG both become train/Angry/...): on a case-blind disk, or after folding the class
    names, one would silently replace the other. The second becomes name_2.jpg, and is counted."""
    seen, out = set(), []
    for entry, split, emotion, name in plan:
        key = f"{split}/{emotion}/{name}".casefold()
        if key in seen:
            stem, suffix = PurePosixPath(name).stem, PurePosixPath(name).suffix
            k = 2
            while f"{split}/{emotion}/{stem}_{k}{suffix}".casefold() in seen:
                k += 1
            name = f"{stem}_{k}{suffix}"
            key = f"{split}/{emotion}/{name}".casefold()
            result.skipped["files renamed (names that collide when case is ignored) and kept"] += 1
        seen.add(key)
        out.append((entry, split, emotion, name))
    return out


def check_unpacked_size(sizes: list[int], packed: int, src: Path) -> None:
    """Refuse an archive whose entries claim more bytes than any FER-2013 could (a decompression bomb)."""
    total = sum(sizes)
    if sizes and max(sizes) > MAX_ENTRY_BYTES:
        raise FERError(f"{src} has an image entry of {max(sizes) >> 20} MB (more than {MAX_ENTRY_BYTES >> 20} MB): "
                       f"not FER-2013, or a decompression bomb")
    if total > MAX_TOTAL_BYTES or total > MAX_RATIO * max(packed, 1 << 20):
        raise FERError(f"{src} would unpack to {total >> 20} MB from {packed >> 20} MB (more than "
                       f"{MAX_TOTAL_BYTES >> 20} MB or {MAX_RATIO}x): not FER-2013, or a decompression bomb")


def import_folder(src: Path, dest: Path) -> ImportResult:
    """Copy a Kaggle-layout folder's images byte for byte into dest/<split>/<Class>/."""
    result = ImportResult()
    paths = [p.relative_to(src).as_posix() for p in sorted(src.rglob("*")) if p.is_file()]
    plan = unique_names(plan_layout(paths, str(src), result), result)
    for rel, split, emotion, name in tqdm(plan, desc="copying", unit="img"):
        shutil.copyfile(src / rel, _target(dest, split, emotion, name))
        result.add(split, emotion)
    return result


def import_zip(src: Path, dest: Path) -> ImportResult:
    """Copy a Kaggle-layout zip's images byte for byte into dest/<split>/<Class>/."""
    result = ImportResult()
    try:
        with zipfile.ZipFile(src) as zf:
            infos = {i.filename: i for i in zf.infolist() if not i.is_dir()}
            plan = unique_names(plan_layout(list(infos), str(src), result), result)
            check_unpacked_size([infos[m].file_size for m, *_ in plan], src.stat().st_size, src)
            for member, split, emotion, name in tqdm(plan, desc="extracting", unit="img"):
                # Target paths are rebuilt from checked parts, so a hostile member name cannot escape dest.
                try:
                    fin = zf.open(infos[member])
                except NotImplementedError as e:     # a compression method the zip module lacks
                    raise FERError(f"{src}: cannot unpack {member} ({e}); re-zip it with plain deflate") from None
                except RuntimeError as e:            # encrypted
                    raise FERError(f"{src}: cannot unpack {member} ({e})") from None
                with fin, open(_target(dest, split, emotion, name), "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                result.add(split, emotion)
    except Exception as e:
        raise _corrupt(src, "zip", e, zipfile.BadZipFile) from None
    return result


def _corrupt(src: Path, kind: str, e: Exception, *archive_errors) -> Exception:
    """The error to raise for `e` met while unpacking an archive: a damaged archive is one FERError; anything
    else (a full disk has an errno, bz2's "Invalid data stream" has none) goes on as it is."""
    damaged = isinstance(e, (*archive_errors, zlib.error, EOFError, lzma.LZMAError)) or (
        isinstance(e, OSError) and e.errno is None)
    return FERError(f"{src} is a corrupt {kind} file ({e}); download it again") if damaged else e


def import_tar(src: Path, dest: Path) -> ImportResult:
    """Copy a Kaggle-layout tar (.tar, .tar.gz, .tgz) byte for byte into dest/<split>/<Class>/."""
    result = ImportResult()
    try:
        with tarfile.open(src, "r:*") as tf:
            # Only regular files: links in an archive could point outside dest.
            members = {m.name: m for m in tf.getmembers() if m.isfile()}
            plan = unique_names(plan_layout(list(members), str(src), result), result)
            check_unpacked_size([members[m].size for m, *_ in plan], src.stat().st_size, src)
            for member, split, emotion, name in tqdm(plan, desc="extracting", unit="img"):
                with tf.extractfile(members[member]) as fin, \
                        open(_target(dest, split, emotion, name), "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                result.add(split, emotion)
    except Exception as e:
        raise _corrupt(src, "tar", e, tarfile.TarError, gzip.BadGzipFile) from None
    return result


# ---------------------------------------------------------------- the original CSV

class _LimitedReader(io.RawIOBase):
    """A binary stream that refuses to yield more than `limit` bytes (a .gz that unpacks to gigabytes)."""

    def __init__(self, raw, limit: int, src: Path):
        self.raw, self.limit, self.src, self.count = raw, limit, src, 0

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.raw.read(len(buffer))
        self.count += len(data)
        if self.count > self.limit:
            raise FERError(f"{self.src} unpacks to more than {self.limit >> 20} MB: not FER-2013 "
                           f"(290 MB), or a decompression bomb")
        buffer[:len(data)] = data
        return len(data)

    def close(self):
        self.raw.close()
        super().close()


def _encoding(head: bytes) -> str:
    """The text encoding spreadsheet programs write: UTF-16 (with its BOM), UTF-8 with or without a BOM."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    return "utf-8-sig"


def _open_text(src: Path):
    with open(src, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if gzipped:
        packed = src.stat().st_size
        limit = min(MAX_TOTAL_BYTES, MAX_RATIO * max(packed, 1 << 20))
        raw = _LimitedReader(gzip.open(src, "rb"), limit, src)
        stream = io.BufferedReader(raw)
    else:
        stream = open(src, "rb")
    encoding = _encoding(stream.peek(4)[:4])
    return io.TextIOWrapper(stream, encoding=encoding, newline="")


def _delimiter(header_line: str) -> str:
    """',' as FER-2013 has it, or the ';' or tab a spreadsheet program in many locales saves with."""
    counts = {d: header_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def parse_pixels(text: str) -> np.ndarray | None:
    """48x48 uint8 image from FER-2013's space-separated pixels; None if they are not 2304 ints 0..255."""
    try:
        values = np.array(text.split(), dtype=np.int32)
    except ValueError:
        return None
    if values.size != IMAGE_SIDE * IMAGE_SIDE or values.min() < 0 or values.max() > 255:
        return None
    return values.astype(np.uint8).reshape(IMAGE_SIDE, IMAGE_SIDE)


def parse_label(text: str) -> str | None:
    try:
        value = float(text)          # "3", " 3 " or a spreadsheet's "3.0"
    except ValueError:
        return None
    if not value.is_integer():
        return None
    index = int(value)
    return EMOTIONS[index] if 0 <= index < len(EMOTIONS) else None


def csv_image_name(usage: str, row_number: int) -> str:
    """The file name import_csv gives the image of fer2013.csv's data row `row_number` (1-based)."""
    return f"{usage}_{row_number:05d}.png"


def import_csv(src: Path, dest: Path, keep_splits: bool = False) -> ImportResult:
    """Write fer2013.csv's rows as lossless PNGs dest/<split>/<Class>/<Usage>_<row>.png.

    Rows with a bad label, pixel string or Usage are skipped and counted; <row> is the 1-based data row,
    so an image can be traced back to its line in the CSV.
    """
    splits = CSV_KEPT_SPLITS if keep_splits else CSV_SPLITS
    result = ImportResult()
    try:
        with _open_text(src) as f:
            first = f.readline()
            reader = csv.reader(itertools.chain([first] if first else [], f), delimiter=_delimiter(first))
            header = next(reader, None)
            columns = {name.strip().lower(): i for i, name in enumerate(header or [])}
            if header is None or any(c.lower() not in columns for c in CSV_COLUMNS):
                shown = ",".join(header)[:80] if header else "an empty file"
                raise FERError(f"{src} is not a FER-2013 CSV: expected the columns {','.join(CSV_COLUMNS)}, "
                               f"found {shown}")
            i_label, i_pixels, i_usage = (columns[c.lower()] for c in CSV_COLUMNS)
            width = max(i_label, i_pixels, i_usage) + 1
            for row_number, row in enumerate(tqdm(reader, desc="converting", unit="row"), start=1):
                if len(row) < width:
                    result.skipped["rows with missing columns"] += 1
                    continue
                emotion, usage = parse_label(row[i_label]), row[i_usage].strip()
                if emotion is None:
                    result.skipped["rows with a bad label"] += 1
                    continue
                if usage not in splits:
                    result.skipped["rows with a bad Usage"] += 1
                    continue
                image = parse_pixels(row[i_pixels])
                if image is None:
                    result.skipped["rows with a bad pixel count or value"] += 1
                    continue
                path = _target(dest, splits[usage], emotion, csv_image_name(usage, row_number))
                ok, data = cv2.imencode(path.suffix, image)
                if not ok:
                    raise OSError(f"could not encode {path}")
                path.write_bytes(data.tobytes())      # through Python, not OpenCV's path call: any file name
                result.add(splits[usage], emotion)
    except (UnicodeError, gzip.BadGzipFile, EOFError, csv.Error, zlib.error) as e:
        raise FERError(f"{src} is not a readable FER-2013 CSV ({type(e).__name__}: {e})") from None
    if result.total() == 0:
        raise FERError(f"{src} has no valid FER-2013 rows ({sum(result.skipped.values())} rows skipped)")
    return result
