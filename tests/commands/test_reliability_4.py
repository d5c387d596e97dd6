"""Reliability, round 4 (issue 32): each category a hostile probe found, one test per category."""

import shutil

import cv2
import numpy as np

import pytest

import real_time_video
from fer_common.cli import run_main
from helpers_models import TEST_IMAGE, TEST_VIDEO
from synthetic import REPO

MODELS = REPO / "models"


def run_video(argv, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(real_time_video.main, real_time_video.get_args_parser(), [str(a) for a in argv])
    return e.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("flag, target", [("--log_csv", "checkpoint"), ("--save_output", "detector"),
                                          ("--summary", "checkpoint")])
def test_an_output_never_replaces_a_model_the_command_reads(tmp_path, capsys, flag, target):
    model = shutil.copy(MODELS / "fer_model.int8.onnx", tmp_path / "m.onnx")
    detector = shutil.copy(MODELS / "face_detection_yunet_2023mar.onnx", tmp_path / "yunet.onnx")
    victim = {"checkpoint": model, "detector": detector}[target]
    before = open(victim, "rb").read()
    suffix = {"--save_output": ".mp4", "--summary": ".json"}.get(flag)
    out = victim
    if suffix:                           # a name the flag's type check takes, the same file through a link
        out = tmp_path / f"link{suffix}"
        out.symlink_to(victim)
    code, err = run_video(["--video", TEST_VIDEO, "--no_display", "--max_frames", 2, "--checkpoint", model,
                           "--detector_model", detector, flag, out, "--overwrite"], capsys)
    assert code == 1 and len(err) == 1 and err[0].startswith("error: ") and "input" in err[0], err
    assert open(victim, "rb").read() == before


def fixed_batch_copy(src, dst, batch: int):
    """The shipped int8 model as an exporter with a fixed batch writes it: every graph input's and output's
    first dimension pinned to `batch`."""
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(src))
    for value in [*proto.graph.input, *proto.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = batch
    onnx.save(proto, str(dst))
    return dst


def test_an_onnx_model_with_a_fixed_batch_of_one_runs_a_crop_at_a_time(tmp_path):
    from fer_common import FER, Predictor
    from fer_common.errors import FERError

    fixed = fixed_batch_copy(MODELS / "fer_model.int8.onnx", tmp_path / "fixed1.onnx", 1)
    crops = [np.full((48, 48), v, np.uint8) for v in (40, 120, 200)]
    a = Predictor(fixed, tta=True).predict(crops)                  # 6 rows with the mirror images
    b = Predictor(MODELS / "fer_model.int8.onnx", tta=True).predict(crops)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
    assert FER(model=fixed).analyse(REPO / "Test_files" / "IMG_test_1.jpg")[0].top_emotion == "Happy"
    with pytest.raises(FERError, match="fixed batch of 4"):
        Predictor(fixed_batch_copy(MODELS / "fer_model.int8.onnx", tmp_path / "fixed4.onnx", 4))


def test_a_cluster_address_that_does_not_answer_is_one_line_in_seconds(tmp_path):
    import socket
    import time

    from fer_common.errors import FERError
    from fer_common.infer.cluster import check_cluster_address

    with socket.socket() as s:                     # a port on this machine that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(FERError, match="no Ray cluster answered there within 2 s"):
        check_cluster_address(f"127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - start < 10
    for nonsense in ("nonsense", "host:", ":6379", "host:99999"):
        with pytest.raises(FERError, match="HOST:PORT"):
            check_cluster_address(nonsense)


def test_address_without_the_ray_engine_is_refused(tmp_path):
    from synthetic import run_script

    r = run_script("inference.py", REPO / "Test_files" / "IMG_test_1.jpg", "--address", "auto")
    assert r.returncode == 1 and "--engine ray" in r.stderr and "Traceback" not in r.stderr


def test_a_pickle_that_would_run_code_is_refused_in_our_words(tmp_path):
    torch = pytest.importorskip("torch")
    from fer_common.errors import FERError
    from fer_common.model.checkpoint import load_checkpoint

    torch.save({"format": "x", "thing": Payload()}, tmp_path / "evil.pth")      # an object, not weights
    with _no_warning():
        with pytest.raises(FERError, match="holds Python objects besides weights") as e:
            load_checkpoint(tmp_path / "evil.pth")
    assert "weights_only" not in str(e.value)


class Payload:
    """Any class: unpickling it would import and run this module's code."""


class _no_warning:
    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings(record=True)
        self.seen = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        assert not self.seen, [str(w.message) for w in self.seen]
        return False


def test_the_page_server_listens_on_ipv6_and_says_when_the_network_can_reach_it():
    import socket
    import threading
    import urllib.request

    from fer_common.commands import web

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = web.make_server("::1", 0, quiet=True)
    except Exception as e:                         # noqa: BLE001 - the page's files may be missing here
        pytest.skip(str(e))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://[::1]:{port}/web/settings.json", timeout=10) as r:
            assert r.status == 200 and b"frameScale" in r.read()
    finally:
        server.shutdown()
        server.server_close()


def test_the_page_server_on_all_interfaces_says_so(capsys, monkeypatch):
    from fer_common.commands import web

    class Server:
        server_address = ("0.0.0.0", 8000)

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            pass

    monkeypatch.setattr(web, "make_server", lambda host, port: Server())
    with pytest.raises(KeyboardInterrupt):
        web.main(web.get_args_parser().parse_args(["--host", "0.0.0.0"]))
    assert "reachable from the network" in capsys.readouterr().out


def latin1(folder, name: bytes):
    """A path whose name is not UTF-8 (as Python holds one: lone surrogates)."""
    import os

    return folder / os.fsdecode(name)


def test_names_that_are_not_utf8_never_reach_a_native_path_call(tmp_path, capsys):
    from fer_common import FER, Predictor
    from fer_common.infer.detection import FaceDetector
    from fer_common.errors import FERError

    # ONNX Runtime refuses such a name: the model goes to it as bytes, and loads
    model = latin1(tmp_path, b"mod\xe8le.onnx")
    shutil.copy(MODELS / "fer_model.int8.onnx", model)
    assert Predictor(model).class_names == FER().class_names
    # the face detector runs on ONNX Runtime too: read as bytes, it loads and finds the face
    detector = latin1(tmp_path, b"d\xe9tecteur.onnx")
    shutil.copy(MODELS / "face_detection_yunet_2023mar.onnx", detector)
    assert len(FaceDetector(model_path=detector).detect(cv2.imread(str(TEST_IMAGE)))) == 1
    # OpenCV's path calls would crash: one line instead
    video = latin1(tmp_path, b"vid\xe9o.mp4")
    shutil.copy(TEST_VIDEO, video)
    code, err = run_video(["--video", video, "--no_display", "--max_frames", 2], capsys)
    assert code == 1 and len(err) == 1 and "not valid UTF-8" in err[0] and "\\xe9" in err[0]
    code, err = run_video(["--video", TEST_VIDEO, "--no_display", "--max_frames", 2, "--save_output",
                           latin1(tmp_path, b"sortie\xe9.mp4")], capsys)
    assert code == 1 and len(err) == 1 and "not valid UTF-8" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([model.name, detector.name, video.name])


def test_the_csv_import_writes_into_a_folder_whose_name_is_not_utf8(tmp_path):
    from fer_common.datasets.fer2013 import import_csv

    csv_file = tmp_path / "fer2013.csv"
    row = " ".join(["128"] * 48 * 48)
    csv_file.write_text("emotion,pixels,Usage\n3," + row + ",Training\n0," + row + ",PublicTest\n")
    dest = latin1(tmp_path, b"donn\xe9es")
    dest.mkdir()
    result = import_csv(csv_file, dest)
    assert result.total() == 2 and len(list(dest.rglob("*.*"))) == 2


def test_two_runs_never_write_one_parquet_file(tmp_path):
    pytest.importorskip("pyarrow")
    from fer_common.errors import FERError
    from fer_common.infer.writers import ParquetWriter
    from fer_common.results import make_result

    out = tmp_path / "out.parquet"
    meta = {"toolkit": "fer-toolkit", "model": "m"}
    first = ParquetWriter(out, ["a", "b"], meta)
    with pytest.raises(FERError, match="being written by another run"):
        ParquetWriter(out, ["a", "b"], meta, overwrite=True)
    first.write(make_result("x.png", ["a", "b"], [[0, 0, 4, 4]], [[0.3, 0.7]]))
    first.close()
    assert out.is_file() and not (tmp_path / ".out.parquet.lock").exists()
    # a file that appears meanwhile is never replaced without --overwrite
    second = ParquetWriter(tmp_path / "new.parquet", ["a", "b"], meta)
    (tmp_path / "new.parquet").write_bytes(b"someone else's")
    with pytest.raises(FERError, match="appeared while this run wrote it"):
        second.close()
    assert (tmp_path / "new.parquet").read_bytes() == b"someone else's"


def test_a_speed_too_small_to_play_is_refused_in_one_line(capsys):
    code, err = run_video(["--video", TEST_VIDEO, "--speed", "1e-12", "--max_frames", 2], capsys)
    assert code == 1 and len(err) == 1 and "speed must be 0" in err[0]


def test_results_files_escape_names_that_are_not_utf8_and_resume_on_them(tmp_path):
    import json

    from synthetic import run_script

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(REPO / "Test_files" / "IMG_test_1.jpg", latin1(folder, b"photo\xff.jpg"))
    for out in ("out.jsonl", "out.csv"):
        r = run_script("inference.py", folder, "--output", tmp_path / out)
        assert r.returncode == 0, r.stderr
        text = (tmp_path / out).read_bytes().decode("utf-8")       # strict UTF-8: no lone surrogates
        assert ("photo\\\\xff.jpg" if out.endswith(".jsonl") else "photo\\xff.jpg") in text
        r = run_script("inference.py", folder, "--output", tmp_path / out, "--resume")
        assert r.returncode == 0 and "1 of 1 images are already in" in r.stdout + r.stderr, r.stderr
    record = json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert record["source"].endswith("photo\\xff.jpg")
    r = run_script("inference.py", folder / latin1(folder, b"photo\xff.jpg").name, "--json")
    assert r.returncode == 0 and "\\\\xff" in r.stdout


def test_the_page_server_answers_a_long_path_and_a_dropped_download_quietly(capfd):
    import socket
    import threading
    import urllib.error
    import urllib.request

    from fer_common.commands import web

    try:
        server = web.make_server("127.0.0.1", 0, quiet=False)
    except Exception as e:                     # noqa: BLE001 - the page's runtime may be missing here
        pytest.skip(str(e))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/web/{'x' * 300}", timeout=10)
        assert e.value.code == 404
        for _ in range(3):                     # ask for the model, then hang up before reading it
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.sendall(b"GET /models/fer_model.int8.onnx HTTP/1.1\r\nHost: x\r\n\r\n")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/web/settings.json", timeout=10) as r:
            assert r.status == 200                 # still serving
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_a_video_one_pixel_wide_is_refused_for_browser_codecs_in_one_line(tmp_path, suffix):
    from fer_common.errors import FERError
    from fer_common.video.sinks import VideoFile

    video = VideoFile(tmp_path / f"thin{suffix}", 10.0, (1, 40))
    if video.library != "pyav":
        pytest.skip("PyAV is not installed: OpenCV's writer is used")
    with pytest.raises(FERError, match="needs at least 2x2"):
        with video:
            video.write(np.full((40, 1, 3), 100, np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_a_summary_from_a_log_names_its_video_and_survives_odd_names_and_times(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    log = tmp_path / "log.csv"
    code, err = run_video(["--video", TEST_VIDEO, "--no_display", "--max_frames", 10, "--log_csv", log], capsys)
    assert code == 0, err
    odd = latin1(tmp_path, b"journal\xe9.csv")
    shutil.copy(log, odd)
    code, err = run_video(["--summary_from", odd, "--summary", tmp_path / "s.json", "--plot", tmp_path / "p.png"],
                          capsys)
    assert code == 0, err
    import json
    assert json.loads((tmp_path / "s.json").read_text())["source"] == str(TEST_VIDEO)   # the log's video
    rows = log.read_text().splitlines()
    head, first = rows[0].split(","), rows[1].split(",")
    first[head.index("time")] = "1e300"
    (tmp_path / "huge.csv").write_text("\n".join([rows[0], ",".join(first)]) + "\n")
    code, err = run_video(["--summary_from", tmp_path / "huge.csv", "--plot", tmp_path / "q.png"], capsys)
    assert code == 1 and len(err) == 1 and "is not a time in a video" in err[0]


def test_annotating_a_folder_that_holds_a_gray_only_format_goes_to_the_end(tmp_path):
    import cv2

    from synthetic import run_script

    folder = tmp_path / "in"
    folder.mkdir()
    image = cv2.imread(str(REPO / "Test_files" / "IMG_test_1.jpg"))
    cv2.imwrite(str(folder / "a.pgm"), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "b.jpg"), image)
    r = run_script("inference.py", folder, "--save_annotated", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.jpg"]


def test_a_csv_resume_after_a_name_holding_a_newline_takes_its_own_file(tmp_path):
    from synthetic import run_script

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(REPO / "Test_files" / "IMG_test_1.jpg", folder / "line\nbreak.jpg")
    shutil.copy(REPO / "Test_files" / "IMG_test_1.jpg", folder / "plain.jpg")
    out = tmp_path / "out.csv"
    r = run_script("inference.py", folder, "--output", out)
    assert r.returncode == 0, r.stderr
    assert len(out.read_text().splitlines()) == 3 and "line\\x0abreak.jpg" in out.read_text()   # one line a face
    r = run_script("inference.py", folder, "--output", out, "--resume")
    assert r.returncode == 0 and "2 of 2 images are already in" in r.stdout + r.stderr, r.stderr
