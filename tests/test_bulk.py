import csv
import json
import threading

import cv2
import numpy as np
import pytest

from fer_common import bulk
from fer_common.cli import FERError
from fer_common.labels import EMOTIONS
from fer_common.predictor import Predictor
from helpers_models import shared_models
from synthetic import pattern


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return Predictor(shared_models(tmp_path_factory) / "fer_model.onnx", device="cpu")


def make_crops(folder, n, bad=(), seed=0):
    """n 48x48 gray PNG crops named 000.png ...; the indices in `bad` hold bytes that are no image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.png"
        if i in bad:
            path.write_bytes(b"\x89PNG truncated")
        else:
            cv2.imwrite(str(path), pattern(i % len(EMOTIONS), rng))
        paths.append(str(path))
    return paths


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


def test_results_in_input_order_across_batches_and_threads(predictor, tmp_path):
    paths = make_crops(tmp_path, 23, bad={7})
    results = list(bulk.iter_results(predictor, paths, batch_size=4, workers=3))
    assert [r.index for r in results] == list(range(23)) and [r.image for r in results] == paths
    assert results[7].error == "cannot decode" and len(results[7].boxes) == 0
    for r in results[:7] + results[8:]:
        crop = cv2.imread(r.image, cv2.IMREAD_GRAYSCALE)
        alone = predictor.predict([crop])               # one image at a time, as inference.py used to
        assert r.error is None and r.boxes.tolist() == [[0, 0, 48, 48]]
        np.testing.assert_allclose(r.probabilities, alone.probabilities, atol=1e-5)
        np.testing.assert_allclose(r.embeddings, alone.embeddings, atol=1e-4)


def test_detected_faces_go_back_to_their_images(predictor, tmp_path):
    """Faces of many images share a forward pass; each image gets its own faces back."""
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

        def detect(self, frame):
            return np.array(frames[frame.tobytes()], np.int32).reshape(-1, 4)

    results = list(bulk.iter_results(predictor, paths, LookupDetector, batch_size=3, workers=2))
    assert len(made) <= 2                                # one detector per worker thread, not per image
    for k, r in enumerate(results):
        assert r.boxes.tolist() == plans[paths[k]]
        assert r.probabilities.shape == (k % 3, len(EMOTIONS))
        if k % 3:
            frame = cv2.imread(paths[k])
            expected = predictor.predict([frame[:, 0:48], frame[:, 48:96]][:k % 3])
            np.testing.assert_allclose(r.probabilities, expected.probabilities, atol=1e-5)


def test_jsonl_and_csv_contents(predictor, tmp_path):
    paths = make_crops(tmp_path / "crops", 3)
    results = list(bulk.iter_results(predictor, paths, batch_size=2, workers=1))
    no_face = results[2]._replace(boxes=np.zeros((0, 4), np.int32), probabilities=results[2].probabilities[:0],
                                  embeddings=results[2].embeddings[:0])
    names = predictor.class_names
    with bulk.ResultWriter(tmp_path / "out.jsonl", names, embedding=True) as w:
        for r in results[:2] + [no_face]:
            w.write(r)
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [d["image"] for d in lines] == paths and lines[2]["faces"] == []
    face = lines[0]["faces"][0]
    assert face["box"] == [0, 0, 48, 48] and list(face["probabilities"]) == names and len(face["embedding"]) == 128
    assert face["top_emotion"] == names[int(np.argmax(results[0].probabilities[0]))]
    np.testing.assert_allclose(list(face["probabilities"].values()), results[0].probabilities[0], atol=1e-6)

    with bulk.ResultWriter(tmp_path / "out.csv", names) as w:
        for r in results[:2] + [no_face]:
            w.write(r)
    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "face", "x", "y", "w", "h", "top_emotion", *names]
    assert rows[1][:7] == [paths[0], "0", "0", "0", "48", "48", face["top_emotion"]]
    np.testing.assert_allclose([float(v) for v in rows[1][7:]], results[0].probabilities[0], atol=1e-6)
    assert rows[3] == [paths[2]] + [""] * (6 + len(names))         # an image without a face still has its row
    with pytest.raises(FERError, match="not CSV"):
        bulk.ResultWriter(tmp_path / "e.csv", names, embedding=True)
    with pytest.raises(FERError, match=".jsonl or .csv"):
        bulk.ResultWriter(tmp_path / "e.json", names)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_after_a_cut_repairs_a_half_written_line(predictor, tmp_path, suffix):
    paths = make_crops(tmp_path / "crops", 9)
    names = predictor.class_names
    full, cut = tmp_path / f"full{suffix}", tmp_path / f"cut{suffix}"
    with bulk.ResultWriter(full, names) as w:
        for r in bulk.iter_results(predictor, paths, batch_size=4, workers=2):
            w.write(r)
    data = full.read_bytes()
    lines = data.splitlines(keepends=True)
    keep = 5 if suffix == ".jsonl" else 6             # 5 images (the CSV has a header line)
    cut.write_bytes(b"".join(lines[:keep]) + lines[keep][:17])     # killed in the middle of a line

    with pytest.raises(FERError, match="--resume to continue it, or --overwrite"):
        bulk.ResultWriter(cut, names)
    with bulk.ResultWriter(cut, names, resume=True) as w:
        assert w.repaired_bytes == 17 and w.done == set(paths[:5]) and w.done_with_faces == 5
        for r in bulk.iter_results(predictor, [p for p in paths if p not in w.done], batch_size=4, workers=2):
            w.write(r)
    assert cut.read_bytes() == data

    with bulk.ResultWriter(cut, names, overwrite=True) as w:      # --overwrite starts again
        pass
    assert cut.read_bytes() == (b"" if suffix == ".jsonl" else lines[0])


def test_resume_refuses_a_file_it_did_not_write(predictor, tmp_path):
    (tmp_path / "a.jsonl").write_text('{"image": "x.png", "faces": []}\nnot json\n')
    with pytest.raises(FERError, match="line 2 is not a result line"):
        bulk.ResultWriter(tmp_path / "a.jsonl", predictor.class_names, resume=True)
    (tmp_path / "b.csv").write_text("image,face,x,y,w,h,top_emotion,Happy,Sad\n")
    with pytest.raises(FERError, match="columns"):
        bulk.ResultWriter(tmp_path / "b.csv", predictor.class_names, resume=True)
    with pytest.raises(FERError, match="give one of them"):
        bulk.check_output(tmp_path / "b.csv", resume=True, overwrite=True)
    assert bulk.check_output(tmp_path / "new.csv", resume=True) is False      # nothing to resume: a fresh start


def test_analyse_folder_skips_what_is_done(predictor, tmp_path):
    paths = make_crops(tmp_path / "a" / "b", 4)
    got = [r.image for r in bulk.analyse_folder(tmp_path / "a", predictor, recursive=True, skip={paths[1]})]
    assert got == [paths[0], paths[2], paths[3]]


def test_tally_summary():
    t = bulk.Tally(keep=2)
    ok = bulk.ImageResult(0, "a.png", np.zeros((2, 4), np.int32), np.zeros((2, 7)), np.zeros((2, 8)))
    none = ok._replace(image="b.png", boxes=np.zeros((0, 4), np.int32))
    for r in [ok, none] + [ok._replace(image=f"bad{i}.png", error="cannot decode") for i in range(3)]:
        t.add(r)
    assert t.summary() == "5 images: 2 read, 3 skipped (unreadable), 1 without a face; 2 faces"
    assert t.skipped_report() == "warning: skipped 3 unreadable image(s): bad0.png, bad1.png (and 1 more)"
