"""fer serve: the HTTP service answers as `fer analyse --json` does, refuses bad input in one JSON line and keeps
serving, checks tokens, counts in /metrics; and a real Uvicorn process refuses a huge body before reading it
and drains in-flight requests on SIGTERM."""

import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import cv2
import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from fer_common.commands import serve, web  # noqa: E402
from fer_common.commands.serve_app import ServeOptions, Service, make_app  # noqa: E402
from fer_common.files import sha256_file  # noqa: E402
from fer_common.infer.bulk import analyse_images, read_for  # noqa: E402
from fer_common.infer.predictor import Predictor  # noqa: E402
from fer_common.version import __version__  # noqa: E402
from synthetic import REPO, pattern  # noqa: E402

INT8 = REPO / "models" / "fer_model.int8.onnx"
TEST_IMAGE = REPO / "Test_files" / "IMG_test_1.jpg"
PHOTO = TEST_IMAGE.read_bytes()
# What the light install leaves out: the served path must run without it (PyTorch never loads there).
HEAVY = ("torch", "torchvision", "timm", "onnx", "matplotlib")


def build(*flags, log=lambda *a: None):
    args = serve.get_args_parser().parse_args(["--checkpoint", str(INT8), "--workers", "2", *map(str, flags)])
    return serve.app_from_args(args, log=log)


@pytest.fixture(scope="module")
def client():
    with TestClient(build()) as c:
        yield c


def png_bytes(image) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def fer_analyse_json(*args, cwd) -> list:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "fer_common", "analyse", *map(str, args), "--json",
                        "--checkpoint", str(INT8)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_an_image_is_answered_as_fer_analyse_json_gives_it(client):
    expected = fer_analyse_json(TEST_IMAGE.name, "--embedding", cwd=TEST_IMAGE.parent)[0]
    r = client.post("/v1/analyse?embedding=true", files={"image": (TEST_IMAGE.name, PHOTO, "image/jpeg")})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == expected
    assert expected["faces"][0]["top_emotion"] == "Happy" and len(expected["faces"][0]["embedding"]) == 128
    # the raw body: the same numbers, without embeddings unless asked; no file name, so the source is "image"
    raw = client.post("/v1/analyse", content=PHOTO, headers={"Content-Type": "image/jpeg"}).json()
    for face in expected["faces"]:
        del face["embedding"]
    assert raw == {**expected, "source": "image"}


def test_a_face_crop_with_detect_false_and_a_batch_in_order(client, tmp_path):
    rng = np.random.default_rng(0)
    crops = [pattern(i, rng) for i in range(3)]
    predictor = Predictor(INT8, tta=True)
    expected = []
    for i, c in enumerate(crops):
        path = tmp_path / f"crop{i}.png"
        path.write_bytes(png_bytes(c))
        image = read_for(predictor, path, False)
        expected.append(analyse_images(predictor, [(image, path.name)], None)[0].to_dict(False))
    one = client.post("/v1/analyse?detect=false", files={"image": ("crop0.png", png_bytes(crops[0]), "image/png")})
    assert one.json() == expected[0] and one.json()["faces"][0]["score"] is None
    files = [("image", (f"crop{i}.png", png_bytes(c), "image/png")) for i, c in enumerate(crops)]
    files.append(("image", ("notes.txt", b"not an image", "text/plain")))
    batch = client.post("/v1/analyse/batch?detect=0", files=files)
    assert batch.status_code == 200
    answers = batch.json()
    assert answers[:3] == expected
    assert answers[3] == {"source": "notes.txt", "size": None, "error": "cannot decode", "faces": []}   # as a folder's


TRUNCATED = PHOTO[:len(PHOTO) // 2]


@pytest.mark.parametrize("method, path, kwargs, status, words", [
    ("POST", "/v1/analyse", {"content": b"", "headers": {"Content-Type": "image/jpeg"}}, 400, "empty"),
    ("POST", "/v1/analyse", {"content": b"hello, not an image", "headers": {"Content-Type": "image/png"}}, 422,
     "cannot decode"),
    ("POST", "/v1/analyse", {"content": TRUNCATED, "headers": {"Content-Type": "image/jpeg"}}, 422, "truncated"),
    ("POST", "/v1/analyse", {"content": png_claiming(30000, 30000), "headers": {"Content-Type": "image/png"}}, 422,
     "30000 x 30000 pixels"),
    ("POST", "/v1/analyse", {"content": PHOTO, "headers": {"Content-Type": "text/plain"}}, 415, "Content-Type"),
    ("POST", "/v1/analyse", {"content": PHOTO}, 415, "Content-Type"),
    ("POST", "/v1/analyse?detect=maybe", {"content": PHOTO, "headers": {"Content-Type": "image/jpeg"}}, 400, "detect"),
    ("POST", "/v1/analyse?path=/etc/passwd", {"content": PHOTO, "headers": {"Content-Type": "image/jpeg"}}, 400,
     "unknown query option"),
    ("POST", "/v1/analyse", {"files": {"photo": ("a.jpg", PHOTO, "image/jpeg")}}, 400, "unexpected form field"),
    ("POST", "/v1/analyse", {"files": [("image", ("a.jpg", PHOTO, "image/jpeg"))] * 2}, 400, "/v1/analyse/batch"),
    ("POST", "/v1/analyse", {"data": {"image": "/etc/passwd"}, "files": {"x": ("", b"", "text/plain")}}, 400,
     "unexpected form field"),
    ("POST", "/v1/analyse/batch", {"content": PHOTO, "headers": {"Content-Type": "image/jpeg"}}, 415, "multipart"),
    ("GET", "/nope", {}, 404, "no such path"),
    ("GET", "/v1/analyse", {}, 405, "allowed: POST"),
    ("DELETE", "/health", {}, 405, "not allowed on /health"),
])
def test_bad_input_is_one_json_line_and_the_server_keeps_serving(client, method, path, kwargs, status, words):
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and words in body["error"] and "\n" not in body["error"]
    ok = client.post("/v1/analyse", content=PHOTO, headers={"Content-Type": "image/jpeg"})
    assert ok.status_code == 200 and ok.json()["faces"]


def test_a_body_over_max_bytes_is_refused_413():
    with TestClient(build("--max_bytes", 4096)) as c:
        declared = c.post("/v1/analyse", content=PHOTO, headers={"Content-Type": "image/jpeg"})
        assert declared.status_code == 413 and "--max_bytes" in declared.json()["error"]
        chunked = c.post("/v1/analyse", content=iter([b"x" * 3000] * 3), headers={"Content-Type": "image/jpeg"})
        assert chunked.status_code == 413                  # no Content-Length: counted as it streams in
        form = c.post("/v1/analyse", files={"image": ("a.jpg", PHOTO, "image/jpeg")})
        assert form.status_code == 413
        assert c.get("/health").status_code == 200


class Gated:
    """The int8 predictor, holding every forward pass until the gate opens."""

    def __init__(self):
        self.predictor, self.gate = Predictor(INT8, tta=True), threading.Event()
        self.class_names, self.preprocessing, self.path = (self.predictor.class_names, self.predictor.preprocessing,
                                                           self.predictor.path)

    def predict(self, crops, bgr=True, temperature=None):
        self.gate.wait(60)
        return self.predictor.predict(crops, bgr, temperature)


def metric(client, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([\d.e+-]+)$", client.get("/metrics").text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_full_queue_answers_503_with_retry_after():
    gated = Gated()
    with TestClient(make_app(Service(gated, None, tta=True), ServeOptions(max_bytes=1 << 20, max_queue=1))) as c:
        first = []
        thread = threading.Thread(target=lambda: first.append(
            c.post("/v1/analyse?detect=false", content=png_bytes(pattern(0, np.random.default_rng(0))),
                   headers={"Content-Type": "image/png"})))
        thread.start()
        deadline = time.monotonic() + 30
        while metric(c, "fer_queue_depth") < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = c.post("/v1/analyse?detect=false", content=PHOTO, headers={"Content-Type": "image/jpeg"})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
        gated.gate.set()
        thread.join(30)
        assert first[0].status_code == 200 and first[0].json()["faces"]
        # no detector in this server: a request that wants detection is told so
        r = c.post("/v1/analyse", content=PHOTO, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 400 and "detect=false" in r.json()["error"]


def test_a_token_is_needed_for_all_but_health_and_the_page(monkeypatch):
    with TestClient(build("--token", "s3cret")) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = c.get("/v1/model", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "token" in r.json()["error"]
        assert c.post("/v1/analyse", content=PHOTO, headers={"Content-Type": "image/jpeg"}).status_code == 401
        assert c.get("/metrics").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert c.post("/v1/analyse", content=PHOTO, headers={"Content-Type": "image/jpeg", **auth}).status_code == 200
        assert c.get("/metrics", headers=auth).status_code == 200
        assert c.get("/health").status_code == 200
        assert c.get("/", follow_redirects=False).status_code == 302
    monkeypatch.setenv("FER_TOKEN", "from-env")
    with TestClient(build()) as c:
        assert c.get("/v1/model").status_code == 401
        assert c.get("/v1/model", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_cors_only_for_the_origins_given(client):
    origin = {"Origin": "https://example.org"}
    assert "access-control-allow-origin" not in client.get("/health", headers=origin).headers
    with TestClient(build("--cors", "https://example.org", "--token", "t")) as c:
        assert c.get("/health", headers=origin).headers["access-control-allow-origin"] == "https://example.org"
        preflight = c.options("/v1/analyse", headers={**origin, "Access-Control-Request-Method": "POST",
                                                      "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 200        # answered without the token, as browsers send preflights
        other = c.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_model_health_page_metrics_and_the_access_log(client, caplog):
    model = client.get("/v1/model").json()
    assert model["version"] == __version__ and model["model"] == INT8.name
    assert model["model_sha256"] == sha256_file(INT8) and model["tta"] is True and model["detector"] == "yunet"
    assert model["classes"] == Predictor(INT8).class_names
    assert client.get("/health").json() == {"status": "ok", "model": INT8.name}
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 302 and root.headers["location"] == "/web/"
    page = client.get("/web/")
    try:
        web.check_web_files()
        assert page.status_code == 200 and page.headers["cross-origin-opener-policy"] == "same-origin"
        assert client.get(f"/models/{INT8.name}").content == INT8.read_bytes()
    except Exception as e:          # no web/node_modules here: the page is refused, saying why
        assert page.status_code == 404 and str(e)[:40] in page.json()["error"]
    assert client.get("/web/../fer_common/cli.py").status_code == 404
    caplog.set_level("INFO", logger="fer.serve")
    client.post("/v1/analyse", content=PHOTO, headers={"Content-Type": "image/jpeg"})
    assert re.search(r'"POST /v1/analyse" 200 [\d.]+ ms faces=1$', caplog.records[-1].getMessage())
    text = client.get("/metrics").text
    assert 'fer_requests_total{method="POST",path="/v1/analyse",status="200"}' in text
    assert 'fer_requests_total{method="GET",path="other",status="404"}' in text or "/nope" not in text
    for name in ("fer_request_seconds_bucket", "fer_batch_faces_bucket", "fer_batch_requests_bucket",
                 "fer_queue_depth", "fer_faces_total", "fer_images_total", "fer_batcher_waiting_faces"):
        assert name in text
    assert metric(client, "fer_batch_faces_count") >= 1 and metric(client, "fer_queue_depth") == 0


def test_requests_that_arrive_together_share_a_forward_pass():
    rng = np.random.default_rng(1)
    bodies = [png_bytes(pattern(i % 7, rng)) for i in range(4)]
    with TestClient(build("--max_faces", 4, "--max_wait_ms", 1000)) as c:
        answers = [None] * 4

        def post(i):
            answers[i] = c.post("/v1/analyse?detect=false", content=bodies[i], headers={"Content-Type": "image/png"})
        threads = [threading.Thread(target=post, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert all(a.status_code == 200 and len(a.json()["faces"]) == 1 for a in answers)
        assert metric(c, "fer_batch_faces_sum") == 4 and metric(c, "fer_batch_faces_count") < 4


# ------------------------------------------------------------------------------ a real server process

def start_server(tmp_path, *flags):
    """`python -m fer_common serve --port 0 ...` without PyTorch & co. (importing them fails there)."""
    site = tmp_path / "blocked"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text("import sys\nfor m in %r:\n    sys.modules[m] = None\n" % (HEAVY,))
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{REPO}", PYTHONUNBUFFERED="1")
    stderr = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "fer_common", "serve", "--port", "0", "--checkpoint", str(INT8),
                             *map(str, flags)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=stderr,
                            text=True)
    lines = [proc.stdout.readline() for _ in range(2)]           # the model line, then the address
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", lines[-1])
    if not match:
        proc.kill()
        proc.wait()
        raise AssertionError(f"fer serve did not start: {lines} {(tmp_path / 'serve.log').read_text()}")
    return proc, int(match.group(1)), stderr


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def test_a_host_beyond_this_machine_without_a_token_is_warned_about(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("FER_TOKEN", None)
    argv = [sys.executable, "-m", "fer_common", "serve", "--port", "0", "--checkpoint", tmp_path / "missing.onnx"]
    for host, token, warned in (("0.0.0.0", None, True), ("0.0.0.0", "t", False), ("127.0.0.1", None, False)):
        r = subprocess.run(list(map(str, argv + ["--host", host])), cwd=tmp_path, capture_output=True, text=True,
                           env={**env, "FER_TOKEN": token} if token else env, timeout=120)
        assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: model file not found")
        assert ("warning: listening on 0.0.0.0 without a token" in r.stderr) == warned, r.stderr
    assert serve.is_loopback("localhost") and serve.is_loopback("::1") and not serve.is_loopback("192.168.1.2")


def test_a_real_server_refuses_before_reading_survives_leavers_and_drains_on_sigterm(tmp_path):
    proc, port, log = start_server(tmp_path, "--max_bytes", 100_000, "--max_wait_ms", 800)
    try:
        # 413 from the header alone: the 50 MB are never sent, yet the answer comes.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /v1/analyse HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
                      b"Content-Length: 50000000\r\n\r\n")
            answer = b""
            while b"}" not in answer and (chunk := s.recv(65536)):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413") and b'{"error":' in answer
        # A client that leaves halfway through its body costs nothing: no image is analysed.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /v1/analyse HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
                      b"Content-Length: 60000\r\n\r\n" + PHOTO[:20000])
        status, body = request(port, "POST", "/v1/analyse", PHOTO, {"Content-Type": "image/jpeg"})
        assert status == 200 and json.loads(body)["faces"][0]["top_emotion"] == "Happy"
        status, body = request(port, "GET", "/metrics")
        assert re.search(rb"^fer_images_total 1\.0$", body, re.M), body.decode()[-2000:]
        # SIGTERM while a request waits for its batch (800 ms): it is answered, then the process ends cleanly.
        slow = []
        thread = threading.Thread(target=lambda: slow.append(request(
            port, "POST", "/v1/analyse?detect=false", PHOTO, {"Content-Type": "image/jpeg"})))
        thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            depth = re.search(rb"^fer_queue_depth ([\d.]+)$", request(port, "GET", "/metrics")[1], re.M)
            if depth and float(depth.group(1)) >= 1:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        thread.join(60)
        assert slow and slow[0][0] == 200 and json.loads(slow[0][1])["size"] == [512, 512]
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log.seek(0)
    text = log.read()
    assert "stopped (SIGTERM)" in text and "Traceback" not in text, text
    assert re.search(r'"POST /v1/analyse" 413 [\d.]+ ms', text)
