"""Bulk inference: folders of up to millions of images through the model in batches, in input order, in flat memory.

    predictor = Predictor("models/fer_model.int8.onnx")
    for r in analyse_folder("crops/", predictor, recursive=True):      # no detector: each image is one face
        print(r.image, r.probabilities.argmax(1))
    for r in analyse_folder("photos/", predictor, detector=FaceDetector):   # a factory: one detector per thread
        ...

Worker threads each take a chunk of `batch_size` images, read them (and detect their faces), and send all the
chunk's faces through the model in one forward pass. OpenCV and ONNX Runtime release the GIL, so the threads
use every core; only a few chunks are in flight at a time, so memory does not grow with the folder, and
results come back in input order. `ResultWriter` streams them to a .jsonl or .csv file that an interrupted
run can resume from.
"""

import csv
import json
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import cv2
import numpy as np

from .errors import FERError
from .detection import crop_faces
from .device import cpu_count
from .files import IMAGE_EXTENSIONS, check_writable
from .preprocess import read_image

# Faces per forward pass. The int8 48x48 model runs 0.39 ms/face from batch 8 to 256 on one core; 64 keeps
# the chunks small enough to show progress and bound memory (benchmarks/README.md, Bulk inference).
DEFAULT_BATCH_SIZE = 64
OUTPUT_FORMATS = (".jsonl", ".csv")
# Chunks in flight per worker: enough that a worker never waits for the consumer, few enough to bound memory.
_PREFETCH_PER_WORKER = 2


def default_workers() -> int:
    """Worker threads for reading, detecting and classifying: one per core, at most 8."""
    return min(8, cpu_count())


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _folder_images(folder: str, recursive: bool) -> list[str]:
    """Image paths under `folder` (folder/relative/path), files sorted by name, each folder's files before its
    sub-folders'. Hidden files and folders (.DS_Store, ._IMG.jpg, temporary files) are left out."""
    found, stack = [], [folder]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise FERError(f"cannot read folder {current} ({e.strerror})") from None
        found += [os.path.join(current, e.name) for e in entries if _is_image(e.name) and e.is_file()]
        if recursive:
            subfolders = [e.path for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
            stack += reversed(subfolders)      # popped in name order
    return found


def list_images(inputs: Iterable, recursive: bool = False) -> list[str]:
    """Files as given; folders expanded to their images (sorted; with recursive, sub-folders too).

    Paths are strings (a million Path objects would cost ~300 MB): the folder as given joined with the path
    below it, e.g. `photos/2019/a.jpg` for the input `photos`.
    """
    images = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = _folder_images(str(path), recursive)
            if not found:
                has_subfolders = not recursive and any(p.is_dir() for p in path.iterdir())
                raise FERError(f"no images in folder {path} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
                               + ("; it has sub-folders: add --recursive" if has_subfolders else ""))
            images += found
        elif path.is_file():
            images.append(str(path))
        else:
            raise FERError(f"image not found: {path}")
    return images


class ImageResult(NamedTuple):
    """What the model says about one image. An unreadable image has `error` set and no faces."""
    index: int                      # position in the input list
    image: str                      # path as listed
    boxes: np.ndarray               # K x 4 int32 [x, y, w, h]; the whole image with no detector
    probabilities: np.ndarray       # K x num_classes float32
    embeddings: np.ndarray          # K x embedding_dim float32
    error: str | None = None        # why the image was skipped (e.g. "cannot decode"), else None


STAGES = ("read", "detect", "classify")


def iter_results(predictor, images: list, detector=None, batch_size: int = DEFAULT_BATCH_SIZE,
                 workers: int | None = None, timings: dict | None = None) -> Iterator[ImageResult]:
    """Classify every image, yielding one ImageResult per image in input order (unreadable ones with `error`).

    detector: None classifies each whole image as one face (face crops), decoded as the model's input
        channels exactly as training and evaluate.py decode them. Else a zero-argument factory
        (e.g. `FaceDetector` or `lambda: detector_from_args(args)`), called once per worker thread because
        OpenCV's detectors are not thread-safe; or one detector object, then shared under a lock.
    batch_size: images read per task, and at most this many faces per forward pass.
    timings: if given, seconds spent per stage (read, detect, classify), summed over the worker threads.
    """
    if batch_size < 1:
        raise FERError(f"batch size must be at least 1, not {batch_size}")
    workers = workers or default_workers()
    channels = predictor.preprocessing["channels"]
    h, w = predictor.preprocessing["input_size"]
    # Big models use every core for one forward pass already: running two at once would only thrash.
    classify_lock = threading.Lock() if h * w > 64 * 64 else None
    local = threading.local()
    is_instance = detector is not None and not isinstance(detector, type) and hasattr(detector, "detect")
    shared, detect_lock = (detector, threading.Lock()) if is_instance else (None, None)

    def get_detector():
        if detector is None or shared is not None:
            return shared
        if getattr(local, "detector", None) is None:
            local.detector = detector()
        return local.detector

    def run_chunk(start: int, paths: list) -> tuple[list, dict]:
        spent = dict.fromkeys(STAGES, 0.0)
        det = get_detector()
        crops, counts, boxes_of, errors = [], [], [], []
        for path in paths:
            t0 = time.perf_counter()
            image = read_image(path, 3 if det is not None else channels)
            if image is not None and det is not None:
                image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)      # what the detectors and crops expect
            t1 = time.perf_counter()
            spent["read"] += t1 - t0
            if image is None:
                errors.append("cannot decode")
                counts.append(0)
                boxes_of.append(np.zeros((0, 4), np.int32))
                continue
            errors.append(None)
            if det is None:
                boxes = np.array([[0, 0, image.shape[1], image.shape[0]]], np.int32)
                crops.append(image)
            else:
                if detect_lock is not None:
                    with detect_lock:
                        boxes = det.detect(image)
                else:
                    boxes = det.detect(image)
                boxes = np.asarray(boxes, np.int32).reshape(-1, 4)
                crops += crop_faces(image, boxes)
                spent["detect"] += time.perf_counter() - t1
            counts.append(len(boxes))
            boxes_of.append(boxes)
        t0 = time.perf_counter()
        # Whole images are decoded RGB or gray (bgr=False), detected faces are cropped from BGR frames.
        probs, embs = [], []
        for i in range(0, max(len(crops), 1), batch_size):
            if classify_lock is not None:
                with classify_lock:
                    p = predictor.predict(crops[i:i + batch_size], bgr=det is not None)
            else:
                p = predictor.predict(crops[i:i + batch_size], bgr=det is not None)
            probs.append(p.probabilities)
            embs.append(p.embeddings)
        probs, embs = np.concatenate(probs), np.concatenate(embs)
        spent["classify"] += time.perf_counter() - t0
        results, k = [], 0
        for j, (path, n, boxes, error) in enumerate(zip(paths, counts, boxes_of, errors)):
            results.append(ImageResult(start + j, path, boxes, probs[k:k + n], embs[k:k + n], error))
            k += n
        return results, spent

    chunks = ((s, images[s:s + batch_size]) for s in range(0, len(images), batch_size))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="fer-bulk")
    pending = deque()
    try:
        for start, paths in chunks:
            pending.append(pool.submit(run_chunk, start, paths))
            if len(pending) >= workers * _PREFETCH_PER_WORKER:
                break
        while pending:
            results, spent = pending.popleft().result()
            nxt = next(chunks, None)
            if nxt is not None:
                pending.append(pool.submit(run_chunk, *nxt))
            if timings is not None:
                for stage, seconds in spent.items():
                    timings[stage] = timings.get(stage, 0.0) + seconds
            yield from results
    finally:
        # The consumer stopped early (an error, --strict, Ctrl-C): drop queued chunks, let running ones end.
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def analyse_folder(folder, predictor, detector=None, recursive: bool = False, batch_size: int = DEFAULT_BATCH_SIZE,
                   workers: int | None = None, skip: set | frozenset = frozenset()) -> Iterator[ImageResult]:
    """iter_results over the images of a folder (sorted; sub-folders too with recursive), minus those in `skip`."""
    images = [p for p in list_images([folder], recursive) if p not in skip]
    return iter_results(predictor, images, detector, batch_size, workers)


# ---------------------------------------------------------------------------------------------------- output

def face_records(result: ImageResult, class_names: list, embedding: bool = False) -> list[dict]:
    """The faces of one image as inference.py --json prints them: box, probabilities, top emotion (+ embedding)."""
    faces = []
    probs = np.round(result.probabilities.astype(np.float64), 6).tolist()
    embs = np.round(result.embeddings.astype(np.float64), 6).tolist() if embedding else None
    for i, (box, p) in enumerate(zip(result.boxes.tolist(), probs)):
        face = {"box": box, "probabilities": dict(zip(class_names, p)),
                "top_emotion": class_names[int(np.argmax(result.probabilities[i]))]}
        if embedding:
            face["embedding"] = embs[i]
        faces.append(face)
    return faces


def image_record(result: ImageResult, class_names: list, embedding: bool = False) -> dict:
    return {"image": result.image, "faces": face_records(result, class_names, embedding)}


def csv_header(class_names: list) -> list[str]:
    return ["image", "face", "x", "y", "w", "h", "top_emotion", *class_names]


def csv_rows(result: ImageResult, class_names: list) -> list[list]:
    """One row per face (face = its index in the image, from 0); an image without a face gets one row with
    only its path, so the file lists every image read (and --resume knows it was done)."""
    if len(result.boxes) == 0:
        return [[result.image] + [""] * (len(class_names) + 6)]
    rows = []
    for i, (box, probs) in enumerate(zip(result.boxes.tolist(), result.probabilities)):
        rows.append([result.image, i, *box, class_names[int(np.argmax(probs))], *(f"{p:.6f}" for p in probs)])
    return rows


def repair_tail(path) -> int:
    """Cut a half-written last line (a run killed mid-write) off `path`; returns the bytes removed."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        keep, pos, block = 0, size, 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            cut = f.read(pos - start).rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            pos = start
        f.truncate(keep)
    return size - keep


def read_done(path, class_names: list) -> tuple[set, int]:
    """The images already in a .jsonl / .csv output, and how many of them had a face. Call repair_tail first."""
    path = Path(path)
    done, with_faces = set(), 0
    try:
        if path.suffix.lower() == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                        image, faces = record["image"], record["faces"]
                    except (ValueError, KeyError, TypeError):
                        raise FERError(f"cannot resume from {path}: line {n} is not a result line "
                                       "(pass --overwrite to start again)") from None
                    done.add(image)
                    with_faces += len(faces) > 0
        else:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header is not None and header != csv_header(class_names):
                    raise FERError(f"cannot resume from {path}: its columns ({', '.join(header)}) are not this "
                                   "model's (pass --overwrite to start again, or another --output)")
                last = None
                for row in reader:
                    if row and row[0] != last:          # an image's rows are consecutive
                        done.add(row[0])
                        last = row[0]
                        with_faces += len(row) > 1 and row[1] != ""
    except UnicodeDecodeError:
        raise FERError(f"cannot resume from {path}: not a text file (pass --overwrite to start again)") from None
    return done, with_faces


def check_output(path, resume: bool = False, overwrite: bool = False) -> bool:
    """Fail early, in one line, if a results file cannot be written or would replace one without --overwrite.
    Returns True if there are results to resume from."""
    path = Path(path)
    if resume and overwrite:
        raise FERError("--resume keeps what --output holds, --overwrite replaces it: give one of them")
    exists = path.is_file() and path.stat().st_size > 0
    if exists and not (resume or overwrite):
        raise FERError(f"output {path} already exists: pass --resume to continue it, or --overwrite to replace it")
    check_writable(path, "output", overwrite=True)
    return exists and resume


class ResultWriter:
    """Streams ImageResults to a .jsonl (one object per image, as --json) or .csv (one row per face) file.

    The file is written as results come (flushed at least every `flush_seconds`), not atomically, so that a
    run cut short keeps what it did: with resume=True an existing file is repaired (a half-written last line
    cut off), the images in it are listed in `done`, and new results are appended. Without resume an existing
    file is only replaced with overwrite=True.
    """

    def __init__(self, path, class_names: list, embedding: bool = False, resume: bool = False,
                 overwrite: bool = False, flush_seconds: float = 1.0):
        self.path = Path(path)
        self.format = self.path.suffix.lower()
        if self.format not in OUTPUT_FORMATS:
            raise FERError(f"--output {self.path}: give a .jsonl or .csv file "
                           f"(not '{self.path.suffix or 'no extension'}')")
        if embedding and self.format == ".csv":
            raise FERError("--embedding: embeddings go to .jsonl output (or --json), not CSV")
        self.class_names, self.embedding, self.flush_seconds = list(class_names), embedding, flush_seconds
        self.done, self.done_with_faces, self.repaired_bytes = set(), 0, 0
        resuming = check_output(self.path, resume, overwrite)
        if resuming:
            self.repaired_bytes = repair_tail(self.path)
            self.done, self.done_with_faces = read_done(self.path, self.class_names)
        try:
            self._file = open(self.path, "a" if resuming else "w", newline="" if self.format == ".csv" else None,
                              encoding="utf-8", buffering=1 << 20)
        except OSError as e:
            raise FERError(f"cannot write output {self.path} ({e.strerror})") from None
        self._csv = csv.writer(self._file) if self.format == ".csv" else None
        if self._csv is not None and (not resuming or self._file.tell() == 0):
            self._csv.writerow(csv_header(self.class_names))
        self._last_flush = time.monotonic()

    def write(self, result: ImageResult) -> None:
        if self._csv is not None:
            self._csv.writerows(csv_rows(result, self.class_names))
        else:
            record = image_record(result, self.class_names, self.embedding)
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self._file.flush()
            self._last_flush = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Tally:
    """Counts for the summary line: images read, skipped (unreadable, the first few kept), without a face, faces."""

    def __init__(self, keep: int = 5):
        self.read = self.no_face = self.faces = 0
        self.skipped: list = []
        self.skipped_count, self.keep = 0, keep

    def add(self, result: ImageResult) -> None:
        if result.error is not None:
            self.skipped_count += 1
            if len(self.skipped) < self.keep:
                self.skipped.append(result.image)
            return
        self.read += 1
        self.faces += len(result.boxes)
        self.no_face += len(result.boxes) == 0

    def summary(self) -> str:
        return (f"{self.read + self.skipped_count} images: {self.read} read, {self.skipped_count} skipped "
                f"(unreadable), {self.no_face} without a face; {self.faces} faces")

    def skipped_report(self) -> str | None:
        if not self.skipped_count:
            return None
        more = f" (and {self.skipped_count - len(self.skipped)} more)" if self.skipped_count > len(self.skipped) else ""
        return f"warning: skipped {self.skipped_count} unreadable image(s): {', '.join(self.skipped)}{more}"
