"""FER+ crowd votes (Barsoum et al., ICMI 2016) as training targets and evaluation labels.

FER+ relabelled FER-2013 with ten crowd votes per image over the columns of VOTE_COLUMNS. This module reads
the votes, finds each image's row, and turns ten votes into a target by FER+'s rules (its `mode`):

    majority       one label: the emotion holding more than half of the votes once single votes are set to 0
    probability    the vote distribution (below); training draws one label from it each time it sees the image
    crossentropy   the vote distribution itself is the target (soft cross-entropy)

The distribution keeps, after setting single votes to 0, the most voted emotions in turn (ties together) until
they hold 3/4 of the votes, at most 3 of them, and normalises them; an image is left out when those hold half
of the votes or less, or when unknown/NF leads. In every mode images whose result is unknown or NF are left out.
Classes: FER-2013's seven emotions plus Contempt, in the toolkit's spelling, sorted (as ImageFolder sorts).

Votes files come in two forms, told apart by their header:

    by image path   file,neutral,...,NF[,...]            `file` is an image path (train/happy/Training_1.jpg);
                                                         `download_dataset.py --ferplus` writes this form
    fer2013new.csv  Usage,Image name,neutral,...,NF      Microsoft's FERPlus file; its rows follow fer2013.csv
                                                         row by row, so row i is the image the fer2013.csv
                                                         import names <Usage>_<i>.png

Images are matched to rows by file name, which survives validation_split.py moving them into another folder;
a name on several rows or images is settled by the trailing folders they share (case ignored).
NumPy and csv only: no PyTorch.
"""

import csv
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from fer_common.errors import FERError
from fer_common.datasets.fer2013 import CSV_SPLITS, _delimiter, _open_text, csv_image_name
from fer_common.files import atomic_path, check_regular_file, printable
from fer_common.labels import EMOTIONS

VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                "unknown", "NF")
# The eight emotion columns in the toolkit's class names (FER-2013's spelling, plus Contempt).
CONTEMPT = "Contempt"
COLUMN_CLASSES = ("Neutral", "Happy", "Surprise", "Sad", "Angry", "Disgust", "Fear", CONTEMPT)
assert set(COLUMN_CLASSES) == set(EMOTIONS) | {CONTEMPT}
CLASS_NAMES = sorted(COLUMN_CLASSES)          # the class order of a model trained on votes
N_EMOTIONS = len(COLUMN_CLASSES)              # columns past these are unknown and NF (not a face)
MODES = ("probability", "majority", "crossentropy")
# Column j of the votes is class _CLASS_OF_COLUMN[j] of CLASS_NAMES.
_CLASS_OF_COLUMN = np.array([CLASS_NAMES.index(c) for c in COLUMN_CLASSES])
VOTES_FILE_NAME = "ferplus_votes.csv"         # what the fer2013.csv import writes beside train/ and test/


# ----------------------------------------------------------------------------- the rules

def _without_single_votes(votes: np.ndarray) -> np.ndarray:
    """FER+ treats an emotion only one annotator saw as noise."""
    votes = np.asarray(votes, dtype=np.float64)
    return np.where(votes > 1, votes, 0.0)


def majority_labels(votes: np.ndarray) -> np.ndarray:
    """FER+'s majority label of each row of N x 10 votes, as an index into CLASS_NAMES; -1 where there is none
    (no emotion holds more than half of the votes left, or the majority is unknown or NF)."""
    v = _without_single_votes(np.atleast_2d(votes))
    top, peak, total = v.argmax(1), v.max(1), v.sum(1)
    ok = (peak > total / 2) & (top < N_EMOTIONS)        # more than half: the top is unique
    return np.where(ok, _CLASS_OF_COLUMN[np.minimum(top, N_EMOTIONS - 1)], -1)


def vote_distribution(votes) -> np.ndarray | None:
    """FER+'s target distribution for one image's 10 votes, over CLASS_NAMES; None when FER+ leaves it out."""
    v = _without_single_votes(votes)
    total = v.sum()
    kept = np.zeros(N_EMOTIONS)
    count = taken = 0
    for level in sorted(set(v[v > 0]), reverse=True):     # vote counts, most first; ties go in together
        if taken >= 0.75 * total or count >= 3:
            break
        tied = np.flatnonzero(v == level)
        emotions = tied[tied < N_EMOTIONS]
        if len(emotions) < len(tied) and not kept.any() and not len(emotions):
            return None                                   # unknown or NF leads
        kept[emotions] = level
        count, taken = count + len(emotions), taken + level * len(tied)
        if len(emotions) < len(tied):                     # unknown or NF ties here: nothing after it counts
            break
    if kept.sum() <= total / 2 or count > 3:
        return None
    out = np.zeros(N_EMOTIONS)
    out[_CLASS_OF_COLUMN] = kept / kept.sum()
    return out


def vote_targets(votes: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(N x 8 float32 targets over CLASS_NAMES, N bools: kept) for N x 10 votes under a FER+ mode.

    majority: one-hot rows of the majority label; probability and crossentropy: the vote distribution.
    Rows that are not kept are zeros."""
    if mode not in MODES:
        raise ValueError(f"unknown FER+ mode {mode!r} (expected {', '.join(MODES)})")
    votes = np.atleast_2d(votes)
    targets = np.zeros((len(votes), N_EMOTIONS), dtype=np.float32)
    if mode == "majority":
        labels = majority_labels(votes)
        kept = labels >= 0
        targets[np.flatnonzero(kept), labels[kept]] = 1.0
        return targets, kept
    kept = np.zeros(len(votes), dtype=bool)
    for i, row in enumerate(votes):
        dist = vote_distribution(row)
        if dist is not None:
            targets[i], kept[i] = dist, True
    return targets, kept


# ----------------------------------------------------------------------------- votes files

@dataclass
class VoteTable:
    """The rows of a votes file: a key (an image path or file name) and 10 vote counts each."""
    path: Path
    keys: list[str]
    votes: np.ndarray                        # N x 10 float32, VOTE_COLUMNS order
    by_row: bool = False                     # fer2013new.csv: keys are the fer2013.csv import's file names

    def match(self, image_paths) -> np.ndarray:
        """The row of each image: -1 where none fits, or where the fit is not clear.

        A file name that one image and one row have is a match. Where a name is on several images (the same
        name in two class folders) or rows, an image and a row match when each fits the other better than
        anything else does, by the trailing folders they share."""
        rows_of: dict[str, list[int]] = {}
        for r, key in enumerate(self.keys):
            rows_of.setdefault(PurePosixPath(key).name, []).append(r)
        images_of: dict[str, list[int]] = {}
        for i, path in enumerate(image_paths):
            images_of.setdefault(Path(path).name, []).append(i)
        matched = np.full(len(image_paths), -1, dtype=np.int64)
        for name, images in images_of.items():
            rows = rows_of.get(name, [])
            if len(rows) == 1 and len(images) == 1:
                matched[images[0]] = rows[0]
                continue
            fit = np.array([[_common_tail(Path(image_paths[i]).parts, PurePosixPath(self.keys[r]).parts)
                             for r in rows] for i in images]).reshape(len(images), len(rows))
            for a, i in enumerate(images):
                if not len(rows):
                    break
                b = int(fit[a].argmax())
                if (fit[a] == fit[a, b]).sum() == 1 and (fit[:, b] >= fit[a, b]).sum() == 1:
                    matched[i] = rows[b]
        return matched


def _common_tail(a, b) -> int:
    """How many trailing path parts two paths share, case ignored (class folders: happy/ and Happy/)."""
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n].casefold() == b[-1 - n].casefold():
        n += 1
    return n


def read_votes(path) -> VoteTable:
    """Read a votes file of either form (see the module's docstring); a malformed one is one FERError."""
    path = check_regular_file(path, "votes file")
    try:
        with _open_text(path) as f:
            first = f.readline()
            reader = csv.reader([first], delimiter=_delimiter(first))
            header = next(reader, None)
            return _read_rows(path, header, csv.reader(f, delimiter=_delimiter(first)))
    except (UnicodeError, EOFError, csv.Error, OSError) as e:
        raise FERError(f"votes file {path} cannot be read ({type(e).__name__}: {e})") from None


def _read_rows(path: Path, header, reader) -> VoteTable:
    columns = {name.strip().casefold(): i for i, name in enumerate(header or [])}
    vote_at = [columns.get(c.casefold()) for c in VOTE_COLUMNS]
    by_usage = "image name" in columns and "usage" in columns and "file" not in columns
    if None in vote_at or not ("file" in columns or by_usage):
        shown = printable(",".join(header)[:100]) if header else "an empty file"
        raise FERError(f"{path} is not a FER+ votes file: expected the columns file,{','.join(VOTE_COLUMNS)} "
                       f"(or FERPlus's fer2013new.csv: Usage,Image name,{','.join(VOTE_COLUMNS)}); found {shown}")
    key_at = columns["usage"] if by_usage else columns["file"]
    width = max(vote_at + [key_at]) + 1
    keys, votes, line_of = [], [], {}
    for row_number, row in enumerate(reader, start=1):
        line = row_number + 1
        if not any(cell.strip() for cell in row):
            continue                                              # a blank line (a spreadsheet's last)
        if len(row) < width:
            raise FERError(f"{path} line {line}: {len(row)} columns, expected at least {width}")
        key = row[key_at].strip()
        if by_usage:
            if key not in CSV_SPLITS:
                raise FERError(f"{path} line {line}: Usage {printable(key)[:30]!r} is not one of "
                               f"{', '.join(CSV_SPLITS)}")
            key = csv_image_name(key, row_number)
        elif not key:
            raise FERError(f"{path} line {line}: no file name")
        key = key.replace("\\", "/")
        if key in line_of:
            raise FERError(f"{path} line {line} repeats {printable(key)} (first on line {line_of[key]})")
        line_of[key] = line
        keys.append(key)
        votes.append([_vote(row[i], path, line, c) for i, c in zip(vote_at, VOTE_COLUMNS)])
    if not keys:
        raise FERError(f"{path} holds no votes (only its header)")
    return VoteTable(path, keys, np.array(votes, dtype=np.float32), by_row=by_usage)


def _vote(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise FERError(f"{path} line {line}: {column} is {printable(text.strip())[:20]!r}, not a number of votes")
    return value


def write_votes(path, keys, votes) -> None:
    """A votes file keyed by image path (the form read_votes reads first), written atomically."""
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["file", *VOTE_COLUMNS])
            for key, row in zip(keys, votes):
                writer.writerow([key, *(int(v) if float(v).is_integer() else float(v) for v in row)])


# ----------------------------------------------------------------------------- images and their targets

@dataclass
class LabelledImages:
    """Which images of a list have FER+ targets: their positions, targets, and counts of what was left out."""
    kept: np.ndarray            # positions into the image list
    targets: np.ndarray         # len(kept) x 8 over CLASS_NAMES (one-hot in majority mode)
    labels: np.ndarray          # len(kept) majority labels (-1 where there is none: kept by the distribution)
    without_votes: int
    no_label: int

    def describe(self, total: int, what: str) -> str:
        """One line: how many images keep a target, and why the others are left out."""
        left = []
        if self.without_votes:
            left.append(f"{self.without_votes} without votes")
        if self.no_label:
            left.append(f"{self.no_label} whose votes give no label (unknown, not a face, or no clear majority)")
        return (f"{len(self.kept)} of {total} {what} images have a FER+ target"
                + (f"; left out {' and '.join(left)}" if left else ""))


def label_images(table: VoteTable, image_paths, mode: str, rows=None) -> LabelledImages:
    """The images of `image_paths` that keep a target under `mode`, with those targets. `rows` are their rows
    in the table when already matched (VoteTable.match)."""
    rows = table.match(image_paths) if rows is None else np.asarray(rows)
    has = rows >= 0
    votes = table.votes[rows[has]]
    targets, ok = vote_targets(votes, mode)
    kept = np.flatnonzero(has)[ok]
    return LabelledImages(kept, targets[ok], majority_labels(votes)[ok], int((~has).sum()), int((~ok).sum()))


def keep_labelled(table: VoteTable, samples, mode: str, folder, rows=None) -> tuple[list, LabelledImages]:
    """The (path, label) samples of `folder` that keep a FER+ target under `mode`, and their targets; a folder
    where none does is one FERError (the votes of another data set, most likely)."""
    labelled = label_images(table, [path for path, _ in samples], mode, rows)
    if not len(labelled.kept):
        example = f" (e.g. {Path(samples[0][0]).name} there, {table.keys[0]} in the votes file)" if samples else ""
        raise FERError(f"no image of {folder} has a FER+ target from {table.path}{example}: "
                       f"{labelled.describe(len(samples), 'its')}; are these the votes of this data set?")
    return [samples[i] for i in labelled.kept], labelled
