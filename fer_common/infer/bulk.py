"""Bulk inference: folders of up to millions of images through the model in batches, in input order, in flat memory.

    predictor = Predictor("models/fer_model.int8.onnx")
    for r in analyse_folder("crops/", predictor, recursive=True):      # no detector: each image is one face
        print(r.source, r.faces[0].top_emotion if r.faces else r.error)    # a fer_common.results.Result
    for r in analyse_folder("photos/", predictor, detector=FaceDetector):   # a factory: one detector per thread
        ...

Worker threads each take a chunk of `batch_size` images (smaller ones at the end: chunk_sizes), read them one
by one (and detect their faces, keeping only those), and send all the chunk's faces through the model in one
forward pass. OpenCV and ONNX Runtime release the GIL, so the threads use every core; only a few chunks are
in flight at a time, so memory does not grow with the folder, and results come back in input order, as
fer_common.results.Result objects (an unreadable image too, with its `error`). fer_common.writers streams them
to a .jsonl or .csv file that an interrupted run can resume from.
"""

import contextlib
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from fer_common.errors import FERError
from fer_common.infer.detection import crop_faces
from fer_common.device import cpu_count
from fer_common.files import IMAGE_EXTENSIONS, is_image_name
from fer_common.preprocess import decode_image, read_image, small_input
from fer_common.results import UNREADABLE, Result, make_result

# Faces per forward pass: the int8 48x48 model's time per face is flat from batch 8 up (benchmarks/README.md,
# Bulk inference); 64 keeps the chunks small enough to show progress and bound memory.
DEFAULT_BATCH_SIZE = 64
# Chunks in flight per worker: enough that a worker never waits for the consumer, few enough to bound memory.
_PREFETCH_PER_WORKER = 2


def default_workers() -> int:
    """Worker threads for reading, detecting and classifying: one per core, at most 8."""
    return min(8, cpu_count())


def _is_file_or_link(entry) -> bool:
    """A file, or a link that does not lead to a folder (a broken or looping link becomes an unreadable image's
    result, so that it is reported rather than silently left out)."""
    try:
        return entry.is_file() or (entry.is_symlink() and not entry.is_dir())
    except OSError:             # a link loop: too many levels of links
        return True


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
        found += [os.path.join(current, e.name) for e in entries if is_image_name(e.name) and _is_file_or_link(e)]
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


STAGES = ("read", "detect", "classify")


def decode_channels(predictor, detect: bool) -> int:
    """The channels to decode an image file with: images to detect faces in stay BGR, as OpenCV's detectors
    take them; whole images are decoded straight to the model's channels, as training decodes them. Either
    way converted once, the same for folders, Ray and FER.analyse_image."""
    return 3 if detect else predictor.preprocessing["channels"]


def read_for(predictor, path, detect: bool) -> np.ndarray | None:
    """An image file decoded as the model will see it (decode_channels); None when unreadable."""
    return read_image(path, decode_channels(predictor, detect), bgr=True)


def decode_for(predictor, data, detect: bool) -> np.ndarray | None:
    """Image bytes (a request body: fer serve) decoded as read_for decodes a file; None when unreadable."""
    return decode_image(data, decode_channels(predictor, detect), bgr=True)


def analyse_images(predictor, images: Iterable, detector=None, batch_size: int = DEFAULT_BATCH_SIZE, start: int = 0,
                   spent: dict | None = None, detect_lock=None, classify_lock=None) -> list[Result]:
    """Decoded images -> one Result each, in order: the one composition of detect -> crop -> predict.

    images: (array or None when unreadable, name) pairs, arrays BGR or gray uint8; a generator is consumed one
    image at a time (find_faces). detector: an object with detect_with_scores, or None (each image is one face
    crop). One forward pass per `batch_size` faces. `start` numbers the results (Result.index); `spent` adds
    seconds per stage; the locks guard a shared detector or model. (fer serve runs the same three steps with
    the forward pass awaited: find_faces, then its batcher, then assemble_results.)"""
    spent = spent if spent is not None else dict.fromkeys(STAGES, 0.0)
    crops, found = find_faces(images, detector, spent, detect_lock)
    t0 = time.perf_counter()
    probs, embs = [], []
    for i in range(0, max(len(crops), 1), batch_size):
        with classify_lock or contextlib.nullcontext():
            p = predictor.predict(crops[i:i + batch_size], bgr=True)
        probs.append(p.probabilities)
        embs.append(p.embeddings)
    spent["classify"] += time.perf_counter() - t0
    return assemble_results(predictor.class_names, found, np.concatenate(probs), np.concatenate(embs), start)


def find_faces(images: Iterable, detector=None, spent: dict | None = None, detect_lock=None) -> tuple[list, list]:
    """analyse_images' first step: (every face crop, in order; per image (name, boxes, scores, size, error)).

    Each image is detected as it comes, and only its faces' pixels are kept (copies): given a generator that
    decodes (classify_batch), a batch never holds its whole images (64 phone photos of 12 M pixels would be
    2.3 GB a worker), at the same speed (benchmarks/README.md)."""
    crops, found = [], []
    for image, name in images:
        if image is None:
            found.append((name, np.zeros((0, 4), np.int32), None, None, UNREADABLE))
            continue
        size = (image.shape[1], image.shape[0])
        if detector is None:
            boxes, scores = np.array([[0, 0, *size]], np.int32), None
            crops.append(image)
        else:
            t0 = time.perf_counter()
            with detect_lock or contextlib.nullcontext():
                boxes, scores = detector.detect_with_scores(image)
            crops += [crop.copy() for crop in crop_faces(image, boxes)]
            if spent is not None:
                spent["detect"] += time.perf_counter() - t0
        found.append((name, boxes, scores, size, None))
    return crops, found


def assemble_results(class_names, found: list, probs, embs, start: int = 0) -> list[Result]:
    """analyse_images' last step: find_faces' faces and their probabilities and embeddings -> one Result each."""
    results, k = [], 0
    for j, (name, boxes, scores, size, error) in enumerate(found):
        n = len(boxes)
        results.append(make_result(name, class_names, boxes, probs[k:k + n], embs[k:k + n], scores,
                                   size=size, error=error, index=start + j))
        k += n
    return results


def classify_batch(predictor, paths: list, detector=None, batch_size: int = DEFAULT_BATCH_SIZE, start: int = 0,
                   spent: dict | None = None, detect_lock=None, classify_lock=None) -> list[Result]:
    """One batch of image paths -> one Result each, in order: each read (read_for) and passed on to
    analyse_images as it is decoded.

    The unit of work of every bulk engine: iter_results' threads here, Ray Data's workers
    (fer_common.infer.cluster)."""
    spent = spent if spent is not None else dict.fromkeys(STAGES, 0.0)
    detect = detector is not None

    def decoded():
        for path in paths:
            t0 = time.perf_counter()
            image = read_for(predictor, path, detect)
            spent["read"] += time.perf_counter() - t0
            yield image, path

    return analyse_images(predictor, decoded(), detector, batch_size, start, spent, detect_lock, classify_lock)


def chunk_sizes(n: int, batch_size: int, workers: int) -> Iterator[tuple[int, int]]:
    """(start, size) of the chunks of n images: batch_size each, then smaller ones at the end, so that every
    worker finishes at about the same time (a last full chunk would keep one core busy while the others wait:
    64 photos with detection are 0.3 s)."""
    start = 0
    while start < n:
        size = batch_size if workers == 1 else min(max(-(-(n - start) // (2 * workers)), 8), batch_size)
        size = min(size, n - start)
        yield start, size
        start += size


def iter_results(predictor, images: list, detector=None, batch_size: int = DEFAULT_BATCH_SIZE,
                 workers: int | None = None, timings: dict | None = None) -> Iterator[Result]:
    """Classify every image, yielding one Result per image in input order (unreadable ones with `error`).

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
    # Big models use every core for one forward pass already: running two at once would only thrash.
    classify_lock = None if small_input(predictor.preprocessing) else threading.Lock()
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
        results = classify_batch(predictor, paths, get_detector(), batch_size, start, spent, detect_lock,
                                 classify_lock)
        return results, spent

    chunks = ((s, images[s:s + size]) for s, size in chunk_sizes(len(images), batch_size, workers))
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
                   workers: int | None = None, skip: set | frozenset = frozenset()) -> Iterator[Result]:
    """iter_results over the images of a folder (sorted; sub-folders too with recursive), minus those in `skip`."""
    images = [p for p in list_images([folder], recursive) if p not in skip]
    return iter_results(predictor, images, detector, batch_size, workers)


class Tally:
    """Counts for the summary line: images read, skipped (unreadable, the first few kept), without a face, faces."""

    def __init__(self, keep: int = 5):
        self.read = self.no_face = self.faces = 0
        self.skipped: list = []
        self.skipped_count, self.keep = 0, keep

    def add(self, result: Result) -> None:
        if result.size is None:
            self.skipped_count += 1
            if len(self.skipped) < self.keep:
                self.skipped.append(result.source)
            return
        self.read += 1
        self.faces += len(result.faces)
        self.no_face += len(result.faces) == 0

    def summary(self) -> str:
        return (f"{self.read + self.skipped_count} images: {self.read} read, {self.skipped_count} skipped "
                f"(unreadable), {self.no_face} without a face; {self.faces} faces")

    def skipped_report(self) -> str | None:
        if not self.skipped_count:
            return None
        more = f" (and {self.skipped_count - len(self.skipped)} more)" if self.skipped_count > len(self.skipped) else ""
        return f"warning: skipped {self.skipped_count} unreadable image(s): {', '.join(self.skipped)}{more}"
