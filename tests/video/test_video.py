import csv
import errno
import io
import json
import os
import re
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest

import real_time_video
from fer_common.cli import FERError, run_main
from fer_common.infer.detection import FaceDetector
from fer_common.labels import EMOTIONS
from fer_common.infer.predictor import Predictor
from fer_common.infer.overlay import Overlay
from fer_common.video.summary import MATPLOTLIB_MISSING
from fer_common.results import Result, table_columns
from fer_common.video.options import VIDEO_DETECT_SIZE, VIDEO_MIN_FACE
from fer_common.results import probability_matrix
from fer_common.video.pipeline import SceneCuts, VideoPipeline, analyse_frames
from fer_common.video.run import output_sinks, run_video
from fer_common.video.sinks import VideoFile, pyav_encoders
from fer_common.video.source import VideoReader
from fer_common.video.window import Pacer, Window
from helpers_models import TEST_IMAGE, TEST_VIDEO, run_script
from synthetic import frame_result


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
    names = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
    assert list(rows[0]) == table_columns(names)               # the columns of every results table
    faces = [row for row in rows if row["faces"] != "0"]
    assert len(faces) == int(m[2]) >= 80 and len({row["frame"] for row in rows}) == 80   # every frame has rows
    per_frame = {}
    for row in faces:
        per_frame.setdefault(int(row["frame"]), []).append(row["track_id"])
        assert row["source"] == str(TEST_VIDEO) and (row["width"], row["height"]) == ("480", "360")
        assert abs(sum(float(row[e]) for e in names) - 1) < 1e-4
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
        assert len(result.faces) == 2 and all(f.track_id for f in result.faces)
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
    assert all(len(r.faces) >= 1 for r in results)
    assert all(len(f.probabilities) == 7 for r in results for f in r.faces)
    assert len({r.faces[0].track_id for r in results}) == 1        # one face, one id throughout


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
    detector = FaceDetector(min_face=VIDEO_MIN_FACE, detect_size=VIDEO_DETECT_SIZE)
    pipeline = VideoPipeline(Recording(), detector, detect_every=1)
    result = pipeline.process(frame)
    x, y, w, h = result.faces[0].box
    assert len(result.faces) == 1 and w == h                         # a square FER-2013 crop, not the raw box
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
    assert [r.frame for r in results] == list(range(6))
    assert [r.time for r in results] == pytest.approx([k / 20 for k in range(6)])
    for r in results:
        assert isinstance(r, Result) and [f.track_id for f in r.faces] == [1]      # one face, one id throughout
        assert r.error is None and r.size == (frames[0].shape[1], frames[0].shape[0])
        probabilities = probability_matrix(r, predictor.class_names)
        assert probabilities.sum() == pytest.approx(1, abs=1e-5)                   # smoothed, still a distribution
        assert r.faces[0].embedding.shape == (predictor.embedding_dim,)
        assert set(r.speed) == {"detect", "classify", "track"} and min(r.speed.values()) >= 0
    assert [r.speed["detect"] > 0 for r in results] == [True, False] * 3            # detect_every 2, in the loop
    assert all(np.array_equal(f, c) for f, c in zip(frames, copies))                # nothing drawn on the frames
    x = [int(r.faces[0].box[0]) for r in results]
    assert x[0] < x[2] < x[4]                                                      # the box follows the face


def test_analyse_video_yields_frames_and_results(models, tmp_path):
    predictor = Predictor(models / "fer_model.onnx")
    items = list(analyse_frames(str(TEST_VIDEO), predictor, FaceDetector(), max_frames=5))
    assert [r.frame for _, r in items] == list(range(5))
    assert [r.time for _, r in items] == pytest.approx([0, 0.05, 0.1, 0.15, 0.2])   # the file's clock, 20 fps
    assert all(f.shape == (360, 480, 3) and len(r.faces) == 1 for f, r in items)
    assert {r.source for _, r in items} == {str(TEST_VIDEO)}
    with pytest.raises(FERError, match="video not found"):                          # at the call, not at next()
        analyse_frames(str(tmp_path / "nope.mp4"), predictor, FaceDetector())


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
    assert err.strip().splitlines() == [f"error: {MATPLOTLIB_MISSING}"] and "pip install 'fer-toolkit[plot]'" in err
    assert "model:" not in out and not list(tmp_path.iterdir())                      # no model loaded, nothing written


def test_summary_from_refuses_video_flags(tmp_path, capsys):
    log = tmp_path / "log.csv"
    log.write_text(",".join(table_columns(EMOTIONS)) + "\n")
    with pytest.raises(SystemExit):
        run_main(real_time_video.main, real_time_video.get_args_parser(),
                 ["--summary_from", str(log), "--video", str(TEST_VIDEO)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--summary_from" in err[0]


# ------------------------------------------------------------------ playback on the source's clock (issue 21)

class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class FakeGui:
    """HighGUI without a window: wait_key advances the fake clock; keys arrive at given times."""

    def __init__(self, clock, keys=()):
        self.clock, self.keys = clock, sorted(keys)
        self.shown, self.destroyed = [], False

    def show(self, title, frame):
        self.shown.append((int(frame[0, 0, 0]), self.clock.t))

    def wait_key(self, ms):
        end = self.clock.t + max(int(ms), 1) / 1000
        if self.keys and self.keys[0][0] <= end:
            t, key = self.keys.pop(0)
            self.clock.t = max(self.clock.t, t)
            return key
        self.clock.t = end
        return 255

    def visible(self, title):
        return True

    def destroy(self, title):
        self.destroyed = True


def tiny(k, fps=20.0):
    frame = np.full((4, 4, 3), k, np.uint8)
    return frame, frame_result(k, k / fps, np.zeros((0, 4), np.int32), [], np.zeros((0, 7), np.float32), EMOTIONS)


def play(window, clock, n, cost=lambda k: 0.0, fps=20.0):
    for k in range(n):
        clock.t += cost(k)                  # the pipeline's own time for frame k
        window.write(*tiny(k, fps))
        if window.stop:
            break


@pytest.mark.parametrize("speed", [1.0, 2.0, 0.5])
def test_file_frames_are_shown_on_the_source_clock(speed):
    clock = FakeClock()
    gui = FakeGui(clock)
    window = Window(pacer=Pacer(speed, clock=clock), gui=gui)
    play(window, clock, 20)
    assert [k for k, _ in gui.shown] == list(range(20)) and window.skipped == 0
    for k, t in gui.shown:                  # 20 fps: frame k at k / 20 s, divided by the speed
        assert t == pytest.approx(k / 20 / speed, abs=0.002)


def test_behind_skips_showing_never_processing():
    clock = FakeClock()
    gui = FakeGui(clock)
    window = Window(pacer=Pacer(1.0, clock=clock), gui=gui)
    written = []
    window_write = window.write
    window.write = lambda frame, result, fps=None: (written.append(result.frame), window_write(frame, result))
    play(window, clock, 30, cost=lambda k: 0.2 if k == 10 else 0.0)       # one stall of 0.2 s at frame 10
    assert written == list(range(30))                                    # every frame processed
    shown = dict(gui.shown)
    assert window.skipped >= 1 and len(shown) + window.skipped == 30
    assert 10 in shown                                                    # after a stall the picture is refreshed
    for k in range(14, 30):                                               # ... and the clock caught up
        assert shown[k] == pytest.approx(k / 20, abs=0.002)


def test_a_pipeline_slower_than_the_source_still_shows_its_frames():
    clock = FakeClock()
    gui = FakeGui(clock)
    window = Window(pacer=Pacer(1.0, clock=clock), gui=gui)
    play(window, clock, 20, cost=lambda k: 0.1)                           # 10 FPS for a 20 fps file
    times = [t for _, t in gui.shown]
    assert len(times) >= 18 and max(np.diff(times)) < 0.15                # never a frozen window


def test_space_pauses_and_resumes():
    clock = FakeClock()
    gui = FakeGui(clock, keys=[(0.26, ord(" ")), (1.26, ord(" "))])       # paused for 1 s during frame 6's wait
    window = Window(pacer=Pacer(1.0, clock=clock), gui=gui)
    play(window, clock, 20)
    shown = dict(gui.shown)
    assert len(shown) == 20
    assert shown[5] == pytest.approx(0.25, abs=0.002)
    for k in range(6, 20):
        assert shown[k] == pytest.approx(k / 20 + 1.0, abs=0.002)


def test_last_frame_stays_until_q_unless_close_at_end():
    clock = FakeClock()
    gui = FakeGui(clock, keys=[(5.0, ord("q"))])
    window = Window(pacer=Pacer(1.0, clock=clock), hold=True, gui=gui)
    with window:
        play(window, clock, 3)
    assert not gui.destroyed and not window.stop                          # the end of the file: still up
    window.wait_at_end()
    assert gui.destroyed and clock.t == pytest.approx(5.0, abs=0.06)      # closed by q
    clock, gui = FakeClock(), None
    gui = FakeGui(clock)
    window = Window(pacer=Pacer(1.0, clock=clock), hold=False, gui=gui)   # --close_at_end
    with window:
        play(window, clock, 3)
    assert gui.destroyed


def test_q_quits_while_waiting():
    clock = FakeClock()
    gui = FakeGui(clock, keys=[(0.33, ord("q"))])
    window = Window(pacer=Pacer(1.0, clock=clock), gui=gui)
    play(window, clock, 20)
    assert window.stop and len(gui.shown) == 7                            # frames 0-6, then q


def test_webcam_frames_are_shown_at_once():
    clock = FakeClock()
    gui = FakeGui(clock, keys=[(0.001, ord(" "))])                        # space: no pause for a webcam
    window = Window(pacer=None, gui=gui)
    play(window, clock, 5)
    assert len(gui.shown) == 5 and not window.stop


class StubReader:
    def __init__(self, live):
        self.live, self.fps, self.size = live, 20.0, (64, 48)


@pytest.mark.parametrize("live, speed, close_at_end, paced, hold", [
    (False, 1.0, False, True, True),       # a file in a window: paced, last frame held
    (False, 0.0, False, False, True),      # --speed 0: as fast as possible
    (False, 1.0, True, True, False),       # --close_at_end
    (True, 1.0, False, False, False),      # a webcam: as before
])
def test_output_sinks_pace_only_files_in_a_window(live, speed, close_at_end, paced, hold):
    sinks = output_sinks(StubReader(live), EMOTIONS, display=True, speed=speed, close_at_end=close_at_end)
    window = sinks[-1]
    assert isinstance(window, Window) and (window.pacer is not None) == paced and window.hold == hold
    if paced:
        assert window.pacer.speed == speed
    assert not any(isinstance(s, Window) for s in output_sinks(StubReader(live), EMOTIONS, display=False))


def test_speed_flag(capsys):
    parser = real_time_video.get_args_parser()
    assert parser.parse_args([]).speed == 1.0 and not parser.parse_args([]).close_at_end
    assert parser.parse_args(["--speed", "0", "--close_at_end"]).speed == 0.0
    with pytest.raises(SystemExit):
        parser.parse_args(["--speed", "-1"])
    assert "--speed" in capsys.readouterr().err


# ------------------------------------------------------------------ no phantom faces (issue 21)

def test_scene_cuts_are_found_and_pans_are_not():
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (360, 900, 3), dtype=np.uint8), (9, 9), 0)
    cuts = SceneCuts()
    pan = [cuts(texture[:, 8 * k:8 * k + 480]) for k in range(40)]                 # a fast pan
    assert not any(pan)
    other = cv2.GaussianBlur(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8), (31, 31), 0) // 2
    assert cuts(other) and not cuts(other)                                          # a cut, once
    cap = cv2.VideoCapture(str(TEST_VIDEO))
    cuts = SceneCuts()
    found = [k for k in range(80) if cuts(cap.read()[1])]
    cap.release()
    assert found == [50]                                                            # the test clip's one cut


CUT = 31     # the first frame of the second shot, between two detection rounds of --detect_every 3


def make_cut_clip(path):
    """Two shots, one face each, two different people at the same place: a hard cut at frame CUT."""
    portrait = cv2.resize(cv2.imread(str(TEST_IMAGE)), (360, 360))
    cap = cv2.VideoCapture(str(TEST_VIDEO))
    other = [cap.read()[1] for _ in range(40)][10:]
    cap.release()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (480, 360))
    for k in range(CUT):
        frame = np.zeros((360, 480, 3), np.uint8)
        x = 60 + k % 3                                     # the first person sways a little
        frame[:, x:x + 360] = portrait
        writer.write(frame)
    for frame in other:                                    # the second person's face moved onto the first's place
        writer.write(cv2.warpAffine(frame, np.float32([[1, 0, 48], [0, 1, -63]]), (480, 360)))
    writer.release()
    return path


def video_detector():
    return FaceDetector(min_face=VIDEO_MIN_FACE, detect_size=VIDEO_DETECT_SIZE)


def test_first_face_is_gone_after_a_hard_cut(models, tmp_path, monkeypatch):
    clip = make_cut_clip(tmp_path / "cut.avi")
    predictor = Predictor(models / "fer_model.onnx")
    # Without the cut check the first person's track goes on over the second person (the test is not vacuous).
    before = {k: [f.track_id for f in r.faces] for k, (_, r) in enumerate(
        VideoPipeline(predictor, video_detector(), threaded=True, fps=20, scene_cuts=False).run(VideoReader(clip)))}
    first = set(before[0])
    assert first and any(first & set(before[k]) for k in range(CUT, CUT + 3))
    # Default flags, as a user types them: no drawing, log row or summary share of the first face after the cut.
    drawn = []
    draw = Overlay.draw_result
    monkeypatch.setattr(Overlay, "draw_result",
                        lambda self, frame, result, **kw: (drawn.append((result.frame, [f.track_id for f in result.faces])),
                                                           draw(self, frame, result, **kw)))
    log, summary, out = tmp_path / "log.csv", tmp_path / "summary.json", tmp_path / "out.mp4"
    with pytest.raises(SystemExit) as e:
        run_main(real_time_video.main, real_time_video.get_args_parser(),
                 ["--video", str(clip), "--checkpoint", str(models / "fer_model.onnx"), "--no_display",
                  "--log_csv", str(log), "--summary", str(summary), "--save_output", str(out)])
    assert e.value.code == 0
    assert len(drawn) == 61 and all(ids for _, ids in drawn)
    first = set(drawn[0][1])
    assert all(first.isdisjoint(ids) for k, ids in drawn if k >= CUT)
    assert all(set(ids) == first for k, ids in drawn if k < CUT)
    rows = list(csv.DictReader(log.open()))
    assert rows and all(int(r["frame"]) < CUT for r in rows if r["track_id"] and int(r["track_id"]) in first)
    assert {int(r["frame"]) for r in rows} == set(range(61))
    faces = json.loads(summary.read_text(), parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))["faces"]
    for face in faces:
        if face["face_id"] in first:
            assert face["last_seen_s"] < CUT / 20 and face["frames"] == CUT
        else:
            assert face["first_seen_s"] >= CUT / 20


@pytest.mark.parametrize("threaded", [True, False])
def test_test_clip_first_face_ends_at_its_cut(models, threaded):
    items = analyse_frames(str(TEST_VIDEO), Predictor(models / "fer_model.onnx"), video_detector(),
                          threaded=threaded, max_frames=60)
    ids = {r.frame: {f.track_id for f in r.faces} for _, r in items}
    first = set().union(*(ids[k] for k in range(50)))
    assert first and all(first.isdisjoint(ids[k]) for k in range(50, 60))
    assert all(len(ids[k]) == 2 for k in range(50, 60))                 # the second shot's two faces, at once


# ------------------------------------------------------------------ saved video plays in browsers (issue 21)

def codec_of(path) -> str:
    av = pytest.importorskip("av")
    with av.open(str(path)) as container:
        return container.streams.video[0].codec_context.name


@pytest.mark.parametrize("suffix, codec, want", [(".mp4", "libx264", {"h264"}),
                                                  (".webm", "libvpx-vp9", {"vp9", "libvpx-vp9"})])
def test_saved_video_is_a_browser_codec(tmp_path, suffix, codec, want):
    if codec not in pyav_encoders():
        pytest.skip(f"no {codec} encoder here (PyAV not installed, or its FFmpeg lacks it)")
    out = tmp_path / f"out{suffix}"
    frames = [np.full((361, 481, 3), 10 * k, np.uint8) for k in range(12)]     # odd sizes: one row/column off
    with VideoFile(out, 20.0, (481, 361)) as video:
        for frame in frames:
            video.write(frame)
    assert video.note is None and codec_of(out) in want
    (count, fps, w, h), n = read_video(out)
    assert n == 12 and fps == pytest.approx(20.0) and (w, h) == (480, 360)


def test_script_prints_the_codec(models, tmp_path):
    if "libx264" not in pyav_encoders():
        pytest.skip("no libx264 encoder here (PyAV not installed)")
    out = tmp_path / "out.mp4"
    r = run_script("real_time_video.py", "--video", TEST_VIDEO, "--checkpoint", models / "fer_model.onnx",
                   "--no_display", "--max_frames", "10", "--save_output", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"output video: H.264 (libx264) -> {out}" in r.stdout and codec_of(out) == "h264"


def test_without_pyav_mp4v_with_a_one_line_note(tmp_path, monkeypatch):
    monkeypatch.setattr("fer_common.video.sinks.pyav_encoders", lambda: set())
    out = tmp_path / "out.mp4"
    with VideoFile(out, 20.0, (64, 48)) as video:
        video.write(np.zeros((48, 64, 3), np.uint8))
    assert video.encoder == "mp4v" and "\n" not in video.note and "pip install 'fer-toolkit[video]'" in video.note
    assert video.codec == "MPEG-4 Part 2" and "(mp4v) (mp4v)" not in f"{video.codec} ({video.encoder})"
    assert read_video(out)[1] == 1


# ------------------------------------------------------------------ progress, write failures, options

class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_headless_file_run(models, monkeypatch):
    import functools

    import fer_common.video.run

    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    # every update drawn: a fast run (or a slow one) must not end within tqdm's refresh interval
    monkeypatch.setattr(fer_common.video.run, "tqdm", functools.partial(fer_common.video.run.tqdm, mininterval=0, miniters=1))
    with pytest.raises(SystemExit) as e:
        run_main(real_time_video.main, real_time_video.get_args_parser(),
                 ["--video", str(TEST_VIDEO), "--checkpoint", str(models / "fer_model.onnx"), "--no_display",
                  "--max_frames", "30"])
    assert e.value.code == 0
    text = err.getvalue()
    assert re.search(r"\d+/30 \[[\d:]+<[\d:]+, +[\d.]+ frames/s\]", text), text[-500:]    # frames, FPS, time left


class FailingWriter:
    def __init__(self, *args):
        self.n = 0

    def write(self, frame):
        self.n += 1
        if self.n > 5:
            raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_is_an_error_and_leaves_no_file(models, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("fer_common.video.sinks.open_video_writer", FailingWriter)
    out = tmp_path / "out.mp4"
    with pytest.raises(SystemExit) as e:
        run_main(real_time_video.main, real_time_video.get_args_parser(),
                 ["--video", str(TEST_VIDEO), "--checkpoint", str(models / "fer_model.onnx"), "--no_display",
                  "--save_output", str(out), "--log_csv", str(tmp_path / "log.csv")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write output video") and "No space left" in err[0]
    assert list(tmp_path.iterdir()) == []                     # no partial video, no temporary, no log of a failed run


@pytest.mark.parametrize("library", ["pyav", "opencv"])
def test_a_full_disk_during_save_output_fails_cleanly(models, tmp_path, library):
    """A real write failure: the process may write at most 150 kB per file (RLIMIT_FSIZE, like a full disk)."""
    resource = pytest.importorskip("resource")
    if library == "pyav" and "libx264" not in pyav_encoders():
        pytest.skip("no libx264 encoder here (PyAV not installed)")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)         # the write fails with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

    out = tmp_path / "out.mp4"
    block = "import sys; sys.modules['av'] = None; " if library == "opencv" else ""   # as without PyAV
    code = (f"{block}import os, runpy, sys; sys.argv = sys.argv[1:]; "
            f"sys.path.insert(0, os.path.dirname(sys.argv[0])); runpy.run_path(sys.argv[0], run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code, str(real_time_video.__file__), "--video", str(TEST_VIDEO),
                        "--checkpoint", str(models / "fer_model.onnx"), "--no_display", "--save_output", str(out)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, preexec_fn=limit,
                       # OpenCV's per-frame "Failed to write frame" warnings: what cli.quiet_native_logs means to set
                       env=dict(os.environ, OPENCV_LOG_LEVEL="SILENT"))
    assert r.returncode == 1, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write output video"), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, expect", [
    ({"source": -1}, "webcam index must be from 0 to 99"),
    ({"source": 100}, "webcam index must be from 0 to 99"),
    ({"source": True}, "a video source is a file path or a webcam index"),
    ({"source": None}, "a video source is a file path or a webcam index"),
    ({"source": ""}, "a video source is a file path or a webcam index"),
    ({"source": 1.5}, "a video source is a file path or a webcam index"),
    ({"max_frames": 0}, "max_frames must be 1 or more"),
    ({"max_frames": -1}, "max_frames must be 1 or more"),
    ({"max_frames": 2.5}, "max_frames must be an integer"),
    ({"detect_every": 0}, "detect_every must be from 1 to 1000"),
    ({"detect_every": "3"}, "detect_every must be an integer"),
    ({"smooth": float("nan")}, "smooth must be a finite number"),
    ({"smooth": 1.0}, r"smooth must be in \[0, 1\)"),
])
def test_analyse_video_checks_its_options_first(kwargs, expect):
    options = {"source": str(TEST_VIDEO), **kwargs}
    with pytest.raises(FERError, match=expect):
        analyse_frames(options.pop("source"), None, None, **options)       # before any model or capture is used


def test_a_source_that_is_not_a_regular_file_is_refused(tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(FERError, match="not a regular file"):             # no hang on open
        VideoReader(str(fifo))



def test_the_clean_h264_sample_is_the_test_clip_frame_for_frame():
    # the clip the browser page plays (issue 34): H.264, the same 80 frames, no overlays
    clean = TEST_VIDEO.with_name("Video_Test_1.h264.mp4")
    with VideoReader(str(clean)) as a, VideoReader(str(TEST_VIDEO)) as b:
        assert (a.size, a.fps) == (b.size, b.fps)
        pairs = list(zip(a, b))
    assert len(pairs) == 80
    assert max(float(np.abs(x.astype(int) - y.astype(int)).mean()) for x, y in pairs) < 6   # lossy, not drawn on
    av = pytest.importorskip("av")
    with av.open(str(clean)) as container:
        assert container.streams.video[0].codec_context.name == "h264"


def test_times_come_from_the_files_clock_for_variable_and_high_frame_rates(tmp_path):
    # a phone's variable frame rate: irregular timestamps; and a 300 fps clip, which is not read as 30 fps
    av = pytest.importorskip("av")
    from fractions import Fraction

    clip = cv2.VideoCapture(str(TEST_VIDEO))
    frames = [clip.read()[1] for _ in range(8)]
    times = [0.0, 0.01, 0.02, 0.1, 0.2, 0.21, 0.5, 0.52]
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=100)
        stream.width, stream.height, stream.pix_fmt = 480, 360, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for frame, t in zip(frames, times):
            picture = av.VideoFrame.from_ndarray(frame, format="bgr24")
            picture.pts, picture.time_base = int(t * 1000), Fraction(1, 1000)
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))
    with VideoReader(str(path)) as reader:
        read = []
        for _ in reader:
            read.append(reader.time)
    assert read == pytest.approx(times, abs=0.002)
    from fer_common import FER                                       # the results carry the file's times
    assert [r.time for r in FER().analyse_video(str(path))] == pytest.approx(times, abs=0.002)
    fast = tmp_path / "fast.avi"
    writer = cv2.VideoWriter(str(fast), cv2.VideoWriter_fourcc(*"MJPG"), 300, (480, 360))
    for frame in frames:
        writer.write(frame)
    writer.release()
    with VideoReader(str(fast)) as reader:
        assert reader.fps == pytest.approx(300)
        read = [reader.time for _ in reader]
    assert read == pytest.approx([k / 300 for k in range(8)], abs=1e-3)
