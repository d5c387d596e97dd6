import threading

import cv2
import numpy as np
import pytest

from fer_common.infer import bulk
from fer_common.cli import FERError
from fer_common.infer.predictor import Predictor
from fer_common.results import Face, Result, probability_matrix
from helpers_models import shared_models
from synthetic import make_crops, pattern


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return Predictor(shared_models(tmp_path_factory) / "fer_model.onnx", device="cpu")


def test_list_images_sorted_recursive_without_hidden_files(tmp_path):
    for name in ["b.png", "a.jpg", ".hidden.png", "notes.txt", "sub/c.png", "sub/.cache/d.png",
                 "z/e.PNG", "z/y/f.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert bulk.list_images([tmp_path]) == [str(tmp_path / n) for n in ["a.jpg", "b.png"]]
    assert bulk.list_images([tmp_path], recursive=True) == [str(tmp_path / n) for n in
                                                            ["a.jpg", "b.png", "sub/c.png", "z/e.PNG", "z/y/f.png"]]
    assert bulk.list_images([tmp_path / "b.png", tmp_path / "sub"]) == [str(tmp_path / n) for n in ["b.png", "sub/c.png"]]
    (tmp_path / "only_sub" / "inner").mkdir(parents=True)
    (tmp_path / "only_sub" / "inner" / "g.png").write_bytes(b"x")
    with pytest.raises(FERError, match="add --recursive"):
        bulk.list_images([tmp_path / "only_sub"])
    with pytest.raises(FERError, match="image not found"):
        bulk.list_images([tmp_path / "missing.png"])


def boxes_of(r):
    return [list(f.box) for f in r.faces]


def test_results_in_input_order_across_batches_and_threads(predictor, tmp_path):
    paths = make_crops(tmp_path, 23, bad={7})
    results = list(bulk.iter_results(predictor, paths, batch_size=4, workers=3))
    assert [r.index for r in results] == list(range(23)) and [r.source for r in results] == paths
    assert results[7].error == "cannot decode" and results[7].faces == [] and results[7].size is None
    for r in results[:7] + results[8:]:
        crop = cv2.imread(r.source, cv2.IMREAD_GRAYSCALE)
        alone = predictor.predict([crop])               # one image at a time, as inference.py used to
        assert r.error is None and boxes_of(r) == [[0, 0, 48, 48]] and r.size == (48, 48)
        assert r.faces[0].score is None                 # no detector: the image is the face
        np.testing.assert_allclose(probability_matrix(r, predictor.class_names), alone.probabilities, atol=1e-5)
        np.testing.assert_allclose(r.faces[0].embedding, alone.embeddings[0], atol=1e-4)


def test_detected_faces_go_back_to_their_images(predictor, tmp_path):
    """Faces of many images share a forward pass; each image gets its own faces back, with their scores."""
    rng = np.random.default_rng(1)
    paths = []
    for i in range(11):
        image = np.concatenate([pattern(i % 7, rng), pattern((i + 3) % 7, rng)], axis=1)     # 48 x 96
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), image)
        paths.append(str(tmp_path / f"{i:02d}.png"))
    plans = {p: [[0, 0, 48, 48], [48, 0, 48, 48]][:k % 3] for k, p in enumerate(paths)}   # 0, 1 or 2 faces
    frames = {cv2.imread(p).tobytes(): plans[p] for p in paths}
    made = []

    class LookupDetector:
        """Finds the planned faces of each file, recognised by its pixels."""
        def __init__(self):
            made.append(threading.get_ident())

        def detect_with_scores(self, frame):
            boxes = np.array(frames[frame.tobytes()], np.int32).reshape(-1, 4)
            return boxes, np.full(len(boxes), 0.75, np.float32)

    results = list(bulk.iter_results(predictor, paths, LookupDetector, batch_size=3, workers=2))
    assert len(made) <= 2                                # one detector per worker thread, not per image
    for k, r in enumerate(results):
        assert boxes_of(r) == plans[paths[k]]
        assert r.error == (None if k % 3 else "no face found")
        assert [f.score for f in r.faces] == [0.75] * (k % 3)
        if k % 3:
            frame = cv2.imread(paths[k])
            expected = predictor.predict([frame[:, 0:48], frame[:, 48:96]][:k % 3])
            np.testing.assert_allclose(probability_matrix(r, predictor.class_names), expected.probabilities,
                                       atol=1e-5)


def test_analyse_folder_skips_what_is_done(predictor, tmp_path):
    paths = make_crops(tmp_path / "a" / "b", 4)
    got = [r.source for r in bulk.analyse_folder(tmp_path / "a", predictor, recursive=True, skip={paths[1]})]
    assert got == [paths[0], paths[2], paths[3]]


def test_tally_summary():
    t = bulk.Tally(keep=2)
    probs = {"Happy": 1.0, "Sad": 0.0}
    ok = Result("a.png", [Face((0, 0, 5, 5), probs), Face((5, 0, 5, 5), probs)], size=(10, 5))
    none = Result("b.png", [], size=(10, 5), error="no face found")
    for r in [ok, none] + [Result(f"bad{i}.png", error="cannot decode") for i in range(3)]:
        t.add(r)
    assert t.summary() == "5 images: 2 read, 3 skipped (unreadable), 1 without a face; 2 faces"
    assert t.skipped_report() == "warning: skipped 3 unreadable image(s): bad0.png, bad1.png (and 1 more)"


@pytest.mark.parametrize("n, batch_size, workers", [(1000, 64, 2), (10, 64, 2), (5, 1, 3), (300, 64, 8), (130, 64, 1)])
def test_chunks_cover_every_image_once_and_shrink_at_the_end(n, batch_size, workers):
    chunks = list(bulk.chunk_sizes(n, batch_size, workers))
    starts = [start for start, _ in chunks]
    assert starts == sorted(starts) and all(a + k == b for (a, k), b in zip(chunks, starts[1:] + [n]))
    sizes = [k for _, k in chunks]
    assert all(1 <= k <= batch_size for k in sizes)
    if workers == 1:
        assert sizes[:-1] == [batch_size] * (len(sizes) - 1)
    else:       # the last chunks are small, so that no core waits long for the last one
        assert sizes[-1] <= 8 and sizes == sorted(sizes, reverse=True)


def test_each_image_is_detected_as_it_is_decoded_and_only_its_faces_are_kept(predictor, tmp_path):
    """A batch never holds its whole images: each is detected before the next is read, and the crops that
    wait for the forward pass are copies, not views that keep the image alive."""
    events = []

    def images():
        for i in range(4):
            events.append(("read", i))
            yield np.full((60, 80, 3), 40 * i, np.uint8), f"{i}.png"

    class Detector:
        def detect_with_scores(self, frame):
            events.append(("detect", int(frame[0, 0, 0]) // 40))
            return np.array([[10, 5, 48, 48]], np.int32), np.ones(1, np.float32)

    crops, found = bulk.find_faces(images(), Detector())
    assert events == [(kind, i) for i in range(4) for kind in ("read", "detect")]
    assert all(crop.base is None and crop.shape == (48, 48, 3) for crop in crops)
    assert [name for name, *_ in found] == ["0.png", "1.png", "2.png", "3.png"]
    results = bulk.analyse_images(predictor, images(), Detector())
    assert [r.source for r in results] == ["0.png", "1.png", "2.png", "3.png"] and all(len(r.faces) == 1 for r in results)
