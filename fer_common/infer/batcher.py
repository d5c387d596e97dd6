"""Dynamic batching: the face crops of callers on many threads, classified together in one forward pass.

    batcher = DynamicBatcher(predictor, max_faces=32, max_wait_ms=0)
    analyse_images(batcher, images, detector)     # on many threads at once: to each, the batcher is the predictor
    batcher.close()                               # classifies what is queued, then stops

`fer serve` runs one analyse_images (fer_common.infer.bulk, the one detect -> crop -> predict composition) per
request, each on a thread of its own; their predict() calls land here. A batch is formed when `max_faces` faces
wait, or `max_wait_ms` after the first of them arrived, whichever comes first (a call of more than max_faces
faces is a batch of its own); while a forward pass runs, the next batch gathers, so under load batches fill
without waiting. `workers` threads run forward passes, batches taken in arrival order (a model that runs
fastest on one thread, as the 48x48 CNN does, gets one per core, as the bulk run's threads do); each caller gets
its own rows back.
The answers are the predictor's: prepare_batch works face by face, so a face's numbers do not depend on the
batch it was classified in.
"""

import threading
import time
from collections import deque
from concurrent.futures import Future

from fer_common.device import cpu_count
from fer_common.errors import FERError
from fer_common.infer.predictor import Prediction

# Chosen with benchmarks/bench_serve.py's sweep (benchmarks/README.md, FER as a service): since requests await
# their batch without holding a thread, a forward-pass thread that takes what is queued at once beats waiting.
DEFAULT_MAX_FACES = 32
DEFAULT_MAX_WAIT_MS = 0.0


class _Call:
    """One call's crops waiting for their batch, and the Future its Prediction is set on."""
    __slots__ = ("crops", "bgr", "arrived", "future")

    def __init__(self, crops: list, bgr: bool):
        self.crops, self.bgr, self.arrived = crops, bgr, time.monotonic()
        self.future = Future()


class DynamicBatcher:
    """A predictor for many threads: their crops are classified by `predictor` in shared batches.

    max_faces: the most faces in one forward pass (a bigger call is classified alone, in one pass).
    max_wait_ms: how long the first face of a batch waits for others (0: take what is queued, never wait).
    on_batch: called after each forward pass with (faces, calls, seconds): for metrics.
    workers: threads running forward passes at once (None: one per core for a model that prefers one thread
        per pass, else one).
    """

    def __init__(self, predictor, max_faces: int = DEFAULT_MAX_FACES, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
                 on_batch=None, workers: int | None = None):
        if int(max_faces) < 1:
            raise FERError(f"max_faces must be at least 1, not {max_faces}")
        if not max_wait_ms >= 0:
            raise FERError(f"max_wait_ms must be 0 or more, not {max_wait_ms}")
        self.predictor = predictor
        # What analyse_images and make_result read off a predictor.
        self.class_names = list(predictor.class_names)
        self.preprocessing = dict(predictor.preprocessing)
        self.max_faces, self.max_wait = int(max_faces), float(max_wait_ms) / 1000
        self.on_batch = on_batch
        self._calls: deque[_Call] = deque()
        self._waiting = 0                       # faces queued, not yet in a forward pass
        self._cond = threading.Condition()
        self._closed = False
        if workers is None:
            workers = cpu_count() if getattr(predictor, "prefers_one_thread", False) else 1
        self._threads = [threading.Thread(target=self._run, name=f"fer-batcher-{i}", daemon=True)
                         for i in range(max(1, int(workers)))]
        for thread in self._threads:
            thread.start()

    @property
    def waiting_faces(self) -> int:
        return self._waiting

    def predict(self, crops, bgr: bool = True, temperature: float | None = None) -> Prediction:
        """Prediction for `crops` (as Predictor.predict), once their batch has been through the model."""
        crops = list(crops)
        if not crops or temperature is not None:        # nothing to wait for / not the batch's temperature
            return self.predictor.predict(crops, bgr, temperature)
        return self.submit(crops, bgr).result()

    def submit(self, crops, bgr: bool = True) -> Future:
        """Queue `crops` for a batch and return at once: a concurrent.futures.Future of their Prediction (an
        event loop awaits it with asyncio.wrap_future, holding no thread while the batch forms: fer serve)."""
        call = _Call(list(crops), bgr)
        if not call.crops:
            call.future.set_result(self.predictor.predict([], bgr))
            return call.future
        with self._cond:
            if self._closed:
                raise FERError("the batcher is closed: no more faces are classified")
            self._calls.append(call)
            self._waiting += len(call.crops)
            self._cond.notify()
        return call.future

    __call__ = predict

    def close(self, timeout: float | None = None) -> None:
        """Stop taking calls; the queued ones are still classified before the thread ends."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _next_batch(self) -> list[_Call] | None:
        with self._cond:
            while True:
                while not self._calls:
                    if self._closed:
                        return None
                    self._cond.wait()
                deadline = self._calls[0].arrived + self.max_wait
                while self._calls and self._waiting < self.max_faces and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._calls:          # else another worker took them while this one waited: wait again
                    break
            batch, faces, bgr = [], 0, self._calls[0].bgr
            while self._calls and self._calls[0].bgr == bgr and (
                    not batch or faces + len(self._calls[0].crops) <= self.max_faces):
                call = self._calls.popleft()
                self._waiting -= len(call.crops)
                if call.future.set_running_or_notify_cancel():      # False: its caller gave up (cancelled)
                    batch.append(call)
                    faces += len(call.crops)
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            crops = [crop for call in batch for crop in call.crops]
            t0 = time.perf_counter()
            try:
                p = self.predictor.predict(crops, batch[0].bgr)
                if self.on_batch is not None:
                    self.on_batch(len(crops), len(batch), time.perf_counter() - t0)
            except Exception as e:               # every caller of the batch hears of it; the thread goes on
                for call in batch:
                    call.future.set_exception(e)
                continue
            k = 0
            for call in batch:
                n = len(call.crops)
                call.future.set_result(Prediction(p.probabilities[k:k + n], p.embeddings[k:k + n]))
                k += n
