"""What `fer serve` wraps around its routes: metrics, the access log, bearer-token checks, error bodies, body limits.

Each piece is a plain ASGI middleware or helper, so the order is explicit in serve_app.make_app: the access log
(and the request metrics) outermost, so every answer is counted, 401s too; CORS, when asked for, next, so a
browser's preflight is answered without a token; the token check innermost. Every error is a JSON body
{"error": "..."}, one line, as the command line's errors are.
"""

import hmac
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.datastructures import Headers
from starlette.responses import JSONResponse

log = logging.getLogger("fer.serve")

# Paths whose requests are counted under their own name in the metrics; any other is "other" (a scanner's
# thousand made-up paths must not become a thousand time series).
METRIC_PATHS = ("/v1/analyse", "/v1/analyse/batch", "/v1/model", "/health", "/metrics", "/")
PAGE_PREFIXES = ("/web", "/models/")


class ServeError(Exception):
    """An answer other than 200, with its one-line message: raised anywhere in a request, sent as JSON."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Metrics:
    """The Prometheus metrics of one server, in a registry of its own (two apps in one process never clash)."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("fer_requests", "HTTP requests answered", ["method", "path", "status"], registry=r)
        self.latency = Histogram("fer_request_seconds", "time from the request's arrival to its answer", ["path"],
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10), registry=r)
        self.images = Counter("fer_images", "images analysed (unreadable ones too)", registry=r)
        self.faces = Counter("fer_faces", "faces found and classified", registry=r)
        self.batch_faces = Histogram("fer_batch_faces", "faces per forward pass of the dynamic batcher",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.batch_calls = Histogram("fer_batch_requests", "requests sharing a forward pass",
                                     buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.batch_seconds = Histogram("fer_batch_seconds", "time of one forward pass (with preprocessing)",
                                       buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1), registry=r)
        self.queue = Gauge("fer_queue_depth", "analysis requests admitted and not yet answered (being read, "
                                              "waiting for their batch, or running)", registry=r)
        self.waiting_faces = Gauge("fer_batcher_waiting_faces", "faces queued for the next forward pass", registry=r)

    def on_batch(self, faces: int, calls: int, seconds: float) -> None:
        self.batch_faces.observe(faces)
        self.batch_calls.observe(calls)
        self.batch_seconds.observe(seconds)

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        label = metric_path(path)
        self.requests.labels(method if method in ("GET", "POST", "HEAD", "OPTIONS") else "other", label,
                             str(status)).inc()
        self.latency.labels(label).observe(seconds)


def metric_path(path: str) -> str:
    if path in METRIC_PATHS:
        return path
    return "/web" if path.startswith(PAGE_PREFIXES) else "other"


class AccessLog:
    """One line per request (client, method, path, status, milliseconds, faces) and the request metrics."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500                       # what an exception that escapes the app becomes

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            seconds = time.perf_counter() - t0
            self.metrics.observe(scope["method"], scope["path"], status, seconds)
            faces = scope.get("state", {}).get("faces")
            client = scope.get("client") or ("-", 0)
            log.info('%s "%s %s" %d %.1f ms%s', client[0], scope["method"], scope["path"], status, seconds * 1000,
                     "" if faces is None else f" faces={faces}")


class BearerAuth:
    """With a token, every request but `open_paths` (and the page's files) needs `Authorization: Bearer TOKEN`."""

    def __init__(self, app, token: str | None, open_paths=("/health",)):
        self.app, self.open_paths = app, tuple(open_paths)
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope, receive, send):
        if self.expected is not None and scope["type"] == "http" and not self.is_open(scope["path"]):
            given = Headers(scope=scope).get("authorization", "").encode("latin-1", "replace")
            if not hmac.compare_digest(given, self.expected):
                why = "a wrong token" if given else "no Authorization header"
                response = error_response(401, f"unauthorized ({why}): send 'Authorization: Bearer <token>', the "
                                               f"token fer serve was started with (--token or FER_TOKEN)",
                                          {"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)

    def is_open(self, path: str) -> bool:
        return path in self.open_paths or path == "/" or path.startswith(PAGE_PREFIXES)


# ---------------------------------------------------------------------------------------------- bodies

def check_declared_length(headers, limit: int) -> None:
    """413 from the Content-Length header alone, before a byte of the body is read."""
    declared = headers.get("content-length")
    if declared is None:
        return
    if not declared.strip().isdigit():
        raise ServeError(400, f"bad Content-Length header: {declared[:40]!r}")
    if int(declared) > limit:
        raise ServeError(413, f"the body is {int(declared):,} bytes, over the {limit:,} bytes accepted (--max_bytes)")


def limited(receive, limit: int):
    """`receive` that refuses (413) a body growing past `limit` bytes as it streams in: a chunked body has no
    Content-Length to check first, and a declared length may lie."""
    seen = 0

    async def receive_limited():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise ServeError(413, f"the body is over the {limit:,} bytes accepted (--max_bytes)")
        return message
    return receive_limited


def flag(params, name: str, default: bool) -> bool:
    """A true/false query option (?detect=false): 400 for anything else."""
    value = params.get(name)
    if value is None:
        return default
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ServeError(400, f"query option {name} must be true or false, got {value[:40]!r}")
