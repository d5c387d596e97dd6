"""Serve the browser page (web/) and the shipped models on this machine: FER in the browser, nothing uploaded.

    python -m fer_common.web                      # then open http://127.0.0.1:8000/
    python -m fer_common.web --port 8080 --host 0.0.0.0

The URLs mirror the repository (/web/..., /models/...), so the page's relative paths are the same here as on
any static host that serves the repository. Only the page's files and the two model files it loads are served.
The page needs ONNX Runtime Web in web/node_modules: `npm ci` in web/ (.ci/run does it), once, online. A wheel
(`pip install .`) carries the page and the ONNX Runtime Web files it loads, so `fer web` works installed too.

The page takes every setting it shares with Python (detector thresholds and framing, image and video defaults,
tracker, colours, model files) from web/settings.json, which page_settings() writes from the Python constants:
`fer web --write_settings` after changing one; tests/commands/test_web.py checks that the two agree.
"""

import errno
import http.server
import inspect
import mimetypes
import socket
from pathlib import Path
from urllib.parse import unquote, urlsplit

from fer_common import cli
from fer_common.errors import FERError
from fer_common.files import write_json
from fer_common.shipped import (DETECTOR_FILE, FERPLUS_MODEL_FILE, MODEL_FILE, ORT_FILES, ORT_SUBDIR,
                                SHIPPED_MODELS_DIR, WEB_DIR)

ORT_DIR = WEB_DIR / ORT_SUBDIR
# What the page loads from models/: an int8 classifier (the default or FER+ one) and YuNet.
MODEL_FILES = (MODEL_FILE, FERPLUS_MODEL_FILE, DETECTOR_FILE)
SETTINGS_FILE = WEB_DIR / "settings.json"


def page_settings() -> dict:
    """What web/fer.js shares with Python, read from the Python constants and defaults themselves."""
    from fer_common.api import FER
    from fer_common.infer import detection
    from fer_common.infer.overlay import EMOTION_COLOURS
    from fer_common.video.options import VIDEO_DETECT_SIZE, VIDEO_MIN_FACE
    from fer_common.video.pipeline import VideoPipeline
    from fer_common.video.tracking import FaceTracker

    def default(function, name):
        return inspect.signature(function).parameters[name].default

    tracker = FaceTracker()
    return {
        "files": {"classifier": MODEL_FILE, "detector": DETECTOR_FILE,
                  "models": {"default": MODEL_FILE, "ferplus": FERPLUS_MODEL_FILE}},       # the page's ?model=
        "detector": {"scoreThreshold": detection.SCORE_THRESHOLD, "smallFaceScore": detection.SMALL_FACE_SCORE,
                     "nmsThreshold": detection.NMS_THRESHOLD, "topK": detection.TOP_K,
                     "minFace": detection.YUNET_MIN_FACE, "smallFace": detection.SMALL_FACE,
                     "frameScale": detection.FRAME_SCALE, "strides": list(detection.YUNET_STRIDES),
                     "linearDownscaleMin": detection.LINEAR_DOWNSCALE_MIN},
        # images as FER() and inference.py read them; live video as real_time_video.py (no TTA in a frame's budget)
        "image": {"detectSize": default(detection.FaceDetector, "detect_size"),
                  "minFace": default(detection.FaceDetector, "min_face"), "tta": default(FER, "tta")},
        "video": {"detectSize": VIDEO_DETECT_SIZE, "minFace": VIDEO_MIN_FACE, "tta": False,
                  "smooth": default(VideoPipeline, "smooth")},
        "tracker": {"iouThreshold": tracker.iou_threshold, "maxMissed": tracker.max_missed},
        "colours": {name: list(bgr) for name, bgr in EMOTION_COLOURS.items()},     # BGR, as OpenCV draws them
    }


def write_settings(path=SETTINGS_FILE) -> Path:
    write_json(path, page_settings())
    return Path(path)


TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css",
         ".html": "text/html; charset=utf-8", ".onnx": "application/octet-stream", ".png": "image/png",
         ".json": "application/json"}


def page_headers(path: Path) -> dict:
    """The headers a page file is served with (here and by fer serve): its type, no caching, and cross-origin
    isolation, which lets ONNX Runtime Web use threads (SharedArrayBuffer); a static host without them still
    works, on one thread."""
    return {"Content-Type": TYPES.get(path.suffix, mimetypes.guess_type(path.name)[0] or "application/octet-stream"),
            "Cache-Control": "no-cache", "Cross-Origin-Opener-Policy": "same-origin",
            "Cross-Origin-Embedder-Policy": "require-corp", "Cross-Origin-Resource-Policy": "same-origin"}


def check_web_files() -> None:
    """A clear error, in one line, before serving a page that could not run."""
    if not (WEB_DIR / "index.html").is_file():
        raise FERError(f"the browser page is missing ({WEB_DIR}): reinstall fer-toolkit, or in a clone restore "
                       f"it with `git checkout -- web`")
    missing = [name for name in ORT_FILES if not (ORT_DIR / name).is_file()]
    if missing:
        where = (f"run `npm ci` in {WEB_DIR} once (online)" if (WEB_DIR.parent / "pyproject.toml").is_file() else
                 "this package was built without it: run `npm ci` in the clone's web/ before building the wheel")
        raise FERError(f"ONNX Runtime Web is not installed ({ORT_DIR} lacks {', '.join(missing)}): {where}")
    for name in MODEL_FILES:
        if not (SHIPPED_MODELS_DIR / name).is_file():
            raise FERError(f"the shipped model {SHIPPED_MODELS_DIR / name} is missing: restore it with "
                           f"`git checkout -- models/{name}`")


# Where the page is; the server's root and /web redirect there, so the page's relative URLs resolve as on a
# static host.
PAGE_URL = "/web/"


def is_page_root(url_path: str) -> bool:
    return urlsplit(url_path).path in ("", "/", "/web")


def resolve(url_path: str) -> Path | None:
    """The file a URL path names, or None: web/... under web/, /models/<a model the page uses>, nothing else."""
    parts = [p for p in unquote(urlsplit(url_path).path).split("/") if p]
    if any(p in (".", "..") or "\\" in p or "\0" in p for p in parts):
        return None
    if len(parts) == 2 and parts[0] == "models" and parts[1] in MODEL_FILES:
        return SHIPPED_MODELS_DIR / parts[1]
    if parts[:1] != ["web"]:
        return None
    path = WEB_DIR.joinpath(*parts[1:])
    try:
        if path.is_dir():
            path = path / "index.html"
        return path if path.is_file() else None
    except OSError:             # a name longer than the file system takes, say: not a file of the page
        return None


def page_location(query: str = "") -> str:
    """Where the server's root sends a browser: the page, with the query it came with (?model=ferplus,
    ?backend=wasm; an overlong one is dropped)."""
    return PAGE_URL + (f"?{query}" if query and len(query) < 200 else "")


class Handler(http.server.BaseHTTPRequestHandler):
    """GET / HEAD of the page's files (resolve, page_headers); / goes to /web/."""

    server_version = "fer-web"
    quiet = False

    def do_GET(self):
        self._send(body=True)

    def do_HEAD(self):
        self._send(body=False)

    def _send(self, body: bool):
        if is_page_root(self.path):
            self.send_response(302)
            self.send_header("Location", page_location(urlsplit(self.path).query))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = resolve(self.path)
        if path is None:
            self.send_error(404, "not served: only /web/ and the page's models are")
            return
        data = path.read_bytes()
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            for name, value in page_headers(path).items():
                self.send_header(name, value)
            self.end_headers()
            if body:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True     # the browser went away mid-download: nothing to report

    def log_message(self, format, *args):
        if not self.quiet:
            super().log_message(format, *args)


def make_server(host: str = "127.0.0.1", port: int = 8000, quiet: bool = False) -> http.server.ThreadingHTTPServer:
    """A server for the page, bound but not yet serving (port 0: any free port, see server.server_address)."""
    check_web_files()
    handler = type("QuietHandler" if quiet else "Handler", (Handler,), {"quiet": quiet})
    server_class = http.server.ThreadingHTTPServer
    if ":" in host:                                   # an IPv6 address (::1, ::)
        server_class = type("ThreadingHTTPServerV6", (server_class,), {"address_family": socket.AF_INET6})
    try:
        return server_class((host.strip("[]"), port), handler)
    except socket.gaierror:
        raise FERError(f"--host {host}: not an address of this machine (give 127.0.0.1, ::1, 0.0.0.0 or an "
                       f"address one of its interfaces has)") from None
    except OSError as e:
        why = e.strerror or str(e)
        hint = "pass another --port" if e.errno == errno.EADDRINUSE else "check --host"
        raise FERError(f"cannot listen on {host} port {port} ({why}): {hint}") from None


def get_args_parser():
    parser = cli.make_parser(__doc__)
    g = parser.add_argument_group("Server")
    g.add_argument("--port", type=cli.int_range(0, 65535, name="port"), default=8000,
                   help="TCP port (0: any free port)")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (127.0.0.1: this machine only; the camera needs localhost or HTTPS)")
    parser.add_argument("--write_settings", action="store_true",
                        help=f"write {SETTINGS_FILE.name} (the page's settings, from the Python constants) and exit")
    return parser


def main(args):
    if args.write_settings:
        print(f"page settings -> {write_settings()}")
        return 0
    server = make_server(args.host, args.port)
    host, port = server.server_address[:2]
    if host not in ("127.0.0.1", "::1", "localhost"):
        print(f"note: listening on {host}: the page and the shipped models are now reachable from the network "
              f"(other machines can open it; the camera needs localhost or HTTPS there)", flush=True)
    shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    print(f"FER in the browser: open http://{shown}:{port}/ (Ctrl-C stops; nothing is uploaded, the page runs "
          f"the models in the browser)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
