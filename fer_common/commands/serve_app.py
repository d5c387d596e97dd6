"""The web application of `fer serve`: one loaded model behind HTTP, with requests that arrive together
classified together.

    service = Service(predictor, lambda: FaceDetector("yunet"), tta=True)      # one detector per --workers slot
    app = make_app(service, ServeOptions(max_bytes=20 << 20, max_queue=64, token="s3cret"))
    # then any ASGI server: uvicorn.run(app) (fer serve does), or starlette.testclient.TestClient(app)

Why Starlette on Uvicorn: the endpoints take an image's bytes and answer with Result.to_dict, which is already
a JSON-ready dict, so FastAPI's layer (pydantic models, request validation, OpenAPI pages) would be one more
dependency with nothing to validate; Starlette is the ASGI toolkit FastAPI is built on, small (it brings only
anyio), and lets the handler read the body as a stream, so an oversized one is refused (413) from its header
or after --max_bytes, never read whole. Uvicorn is the ASGI server of reference: graceful shutdown on SIGTERM
(in-flight requests finish), and HTTP/1.1 keep-alive.

How a request goes: the event loop reads the body (multipart or raw) and admits the request or answers 503;
a worker thread decodes it (bulk.decode_for: the rule, size guard included, that files are decoded by) and
finds its faces with a pool of detectors (detection off the event loop, several at once); a face crop sent
with ?detect=false is decoded on the loop instead. The faces go to the DynamicBatcher, which classifies the
faces of concurrent requests in shared forward passes, and the request awaits their future without holding
a thread. These are bulk.analyse_images' three steps (find_faces, predict, assemble_results), the one
detect -> crop -> predict composition. The answer is Result.to_dict: what `fer analyse --json` prints.
"""

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Callable

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from fer_common.commands import web
from fer_common.commands.serve_http import (AccessLog, BearerAuth, Metrics, ServeError, check_declared_length,
                                            error_response, flag, limited, log)
from fer_common.errors import FERError
from fer_common.files import printable
from fer_common.infer.batcher import DEFAULT_MAX_FACES, DEFAULT_MAX_WAIT_MS, DynamicBatcher
from fer_common.infer.bulk import assemble_results, decode_for, find_faces
from fer_common.infer.detection import DetectorPool
from fer_common.infer.writers import provenance
from fer_common.preprocess import decode_problem
from fer_common.results import Result

# Images in one /v1/analyse/batch request (the body's size is bounded by --max_bytes too).
MAX_BATCH_IMAGES = 64
ENDPOINTS = ("POST /v1/analyse, POST /v1/analyse/batch, GET /v1/model, GET /health, GET /metrics, "
             "GET / (the browser page)")
UNREADABLE_WHY = "not an image OpenCV can read, or a truncated or damaged one"
# With detection off, bodies up to this size are decoded on the event loop (a 48x48 crop: microseconds), bigger
# ones in a worker thread, where a large photo's decoding cannot hold up other requests.
DECODE_ON_LOOP_BYTES = 64 << 10


@dataclass
class ServeOptions:
    """The server's settings: fer serve's flags, where their defaults are."""
    max_bytes: int                        # the largest body accepted
    max_queue: int                        # analysis requests admitted at once; more are answered 503
    token: str | None = None              # with a token, requests need `Authorization: Bearer <token>`
    cors: tuple = ()                      # origins allowed to call from a browser (none: no CORS headers)


class Service:
    """The model side: a predictor shared through a DynamicBatcher, and a pool of face detectors.

    make_detector: a zero-argument factory (one detector per pool slot), or None: every image is a face crop.
    workers: detections at once (OpenCV's detectors are not thread-safe, so each slot has its own).
    """

    def __init__(self, predictor, make_detector: Callable | None = None, tta: bool = False, workers: int = 2,
                 max_faces: int = DEFAULT_MAX_FACES, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
                 detector_name: str | None = None):
        self.predictor = predictor
        self.metrics = Metrics()
        self.batcher = DynamicBatcher(predictor, max_faces, max_wait_ms, on_batch=self.metrics.on_batch)
        self.metrics.waiting_faces.set_function(lambda: self.batcher.waiting_faces)
        self.detectors = DetectorPool(make_detector, workers) if make_detector is not None else None
        kind = detector_name or (self.detectors.kind if self.detectors is not None else None)
        # What a results file's .meta.json records (writers.provenance), less `embedding`: a request's option.
        self.model = {k: v for k, v in provenance(predictor, tta, kind).items() if k != "embedding"}
        self.model.update(max_faces=self.batcher.max_faces, max_wait_ms=self.batcher.max_wait * 1000)

    async def analyse(self, images: list, detect: bool = True, run=anyio.to_thread.run_sync) -> list[Result]:
        """(bytes, name) pairs -> one Result each, in order; an unreadable image's has its `error`.

        Decoding and detection run in a worker thread (`run`), except a small body with detection off (a face
        crop: a few microseconds, on the event loop); the faces then wait for their batch as an awaited
        future, which holds no thread: the one detect -> crop -> predict of bulk.analyse_images, in its three
        steps."""
        detector = self.detectors if detect else None
        if detect and detector is None:
            raise ServeError(400, "this server has no face detector: send face crops with ?detect=false")
        if detector is None and sum(len(data) for data, _ in images) <= DECODE_ON_LOOP_BYTES:
            crops, found = self._find(images, None)
        else:
            crops, found = await run(self._find, images, detector)
        p = await asyncio.wrap_future(self.batcher.submit(crops))
        results = assemble_results(self.predictor.class_names, found, p.probabilities, p.embeddings)
        self.metrics.images.inc(len(results))
        self.metrics.faces.inc(sum(len(r.faces) for r in results))
        return results

    def _find(self, images: list, detector) -> tuple[list, list]:
        return find_faces(((decode_for(self.predictor, data, detector is not None), name) for data, name in images),
                          detector)

    def close(self) -> None:
        self.batcher.close()


# ---------------------------------------------------------------------------------------------- requests

async def request_images(request: Request, limit: int, batch: bool) -> list[tuple[bytes, str]]:
    """The image(s) of a request as (bytes, name): the raw body (image/* or application/octet-stream), or the
    multipart fields `image` (one; several for a batch). Never a path or a URL."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    check_declared_length(request.headers, limit)
    body = Request(request.scope, limited(request.receive, limit))
    if kind == "multipart/form-data":
        form = await body.form(max_files=MAX_BATCH_IMAGES, max_fields=MAX_BATCH_IMAGES, max_part_size=limit)
        try:
            return await form_images(form, batch)
        finally:
            await form.close()
    if batch:
        raise ServeError(415, "a batch is multipart/form-data with one or more 'image' fields "
                              "(curl -F image=@a.jpg -F image=@b.jpg ...)")
    if kind.startswith("image/") or kind == "application/octet-stream":
        return [(await body.body(), "image")]
    raise ServeError(415, f"unsupported Content-Type {kind or '(none)'!r}: send the image as the body "
                          f"(Content-Type image/* or application/octet-stream) or as the multipart field 'image'")


async def form_images(form, batch: bool) -> list[tuple[bytes, str]]:
    other = sorted({k for k in form.keys() if k != "image"})
    if other:
        raise ServeError(400, f"unexpected form field {other[0]!r}: send the image(s) as the field 'image'")
    fields = form.getlist("image")
    if not fields:
        raise ServeError(400, "no 'image' field in the form (curl -F image=@photo.jpg ...)")
    if len(fields) > 1 and not batch:
        raise ServeError(400, f"{len(fields)} images in one request: POST them to /v1/analyse/batch")
    images = []
    for field in fields:
        if not isinstance(field, UploadFile):
            raise ServeError(400, "the field 'image' must be a file (curl -F image=@photo.jpg), not text")
        images.append((await field.read(), printable(field.filename or "image")[:255]))
    return images


class Admission:
    """At most `max_queue` analysis requests at once (read, queued or running); one more is answered 503."""

    def __init__(self, max_queue: int, metrics: Metrics):
        self.max_queue, self.metrics, self.count = max_queue, metrics, 0
        self.limiter = None         # anyio's, made on the event loop at first use

    async def __aenter__(self):
        if self.count >= self.max_queue:
            raise ServeError(503, f"busy: {self.count} requests are being analysed (--max_queue); retry shortly",
                             {"Retry-After": "1"})
        self.count += 1
        self.metrics.queue.inc()
        return self

    async def __aexit__(self, *exc):
        self.count -= 1
        self.metrics.queue.dec()

    async def run(self, function, *args):
        if self.limiter is None:    # a thread for every admitted request: each may wait for its batch
            self.limiter = anyio.CapacityLimiter(self.max_queue)
        return await anyio.to_thread.run_sync(function, *args, limiter=self.limiter)


def make_app(service: Service, options: ServeOptions) -> Starlette:
    admission = Admission(options.max_queue, service.metrics)
    try:
        web.check_web_files()
        page_missing = None
    except FERError as e:
        page_missing = str(e)

    async def analyse_request(request: Request, batch: bool):
        params = request.query_params
        unknown = sorted(set(params.keys()) - {"detect", "embedding"})
        if unknown:
            raise ServeError(400, f"unknown query option {unknown[0]!r} (options: detect, embedding)")
        detect, embedding = flag(params, "detect", True), flag(params, "embedding", False)
        try:
            async with admission:
                images = await request_images(request, options.max_bytes, batch)
                if not batch and not images[0][0]:
                    raise ServeError(400, "the image is empty (0 bytes): send the image's bytes")
                if await request.is_disconnected():
                    return Response(status_code=499)        # gone before its image was read: nothing analysed
                results = await service.analyse(images, detect, admission.run)
        except ClientDisconnect:
            return Response(status_code=499)                # nginx's "client closed request", for the log only
        request.state.faces = sum(len(r.faces) for r in results)
        if not batch:
            result = results[0]
            if result.size is None:
                raise ServeError(422, f"cannot decode the image: {decode_problem(images[0][0]) or UNREADABLE_WHY}")
            return JSONResponse(result.to_dict(embedding))
        return JSONResponse([r.to_dict(embedding) for r in results])

    async def analyse(request):
        return await analyse_request(request, batch=False)

    async def analyse_batch(request):
        return await analyse_request(request, batch=True)

    async def health(request):
        return JSONResponse({"status": "ok", "model": service.model["model"]})

    async def model(request):
        return JSONResponse(service.model)

    async def metrics(request):
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def page(request):
        if page_missing is not None:
            raise ServeError(404, f"the browser page is not served: {page_missing}")
        if web.is_page_root(request.url.path):
            return RedirectResponse(web.page_location(request.url.query), status_code=302)
        path = web.resolve(request.url.path)
        if path is None:
            raise ServeError(404, f"not served: {request.url.path} (only /web/ and the page's models are)")
        return FileResponse(path, headers=web.page_headers(path))

    routes = [Route("/v1/analyse", analyse, methods=["POST"]),
              Route("/v1/analyse/batch", analyse_batch, methods=["POST"]),
              Route("/v1/model", model, methods=["GET"]), Route("/health", health, methods=["GET"]),
              Route("/metrics", metrics, methods=["GET"]),
              Route("/", page, methods=["GET"]), Route("/web", page, methods=["GET"]),
              Route("/web/{path:path}", page, methods=["GET"]), Route("/models/{name}", page, methods=["GET"])]
    middleware = [Middleware(AccessLog, metrics=service.metrics)]
    if options.cors:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(options.cors), allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type"]))
    middleware.append(Middleware(BearerAuth, token=options.token))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close()             # after uvicorn has let the in-flight requests finish

    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers={ServeError: serve_error, HTTPException: http_error, Exception: internal_error})


async def serve_error(request, exc: ServeError):
    return error_response(exc.status, exc.message, exc.headers)


async def http_error(request, exc: HTTPException):
    """Starlette's own refusals (no such path, wrong method, a malformed form) as JSON bodies too."""
    if exc.status_code == 404:
        message = f"no such path: {request.url.path} (endpoints: {ENDPOINTS})"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {request.url.path} (allowed: {allowed})"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, message, exc.headers)


async def internal_error(request, exc: Exception):
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    log.error("internal error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, first)
    return error_response(500, f"internal error: {type(exc).__name__}: {first} (please report)")
