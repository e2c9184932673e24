"""The exporter's HTTP server against prometheus_client's own server and a maintained ASGI server
(uvicorn serving prometheus_client's ASGI app), in one run, on the same realistic registry: /metrics
latency (p50, p99) and throughput with 20 concurrent scrapers sending Prometheus's own headers,
then the same while 500 hostile idle connections are held open (reopened whenever a server closes
one), and whether any legitimate scrape failed.

Each server runs in a child process of its own on 127.0.0.1 (a free port), under the same
descriptor limit (`--server-nofile`: 1024, most containers' soft limit, and 256, the limit the
hardening issue's attack was shown under), and is stopped by its handle; the hostile connections
are held by another child, so their churn does not slow the scrapers' own event loop.

    python -m benchmarks.bench_http [--seconds 5] [--scrapers 20] [--hostile 500] [--server-nofile 1024,256]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    make_asgi_app,
    start_http_server,
)

from exporter.attribution.attributor import TickResult
from exporter.attribution.readings import GpuIdentity
from exporter.attribution.split import Allocation
from exporter.attribution.token_class import IDLE, TOKEN_CLASSES
from exporter.catalogue import BUILD_LABELS
from exporter.collector import LedgerCollector
from exporter.ledger import Ledger, SourceRead, TickRecord
from exporter.server import HttpServer, MetricsCache, Routes

SERVERS = ("ours", "prometheus_client", "uvicorn")
HOST = "127.0.0.1"
# What Prometheus 3 sends on every scrape.
SCRAPE = (
    b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Prometheus/3.5.0\r\n"
    b"Accept: application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    b"application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    b"text/plain;version=0.0.4;q=0.3,*/*;q=0.2\r\n"
    b"Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n"
)
SCRAPE_TIMEOUT = 10.0  # Prometheus's default: a slower answer is a failed scrape


# --- the figures (pure; tests/unit/benchmarks/test_bench_http.py) ---


@dataclass
class Run:
    """One server under one load: every successful scrape's latency, and the failures."""

    server: str
    load: str
    seconds: float
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    first_failure: str = ""


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by the nearest-rank rule; NaN with no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def row(run: Run) -> list[str]:
    ms = [percentile(run.latencies, q) * 1e3 for q in (0.5, 0.99)]
    rate = len(run.latencies) / run.seconds if run.seconds > 0 else 0.0
    failed = f"yes: {run.failures} ({run.first_failure})" if run.failures else "no"
    return [run.server, run.load, f"{ms[0]:.2f}", f"{ms[1]:.2f}", f"{rate:.0f}", str(len(run.latencies)), failed]


HEADER = ["server", "load", "p50 ms", "p99 ms", "scrapes/s", "scrapes", "legitimate scrapes failed"]


def table(runs: Sequence[Run]) -> str:
    """A markdown table, one line per run."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row(run)) + " |" for run in runs]
    return "\n".join(lines)


# --- the servers, each in a child process ---


def realistic_registry() -> tuple[CollectorRegistry, Ledger]:
    """The registry `run` builds (the catalogue and the process self-metrics) over a ledger that
    has counted two models on an 8-GPU node, so the page has the size of a busy exporter's."""
    ledger = Ledger()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, dict.fromkeys(BUILD_LABELS, "bench")))
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    publish_tick(ledger, 1)
    return registry, ledger


def publish_tick(ledger: Ledger, n: int) -> None:
    models = ("meta-llama/Llama-3.1-70B-Instruct", "Qwen/Qwen2.5-7B-Instruct")
    keys = [(m, c) for m in models for c in (*TOKEN_CLASSES, IDLE)]
    gpus = [GpuIdentity(i, f"GPU-{i:08x}-0000-0000-0000-000000000000", "NVIDIA H100 80GB HBM3") for i in range(8)]
    share = {k: 1 / len(keys) for k in keys}
    result = TickResult(
        tokens={k: 1000.0 * n for k in keys if k[1] != IDLE},
        steps=dict.fromkeys(models, 50.0 * n),
        allocation=Allocation(dict.fromkeys(keys, 300.0), share, 0.8, 4.0, 1000.0, 1400.0),
        seconds=5.0,
        costs={(m, c, part): 0.001 for m, c in keys for part in ("energy", "rental")},
        emissions=dict.fromkeys(keys, 0.1),
        gpu_energy=dict.fromkeys(gpus, 3500.0),
        gpu_power=dict.fromkeys(gpus, 700.0),
        models=models,
        marginal=dict.fromkeys(keys, (0.01, 0.001)),
        coefficients=dict.fromkeys(("input", "output", "steps", "context", "prefill_steps"), (0.01, 0.001)),
    )
    reads = {"vllm": SourceRead(True, 0.01), "energy": SourceRead(True, 0.001)}
    ledger.publish(TickRecord(reads, result, (), 0.002, time.time(), True))


def serve(kind: str, port: int, nofile: int) -> None:
    """Runs one server until SIGTERM."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
    registry, ledger = realistic_registry()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    ticker = threading.Thread(target=_tick, args=(ledger, stopped), daemon=True)
    ticker.start()  # a tick every 5 s (the default interval), as the collection loop publishes
    if kind == "ours":
        server = HttpServer(HOST, port, Routes(MetricsCache(registry, ledger), ledger, "http://vllm:8000", "nvml"))
        server.start()
        stopped.wait()
        server.stop()
    elif kind == "prometheus_client":
        httpd, _thread = start_http_server(port, addr=HOST, registry=registry)
        stopped.wait()
        httpd.shutdown()
    else:
        import uvicorn  # only here: the exporter does not depend on it

        # uvicorn installs its own SIGTERM handler and exits on it.
        uvicorn.run(make_asgi_app(registry), host=HOST, port=port, log_level="error", access_log=False, lifespan="off")


def _tick(ledger: Ledger, stopped: threading.Event) -> None:
    n = 1
    while not stopped.wait(5.0):
        n += 1
        publish_tick(ledger, n)


@contextlib.contextmanager
def child(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    """This module run with `args` in a child process, stopped by its handle."""
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_http", *args])
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


# --- the hostile client, in a child process ---


def hold(port: int, count: int) -> None:
    """Keeps `count` connections open and silent until SIGTERM, reopening each one a server
    closes a tenth of a second later, as an attacker would."""
    _raise_nofile(count + 64)

    async def one(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
                with contextlib.suppress(ConnectionError):
                    await reader.read()  # returns when the server closes it
                writer.close()
            except OSError:
                pass
            await asyncio.sleep(0.1)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        tasks = [asyncio.create_task(one(stop)) for _ in range(count)]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def _raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else min(needed, hard), hard)
        )


# --- the scrapers ---


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """One response's status and whether the server keeps the connection; the body is read
    (by Content-Length, chunks or to the end) and thrown away."""
    status_line = await reader.readuntil(b"\r\n")
    headers = {}
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    else:
        await reader.read()
        return int(status_line.split()[1]), False
    keep = status_line.startswith(b"HTTP/1.1") and headers.get("connection") != "close"
    return int(status_line.split()[1]), keep


async def _scraper(port: int, until: float, run: Run) -> None:
    loop = asyncio.get_running_loop()
    reader = writer = None
    while loop.time() < until:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                if writer is None:
                    reader, writer = await asyncio.open_connection(HOST, port)
                    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                writer.write(SCRAPE)
                status, keep = await _read_response(reader)  # type: ignore[arg-type]
            if status != 200:
                raise RuntimeError(f"status {status}")
            run.latencies.append(time.perf_counter() - started)
        except (OSError, TimeoutError, RuntimeError, asyncio.IncompleteReadError, ValueError) as err:
            run.failures += 1
            run.first_failure = run.first_failure or type(err).__name__
            keep = False
        if not keep and writer is not None:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def scrape(port: int, server: str, load: str, scrapers: int, seconds: float) -> Run:
    """`scrapers` concurrent keep-alive scrapers for `seconds`, after a short warm-up."""

    async def main() -> Run:
        loop = asyncio.get_running_loop()
        warm = Run(server, load, 0.5)
        await asyncio.gather(*(_scraper(port, loop.time() + 0.5, warm) for _ in range(scrapers)))
        run = Run(server, load, seconds)
        started = loop.time()
        await asyncio.gather(*(_scraper(port, started + seconds, run) for _ in range(scrapers)))
        run.seconds = loop.time() - started
        return run

    return asyncio.run(main())


def measure(server: str, args: argparse.Namespace) -> list[Run]:
    """The plain scrape under the first descriptor limit, then the hostile one under each limit,
    each on a fresh server process."""
    runs = []
    for i, nofile in enumerate(int(n) for n in args.server_nofile.split(",")):
        port = free_port()
        with child("--serve", server, "--port", str(port), "--server-nofile", str(nofile)) as process:
            wait_listening(port, process)
            if i == 0:
                runs.append(scrape(port, server, f"{args.scrapers} scrapers", args.scrapers, args.seconds))
            with child("--hold", str(args.hostile), "--port", str(port)):
                time.sleep(2.0)  # the hostile connections open
                load = f"{args.scrapers} scrapers + {args.hostile} idle held, nofile {nofile}"
                runs.append(scrape(port, server, load, args.scrapers, args.seconds))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--scrapers", type=int, default=20)
    parser.add_argument("--hostile", type=int, default=500)
    # 1024: most containers' soft limit; 256: the limit the hardening issue's attack was shown under.
    parser.add_argument("--server-nofile", default="1024,256", help="comma-separated soft RLIMIT_NOFILE values")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--hold", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.port, int(args.server_nofile))
    if args.hold:
        return hold(args.port, args.hold)
    _raise_nofile(args.scrapers + 256)
    runs = [run for server in args.servers.split(",") for run in measure(server, args)]
    uvicorn_http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    uvicorn_loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    print(
        f"/metrics over loopback, {args.seconds:.0f} s a run, servers under soft RLIMIT_NOFILE {args.server_nofile}, "
        f"{os.cpu_count()} CPUs; uvicorn with {uvicorn_http} on {uvicorn_loop}\n"
    )
    print(table(runs))


if __name__ == "__main__":
    main()
