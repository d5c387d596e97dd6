"""FER as a service: images/s and latency of `fer serve` under concurrent clients, against the bulk run.

    python -m benchmarks.bench_serve                    # 5,000 crops, 200 photos, the batching sweep, memory
    python -m benchmarks.bench_serve --quick            # a few hundred requests of each (a smoke run)

The server is the real command (`python -m fer_common serve --port 0`, a process of its own, access log on);
the clients are --clients asyncio connections in this process (HTTP/1.1 keep-alive, one image per request,
each sent as soon as the previous answer came). Inputs are made in a temporary folder as bench_bulk makes
them: 48x48 gray PNG crops of the test face (sent with ?detect=false) and 640x480 JPEG photos with one or two
faces (detection on). The bulk row is `inference.py DIR --recursive --no_detect --output out.jsonl` on the same
crops (its summary line's images/s, start-up left out, and the whole process timed from outside). Batch sizes
come from the server's /metrics (fer_batch_faces), memory and CPU time from /proc: CPU ms / image (the server
process's, the clients' not counted; the bulk run's less a one-image run's) holds up on a busy machine where
images/s does not. The load average is printed with the figures: compare rows of one run.
"""

import asyncio
import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):          # run as `python benchmarks/bench_serve.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fer_common.cli import int_range, make_parser, run_main  # noqa: E402
from fer_common.files import write_json  # noqa: E402

from benchmarks.bench_bulk import make_crops, make_photos, run_cli_cpu  # noqa: E402
from benchmarks.common import REPO, busy_processes, fmt, table  # noqa: E402

URL_LINE = re.compile(r"fer serve: http://([\d.]+):(\d+)/")
# (--max_faces, --max_wait_ms) settings of the sweep that chose the defaults.
SWEEP = ((32, 0), (32, 1), (32, 2), (32, 5), (8, 0), (16, 0), (64, 0), (64, 2))


class Server:
    """`fer serve` in a process of its own, on a free port of 127.0.0.1."""

    def __init__(self, extra: list, log_path: Path):
        self.log = open(log_path, "w")
        # In the run's folder, as inference.py runs: no fer_model.pth of the checkout's is picked up.
        self.proc = subprocess.Popen([sys.executable, "-m", "fer_common", "serve", "--port", "0", *map(str, extra)],
                                     cwd=log_path.parent, env=dict(os.environ, PYTHONPATH=str(REPO)),
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        deadline = time.time() + 120
        for line in self.proc.stdout:
            match = URL_LINE.search(line)
            if match:
                self.host, self.port = match.group(1), int(match.group(2))
                break
            if time.time() > deadline:
                self.proc.kill()
                raise RuntimeError(f"fer serve did not start within 120 s: see {log_path}")
        else:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"fer serve did not start: see {log_path}")

    def memory_mb(self) -> tuple[float, float]:
        """(current, peak) resident memory of the server process."""
        fields = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far, all its threads."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics(self) -> dict:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.log.close()
        return code


async def _client(host, port, bodies, take, path: bytes, content_type: bytes, latencies: list, errors: list):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (i := take()) is not None:
            body = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            writer.write(b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                         % (path, content_type, len(body)) + body)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


def load(server: Server, bodies: list, requests: int, clients: int, detect: bool, content_type: str) -> dict:
    """`requests` requests from `clients` concurrent connections: images/s, latency percentiles, batch sizes."""
    before, cpu = server.metrics(), server.cpu_seconds()
    latencies, errors, count = [], [], iter(range(requests))
    take = lambda: next(count, None)  # noqa: E731
    path = b"/v1/analyse" + (b"" if detect else b"?detect=false")

    async def run():
        await asyncio.gather(*(_client(server.host, server.port, bodies, take, path, content_type.encode(),
                                       latencies, errors) for _ in range(clients)))
    t0 = time.perf_counter()
    asyncio.run(run())
    seconds = time.perf_counter() - t0
    cpu = server.cpu_seconds() - cpu
    after = server.metrics()
    delta = lambda name: after.get(name, 0.0) - before.get(name, 0.0)  # noqa: E731
    latencies.sort()
    pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    batches = delta("fer_batch_faces_count")
    small = delta('fer_batch_faces_bucket{le="4.0"}')
    return {"requests": len(latencies), "errors": len(errors), "seconds": seconds,
            "images_per_s": len(latencies) / seconds, "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99),
            "max_ms": latencies[-1] * 1000, "cpu_ms_per_image": cpu * 1000 / len(latencies), "batches": batches,
            "faces_per_batch": delta("fer_batch_faces_sum") / batches if batches else None,
            "requests_per_batch": delta("fer_batch_requests_sum") / batches if batches else None,
            "batches_of_4_or_fewer": small / batches if batches else None}


def read_files(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()]


def bulk_row(folder: Path, argv: list, out: Path, one: Path) -> dict:
    """inference.py on the folder, as a user types it: its own rate (start-up left out), the whole process's, and
    CPU ms per image (less a one-image run's: start-up), the figure that holds up on a shared machine."""
    r = run_cli_cpu([folder, *argv], out, one)
    return {"images_per_s": r["images_per_s"], "whole_process_images_per_s": r["images"] / r["wall_s"],
            "images": r["images"], "peak_rss_mb": r["peak_rss_mb"], "cpu_ms_per_image": r["cpu_ms_per_image"]}


def served(workdir: Path, bodies: list, args, requests: int, detect: bool, content_type: str, extra=(),
           memory_requests: int = 0) -> dict:
    server = Server(list(extra), workdir / "serve.log")
    try:
        load(server, bodies, min(200, requests), args.clients, detect, content_type)        # warm-up
        row = load(server, bodies, requests, args.clients, detect, content_type)
        row["rss_mb"] = server.memory_mb()[0]
        if memory_requests:
            row["memory"] = memory_run(server, bodies, memory_requests, args.clients)
    finally:
        row_code = server.stop()
    if row_code != 0:
        raise RuntimeError(f"fer serve exited with {row_code} on SIGTERM (see {workdir / 'serve.log'})")
    return row


def memory_run(server: Server, bodies: list, total: int, clients: int) -> list[dict]:
    """RSS after every quarter of `total` more requests (crops, no detection)."""
    rows, done = [], 0
    for step in (total // 4,) * 4:
        load(server, bodies, step, clients, False, "image/png")
        done += step
        rss, peak = server.memory_mb()
        rows.append({"requests": done, "rss_mb": rss, "peak_rss_mb": peak})
    return rows


def get_args_parser():
    parser = make_parser(__doc__)
    g = parser.add_argument_group("Benchmark")
    g.add_argument("--quick", action="store_true", help="a few hundred requests of each (smoke run)")
    g.add_argument("--crops", type=int_range(16), default=5000, help="48x48 face crops (one request each)")
    g.add_argument("--photos", type=int_range(2), default=200, help="640x480 photos, with detection")
    g.add_argument("--clients", type=int_range(1, 256), default=16, help="concurrent client connections")
    g.add_argument("--sweep_requests", type=int_range(0), default=3000,
                   help="requests per --max_faces / --max_wait_ms setting of the sweep (0: no sweep)")
    g.add_argument("--memory_requests", type=int_range(0), default=20000,
                   help="requests of the memory run (RSS after each quarter; 0: none)")
    g.add_argument("--json", metavar="PATH", help="also write every figure as JSON here")
    return parser


def main(args):
    if args.quick:
        args.crops, args.photos, args.sweep_requests, args.memory_requests = 300, 16, 200, 400
    load_start = os.getloadavg()
    busy = bool(busy_processes())
    print(f"load average {load_start[0]:.2f} at the start" + (" (a training run shares the CPU)" if busy else ""),
          flush=True)
    with tempfile.TemporaryDirectory(prefix="fer_bench_serve_") as tmp:
        workdir = Path(tmp)
        crops_dir, photos_dir = make_crops(workdir / "crops", args.crops), make_photos(workdir / "photos", args.photos)
        crops, photos = read_files(crops_dir), read_files(photos_dir)
        print(f"bulk: inference.py on {len(crops)} crops and {len(photos)} photos", flush=True)
        one_crop, one_photo = make_crops(workdir / "one_crop", 1), make_photos(workdir / "one_photo", 1)
        bulk = bulk_row(crops_dir, ["--recursive", "--no_detect"], workdir / "out.jsonl", one_crop)
        bulk_photos = bulk_row(photos_dir, [], workdir / "out_photos.jsonl", one_photo)
        print(f"serve: {len(crops)} crops from {args.clients} clients, then {args.memory_requests} for memory",
              flush=True)
        serve = served(workdir, crops, args, len(crops), False, "image/png", memory_requests=args.memory_requests)
        serve_photos = served(workdir, photos, args, len(photos), True, "image/jpeg")
        sweep = []
        for faces, wait in SWEEP if args.sweep_requests else ():
            print(f"sweep: --max_faces {faces} --max_wait_ms {wait}", flush=True)
            sweep.append({"max_faces": faces, "max_wait_ms": wait,
                          **served(workdir, crops, args, args.sweep_requests, False, "image/png",
                                   ["--max_faces", faces, "--max_wait_ms", wait])})
    load_end = os.getloadavg()
    rows = [bulk_table_row("48x48 crops, bulk: inference.py DIR --recursive --no_detect --output out.jsonl", bulk),
            served_row(f"48x48 crops, fer serve, ?detect=false, {args.clients} clients", serve),
            bulk_table_row("640x480 photos, bulk: inference.py DIR --output out.jsonl", bulk_photos),
            served_row(f"640x480 photos, fer serve, detection on, {args.clients} clients", serve_photos)]
    text = table(["run", "images / s", "whole process images / s", "CPU ms / image", "p50 / p90 / p99 ms",
                  "faces / batch", "requests / batch", "batches of <= 4 faces", "RSS MB"], rows)
    ratio = serve["images_per_s"] / bulk["images_per_s"]
    text += (f"\n\nServer / bulk on crops: {ratio:.2f} (target: at least 0.5). Load average "
             f"{load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end"
             + (" (a training run shared the CPU)" if busy else "") + ".")
    if sweep:
        text += "\n\n" + table(["--max_faces", "--max_wait_ms", "images / s", "CPU ms / image", "p50 / p90 / p99 ms",
                                "faces / batch"],
                               [[s["max_faces"], s["max_wait_ms"], fmt(s["images_per_s"], 0),
                                 fmt(s["cpu_ms_per_image"], 3), percentiles(s), fmt(s["faces_per_batch"], 1)]
                                for s in sweep])
    if serve.get("memory"):
        memory = [[m["requests"], fmt(m["rss_mb"], 0), fmt(m["peak_rss_mb"], 0)] for m in serve["memory"]]
        text += "\n\n" + table(["requests (crops)", "RSS MB", "peak RSS MB"], memory)
    print(text)
    if args.json:
        write_json(args.json, {"load_avg": [load_start[0], load_end[0]], "training_running": busy, "bulk": bulk,
                               "bulk_photos": bulk_photos, "serve": serve, "serve_photos": serve_photos,
                               "sweep": sweep, "clients": args.clients})
    return 0


def percentiles(row: dict) -> str:
    return f"{row['p50_ms']:.1f} / {row['p90_ms']:.1f} / {row['p99_ms']:.1f}"


def served_row(label: str, r: dict) -> list:
    share = r["batches_of_4_or_fewer"]
    return [label + (f" ({r['errors']} errors)" if r["errors"] else ""), fmt(r["images_per_s"], 0), "-",
            fmt(r["cpu_ms_per_image"], 3), percentiles(r), fmt(r["faces_per_batch"], 1),
            fmt(r["requests_per_batch"], 1), "-" if share is None else f"{share:.0%}", fmt(r["rss_mb"], 0)]


def bulk_table_row(label: str, r: dict) -> list:
    return [label, fmt(r["images_per_s"], 0), fmt(r["whole_process_images_per_s"], 0), fmt(r["cpu_ms_per_image"], 3),
            "-", "-", "-", "-", fmt(r["peak_rss_mb"], 0)]


if __name__ == "__main__":
    run_main(main, get_args_parser())
