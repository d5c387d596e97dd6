"""download_dataset.py and fer_common.datasets.download / fer2013: tiny synthetic data, a local HTTP server, no network."""

import base64
import contextlib
import csv
import gzip
import hashlib
import io
import json
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

import download_dataset  # noqa: E402
from fer_common.datasets import download, fer2013  # noqa: E402
from fer_common.cli import FERError, run_main  # noqa: E402
from fer_common.datasets.download import COMPLETE_MARKER, import_dataset, read_marker  # noqa: E402
from fer_common.labels import count_table  # noqa: E402
from fer_common.labels import EMOTIONS  # noqa: E402

KAGGLE_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


# ---------------------------------------------------------------- synthetic data

def pixels(value: int, n: int = 48 * 48) -> str:
    return " ".join(str((value + i) % 256) for i in range(n))


def write_csv(path: Path, rows, gz: bool = False, header=("emotion", "pixels", "Usage")) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    data = buf.getvalue().encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def fer_rows():
    """Per class: 2 Training, 1 PublicTest, 1 PrivateTest; then 4 bad rows."""
    rows = []
    for label in range(7):
        rows += [[label, pixels(label), "Training"], [label, pixels(label + 1), "Training"],
                 [label, pixels(label + 2), "PublicTest"], [label, pixels(label + 3), "PrivateTest"]]
    rows += [[0, pixels(0, n=100), "Training"],      # wrong pixel count
             [7, pixels(0), "Training"],             # label out of range
             ["x", pixels(0), "Training"],           # label not a number
             [3, pixels(0).replace("0", "300", 1), "Training"]]  # a pixel above 255
    return rows


def make_kaggle_folder(root: Path, n_train: int = 2, n_test: int = 1) -> Path:
    """train/ and test/ with lowercase class folders of small fake JPEG files (only bytes are compared)."""
    for split, prefix, n in (("train", "Training", n_train), ("test", "PublicTest", n_test)):
        for c in KAGGLE_CLASSES:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{prefix}_{c}{i}.jpg").write_bytes(f"jpeg {split} {c} {i}".encode())
    return root


def zip_folder(folder: Path, zip_path: Path, prefix: str = "", junk: bool = False) -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in sorted(folder.rglob("*")):
            zf.write(f, prefix + f.relative_to(folder).as_posix())
        if junk:
            zf.writestr("__MACOSX/._train", b"mac junk")
    return zip_path


@pytest.fixture
def kaggle_zip(tmp_path) -> Path:
    return zip_folder(make_kaggle_folder(tmp_path / "kaggle"), tmp_path / "fer2013.zip")


def expected_kaggle_counts(n_train=2, n_test=1):
    return {"train": {e: n_train for e in EMOTIONS}, "test": {e: n_test for e in EMOTIONS}}


def run_cli(argv, capsys):
    """download_dataset.py in-process, as run_main runs it: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(download_dataset.main, download_dataset.get_args_parser(), argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


# ---------------------------------------------------------------- a local HTTP server

@pytest.fixture(autouse=True)
def no_proxy_for_localhost(monkeypatch):
    """A developer's HTTP_PROXY must not route the local test server through a proxy."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@contextlib.contextmanager
def serve(handle):
    """Serve GET requests with handle(request_handler) on 127.0.0.1; yields the base URL."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            handle(self)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def send(h, data: bytes, status: int = 200, headers: dict | None = None):
    h.send_response(status)
    h.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


# ---------------------------------------------------------------- CSV

def test_csv_counts_names_pixels_and_skipped_rows(tmp_path):
    src = write_csv(tmp_path / "fer2013.csv", fer_rows())
    info = import_dataset(str(src), tmp_path / "dataset")
    assert info["counts"] == {"train": {e: 2 for e in EMOTIONS}, "test": {e: 2 for e in EMOTIONS}}
    assert sum(info["skipped"].values()) == 4
    assert info["skipped"]["rows with a bad label"] == 2
    first = tmp_path / "dataset" / "train" / "Angry" / "Training_00001.png"
    image = cv2.imread(str(first), cv2.IMREAD_UNCHANGED)
    assert image.shape == (48, 48) and image.dtype == np.uint8
    assert image.ravel().tolist() == [int(v) for v in pixels(0).split()]  # PNG is lossless
    assert (tmp_path / "dataset" / "test" / "Angry" / "PublicTest_00003.png").exists()
    assert read_marker(tmp_path / "dataset")["counts"] == info["counts"]


def test_gzipped_csv_with_keep_splits(tmp_path):
    src = write_csv(tmp_path / "fer2013.csv.gz", fer_rows(), gz=True)
    info = import_dataset(str(src), tmp_path / "dataset", keep_splits=True)
    assert info["counts"] == {"train": {e: 2 for e in EMOTIONS}, "public_test": {e: 1 for e in EMOTIONS},
                              "private_test": {e: 1 for e in EMOTIONS}}
    assert sorted(p.name for p in (tmp_path / "dataset").iterdir() if p.is_dir()) == \
        ["private_test", "public_test", "train"]


def test_csv_table_and_skipped_warning_on_the_command_line(tmp_path, capsys):
    src = write_csv(tmp_path / "fer2013.csv", fer_rows())
    code, out, err = run_cli(["--source", str(src), "--output", str(tmp_path / "ds")], capsys)
    assert code == 0
    assert "skipped 2 rows with a bad label" in err
    assert "skipped 2 rows with a bad pixel count or value" in err
    lines = out.splitlines()
    assert lines[-9].split() == ["class", "train", "test"]
    assert [line.split()[0] for line in lines[-8:]] == EMOTIONS + ["total"]
    assert lines[-1].split() == ["total", "14", "14"]


def test_csv_with_the_wrong_header(tmp_path):
    src = write_csv(tmp_path / "other.csv", [[1, 2, 3]], header=("label", "image", "split"))
    with pytest.raises(FERError, match="expected the columns emotion,pixels,Usage, found label,image,split"):
        import_dataset(str(src), tmp_path / "dataset")
    assert not (tmp_path / "dataset").exists()


def test_csv_without_valid_rows(tmp_path):
    src = write_csv(tmp_path / "fer2013.csv", [[9, pixels(0), "Training"], [1, "1 2 3", "Training"]])
    with pytest.raises(FERError, match="no valid FER-2013 rows .2 rows skipped"):
        import_dataset(str(src), tmp_path / "dataset")
    assert not (tmp_path / "dataset").exists()


# ---------------------------------------------------------------- Kaggle layout: folder, zip, tar

def test_kaggle_folder_gets_canonical_names_and_identical_bytes(tmp_path):
    src = make_kaggle_folder(tmp_path / "kaggle", n_train=3, n_test=2)
    info = import_dataset(str(src), tmp_path / "dataset")
    assert info["counts"] == expected_kaggle_counts(3, 2)
    out = tmp_path / "dataset"
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(EMOTIONS)
    copied = out / "test" / "Surprise" / "PublicTest_surprise1.jpg"
    assert copied.read_bytes() == (src / "test" / "surprise" / "PublicTest_surprise1.jpg").read_bytes()


@pytest.mark.parametrize("prefix", ["", "fer2013/"])
def test_kaggle_zip_with_or_without_a_top_folder(tmp_path, prefix):
    src = zip_folder(make_kaggle_folder(tmp_path / "kaggle"), tmp_path / "archive.zip", prefix, junk=True)
    info = import_dataset(str(src), tmp_path / "dataset")
    assert info["counts"] == expected_kaggle_counts()
    assert (tmp_path / "dataset" / "train" / "Happy" / "Training_happy1.jpg").read_bytes() == b"jpeg train happy 1"


def test_kaggle_tar_gz(tmp_path):
    folder = make_kaggle_folder(tmp_path / "kaggle")
    src = tmp_path / "fer.tgz"
    with tarfile.open(src, "w:gz") as tf:
        tf.add(folder, arcname="fer2013")
    assert import_dataset(str(src), tmp_path / "dataset")["counts"] == expected_kaggle_counts()


def test_zip_without_the_layout_names_what_it_found(tmp_path):
    src = tmp_path / "photos.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("images/a.jpg", b"x")
        zf.writestr("labels.txt", b"y")
    with pytest.raises(FERError, match=r"train/<class>/ and test/<class>/; its top level holds: images, labels.txt"):
        import_dataset(str(src), tmp_path / "dataset")


def test_unknown_class_folder(tmp_path):
    src = make_kaggle_folder(tmp_path / "kaggle")
    (src / "train" / "contempt").mkdir()
    (src / "train" / "contempt" / "a.jpg").write_bytes(b"x")
    with pytest.raises(FERError, match="no emotion: train/contempt"):
        import_dataset(str(src), tmp_path / "dataset")


def test_corrupt_zip(tmp_path, kaggle_zip):
    truncated = tmp_path / "broken.zip"
    truncated.write_bytes(kaggle_zip.read_bytes()[:-200])
    with pytest.raises(FERError, match="broken.zip is a corrupt zip file"):
        import_dataset(str(truncated), tmp_path / "dataset")


def test_missing_local_path(tmp_path, capsys):
    code, out, err = run_cli(["--source", str(tmp_path / "nope.zip"), "--output", str(tmp_path / "ds")], capsys)
    assert code == 1
    assert err.strip().startswith("error: source not found:") and "nope.zip" in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- complete, --force, interruptions

def test_complete_dataset_is_reported_not_redone_and_force_redoes_it(tmp_path, kaggle_zip, capsys):
    out = tmp_path / "dataset"
    assert run_cli(["--source", str(kaggle_zip), "--output", str(out)], capsys)[0] == 0
    (out / "train" / "Angry" / "extra.jpg").write_bytes(b"mine")

    code, stdout, _ = run_cli(["--source", str(kaggle_zip), "--output", str(out)], capsys)
    assert code == 0
    assert f"dataset already present at {out}: 14 train, 7 test images" in stdout
    assert "use --force to redo" in stdout and "total" in stdout
    assert (out / "train" / "Angry" / "extra.jpg").exists()

    assert run_cli(["--source", str(kaggle_zip), "--output", str(out), "--force"], capsys)[0] == 0
    assert not (out / "train" / "Angry" / "extra.jpg").exists()
    assert read_marker(out)["counts"] == expected_kaggle_counts()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "fer2013.zip", "kaggle"]  # no temp folders


def test_existing_folder_without_marker_is_not_overwritten(tmp_path, kaggle_zip):
    (tmp_path / "dataset" / "train").mkdir(parents=True)
    with pytest.raises(FERError, match="holds no complete import .no .complete.json., only empty folders; use --force"):
        import_dataset(str(kaggle_zip), tmp_path / "dataset")
    assert import_dataset(str(kaggle_zip), tmp_path / "dataset", force=True)["counts"] == expected_kaggle_counts()


def test_force_never_deletes_files_this_tool_did_not_make(tmp_path, kaggle_zip, capsys):
    own = tmp_path / "own"
    own.mkdir()
    source = own / "archive.zip"
    source.write_bytes(kaggle_zip.read_bytes())
    (own / "notes.txt").write_text("mine")
    code, _, err = run_cli(["--source", str(source), "--output", str(own), "--force"], capsys)
    assert code == 1 and err.count("\n") == 1 and "inside --output" in err
    assert sorted(p.name for p in own.iterdir()) == ["archive.zip", "notes.txt"]
    # a folder of the user's, without the marker: refused even with --force
    code, _, err = run_cli(["--source", str(kaggle_zip), "--output", str(own), "--force"], capsys)
    assert code == 1 and "never replaced, not even with --force" in err
    assert (own / "notes.txt").read_text() == "mine"
    # a complete data set with a foreign file added: --force refuses, and names the file
    out = tmp_path / "dataset"
    import_dataset(str(kaggle_zip), out)
    (out / "my_results.csv").write_text("keep me")
    code, _, err = run_cli(["--source", str(kaggle_zip), "--output", str(out), "--force"], capsys)
    assert code == 1 and "my_results.csv" in err and (out / "my_results.csv").exists()


@pytest.mark.parametrize("output", [".", "..", "", "./"])
def test_output_that_is_the_current_folder_or_above_is_refused(tmp_path, kaggle_zip, monkeypatch, capsys, output):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("x")
    monkeypatch.chdir(work)
    code, _, err = run_cli(["--source", str(kaggle_zip), "--output", output, "--force"], capsys)
    assert code in (1, 2) and "Traceback" not in err and err.strip()
    assert (work / "keep.txt").exists() and (tmp_path / "fer2013.zip").exists()


def interrupt_after(monkeypatch, n: int):
    """Make the importer raise KeyboardInterrupt after n images, as a Ctrl-C would."""
    add = fer2013.ImportResult.add
    seen = []

    def add_then_stop(self, split, emotion):
        seen.append(1)
        if len(seen) > n:
            raise KeyboardInterrupt
        add(self, split, emotion)

    monkeypatch.setattr(fer2013.ImportResult, "add", add_then_stop)


def test_interrupted_import_leaves_no_complete_looking_dataset(tmp_path, kaggle_zip, monkeypatch):
    interrupt_after(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        import_dataset(str(kaggle_zip), tmp_path / "dataset")
    assert not (tmp_path / "dataset").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dataset")]


def test_interrupted_force_keeps_the_old_complete_dataset(tmp_path, kaggle_zip, monkeypatch):
    out = tmp_path / "dataset"
    import_dataset(str(kaggle_zip), out)
    interrupt_after(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        import_dataset(str(kaggle_zip), out, force=True)
    assert read_marker(out)["counts"] == expected_kaggle_counts()
    assert len(list((out / "train").rglob("*.jpg"))) == 14


# ---------------------------------------------------------------- URLs

def test_zip_by_url_then_the_download_cache_is_removed(tmp_path, kaggle_zip):
    data = kaggle_zip.read_bytes()
    with serve(lambda h: send(h, data)) as base:
        info = import_dataset(f"{base}/files/fer2013.zip", tmp_path / "dataset",
                              sha256=hashlib.sha256(data).hexdigest())
    assert info["counts"] == expected_kaggle_counts()
    assert not (tmp_path / "dataset.download").exists()


def test_csv_gz_by_url_without_a_telling_name(tmp_path):
    data = gzip.compress(write_csv(tmp_path / "f.csv", fer_rows()).read_bytes())
    with serve(lambda h: send(h, data)) as base:
        info = import_dataset(f"{base}/get?id=1", tmp_path / "dataset")
    assert info["counts"]["train"] == {e: 2 for e in EMOTIONS}


def test_broken_download_resumes_with_a_range_request(tmp_path, kaggle_zip):
    # A top-level file beside train/ and test/ (ignored by the import) makes the download span several
    # chunks, so part of it is on disk when the connection drops.
    with zipfile.ZipFile(kaggle_zip, "a") as zf:
        zf.writestr("LICENSE.txt", np.random.default_rng(0).bytes(300_000))
    data = kaggle_zip.read_bytes()
    half = len(data) // 2
    ranges = []

    def handle(h):
        ranges.append(h.headers.get("Range"))
        if len(ranges) == 1:  # promise everything, send half, hang up
            h.send_response(200)
            h.send_header("Content-Length", str(len(data)))
            h.send_header("ETag", '"v1"')
            h.end_headers()
            h.wfile.write(data[:half])
            h.wfile.flush()
            h.close_connection = True
            return
        assert h.headers["If-Range"] == '"v1"'
        start = int(h.headers["Range"].removeprefix("bytes=").removesuffix("-"))
        send(h, data[start:], 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})

    with serve(handle) as base:
        url = f"{base}/fer2013.zip"
        with pytest.raises(FERError, match="broke off after .*run the same command again to resume"):
            import_dataset(url, tmp_path / "dataset")
        kept = (tmp_path / "dataset.download" / "fer2013.zip.part").stat().st_size
        assert 0 < kept <= half
        assert not (tmp_path / "dataset").exists()
        info = import_dataset(url, tmp_path / "dataset", sha256=hashlib.sha256(data).hexdigest())
    assert ranges == [None, f"bytes={kept}-"]
    assert info["counts"] == expected_kaggle_counts()


def half_download(tmp_path, data: bytes, etag: str | None):
    """A .part holding the first half of `data`, as a broken download of a file with `etag` leaves it."""
    cache = tmp_path / "dataset.download"
    cache.mkdir()
    (cache / "fer2013.zip.part").write_bytes(data[:len(data) // 2])
    if etag:
        (cache / "fer2013.zip.part.json").write_text(json.dumps({"validator": etag}))
    return cache


@pytest.mark.parametrize("stored", ['"old"', None])
def test_resume_of_a_file_that_changed_on_the_server_starts_again(tmp_path, kaggle_zip, stored):
    old = np.random.default_rng(1).bytes(len(kaggle_zip.read_bytes()))      # what the server had before
    data = kaggle_zip.read_bytes()
    half_download(tmp_path, old, stored)
    seen = []

    def handle(h):
        seen.append((h.headers.get("Range"), h.headers.get("If-Range")))
        if h.headers.get("Range") and h.headers.get("If-Range") == '"new"':
            raise AssertionError("the stored validator is the old one")
        send(h, data, 200, {"ETag": '"new"'})     # If-Range did not match: the whole new file

    with serve(handle) as base:
        info = import_dataset(f"{base}/fer2013.zip", tmp_path / "dataset")
    assert info["counts"] == expected_kaggle_counts()
    # with a stored ETag the server is asked "the rest, if unchanged"; without one the download restarts
    assert seen == ([("bytes=" + str(len(old) // 2) + "-", '"old"')] if stored else [(None, None)])
    assert not (tmp_path / "dataset.download").exists()


def test_server_that_ignores_range_restarts_from_zero(tmp_path, kaggle_zip):
    data = kaggle_zip.read_bytes()
    cache = tmp_path / "dataset.download"
    cache.mkdir()
    (cache / "fer2013.zip.part").write_bytes(b"garbage that is no prefix")
    with serve(lambda h: send(h, data)) as base:  # always 200 with the whole file
        info = import_dataset(f"{base}/fer2013.zip", tmp_path / "dataset")
    assert info["counts"] == expected_kaggle_counts()


def test_sha256_mismatch_names_both_sums_and_removes_the_download(tmp_path, kaggle_zip, capsys):
    data = kaggle_zip.read_bytes()
    wrong = "0" * 64
    with serve(lambda h: send(h, data)) as base:
        code, _, err = run_cli(["--source", f"{base}/fer2013.zip", "--sha256", wrong,
                                "--output", str(tmp_path / "ds")], capsys)
    assert code == 1
    assert f"expected sha256 {wrong}, got {hashlib.sha256(data).hexdigest()}" in err
    assert list((tmp_path / "ds.download").iterdir()) == []
    assert not (tmp_path / "ds").exists()


def test_http_404_names_status_and_url(tmp_path, capsys):
    with serve(lambda h: send(h, b"not here", 404)) as base:
        url = f"{base}/missing.zip"
        code, _, err = run_cli(["--source", url, "--output", str(tmp_path / "ds")], capsys)
    assert code == 1
    assert err.strip() == f"error: HTTP 404 Not Found for {url}"


def test_connection_refused_points_to_source_path(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run_cli(["--source", f"http://127.0.0.1:{port}/fer2013.zip", "--output", str(tmp_path / "ds")],
                           capsys)
    assert code == 1
    assert "no network" in err and "--source PATH" in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- Kaggle API

@pytest.fixture
def no_kaggle_env(monkeypatch, tmp_path):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "KAGGLE_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def kaggle_server(data: bytes, seen: list):
    def handle(h):
        seen.append((h.path, h.headers.get("Authorization")))
        expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
        if h.path != "/api/v1/datasets/download/msambare/fer2013":
            send(h, b"{}", 404)
        elif h.headers.get("Authorization") != expected:
            send(h, b'{"message": "Unauthenticated"}', 401)
        else:
            send(h, data, headers={"Content-Type": "application/zip"})
    return serve(handle)


@pytest.mark.parametrize("how", ["env", "config_dir", "home"])
def test_kaggle_api_with_basic_auth(tmp_path, kaggle_zip, monkeypatch, no_kaggle_env, capsys, how):
    token = json.dumps({"username": "alice", "key": "s3cret"})
    if how == "env":
        monkeypatch.setenv("KAGGLE_USERNAME", "alice")
        monkeypatch.setenv("KAGGLE_KEY", "s3cret")
    elif how == "config_dir":
        (tmp_path / "cfg").mkdir()
        (tmp_path / "cfg" / "kaggle.json").write_text(token)
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    else:
        (tmp_path / "home" / ".kaggle").mkdir(parents=True)
        (tmp_path / "home" / ".kaggle" / "kaggle.json").write_text(token)
    seen = []
    with kaggle_server(kaggle_zip.read_bytes(), seen) as base:
        code, out, err = run_cli(["--kaggle_api", f"{base}/api/v1", "--output", str(tmp_path / "ds")], capsys)
    assert code == 0, err
    assert len(seen) == 1
    assert read_marker(tmp_path / "ds")["counts"] == expected_kaggle_counts()
    assert read_marker(tmp_path / "ds")["source"] == "kaggle"


def test_kaggle_wrong_key_is_an_http_error(tmp_path, kaggle_zip, monkeypatch, no_kaggle_env, capsys):
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "wrong")
    with kaggle_server(kaggle_zip.read_bytes(), []) as base:
        monkeypatch.setenv("KAGGLE_API_BASE", f"{base}/api/v1")  # --kaggle_api's default comes from it
        code, _, err = run_cli(["--output", str(tmp_path / "ds")], capsys)
    assert code == 1
    assert err.startswith(f"error: HTTP 401 Unauthorized for {base}/api/v1/datasets/download/msambare/fer2013")
    assert "check your Kaggle username and API key" in err


def test_missing_kaggle_credentials_say_how_to_give_them(tmp_path, no_kaggle_env, capsys):
    code, _, err = run_cli(["--output", str(tmp_path / "ds")], capsys)
    assert code == 1
    assert err.startswith("error: no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY")
    assert str(tmp_path / "home" / ".kaggle" / "kaggle.json") in err and "--source PATH" in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- the script and the table

def test_parser_defaults(monkeypatch):
    monkeypatch.delenv("KAGGLE_API_BASE", raising=False)
    args = download_dataset.get_args_parser().parse_args([])
    assert (args.source, args.output, args.kaggle_api, args.force, args.keep_splits, args.sha256) == \
        ("kaggle", "dataset", "https://www.kaggle.com/api/v1", False, False, None)


def test_count_table():
    table = count_table({"test": {"Happy": 1}, "train": {e: 10 for e in EMOTIONS}}).splitlines()
    assert table[0].split() == ["class", "train", "test"]
    assert table[4].split() == ["Happy", "10", "1"]
    assert table[-1].split() == ["total", "70", "1"]


def test_script_as_a_user_runs_it(tmp_path, kaggle_zip):
    cmd = [sys.executable, "download_dataset.py", "--source", str(kaggle_zip), "--output", str(tmp_path / "ds")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "imported 14 train, 7 test images" in done.stdout
    assert done.stdout.splitlines()[-1].split() == ["total", "14", "7"]
    assert (tmp_path / "ds" / COMPLETE_MARKER).is_file()
    assert download.read_marker(tmp_path / "ds")["counts"] == expected_kaggle_counts()


# ---------------------------------------------------------------- hostile and odd inputs (issue 11)

def one_error(err: str) -> bool:
    """One `error:` line and no traceback (progress bars may come before it)."""
    return "Traceback" not in err and len([l for l in err.splitlines() if "error:" in l]) == 1



def test_zip_entry_with_unsupported_compression_or_bad_crc_is_one_line(tmp_path, kaggle_zip, capsys):
    data = bytearray(kaggle_zip.read_bytes())
    # compression method 99 (AES, which the zip module cannot read) in every local and central header
    odd = bytearray(data)
    for sig, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = 0
        while (i := odd.find(sig, start)) >= 0:
            odd[i + offset:i + offset + 2] = (99).to_bytes(2, "little")
            start = i + 4
    (tmp_path / "odd.zip").write_bytes(bytes(odd))
    code, _, err = run_cli(["--source", str(tmp_path / "odd.zip"), "--output", str(tmp_path / "a")], capsys)
    assert code == 1 and one_error(err) and "odd.zip" in err
    # a flipped byte in a stored image: bad CRC
    bad = bytearray(data)
    i = bad.find(b"jpeg train angry 0")
    bad[i] ^= 0xFF
    (tmp_path / "crc.zip").write_bytes(bytes(bad))
    code, _, err = run_cli(["--source", str(tmp_path / "crc.zip"), "--output", str(tmp_path / "b")], capsys)
    assert code == 1 and "corrupt zip" in err and one_error(err)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_names_that_collide_when_case_is_ignored_are_all_kept(tmp_path, capsys):
    folder = make_kaggle_folder(tmp_path / "kaggle")
    (folder / "train" / "Angry").mkdir()                     # a second spelling of the class
    (folder / "train" / "Angry" / "Training_angry0.jpg").write_bytes(b"another image")
    (folder / "train" / "Angry" / "TRAINING_ANGRY1.JPG").write_bytes(b"and another")
    z = zip_folder(folder, tmp_path / "k.zip")
    code, _, err = run_cli(["--source", str(z), "--output", str(tmp_path / "dataset")], capsys)
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "dataset" / "train" / "Angry").iterdir())
    assert len(files) == 4 and len({f.lower() for f in files}) == 4
    assert "2 files renamed" in err


def test_csv_as_spreadsheet_programs_save_it(tmp_path):
    rows = [[label, pixels(label), "Training"] for label in range(7)] + [["3.0", pixels(9), "PublicTest"]]
    text = "\r\n".join(["emotion;pixels;Usage"] + [f"{a};{b};{c}" for a, b, c in rows]) + "\r\n"
    for name, data in (("bom.csv", "\ufeff".encode() + text.encode()), ("utf16.csv", text.encode("utf-16")),
                       ("bom_noext", "\ufeff".encode() + text.encode())):
        info = import_dataset(str(tmp_path / name) if (tmp_path / name).write_bytes(data) else "", tmp_path / f"out_{name}")
        assert info["counts"]["train"] == {e: 1 for e in EMOTIONS}, name
        assert info["counts"]["test"]["Happy"] == 1, name


def test_corrupt_gz_and_values_out_of_range(tmp_path):
    good = gzip.compress(write_csv(tmp_path / "f.csv", fer_rows()).read_bytes())
    (tmp_path / "bad.csv.gz").write_bytes(good[:len(good) // 2] + b"\x00" * 64 + good[len(good) // 2 + 64:])
    with pytest.raises(FERError, match="bad.csv.gz is not a readable FER-2013 CSV"):
        import_dataset(str(tmp_path / "bad.csv.gz"), tmp_path / "out")
    info = import_dataset(str(tmp_path / "f.csv"), tmp_path / "ok")
    assert info["skipped"]["rows with a bad pixel count or value"] == 2 and info["skipped"]["rows with a bad label"] == 2


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(fer2013, "MAX_RATIO", 2)
    monkeypatch.setattr(fer2013, "MAX_TOTAL_BYTES", 1 << 20)
    (tmp_path / "zeros.csv.gz").write_bytes(gzip.compress(b"emotion,pixels,Usage\n" + b"0," * (3 << 20)))
    with pytest.raises(FERError, match="decompression bomb"):
        import_dataset(str(tmp_path / "zeros.csv.gz"), tmp_path / "a")
    folder = make_kaggle_folder(tmp_path / "kaggle")
    (folder / "train" / "angry" / "big.png").write_bytes(b"\0" * (2 << 20))
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            zf.write(f, f.relative_to(folder).as_posix())
    with pytest.raises(FERError, match="decompression bomb"):
        import_dataset(str(tmp_path / "bomb.zip"), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("url", ["http://[::1", "https://", "http://host:99999/x.zip", "http://exa mple.com/x.zip"])
def test_malformed_urls_are_one_line(tmp_path, url, capsys):
    code, _, err = run_cli(["--source", url, "--output", str(tmp_path / "d")], capsys)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: ") and "--source" in err
    with pytest.raises(FERError, match="URL"):
        import_dataset(url, tmp_path / "d")


def test_download_cache_folder_keeps_files_it_did_not_make(tmp_path, kaggle_zip):
    data = kaggle_zip.read_bytes()
    (tmp_path / "dataset.download").mkdir()
    (tmp_path / "dataset.download" / "mine.txt").write_text("keep")
    with serve(lambda h: send(h, data)) as base:
        import_dataset(f"{base}/fer2013.zip", tmp_path / "dataset")
    assert (tmp_path / "dataset.download" / "mine.txt").read_text() == "keep"
    assert not (tmp_path / "dataset.download" / "fer2013.zip").exists()
