"""fer_common.commands.web and the browser page (web/): headless Chromium runs the page and must agree with FER().

Needs Chromium and its driver (Debian: apt-get install chromium chromium-driver), selenium (requirements-dev.txt)
and ONNX Runtime Web (`npm ci` in web/); each missing piece skips the browser tests with the reason. The page's
screenshot is kept in build/test-artefacts/web/. Frame rates for benchmarks/README.md (about 30 s):

    FER_WEB_BENCH=1 python -m pytest tests/commands/test_web.py -k fps -s
"""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_common import FER
from fer_common.commands import web
from fer_common.infer.detection import FaceDetector
from fer_common.errors import FERError
from fer_common.boxes import iou

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "Test_files" / "IMG_test_1.jpg"
VIDEO = ROOT / "Test_files" / "Video_Test_1.mp4"
ARTEFACTS = ROOT / "build" / "test-artefacts" / "web"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1100,900",
                  "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def browser_missing() -> str | None:
    if not CHROMIUM or not CHROMEDRIVER:
        return "Chromium or chromedriver is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements-dev.txt)"
    if not (web.ORT_DIR / "ort.wasm.min.mjs").is_file():
        return "ONNX Runtime Web is not installed: run `npm ci` in web/"
    return None


needs_browser = pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))


# ----------------------------------------------------------------------------- the page's settings, without a browser

SHARED_NAMES = ("SCORE_THRESHOLD", "SMALL_FACE_SCORE", "NMS_THRESHOLD", "TOP_K", "YUNET_MIN_FACE", "SMALL_FACE",
                "FRAME_SCALE", "STRIDES", "CLASSIFIER_FILE", "YUNET_FILE", "IMAGE_SETTINGS", "VIDEO_SETTINGS", "COLOURS")


def test_page_settings_come_from_python():
    # the committed web/settings.json is what Python's constants say now (`fer web --write_settings` rewrites it)
    assert json.loads(web.SETTINGS_FILE.read_text(encoding="utf-8")) == json.loads(json.dumps(web.page_settings()))
    settings = web.page_settings()
    assert settings["image"] == {"detectSize": 320, "minFace": 24, "tta": True}
    assert settings["detector"]["frameScale"] == __import__("fer_common.infer.detection").infer.detection.FRAME_SCALE


def test_the_page_copies_no_setting():
    source = (ROOT / "web" / "fer.js").read_text(encoding="utf-8")
    # each shared name is read from SETTINGS, never given a literal value in the page
    for name in SHARED_NAMES:
        assert not re.search(rf"\b{name}\s*=\s*[-\d\[{{\"']", source), f"fer.js sets {name} itself"
    for literal in ("1.14", "5000", "[40, 40, 220]", "iouThreshold = 0.3"):
        assert literal not in source, f"fer.js holds {literal!r}, a copy of a Python constant"
    # every SETTINGS.group.key the page reads exists in what Python writes
    settings = web.page_settings()
    for group, key in re.findall(r"SETTINGS\.(\w+)\.(\w+)", source):
        assert key in settings[group], f"fer.js reads SETTINGS.{group}.{key}, which page_settings() lacks"
    for block, group in re.findall(r"const \{([^}]*)\} = SETTINGS\.(\w+);", source):
        for key in re.findall(r"(\w+)\s*:", block):
            assert key in settings[group], f"fer.js reads {group}.{key}, which page_settings() lacks"


def test_write_settings_as_typed(tmp_path, monkeypatch):
    monkeypatch.setattr(web, "SETTINGS_FILE", tmp_path / "settings.json")
    monkeypatch.setattr(web.write_settings, "__defaults__", (tmp_path / "settings.json",))
    with pytest.raises(SystemExit) as e:
        from fer_common.cli import run_main
        run_main(web.main, web.get_args_parser(), ["--write_settings"])
    assert e.value.code == 0 and json.loads((tmp_path / "settings.json").read_text()) == json.loads(
        json.dumps(web.page_settings()))


# ----------------------------------------------------------------------------- the server, without a browser
def test_parser():
    args = web.get_args_parser().parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    args = web.get_args_parser().parse_args(["--port", "0", "--host", "0.0.0.0"])
    assert (args.host, args.port) == ("0.0.0.0", 0)
    with pytest.raises(SystemExit):
        web.get_args_parser().parse_args(["--port", "70000"])


def test_resolve_serves_only_the_page_and_its_models():
    assert web.resolve("/web/") == web.WEB_DIR / "index.html"
    assert web.resolve("/web/fer.js?v=1") == web.WEB_DIR / "fer.js"
    assert web.resolve("/models/fer_model.int8.onnx").name == "fer_model.int8.onnx"
    for path in ("/models/fer_model.pth", "/README.md", "/web/../README.md", "/web/%2e%2e/README.md",
                 "/models/../README.md", "/fer_common/web.py", "/web/missing.js"):
        assert web.resolve(path) is None, path


def test_missing_runtime_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(web, "ORT_DIR", tmp_path / "missing")
    with pytest.raises(FERError, match="npm ci"):
        web.make_server("127.0.0.1", 0)


def test_the_wheel_ships_the_page_and_the_runtime_files_it_loads():
    # pyproject.toml's package data for fer_common.web is the page and exactly shipped.ORT_FILES
    import tomllib
    from fer_common.shipped import ORT_FILES, ORT_SUBDIR
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert setuptools["package-dir"]["fer_common.web"] == "web" and "fer_common.web" in setuptools["packages"]
    data = setuptools["package-data"]["fer_common.web"]
    assert sorted(data) == sorted(["index.html", "fer.js", "style.css", "settings.json",
                                   *(f"{ORT_SUBDIR}/{name}" for name in ORT_FILES)])
    # the page imports only shipped entry modules, and they load only shipped files (an npm upgrade renames them)
    source = (ROOT / "web" / "fer.js").read_text(encoding="utf-8")
    assert set(re.findall(r'"(ort\.[\w.]+\.mjs)"', source)) == {"ort.wasm.min.mjs", "ort.webgpu.min.mjs"}
    if not (web.ORT_DIR / "ort.wasm.min.mjs").is_file():
        pytest.skip("ONNX Runtime Web is not installed: run `npm ci` in web/")
    for entry in ("ort.wasm.min.mjs", "ort.webgpu.min.mjs"):
        loaded = set(re.findall(r"ort-wasm[\w.-]*?\.m?js", (web.ORT_DIR / entry).read_text(encoding="utf-8")))
        assert loaded and loaded <= set(ORT_FILES), (entry, loaded)
        assert {name.replace(".mjs", ".wasm") for name in loaded} <= set(ORT_FILES)


def test_a_wheel_without_the_runtime_says_what_is_missing(monkeypatch, tmp_path):
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "index.html").write_text("<html></html>")
    monkeypatch.setattr(web, "WEB_DIR", tmp_path / "web")
    monkeypatch.setattr(web, "ORT_DIR", tmp_path / "web" / "node_modules")
    with pytest.raises(FERError, match=r"built without it: run `npm ci` .* before building the wheel") as e:
        web.check_web_files()
    assert "\n" not in str(e.value) and "ort.wasm.min.mjs" in str(e.value)


def test_main_as_typed(tmp_path):
    """python -m fer_common.commands.web --port 0: says where to go, serves the page, stops on a signal."""
    if not (web.ORT_DIR / "ort.wasm.min.mjs").is_file():
        pytest.skip("ONNX Runtime Web is not installed: run `npm ci` in web/")
    proc = subprocess.Popen([sys.executable, "-m", "fer_common.commands.web", "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://\S+/", line).group(0)
        with urllib.request.urlopen(url, timeout=10) as r:
            assert b"Nothing is uploaded" in r.read()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130


@pytest.fixture(scope="module")
def server():
    if not (web.ORT_DIR / "ort.wasm.min.mjs").is_file():
        pytest.skip("ONNX Runtime Web is not installed: run `npm ci` in web/")
    httpd = web.make_server("127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_server_headers_and_refusals(server):
    with urllib.request.urlopen(server + "/") as r:        # / -> /web/
        assert r.url.endswith("/web/") and b"Nothing is uploaded" in r.read()
        assert r.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    with urllib.request.urlopen(server + "/web/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm") as r:
        assert r.headers["Content-Type"] == "application/wasm"
    with urllib.request.urlopen(server + "/web/fer.js") as r:
        assert r.headers["Content-Type"].startswith("text/javascript")
    for path in ("/models/fer_model.pth", "/README.md", "/web/../fer_common/web.py"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server + path)
        assert e.value.code == 404


# ----------------------------------------------------------------------------- the page in Chromium
def write_y4m(path: Path, frames, fps: int) -> Path:
    """BGR frames -> a YUV4MPEG2 (4:2:0) file, what Chromium's fake camera plays (in a loop)."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


def video_frames(first: int = 0, count: int = 80) -> list:
    cap = cv2.VideoCapture(str(VIDEO))
    frames = []
    while len(frames) < first + count:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames[first:]


def start_browser(fake_video: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--use-file-for-fake-video-capture={fake_video}",
                                  f"--user-data-dir={tempfile.mkdtemp(prefix='fer-web-chromium-')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    return driver


def wait_for(driver, script: str, timeout: float = 40.0):
    """Poll a JavaScript expression until it is truthy; fail with the page's status line and error if not."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script(f"return {script}")
        if value:
            return value
        time.sleep(0.1)
    state = driver.execute_script("return [document.getElementById('status').textContent, window.ferError]")
    raise AssertionError(f"timed out waiting for `{script}`; page status: {state}")


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    """Chromium on the page, its fake camera playing Video_Test_1.mp4; the models loaded."""
    if browser_missing():
        pytest.skip(browser_missing())
    y4m = write_y4m(tmp_path_factory.mktemp("camera") / "video.y4m", video_frames(), fps=20)
    driver = start_browser(y4m)
    try:
        driver.get(server + "/")
        wait_for(driver, "window.ferReady || window.ferError")
        assert not driver.execute_script("return window.ferError"), driver.execute_script("return window.ferError")
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def fer():
    return FER()


def compare(page_faces, python_faces, class_names):
    """Same faces in the same order (left to right): same top emotion, probabilities within 0.02, box IoU > 0.9."""
    assert len(page_faces) == len(python_faces) >= 1
    for ours, theirs in zip(page_faces, python_faces):
        assert iou(ours["box"], theirs.box) > 0.9, (ours["box"], theirs.box)
        assert ours["top"] == theirs.top_emotion
        diff = max(abs(ours["probabilities"][c] - theirs.probabilities[c]) for c in class_names)
        assert diff < 0.02, (ours["probabilities"], theirs.probabilities)


def decode_png(data_url: str) -> np.ndarray:
    data = np.frombuffer(base64.b64decode(data_url.split(",", 1)[1]), np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


@needs_browser
def test_image_matches_python(page, fer):
    page.find_element("id", "file").send_keys(str(IMAGE))
    results = wait_for(page, "window.ferResults && window.ferResults.source === 'IMG_test_1.jpg' && window.ferResults")
    assert results["kind"] == "image" and results["settings"]["tta"] is True
    assert page.execute_script("return window.ferReady.classNames") == fer.class_names
    compare(results["faces"], fer.analyse(IMAGE), fer.class_names)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.save_screenshot(str(ARTEFACTS / "image.png"))
    (ARTEFACTS / "image.json").write_text(json.dumps(results, indent=1))


@needs_browser
def test_hard_detection_cases_match_python(page, fer, tmp_path):
    """Two detection passes (small faces in a large image), a large photo, and a frame with no face at all."""
    from benchmarks.detection_cases import detection_cases

    wanted = ("grid of 12 faces of 24 px, 1280x720", "big photo 2048x2048", "no face: space suit")
    cases = [c for c in detection_cases(cv2.imread(str(IMAGE))) if c[0] in wanted]
    assert len(cases) == len(wanted)
    for k, (name, image, centres) in enumerate(cases):
        path = tmp_path / f"case_{k}.png"
        cv2.imwrite(str(path), image)
        page.find_element("id", "file").send_keys(str(path))
        results = wait_for(page, f"window.ferResults && window.ferResults.source === '{path.name}' && window.ferResults")
        python = fer.analyse(path)
        assert len(results["faces"]) == len(python) == len(centres), name
        if centres:
            compare(results["faces"], python, fer.class_names)


@needs_browser
def test_camera_matches_python(page, fer):
    page.find_element("id", "camera").click()
    wait_for(page, "window.ferResults && window.ferResults.source === 'camera' && window.ferResults.frame >= 10")
    snapshot = page.execute_script("return window.ferSnapshot()")
    results = snapshot["results"]
    assert results["kind"] == "video" and results["settings"]["tta"] is False and results["fps"] > 0
    assert (results["width"], results["height"]) == (480, 360)
    frame = decode_png(snapshot["png"])        # exactly the pixels the page's models saw
    video = FER(tta=False)                      # real_time_video.py's per-frame settings: one pass at 240 px
    video.detector = FaceDetector(detect_size=240, min_face=0)
    compare(results["faces"], video.analyse(frame), fer.class_names)
    assert all(isinstance(f["id"], int) for f in results["faces"])
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.save_screenshot(str(ARTEFACTS / "camera.png"))
    page.find_element("id", "stop").click()


@needs_browser
def test_static_host(page, fer):
    """The page from a plain static server of the repository (no isolation headers: ONNX Runtime on one thread)."""
    import functools
    import http.server

    class Static(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                          ".wasm": "application/wasm"}

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Static, directory=str(ROOT)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        page.get(f"http://127.0.0.1:{httpd.server_address[1]}/web/index.html")
        wait_for(page, "window.ferReady || window.ferError")
        assert not page.execute_script("return window.ferError || crossOriginIsolated")
        page.find_element("id", "file").send_keys(str(IMAGE))
        results = wait_for(page, "window.ferResults && window.ferResults.source === 'IMG_test_1.jpg' && window.ferResults")
        compare(results["faces"], fer.analyse(IMAGE), fer.class_names)
    finally:
        httpd.shutdown()
        httpd.server_close()


# ----------------------------------------------------------------------------- frame rates (opt-in)
def scene(faces: int, size=(480, 360)) -> np.ndarray:
    """A 480x360 frame with `faces` copies of the test portrait side by side."""
    src = cv2.imread(str(IMAGE))
    w, h = size
    side = min(h, w // faces)
    tile = cv2.resize(src, (side, side), interpolation=cv2.INTER_AREA)
    frame = np.full((h, w, 3), 190, np.uint8)
    x0 = (w - side * faces) // 2
    for i in range(faces):
        frame[(h - side) // 2:(h - side) // 2 + side, x0 + i * side:x0 + (i + 1) * side] = tile
    return frame


@pytest.mark.skipif(not os.environ.get("FER_WEB_BENCH"), reason="a benchmark: FER_WEB_BENCH=1 runs it")
@pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
@pytest.mark.parametrize("faces", [1, 3])
def test_fps(server, tmp_path, faces):
    frames = [scene(faces)] * 30
    driver = start_browser(write_y4m(tmp_path / "scene.y4m", frames, fps=60))
    try:
        driver.get(server + "/")
        wait_for(driver, "window.ferReady || window.ferError")
        sizes = driver.execute_script("return performance.getEntriesByType('resource').map(e => [e.name, e.encodedBodySize])")
        driver.find_element("id", "camera").click()
        wait_for(driver, f"window.ferResults && window.ferResults.frame >= 20 && window.ferResults.faces.length === {faces}")
        time.sleep(5)
        results = driver.execute_script("return window.ferResults")
        document = driver.execute_script("return performance.getEntriesByType('navigation')[0].encodedBodySize")
    finally:
        driver.quit()
    total = document + sum(size for _, size in sizes)
    print(f"\n{faces} face(s), 480x360: {results['fps']:.1f} FPS (detect {results['ms']['detect']:.1f} ms, "
          f"classify {results['ms']['classify']:.1f} ms, last frame; backend {results['backend']}); "
          f"page download {total / 1e6:.2f} MB:")
    for name, size in sizes:
        print(f"  {size / 1e6:7.3f} MB  {name}")
    assert len(results["faces"]) == faces


@needs_browser
def test_the_fer_plus_model_in_the_page_matches_python(page, server):
    # the page's ?model=ferplus is `FER(model="ferplus")`: eight classes, the same faces and numbers
    ferplus = FER(model="ferplus")
    try:
        page.get(server + "/?model=ferplus")
        wait_for(page, "window.ferReady || window.ferError")
        assert page.execute_script("return window.ferReady.model") == "ferplus"
        assert page.execute_script("return window.ferReady.classNames") == ferplus.class_names
        assert len(ferplus.class_names) == 8 and "Contempt" in ferplus.class_names
        page.find_element("id", "file").send_keys(str(IMAGE))
        results = wait_for(page, "window.ferResults && window.ferResults.source === 'IMG_test_1.jpg' && window.ferResults")
        compare(results["faces"], ferplus.analyse(IMAGE), ferplus.class_names)
    finally:
        page.get(server + "/")                      # the default model again, for the tests after this one
        wait_for(page, "window.ferReady || window.ferError")
