"""The running exporter's overhead beside a real vLLM server (CPU build, tiny model), and how
fast its /metrics answers many scrapers at once.

    python -m benchmarks.bench_overhead --vllm-python PATH [--seconds 300] [--interval 1]

Starts vLLM and the exporter on 127.0.0.1, keeps a light request load going, and samples the
exporter's CPU time and RSS from /proc. The baselines, measured in the same run: vLLM's own
CPU use over the same window, and /healthz (a constant answer from the same server) for the
scrape latency. Targets: <= 1 % of one core, <= 64 MB RSS, /metrics p99 <= 5 ms with 20
concurrent scrapers.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.e2e.exporter_process import ExporterProcess
from tests.e2e.vllm_server import VllmServer

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def group_cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            total += cpu_seconds(pid)
    return total


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE


def keep_load(server: VllmServer, stop: threading.Event) -> int:
    sent = 0
    while not stop.is_set():
        server.complete_many([f"benchmark request {sent + i}" for i in range(4)], max_tokens=32, concurrency=4)
        sent += 4
        stop.wait(1.0)
    return sent


def _scraper(job: tuple[str, int, str, int, float, float]) -> list[float]:
    """One scraper process: a keep-alive connection, `count` GETs, `pause` seconds apart, all
    scrapers starting together at `start` (after every process has started, so the client's own
    start-up does not land in the figures)."""
    host, port, path, count, pause, start_at = job
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/plain\r\n\r\n".encode()
    out = []
    time.sleep(max(start_at - time.time(), 0.0))
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = sock.makefile("rb")
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(request)
            length = 0
            status = stream.readline()
            while (line := stream.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            stream.read(length)
            out.append(time.perf_counter() - start)
            assert status.split()[1] == b"200", status
            time.sleep(pause)
    return out


def latencies(url: str, concurrency: int, per_worker: int, pause: float) -> list[float]:
    """`concurrency` scraper processes (not threads: a client sharing one GIL would time itself)."""
    parts = urlsplit(url)
    with multiprocessing.get_context("spawn").Pool(concurrency) as pool:
        pool.map(time.sleep, [0.0] * concurrency)  # every worker process is up before the clock starts
        jobs = [(parts.hostname, parts.port, parts.path, per_worker, pause, time.time() + 1.0)] * concurrency
        return [x for chunk in pool.map(_scraper, jobs) for x in chunk]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vllm-python", default=os.environ.get("TOKEN_ECONOMY_VLLM_PYTHON"), required=False)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--scrapers", type=int, default=20)
    parser.add_argument("--scrapes-per-scraper", type=int, default=200)
    parser.add_argument("--scrape-pause", type=float, default=0.02, help="seconds between one scraper's requests")
    args = parser.parse_args()
    if not args.vllm_python:
        parser.error("--vllm-python (or TOKEN_ECONOMY_VLLM_PYTHON) is required")

    work = Path(tempfile.mkdtemp(prefix="token-economy-bench-"))
    model = work / "model"
    subprocess.run(
        [args.vllm_python, str(Path(__file__).parents[1] / "tests" / "e2e" / "tiny_model.py"), str(model)],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    server = VllmServer(args.vllm_python, model, workdir=work / "vllm").start()
    exporter = None
    try:
        server.wait_ready()
        exporter = ExporterProcess(
            server.url,
            work,
            "--interval",
            str(args.interval),
            "--energy-source",
            "phase-model",
            "--gpu-type",
            "H100",
            "--model-dir",
            str(model),
            "--log-format",
            "json",
        ).start()
        pid = exporter.proc.pid
        stop = threading.Event()
        load = threading.Thread(target=keep_load, args=(server, stop), daemon=True)
        load.start()
        time.sleep(5)  # past start-up
        cpu0, vllm_cpu0, t0 = cpu_seconds(pid), group_cpu_seconds(server.live_pids()), time.monotonic()
        peak_rss = 0
        while time.monotonic() - t0 < args.seconds:
            peak_rss = max(peak_rss, rss_bytes(pid))
            time.sleep(1.0)
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(pid) - cpu0
        vllm_cpu = group_cpu_seconds(server.live_pids()) - vllm_cpu0
        stop.set()
        load.join(60)
        time.sleep(2)  # let the last requests' work drain from vLLM before timing scrapes

        scrape = latencies(exporter.url + "/metrics", args.scrapers, args.scrapes_per_scraper, args.scrape_pause)
        health = latencies(exporter.url + "/healthz", args.scrapers, args.scrapes_per_scraper, args.scrape_pause)
        page_bytes = len(httpx.get(exporter.url + "/metrics").content)
        share = cpu / elapsed * 100
        print(f"window: {elapsed:.0f} s at --interval {args.interval}, vLLM under a steady light load")
        print(
            f"exporter CPU: {cpu:.2f} s = {share:.3f} % of one core; vLLM CPU in the same window: {vllm_cpu:.1f} s "
            f"(exporter/vLLM = {cpu / vllm_cpu * 100 if vllm_cpu else float('nan'):.3f} %)"
        )
        print(f"exporter RSS: peak {peak_rss / 2**20:.1f} MiB")
        print(
            f"/metrics ({page_bytes} bytes), {args.scrapers} concurrent scraper processes x {args.scrapes_per_scraper} "
            f"scrapes, {args.scrape_pause * 1e3:.0f} ms apart: "
            f"p50 {statistics.median(scrape) * 1e3:.2f} ms, p99 {pct(scrape, 0.99) * 1e3:.2f} ms"
        )
        print(
            f"/healthz baseline, same load: p50 {statistics.median(health) * 1e3:.2f} ms, "
            f"p99 {pct(health, 0.99) * 1e3:.2f} ms "
            f"(/metrics p99 / /healthz p99 = {pct(scrape, 0.99) / pct(health, 0.99):.2f}x)"
        )
        print(
            f"targets: CPU <= 1 %: {'PASS' if share <= 1 else 'FAIL'}; RSS <= 64 MB: "
            f"{'PASS' if peak_rss <= 64e6 else 'FAIL'}; "
            f"/metrics p99 <= 5 ms: {'PASS' if pct(scrape, 0.99) <= 5e-3 else 'FAIL'}"
        )
    finally:
        if exporter is not None:
            exporter.stop()
        server.stop()


if __name__ == "__main__":
    main()
