import csv
import json
import re
import sys

import cv2
import numpy as np
import pytest

import real_time_video
from fer_common.cli import FERError, run_main
from fer_common.detection import FaceDetector
from fer_common.labels import EMOTIONS
from fer_common.predictor import Predictor
from fer_common.summary import MATPLOTLIB_MISSING
from fer_common.video import (FrameResult, VideoPipeline, VideoReader, analyse_video, csv_header, output_sinks,
                               run_video)
from helpers_models import TEST_IMAGE, TEST_VIDEO, run_script


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
    with VideoReader(str(TEST_VIDEO)) as reader:
        pipeline = VideoPipeline(Interrupting(), FaceDetector(), fps=reader.clock_fps)
        sinks = output_sinks(reader, predictor.class_names, save_output=out, display=False)
        stats = run_video(pipeline.run(reader), sinks, total=reader.total)
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
        result = pipeline.process(cap.read()[1])
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
    pipeline = VideoPipeline(Recording(), detector, detect_every=1)
    result = pipeline.process(frame)
    x, y, w, h = result.boxes[0]
    assert len(result.boxes) == 1 and w == h                         # a square FER-2013 crop, not the raw box
    assert shapes == [(h, w)]                                        # classified as it is, no extra margin


def portrait_frames(n=6):
    """The test portrait (512x512, one face) moving a few pixels right per frame, in a 512x640 frame."""
    face = cv2.imread(str(TEST_IMAGE))
    frames = []
    for k in range(n):
        frame = np.zeros((512, 640, 3), np.uint8)
        frame[:face.shape[0], 3 * k:3 * k + face.shape[1]] = face
        frames.append(frame)
    return frames


def test_pipeline_results_without_drawing(models):
    predictor = Predictor(models / "fer_model.onnx")
    frames = portrait_frames()
    copies = [f.copy() for f in frames]
    pipeline = VideoPipeline(predictor, FaceDetector(), detect_every=2, smooth=0.5, fps=20.0)
    results = [r for _, r in pipeline.run(frames)]
    assert [r.index for r in results] == list(range(6))
    assert [r.time for r in results] == pytest.approx([k / 20 for k in range(6)])
    for r in results:
        assert isinstance(r, FrameResult) and len(r.boxes) == 1 and r.ids == [1]   # one face, one id throughout
        assert r.probabilities.shape == (1, len(predictor.class_names))
        assert r.probabilities.sum() == pytest.approx(1, abs=1e-5)                 # smoothed, still a distribution
        assert r.embeddings.shape == (1, predictor.embedding_dim)
        assert set(r.timings) == {"detect", "classify", "track"} and min(r.timings.values()) >= 0
    assert [r.timings["detect"] > 0 for r in results] == [True, False] * 3          # detect_every 2, in the loop
    assert all(np.array_equal(f, c) for f, c in zip(frames, copies))                # nothing drawn on the frames
    x = [int(r.boxes[0][0]) for r in results]
    assert x[0] < x[2] < x[4]                                                      # the box follows the face


def test_analyse_video_yields_frames_and_results(models, tmp_path):
    predictor = Predictor(models / "fer_model.onnx")
    items = list(analyse_video(str(TEST_VIDEO), predictor, FaceDetector(), max_frames=5))
    assert [r.index for _, r in items] == list(range(5))
    assert [r.time for _, r in items] == pytest.approx([0, 0.05, 0.1, 0.15, 0.2])   # the file's clock, 20 fps
    assert all(f.shape == (360, 480, 3) and len(r.boxes) == 1 for f, r in items)
    with pytest.raises(FERError, match="video not found"):                          # at the call, not at next()
        analyse_video(str(tmp_path / "nope.mp4"), predictor, FaceDetector())


def test_script_summary_and_plot(models, tmp_path):
    pytest.importorskip("matplotlib")
    log, summary, plot = tmp_path / "log.csv", tmp_path / "summary.json", tmp_path / "faces.png"
    r = run_script("real_time_video.py", "--video", TEST_VIDEO, "--checkpoint", models / "fer_model.onnx",
                   "--max_frames", "20", "--no_display", "--log_csv", log, "--summary", summary, "--plot", plot,
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"face\s+seen \(s\)\s+frames\s+dominant", r.stdout)           # the table
    data = json.loads(summary.read_text())
    assert data["class_names"] == EMOTIONS and data["source"] == str(TEST_VIDEO)
    ids = [f["face_id"] for f in data["faces"]]
    assert ids and ids == sorted(set(ids))
    for f in data["faces"]:
        assert 0 <= f["first_seen_s"] <= f["last_seen_s"] <= 19 / 20
        assert sum(f["emotion_shares"].values()) == pytest.approx(1, abs=1e-3)
        assert f["dominant_emotion"] == max(f["emotion_shares"], key=f["emotion_shares"].get)
    image = cv2.imread(str(plot))
    assert image is not None and image.shape[0] > 200 and image.std() > 10             # a picture, not a blank
    # the same summary from the log, without the video
    again = tmp_path / "again.json"
    with pytest.raises(SystemExit) as e:
        run_main(real_time_video.main, real_time_video.get_args_parser(),
                 ["--summary_from", str(log), "--summary", str(again)])
    assert e.value.code == 0
    assert json.loads(again.read_text())["faces"] == data["faces"]


def test_plot_without_matplotlib_is_one_line_before_any_work(models, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)          # `import matplotlib` now raises ImportError
    args = ["--video", str(TEST_VIDEO), "--checkpoint", str(models / "fer_model.onnx"), "--no_display",
            "--plot", str(tmp_path / "faces.png")]
    with pytest.raises(SystemExit) as e:
        run_main(real_time_video.main, real_time_video.get_args_parser(), args)
    assert e.value.code == 1
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [f"error: {MATPLOTLIB_MISSING}"] and "pip install matplotlib" in err
    assert "model:" not in out and not list(tmp_path.iterdir())                      # no model loaded, nothing written


def test_summary_from_refuses_video_flags(tmp_path, capsys):
    log = tmp_path / "log.csv"
    log.write_text(",".join(csv_header(EMOTIONS)) + "\n")
    with pytest.raises(SystemExit):
        run_main(real_time_video.main, real_time_video.get_args_parser(),
                 ["--summary_from", str(log), "--video", str(TEST_VIDEO)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--summary_from" in err[0]
