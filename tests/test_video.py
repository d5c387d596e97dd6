import csv
import re

import cv2
import numpy as np
import pytest

import helpers_models  # noqa: F401  (first: puts the repo root, where the scripts are, on sys.path)
import real_time_video
from fer_common.cli import run_main
from fer_common.detection import FaceDetector
from fer_common.predictor import Predictor
from fer_common.video import FaceTracker, VideoPipeline, run_video
from helpers_models import TEST_VIDEO, run_script, shared_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return shared_models(tmp_path_factory)


def read_video(path):
    cap = cv2.VideoCapture(str(path))
    info = (int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS),
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    return info, frames


def test_test_video_is_as_documented():
    (count, fps, w, h), frames = read_video(TEST_VIDEO)
    assert (count, frames, fps, w, h) == (80, 80, 20.0, 480, 360)


def test_tracker_keeps_ids_and_smooths():
    tracker = FaceTracker(smooth=0.5)
    tracker.update_detections([[10, 10, 50, 50], [200, 10, 50, 50]], frame=0)
    assert tracker.ids == [1, 2]
    p0 = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    np.testing.assert_allclose(tracker.smooth_probabilities(p0), p0)
    tracker.update_detections([[206, 12, 50, 50], [14, 10, 50, 50]], frame=3)     # moved a little, other order
    assert tracker.ids == [1, 2]
    np.testing.assert_allclose(tracker.boxes(6, (480, 640))[0], [18, 10, 50, 50])  # extrapolated between detections
    p1 = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
    np.testing.assert_allclose(tracker.smooth_probabilities(p1), [[0.5, 0.5], [0.0, 1.0]])
    tracker.update_detections([[400, 300, 50, 50]], frame=6)     # a new face; the old ones missed once
    assert sorted(tracker.ids) == [1, 2, 3]
    tracker.update_detections([[402, 300, 50, 50]], frame=9)     # missed twice: dropped
    assert tracker.ids == [3]


def test_script_writes_video_and_csv(models, tmp_path):
    out, log = tmp_path / "out.mp4", tmp_path / "log.csv"
    r = run_script("real_time_video.py", "--video", TEST_VIDEO, "--checkpoint", models / "fer_model.pth",
                   "--no_display", "--save_output", out, "--log_csv", log, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fer_model.pth" in r.stdout
    m = re.search(r"(\d+) frames, (\d+) faces, average ([\d.]+) FPS", r.stdout)
    assert m and int(m[1]) == 80 and float(m[3]) > 0
    (count, fps, w, h), frames = read_video(out)
    assert (count, frames, fps, w, h) == (80, 80, 20.0, 480, 360)
    rows = list(csv.DictReader(log.open()))
    assert list(rows[0]) == ["frame", "time_s", "face_id", "x", "y", "w", "h", "top_emotion",
                             "Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
    assert len(rows) == int(m[2]) >= 80                       # one row per face per frame
    per_frame = {}
    for row in rows:
        per_frame.setdefault(int(row["frame"]), []).append(row["face_id"])
        assert abs(sum(float(row[e]) for e in list(row)[8:]) - 1) < 1e-4
    assert all(len(ids) == len(set(ids)) for ids in per_frame.values())
    assert set(per_frame) <= set(range(80)) and len(per_frame) >= 75
    assert max(len(ids) for ids in per_frame.values()) >= 2   # the two-face segment


def test_interrupted_run_leaves_a_playable_file(models, tmp_path):
    predictor = Predictor(models / "fer_model.pth")
    calls = {"n": 0}

    class Interrupting:
        class_names = predictor.class_names

        def __call__(self, crops):
            calls["n"] += 1
            if calls["n"] > 10:
                raise KeyboardInterrupt
            return predictor(crops)

    out = tmp_path / "cut.avi"
    stats = run_video(Interrupting(), FaceDetector(), str(TEST_VIDEO), save_output=out, display=False, log=lambda m: None)
    assert stats["interrupted"] and stats["frames"] == 10
    (_, fps, w, h), frames = read_video(out)
    assert (frames, fps, w, h) == (10, 20.0, 480, 360)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]    # no temporary left behind


def test_pipeline_batches_all_faces_once_per_frame(models):
    predictor = Predictor(models / "fer_model.pth")
    sizes = []

    class Counting:
        class_names = predictor.class_names

        def __call__(self, crops):
            sizes.append(len(crops))
            return predictor(crops)

    pipeline = VideoPipeline(Counting(), FaceDetector(), detect_every=2, smooth=0.0)
    cap = cv2.VideoCapture(str(TEST_VIDEO))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 60)
    for _ in range(4):
        result = pipeline.process(cap.read()[1], fps=10.0)
        assert len(result.boxes) == len(result.ids) == len(result.probabilities) == 2
    assert sizes == [2, 2, 2, 2]


@pytest.mark.parametrize("case", ["missing", "not_a_video", "webcam", "unwritable", "bad_smooth"])
def test_bad_input_is_one_line(case, models, tmp_path, capsys):
    args = ["--checkpoint", str(models / "fer_model.pth"), "--no_display"]
    if case == "missing":
        args += ["--video", str(tmp_path / "nope.mp4")]
        expect = "video not found"
    elif case == "not_a_video":
        (tmp_path / "fake.mp4").write_text("hello")
        args += ["--video", str(tmp_path / "fake.mp4")]
        expect = "cannot read video"
    elif case == "webcam":
        args += ["--camera", "57"]
        expect = "cannot open webcam 57"
    elif case == "unwritable":
        (tmp_path / "file").write_text("x")
        args += ["--video", str(TEST_VIDEO), "--save_output", str(tmp_path / "file" / "out.mp4")]
        expect = "cannot write output video"
    else:
        args += ["--video", str(TEST_VIDEO), "--smooth", "1.5"]
        expect = "--smooth"
    with pytest.raises(SystemExit) as e:
        run_main(real_time_video.main, real_time_video.get_args_parser(), args)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err


def test_threaded_detection_finds_the_face_and_keeps_every_frame(models):
    cap = cv2.VideoCapture(str(TEST_VIDEO))
    frames = [cap.read()[1] for _ in range(40)]          # the one-face part of the clip
    cap.release()
    pipeline = VideoPipeline(Predictor(models / "fer_model.onnx"), FaceDetector(), detect_every=3, threaded=True)
    try:
        results = [pipeline.process(frame) for frame in frames]
    finally:
        pipeline.close()
    # The first frame waits for its detection (no face known yet); later ones use boxes as they arrive.
    assert all(len(r.boxes) >= 1 for r in results)
    assert all(r.probabilities.shape == (len(r.boxes), 7) for r in results)
    assert len({r.ids[0] for r in results}) == 1                   # one face, one id throughout


def test_existing_output_is_kept_without_overwrite(models, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the user's own video")
    args = ["--video", TEST_VIDEO, "--checkpoint", models / "fer_model.onnx", "--no_display", "--max_frames", "3",
            "--save_output", out]
    r = run_script("real_time_video.py", *args, cwd=tmp_path)
    assert r.returncode == 1 and "already exists: pass --overwrite" in r.stderr
    assert out.read_bytes() == b"the user's own video"
    r = run_script("real_time_video.py", *args, "--overwrite", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert read_video(out)[1] == 3


def test_pipeline_classifies_the_detectors_fer_framed_boxes(models):
    predictor = Predictor(models / "fer_model.onnx")
    shapes = []

    class Recording:
        class_names = predictor.class_names

        def __call__(self, crops):
            shapes.extend(c.shape[:2] for c in crops)
            return predictor(crops)

    cap = cv2.VideoCapture(str(TEST_VIDEO))
    frame = cap.read()[1]
    cap.release()
    detector = FaceDetector(min_face=real_time_video.VIDEO_MIN_FACE, detect_size=real_time_video.VIDEO_DETECT_SIZE)
    pipeline = VideoPipeline(Recording(), detector, detect_every=1, draw=False)
    result = pipeline.process(frame)
    x, y, w, h = result.boxes[0]
    assert len(result.boxes) == 1 and w == h                         # a square FER-2013 crop, not the raw box
    assert shapes == [(h, w)]                                        # classified as it is, no extra margin
