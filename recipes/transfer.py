"""Moving a campaign's data to the lent GPU machine and its models back, within what the device tool carries.

A call carries the working tree and its carried paths, 64 MiB in all, the repository included, which leaves
too little for FER-2013's three splits in one call (recipes/README.md has the sizes): the data set goes over in
parts, one a call, while the machine stays warm. What comes back is at most 8 files of 16 MiB, 64 MiB together,
so a run's results come back as one tar in chunks. See recipes/README.md for the calls.
"""

import gzip
import re
import shutil
import tarfile
from pathlib import Path

from fer_common.errors import FERError

SPLITS = ("train_new", "val_new", "test")
BRING_BACK_BYTES = 60 * 2**20       # under the 64 MiB the device tool returns
CHUNK_BYTES = 15 * 2**20            # under its 16 MiB a file
PART = re.compile(r"part-(\d+)-of-(\d+)\.tar\.gz")


def pack(dataset: Path, folder: Path, part_mib: float) -> list[Path]:
    """Write dataset/{train_new,val_new,test} as gzip tar parts of at most part_mib MiB each, named
    part-I-of-N.tar.gz, each one extractable alone (the files' own bytes: nothing is re-encoded)."""
    files = [f for split in SPLITS for f in sorted((dataset / split).rglob("*")) if f.is_file()]
    if not all((dataset / split).is_dir() for split in SPLITS) or not files:
        raise FERError(f"{dataset} needs {', '.join(SPLITS)} with images to pack (validation_split.py makes them)")
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.glob("part-*")):
        raise FERError(f"{folder} already holds part-* files: remove them, or pack into another folder")
    # A part closes once its compressed size nears the limit: image bytes hardly compress, but the tar headers
    # and the tables every JPEG repeats do, so the files' own sizes would overestimate the parts.
    limit, pending, written = part_mib * 2**20 - 2**20, iter(files), []
    path = next(pending)
    while path is not None:
        written.append(folder / f"part-{len(written):02d}.tmp")
        with open(written[-1], "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as gz, \
                tarfile.open(fileobj=gz, mode="w", dereference=True) as tar:      # links: their images
            added = 0
            while path is not None and (added == 0 or raw.tell() < limit):
                tar.add(path, arcname=str(path.relative_to(dataset)))
                added, path = added + 1, next(pending, None)
    parts = [p.rename(folder / f"part-{i:02d}-of-{len(written):02d}.tar.gz") for i, p in enumerate(written)]
    for p in parts:
        print(f"{p} ({p.stat().st_size / 2**20:.1f} MiB)")
    print(f"{len(files)} files of {dataset} in {len(parts)} part(s)")
    return parts


def unpack(folder: Path, dataset: Path) -> None:
    """Extract every part that pack() wrote into dataset/, once all N parts are in `folder`; a data set that
    is there already is kept (a second run on a warm machine)."""
    if all((dataset / split).is_dir() for split in SPLITS):
        print(f"unpack: {dataset} already holds {', '.join(SPLITS)}; kept")
        return
    if any((dataset / split).exists() for split in SPLITS):
        raise FERError(f"{dataset} holds some of {', '.join(SPLITS)} but not all: remove them, or unpack elsewhere")
    parts = {int(m[1]): (p, int(m[2])) for p in sorted(folder.glob("part-*.tar.gz")) if (m := PART.fullmatch(p.name))}
    counts = {n for _, n in parts.values()}
    if not parts or len(counts) != 1 or sorted(parts) != list(range(counts.pop())):
        raise FERError(f"{folder} does not hold every part-I-of-N.tar.gz of one pack: found {sorted(parts) or 'none'}")
    # Into a folder beside it first, so that an interrupted unpack never looks like a finished one.
    staging = dataset.with_name(dataset.name + ".unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    for index in sorted(parts):
        with tarfile.open(parts[index][0], "r:gz") as tar:
            tar.extractall(staging, filter="data")
    dataset.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (staging / split).rename(dataset / split)
    staging.rmdir()
    print(f"unpacked {len(parts)} part(s) into {dataset}")


def bring_back(out: Path, models: list[Path], folder: Path) -> list[Path]:
    """Put a run's results into `folder` (the device machine's $OUT) as bring_back.tar.00, .01, ... chunks: the
    summary, the logs, every history and evaluation, then `models` in that order while they fit in 60 MiB.
    Here: cat bring_back.tar.* | tar -x -C runs/campaign"""
    small = [out / "summary.json", out / "campaign.log", *sorted(out.glob("*_metrics.json")),
             *sorted(out.glob("robustness*.md")), *sorted(out.glob("robustness*.json")),
             *sorted(out.glob("eval/*/metrics.json")), *sorted(out.glob("logs/*.log"))]
    chosen, total = [], 0
    for f in [*small, *models]:
        if f.is_file() and f not in chosen and total + f.stat().st_size <= BRING_BACK_BYTES:
            chosen.append(f)
            total += f.stat().st_size
    archive = out / "bring_back.tar"
    with tarfile.open(archive, "w") as tar:
        for f in chosen:
            tar.add(f, arcname=str(f.relative_to(out)))
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("bring_back.tar.*"):      # a longer earlier run's chunks would join this one's
        old.unlink()
    chunks = []
    with open(archive, "rb") as src:
        while block := src.read(CHUNK_BYTES):
            chunks.append(folder / f"bring_back.tar.{len(chunks):02d}")
            chunks[-1].write_bytes(block)
    archive.unlink()
    left = [f.name for f in models if f.is_file() and f not in chosen]
    print(f"bring back: {len(chosen)} file(s), {total / 2**20:.1f} MiB, in {len(chunks)} chunk(s) in {folder}"
          + (f"; left behind (over 60 MiB): {', '.join(left)}" if left else ""))
    return chunks
