"""fer_common.infer.batcher: crops of concurrent callers classified together, each caller given its own rows;
and detection.DetectorPool, which lets threads share a few detectors."""

import threading
import time

import numpy as np
import pytest

from fer_common.errors import FERError
from fer_common.infer.batcher import DynamicBatcher
from fer_common.infer.detection import DetectorPool
from fer_common.infer.predictor import Prediction, Predictor
from synthetic import REPO, pattern

INT8 = REPO / "models" / "fer_model.int8.onnx"


class Recorder:
    """A predictor whose answer for a crop is its first pixel (so rows can be traced), recording each batch."""

    class_names = ["a", "b"]
    preprocessing = {"input_size": [48, 48], "channels": 1, "mean": [0.5], "std": [0.25]}

    def __init__(self, fail: bool = False):
        self.batches, self.fail = [], fail

    def predict(self, crops, bgr=True, temperature=None):
        self.batches.append(len(crops))
        if self.fail:
            raise RuntimeError("the model broke")
        first = np.array([float(c[0, 0]) for c in crops], np.float32)
        return Prediction(np.stack([first, -first], 1), first[:, None])


def crop(value: int) -> np.ndarray:
    return np.full((4, 4), value, np.uint8)


def call_all(batcher, calls: list[list]) -> list:
    """batcher.predict(crops) for each list of crops, all at once on threads; the answers in call order."""
    answers = [None] * len(calls)

    def run(i):
        answers[i] = batcher.predict(calls[i])
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return answers


def test_concurrent_calls_share_one_forward_pass_and_each_gets_its_rows():
    model = Recorder()
    batcher = DynamicBatcher(model, max_faces=8, max_wait_ms=5000)       # fills at 8 faces: no waiting 5 s
    t0 = time.monotonic()
    answers = call_all(batcher, [[crop(10 * i + 1), crop(10 * i + 2)] for i in range(4)])
    assert time.monotonic() - t0 < 4
    assert model.batches == [8]
    for i, p in enumerate(answers):
        assert p.probabilities[:, 0].tolist() == [10 * i + 1, 10 * i + 2]
        assert p.embeddings.shape == (2, 1)
    batcher.close()


def test_max_faces_bounds_a_batch_and_a_bigger_call_goes_alone():
    model = Recorder()
    batcher = DynamicBatcher(model, max_faces=5, max_wait_ms=0)
    assert batcher.predict([crop(i) for i in range(7)]).probabilities.shape == (7, 2)   # 7 > 5: alone, whole
    answers = call_all(batcher, [[crop(1)] * 3, [crop(2)] * 3, [crop(3)] * 3])
    assert all(p.probabilities.shape == (3, 2) for p in answers)
    assert model.batches == [7, 3, 3, 3]            # 3 + 3 > 5: each call of 3 is a batch
    assert batcher.predict([]).probabilities.shape == (0, 2)     # nothing to wait for: the predictor's own answer
    batcher.close()


def test_a_lone_call_waits_at_most_max_wait():
    batcher = DynamicBatcher(Recorder(), max_faces=64, max_wait_ms=50)
    t0 = time.monotonic()
    batcher.predict([crop(1)])
    assert 0.04 <= time.monotonic() - t0 < 5
    batcher.close()


def test_an_error_reaches_every_caller_of_the_batch_and_the_batcher_goes_on():
    model = Recorder(fail=True)
    batcher = DynamicBatcher(model, max_faces=4, max_wait_ms=5000)
    errors = []

    def run():
        try:
            batcher.predict([crop(1), crop(2)])
        except RuntimeError as e:
            errors.append(str(e))
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == ["the model broke"] * 2
    model.fail = False
    assert batcher.predict([crop(5)] * 4).probabilities[0, 0] == 5
    batcher.close()


def test_close_classifies_what_is_queued_then_refuses():
    model = Recorder()
    batcher = DynamicBatcher(model, max_faces=64, max_wait_ms=300)
    answers = []
    thread = threading.Thread(target=lambda: answers.append(batcher.predict([crop(7)])))
    thread.start()
    while batcher.waiting_faces == 0:
        time.sleep(0.005)
    batcher.close()             # the queued call is still answered
    thread.join(10)
    assert answers[0].probabilities[0, 0] == 7
    with pytest.raises(FERError, match="closed"):
        batcher.predict([crop(1)])
    with pytest.raises(FERError):
        DynamicBatcher(model, max_faces=0)


def test_batched_numbers_are_the_predictors():
    predictor = Predictor(INT8, tta=True)
    rng = np.random.default_rng(0)
    crops = [pattern(i % 7, rng) for i in range(6)]
    batcher = DynamicBatcher(predictor, max_faces=6, max_wait_ms=2000)
    answers = call_all(batcher, [[c] for c in crops])
    for c, p in zip(crops, answers):
        alone = predictor.predict([c])
        np.testing.assert_allclose(p.probabilities, alone.probabilities, atol=1e-6)
        np.testing.assert_allclose(p.embeddings, alone.embeddings, atol=1e-5)
    batcher.close()


def test_detector_pool_never_lends_one_detector_to_two_threads():
    state = {"now": 0, "most": 0}
    lock = threading.Lock()

    class Detector:
        kind = "fake"

        def __init__(self):
            self.busy = False

        def detect_with_scores(self, frame):
            assert not self.busy
            self.busy = True
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            time.sleep(0.002)
            with lock:
                state["now"] -= 1
            self.busy = False
            return np.zeros((0, 4), np.int32), None

    pool = DetectorPool(Detector, 2)
    assert pool.kind == "fake"
    threads = [threading.Thread(target=lambda: [pool.detect(None) for _ in range(10)]) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert 1 <= state["most"] <= 2 and state["now"] == 0


def test_submitted_calls_are_futures_and_a_cancelled_one_is_left_out():
    """submit() returns at once (fer serve awaits the future on its event loop); a caller that gave up before its
    batch formed (a cancelled future) is dropped from the batch, and the others still get their own rows."""
    model = Recorder()
    batcher = DynamicBatcher(model, max_faces=3, max_wait_ms=5000, workers=1)
    gone = batcher.submit([crop(1)])
    assert gone.cancel()                                  # still queued: its caller may give up
    kept = [batcher.submit([crop(v)]) for v in (2, 3, 4)]
    answers = [f.result(30) for f in kept]
    assert [float(a.embeddings[0, 0]) for a in answers] == [2.0, 3.0, 4.0]
    assert model.batches == [3] and gone.cancelled()
    empty = batcher.submit([])
    assert empty.done() and empty.result().probabilities.shape == (0, 2)
    batcher.close()


def test_a_worker_whose_calls_another_took_while_it_waited_keeps_going():
    # Two workers: one waits out the first call's max_wait, the other fills the batch with the second call and
    # takes both; the first wakes to an empty queue and must wait again, not end with an exception.
    crashed = []
    hook, threading.excepthook = threading.excepthook, lambda a: crashed.append(a.exc_type)
    try:
        batcher = DynamicBatcher(Recorder(), max_faces=2, max_wait_ms=30, workers=2)
        for i in range(20):
            first = batcher.submit([crop(i)])
            time.sleep(0.005)                      # a worker is waiting out max_wait for this call
            second = batcher.submit([crop(i)])
            assert first.result(5) and second.result(5)
        time.sleep(0.1)
        assert crashed == [] and all(t.is_alive() for t in batcher._threads)
        batcher.close()
    finally:
        threading.excepthook = hook
