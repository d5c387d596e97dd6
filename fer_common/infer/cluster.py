"""Bulk inference on a Ray cluster: fer_common.bulk's classify_batch in Ray Data workers, results in input order.

    python inference.py photos/ --recursive --engine ray --address auto --workers 16 --output out.jsonl

    settings = classifier_settings(predictor, tta=True, detector={"kind": "yunet"})
    for r in iter_results_ray(images, settings, workers=16, address="auto"):   # fer_common.results.Result
        writer.write(r)

Each worker is a Ray actor holding one BatchClassifier: it loads the model(s) and the face detector once, from
plain settings (model file paths, TTA, detector keyword arguments), then runs `classify_batch` on batches of
image paths, exactly as the local engine's threads do. Workers send back (index, pickled Result) rows; the
driver puts them back in input order as they come (a small reorder buffer) and yields them, so the same
writers (fer_common.infer.writers: .jsonl, .csv, .parquet) stream them and the local and Ray runs write the same rows.

Inputs are paths every worker can open: a folder on this machine (one-node cluster) or on storage every node
mounts at the same path (NFS, a cloud bucket mounted with s3fs/gcsfuse). Paths are sent as absolute paths; the
results keep the paths as given. Object-store URIs (s3://...) are not read directly: mount the bucket.

Fault tolerance is Ray Data's: a worker that dies (killed, out of memory, a lost node) is restarted and its
block of images run again (its defaults for a pool of actors: max_restarts=-1, max_task_retries=-1, kept
because Ray 2.60 deprecates both ways of changing them); the driver keeps one result per image, so the
output holds every image once. An unreadable image is a Result with `error`, as locally.

Ray is optional (pip install 'fer-toolkit[cluster]'); it and pyarrow are imported only when used.
"""

import contextlib
import logging
import os
import pickle
import re
import socket
import sys
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from fer_common.infer.bulk import DEFAULT_BATCH_SIZE, classify_batch
from fer_common.errors import FERError
from fer_common.infer.tta import tta_setting
from fer_common.files import os_error_text
from fer_common.results import Result
from fer_common.infer.writers import import_pyarrow

INSTALL = "pip install 'fer-toolkit[cluster]'"
# Batches per Ray block: a block is what one task runs and what a dead worker's retry runs again.
BATCHES_PER_BLOCK = 4
# At most this many blocks: past it, blocks grow (driver-side bookkeeping stays small for 10^7 images).
MAX_BLOCKS = 10_000


def import_ray():
    """Ray and Ray Data, or one line saying how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise FERError(f"--engine ray needs Ray: {INSTALL}") from None
    return ray


# ------------------------------------------------------------------------------------------------ workers

def _load_predictor(models, model_type, tta, device, provider):
    from fer_common.infer.predictor import load_models

    return load_models(models, model_type, device, provider, tta)


class BatchClassifier:
    """Ray Data's callable class: made once per worker from plain, picklable settings; each call classifies
    one batch ({"path": ..., "index": ...}) with bulk.classify_batch and returns {"index", "result"} rows,
    the Result pickled (exact: the driver's Result is the worker's, floats and embeddings included)."""

    def __init__(self, models: list, model_type: str | None = None, tta: bool = False, device: str = "cpu",
                 provider: str = "cpu", detector: dict | None = None, batch_size: int = DEFAULT_BATCH_SIZE):
        from fer_common.infer.detection import FaceDetector

        self.predictor = _load_predictor(models, model_type, tta, device, provider)
        self.detector = FaceDetector(**detector) if detector is not None else None
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        paths = [os.fsdecode(p) for p in batch["path"]]        # bytes: names need not be UTF-8
        results = classify_batch(self.predictor, paths, self.detector, self.batch_size)
        blobs = np.empty(len(results), dtype=object)
        blobs[:] = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in results]
        return {"index": np.asarray(batch["index"], np.int64), "result": blobs}


def classifier_settings(predictor, tta: bool = False, device: str = "cpu", provider: str = "cpu",
                        detector: dict | None = None) -> dict:
    """BatchClassifier's constructor arguments for the model(s) `predictor` loaded on the driver: absolute
    model paths (each node must see them at the same path), TTA, runtime, and the FaceDetector's keyword
    arguments (None: each image is one face)."""
    members = getattr(predictor, "members", [predictor])
    return {"models": [str(Path(m.path).resolve()) for m in members], "model_type": predictor.model_type,
            "tta": tta_setting(tta), "device": device, "provider": provider, "detector": detector}


# ------------------------------------------------------------------------------------------------- driver

def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join or start the Ray cluster: `auto` (the one this machine is a node of: `ray start` ran here),
    `HEAD:6379` (the same, named), or None / 'none' / 'local': a new local cluster (of `num_cpus` CPUs). Not
    `ray://` (Ray Client): Ray Data's driver needs to be on a node. True if this call started the session;
    False if one was running (used as it is). Scripts call it before writing any output, so that a wrong
    --address fails first."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    if str(address).startswith("ray://"):
        raise FERError(f"--address {address}: Ray Data does not run through Ray Client (ray://); run this "
                       "command on a node of the cluster (the head node, say) with --address auto")
    local = address in (None, "", "none", "local")
    if not local and address != "auto":
        check_cluster_address(address)
    try:
        ray.init(address="local" if local else address, num_cpus=num_cpus if local else None,
                 include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except ConnectionError as e:
        raise FERError(f"--address {address}: no Ray cluster there ({str(e).splitlines()[0][:160]}); start one "
                       "with `ray start --head`, or leave --address out for a new local one") from None
    return True


CONNECT_TIMEOUT_S = 10


def check_cluster_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """HOST:PORT must name a Ray head that answers within `timeout` seconds (ray.init itself retries for
    minutes); one line says what was tried."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FERError(f"--address {address}: give auto (this machine's cluster), local, or the head's HOST:PORT "
                       f"(e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise FERError(f"--address {address}: no Ray cluster answered there within {timeout:g} s "
                       f"({os_error_text(e)}); start one with `ray start --head`, or leave --address out") from None


@contextlib.contextmanager
def connect(address: str | None = None, num_cpus: int | None = None):
    """Ray for one job (init_ray's `address`); a session this started is shut down afterwards."""
    ray = import_ray()
    started = init_ray(address, num_cpus)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _quiet_ray_data(ray):
    """Ray Data's own progress bars and log lines off for this job (the caller shows its own progress; a
    failure still comes back as an exception)."""
    ctx = ray.data.DataContext.get_current()
    logger = logging.getLogger("ray.data")
    saved = ctx.enable_progress_bars, logger.level
    ctx.enable_progress_bars = False
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ctx.enable_progress_bars = saved[0]
        logger.setLevel(saved[1])


# Ray's C++ core worker logs this at error level to the driver's fd 2 whenever Ray Data starts its actor pool (Ray
# Data itself puts the constructor arguments in the object store; ray-project/ray#53727): not a fault of the run.
RAY_ACTOR_NOTICE = re.compile(rb"\[[^\]\n]*\] core_worker\.cc:\d+: Actor with class name: [^\n]* has constructor "
                              rb"arguments in the object store[^\n]*\n")


@contextlib.contextmanager
def _native_stderr_without(notice: re.Pattern = RAY_ACTOR_NOTICE):
    """For the job, fd 2 goes through a thread that drops the lines matching `notice` and passes everything else
    on at once (progress bars, warnings, Ray's other lines and real errors). Native libraries write their log
    lines to fd 2 directly, past Python's logging, each in one write(), which a pipe delivers whole. Start it
    after ray.init, so that Ray's own processes keep the real stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def forward():
        while chunk := os.read(read, 1 << 16):
            os.write(saved, notice.sub(b"", chunk))

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)                   # the pipe's last writer closes: the thread reads to the end and stops
        thread.join(timeout=5)
        os.close(read)
        os.close(saved)


def _blocks(pa, images: list, per_block: int) -> list:
    absolute = [os.fsencode(os.path.abspath(p)) for p in images]      # bytes: names need not be UTF-8
    return [pa.table({"path": pa.array(absolute[s:s + per_block], pa.binary()),
                      "index": np.arange(s, min(s + per_block, len(images)))})
            for s in range(0, len(images), per_block)]


def iter_results_ray(images: list, settings: dict, batch_size: int = DEFAULT_BATCH_SIZE, workers: int = 2,
                     address: str | None = None, classifier=BatchClassifier) -> Iterator[Result]:
    """bulk.iter_results on a Ray cluster: one Result per image, in input order (unreadable ones with `error`).

    settings: BatchClassifier's constructor arguments (classifier_settings).
    workers: Ray actors, each holding one model and detector on one CPU, spread over the cluster's nodes.
    address: see init_ray(). classifier: the callable class (a subclass, in tests).
    """
    if batch_size < 1:
        raise FERError(f"batch size must be at least 1, not {batch_size}")
    if not images:
        return
    pa, _ = import_pyarrow()
    # Blocks of whole batches (Ray Data would merge smaller blocks up to one batch), a few per block; for a small
    # job fewer, so that every worker gets some; for a huge one more, to bound the number of blocks.
    batches = max(1, min(BATCHES_PER_BLOCK, -(-len(images) // (2 * workers * batch_size))))
    per_block = max(batch_size * batches, -(-len(images) // MAX_BLOCKS))
    blocks = _blocks(pa, images, per_block)
    with connect(address, num_cpus=workers) as ray, _quiet_ray_data(ray), _native_stderr_without():
        ds = ray.data.from_arrow(blocks)
        ds = ds.map_batches(classifier, fn_constructor_kwargs=dict(settings, batch_size=batch_size),
                            batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=min(workers, len(blocks))), num_cpus=1)
        pending, following = {}, 0         # results that came early, by index; the next index to yield
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for i, blob in zip(batch["index"].tolist(), batch["result"]):
                    if i >= following and i not in pending:       # a retried block's second copy is dropped
                        r = pickle.loads(blob)
                        r.source, r.index = images[i], i          # the path as given, not the absolute one
                        pending[i] = r
                while following in pending:
                    yield pending.pop(following)
                    following += 1
        except ray.exceptions.RayError as e:
            raise FERError(f"the Ray job failed: {str(e).strip().splitlines()[-1][:300]}") from None
        if following != len(images):
            raise FERError(f"the Ray job returned {following} of {len(images)} results")
