"""FER as a service: one loaded model behind HTTP on this machine (needs pip install 'fer-toolkit[serve]').

    fer serve                                             # http://127.0.0.1:8000/, the shipped int8 model
    curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/v1/analyse
    curl -F image=@a.jpg -F image=@b.jpg http://127.0.0.1:8000/v1/analyse/batch
    FER_TOKEN=s3cret fer serve --host 0.0.0.0 --port 8080        # others may call it, with the token

POST /v1/analyse answers with the Result of one image, exactly what `fer analyse IMAGE --json` gives for it
(?detect=false for a face crop, ?embedding=true for the 128-d embeddings); /v1/analyse/batch with a list of
them; GET /v1/model names the model (as a results file's .meta.json), GET /health, GET /metrics (Prometheus),
and GET / the browser page. Requests that arrive together are classified together (--max_faces,
--max_wait_ms). Errors are JSON bodies {"error": "..."}. SIGTERM or Ctrl-C: in-flight requests finish, then
the server stops (exit code 0).
"""

import ipaddress
import logging
import os
import signal
import socket
import sys

from fer_common import cli
from fer_common.errors import FERError
from fer_common.infer.batcher import DEFAULT_MAX_FACES, DEFAULT_MAX_WAIT_MS
from fer_common.infer.bulk import default_workers
from fer_common.infer.detection import add_detector_args, detector_from_args
from fer_common.infer.predictor import add_predictor_args, predictor_from_args

DEFAULT_MAX_BYTES = 20 * 1024 * 1024


def get_args_parser():
    parser = cli.make_parser(__doc__)
    g = parser.add_argument_group("Server")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (127.0.0.1: this machine only; 0.0.0.0: every network, which "
                        "wants a token)")
    g.add_argument("--port", type=cli.int_range(0, 65535, name="port"), default=8000,
                   help="TCP port (0: any free port, printed at start)")
    g.add_argument("--token", metavar="TOKEN",
                   help="requests need 'Authorization: Bearer TOKEN' (all but /health and the page); the FER_TOKEN "
                        "environment variable does the same and keeps the token out of the process list")
    g.add_argument("--cors", metavar="ORIGIN", action="append", default=[],
                   help="let pages from this origin call the API from a browser (repeatable; default: no CORS)")
    g = parser.add_argument_group("Limits")
    g.add_argument("--max_bytes", type=cli.int_range(1024, 1 << 31, name="max_bytes"), default=DEFAULT_MAX_BYTES,
                   help="the largest request body; a bigger one is refused (413) before it is read")
    g.add_argument("--max_queue", type=cli.int_range(1, 4096, name="max_queue"), default=64,
                   help="analysis requests at once (being read, waiting or running); more are answered 503 "
                        "with Retry-After")
    g.add_argument("--drain_timeout", type=cli.positive_float, default=30.0, metavar="S",
                   help="on SIGTERM, seconds in-flight requests get to finish before they are cut")
    g = parser.add_argument_group("Batching")
    g.add_argument("--max_faces", type=cli.int_range(1, 1024, name="max_faces"), default=DEFAULT_MAX_FACES,
                   help="the most faces (of all waiting requests) in one forward pass")
    g.add_argument("--max_wait_ms", type=cli.float_range(0, 1000, name="max_wait_ms"), default=DEFAULT_MAX_WAIT_MS,
                   help="how long a face waits for others to share its forward pass (0: never waits)")
    g.add_argument("--workers", type=cli.positive_int, default=default_workers(),
                   help="face detections at once, on threads off the event loop (one detector each)")
    add_predictor_args(parser, tta=True)
    add_detector_args(parser)
    return parser


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port or a bad address is one line, not a traceback, and
    listening before the address is printed."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)       # from now on connections wait in the backlog until the server takes them
    except OSError as e:
        raise FERError(f"cannot listen on {host}:{port} ({e.strerror or e}): pass another --port or --host") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else \
        f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def token_of(args) -> str | None:
    return args.token or os.environ.get("FER_TOKEN") or None


def app_from_args(args, log=print):
    """The application the flags describe: the model and detectors loaded, the limits and access set."""
    from fer_common.commands.serve_app import Service, ServeOptions, make_app

    predictor = predictor_from_args(args, log=log)
    predictor.set_threads()
    service = Service(predictor, lambda: detector_from_args(args), args.tta, args.workers, args.max_faces,
                      args.max_wait_ms, detector_name=args.detector)
    return make_app(service, ServeOptions(args.max_bytes, args.max_queue, token_of(args), tuple(args.cors)))


def main(args):
    # The server stack is the [serve] extra: a missing module is one line naming it (cli.one_line_errors).
    import uvicorn
    import python_multipart  # noqa: F401   Starlette parses forms with it: imported here to fail now, not later

    if not is_loopback(args.host) and token_of(args) is None:
        print(f"warning: listening on {args.host} without a token: anyone who reaches this machine can use the "
              f"model; set FER_TOKEN (or --token)", file=sys.stderr)
    app = app_from_args(args)
    sock = bind(args.host, args.port)
    # The process is the script's: access lines to stderr, one per request; uvicorn's own only when it warns.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logging.getLogger("fer.serve").addHandler(handler)
    logging.getLogger("fer.serve").setLevel(logging.INFO)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", server_header=False,
                            timeout_graceful_shutdown=args.drain_timeout)
    server = uvicorn.Server(config)
    # Uvicorn turns SIGTERM and SIGINT into a graceful stop and raises the signal again afterwards: handled here,
    # so that a drained stop ends with exit code 0 instead of being killed by the second delivery.
    stopped = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stopped.append(signal.Signals(number).name))
    print(f"fer serve: {url_of(sock)} (POST /v1/analyse, /v1/analyse/batch; GET /v1/model, /health, /metrics, "
          f"/ the page){' with a token' if token_of(args) else ''}; SIGTERM or Ctrl-C stops after the requests in "
          f"flight", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise FERError("the server did not start (see uvicorn's message above)")
    print(f"fer serve: stopped{f' ({stopped[0]})' if stopped else ''}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
