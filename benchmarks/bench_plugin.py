"""What the stat-logger plugin costs vLLM, each figure against a baseline measured in the same run.

    python -m benchmarks.bench_plugin --vllm-python PATH [--reads 300] [--seconds 60]

1. `record()` per call, on vLLM's own stats classes (a prefill step and a decode step with
   iteration details), in vLLM's venv; baseline: an empty stat logger's `record()`, the least any
   plugin costs. Target: <= 20 us median.
2. The plugin's thread, publishing every 0.5 s (the default) for 8 GPUs of a stand-in NVML into
   a registry and a snapshot file on tmpfs (the manifests' in-memory emptyDir); its CPU time over
   wall time, as % of one core, start-up included; baseline: a thread that only wakes on the same
   schedule. Target: <= 0.2 % of one core.
3. vLLM API-server CPU per read, with the plugin loaded: `--reads` reads of vLLM's full /metrics
   page, then as many reads of the plugin's snapshot file; baseline: the API server's CPU while
   nothing reads it, over the same time. CPU time is read from /proc (10 ms ticks), so each
   figure is a total over all the reads, divided.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import httpx

REPO = Path(__file__).resolve().parents[1]

_RECORD_SCRIPT = r"""
import json, statistics, sys, time
from types import SimpleNamespace
from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import IterationStats, PromptTokenStats, SchedulerIterationDetails, SchedulerStats
import exporter.plugin.vllm_logger as plugin

class Empty(StatLoggerBase):
    def __init__(self, vllm_config, engine_index=0): pass
    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0): pass
    def log_engine_initialized(self): pass

config = SimpleNamespace(model_config=SimpleNamespace(served_model_name="bench"), cache_config=None)
ours, empty = plugin.TokenEconomyStatLogger(config, 0), Empty(config, 0)

def step(prefill):
    details = SchedulerIterationDetails(7, 1 if prefill else 0, 512 if prefill else 0, 31, 31, 12.5)
    sched = SchedulerStats(num_running_reqs=32, num_waiting_reqs=3, kv_cache_usage=0.4, iteration_details=details)
    it = IterationStats()
    it.num_generation_tokens = 32
    if prefill:
        it.prompt_token_stats = PromptTokenStats(computed=480, local_cache_hit=32, cached_tokens=32, total=512)
    return sched, it

steps = [step(i % 8 == 0) for i in range(64)]

def per_call(logger, calls=200_000, rounds=9):
    out = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for i in range(calls):
            sched, it = steps[i & 63]
            logger.record(sched, it, None, 0)
        out.append((time.perf_counter_ns() - start) / calls / 1000)
    return statistics.median(out)

per_call(ours, 20_000, 1)  # warm
print(json.dumps({"plugin_us": per_call(ours), "empty_us": per_call(empty), "errors": dict(ours._runtime.errors)}))
plugin._RUNTIME.stop()
"""


def bench_record(vllm_python: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKEN_ECONOMY_PLUGIN_NVML": "0"}
    out = subprocess.run(
        [vllm_python, "-c", _RECORD_SCRIPT], env=env, capture_output=True, text=True, timeout=600, check=True
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench_thread(seconds: float) -> dict[str, float]:
    import prometheus_client

    from exporter.plugin.runtime import PluginConfig, Runtime
    from exporter.plugin.state import Identity
    from tests.fakes.pynvml_fake import FakeGpu, FakeNvml
    from tests.unit.plugin.test_steps import details, iteration, scheduler

    registry = prometheus_client.CollectorRegistry()
    client = SimpleNamespace(
        Counter=partial(prometheus_client.Counter, registry=registry),
        Gauge=partial(prometheus_client.Gauge, registry=registry),
    )
    gpus = [FakeGpu(uuid=f"GPU-{i}", energy_mj=lambda t, i=i: 1e9 + 7e5 * t + i) for i in range(8)]
    nvml = FakeNvml(gpus, clock=time.monotonic)
    # The manifests mount the shared directory as an in-memory emptyDir: tmpfs, as /dev/shm is.
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as directory:
        config = PluginConfig(directory=Path(directory), lock_directory=Path(directory), publish_seconds=0.5)
        runtime = Runtime(config, Identity("bench", "0", "0", time.time(), 1e6), client, load_nvml=lambda: nvml)
        stop = threading.Event()

        def engine() -> None:  # vLLM's steps keep arriving meanwhile, ~50 a second
            while not stop.wait(0.02):
                runtime.counter.record(scheduler(step_details=details(ctx=64, gen=31)), iteration(32, 60, 4), 0)

        feeder = threading.Thread(target=engine, daemon=True)
        feeder.start()
        runtime.start()
        time.sleep(seconds)
        plugin_cpu = runtime._cpu
        runtime.stop()
        stop.set()
    baseline = _idle_thread_cpu(seconds, 0.5)
    return {
        "plugin_percent": 100 * plugin_cpu / seconds,
        "idle_thread_percent": 100 * baseline / seconds,
        "per_round_ms": 1000 * plugin_cpu / (seconds / 0.5),
    }


def _idle_thread_cpu(seconds: float, period: float) -> float:
    spent = [0.0]
    stop = threading.Event()

    def wake() -> None:
        while not stop.is_set():
            started = time.thread_time()
            spent[0] += time.thread_time() - started
            stop.wait(period)

    thread = threading.Thread(target=wake)
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join()
    return spent[0]


def bench_reads(vllm_python: str, reads: int) -> dict[str, float]:
    from benchmarks.bench_overhead import CLOCK_TICKS, cpu_seconds
    from tests.e2e.plugin_rig import install_plugin
    from tests.e2e.vllm_server import VllmServer

    with tempfile.TemporaryDirectory() as work:
        workdir = Path(work)
        model = workdir / "model"
        subprocess.run([vllm_python, str(REPO / "tests/e2e/tiny_model.py"), str(model)], check=True, timeout=300)
        site = install_plugin(vllm_python, workdir / "plugin")
        shared = workdir / "shared"
        shared.mkdir()
        env = {"PYTHONPATH": str(site), "TOKEN_ECONOMY_PLUGIN_DIR": str(shared)}
        server = VllmServer(vllm_python, model, workdir=workdir / "vllm", extra_env=env).start()
        try:
            server.wait_ready()
            server.complete_many(["warm up " * 20] * 8, max_tokens=16)
            pid = server.pid
            assert pid is not None
            client = httpx.Client(timeout=10.0)
            page_bytes = len(client.get(server.url + "/metrics").content)
            files = list(shared.glob("plugin-*.prom"))

            def measure(read) -> tuple[float, float]:
                cpu, wall = cpu_seconds(pid), time.monotonic()
                for _ in range(reads):
                    read()
                return cpu_seconds(pid) - cpu, time.monotonic() - wall

            page_cpu, page_wall = measure(lambda: client.get(server.url + "/metrics").content)
            file_cpu, file_wall = measure(files[0].read_bytes)
            idle_seconds = max(page_wall, 10.0)
            idle_cpu = cpu_seconds(pid)
            time.sleep(idle_seconds)
            idle_rate = (cpu_seconds(pid) - idle_cpu) / idle_seconds
            tick = 1.0 / CLOCK_TICKS  # /proc counts CPU time in these
            return {
                "page_bytes": page_bytes,
                "file_bytes": files[0].stat().st_size,
                "page_ms_per_read": 1000 * (page_cpu - idle_rate * page_wall) / reads,
                "file_ms_per_read": 1000 * max(file_cpu - idle_rate * file_wall, 0.0) / reads,
                "resolution_ms_per_read": 1000 * tick / reads,
                "idle_percent_of_core": 100 * idle_rate,
            }
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-python", default=os.environ.get("TOKEN_ECONOMY_VLLM_PYTHON"), required=False)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    if not args.vllm_python:
        parser.error("--vllm-python (or TOKEN_ECONOMY_VLLM_PYTHON) is required")

    record = bench_record(args.vllm_python)
    print(
        f"record(): {record['plugin_us']:.2f} us median per call "
        f"(baseline, an empty stat logger: {record['empty_us']:.2f} us); errors {record['errors']}"
    )
    thread = bench_thread(args.seconds)
    print(
        f"plugin thread: {thread['plugin_percent']:.3f} % of one core, {thread['per_round_ms']:.3f} ms a round "
        f"(baseline, a thread waking as often: {thread['idle_thread_percent']:.4f} %)"
    )
    reads = bench_reads(args.vllm_python, args.reads)
    file_ms = max(reads["file_ms_per_read"], reads["resolution_ms_per_read"])
    below = "<= " if reads["file_ms_per_read"] <= reads["resolution_ms_per_read"] else ""
    print(
        f"vLLM API-server CPU per read: full page ({reads['page_bytes']} B) {reads['page_ms_per_read']:.2f} ms, "
        f"snapshot file ({reads['file_bytes']} B) {below}{file_ms:.3f} ms "
        f"(page/file >= {reads['page_ms_per_read'] / file_ms:.0f}x; baseline, the server with the plugin "
        f"and no reader: {reads['idle_percent_of_core']:.2f} % of a core)"
    )
    print("targets: record() <= 20 us; plugin thread <= 0.2 % of one core")
    ok = record["plugin_us"] <= 20 and thread["plugin_percent"] <= 0.2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
