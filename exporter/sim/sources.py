"""The simulator behind the exporter's source interfaces, and over HTTP.

`SimVllmSource.read()` (and `read_text()`) and `SimEnergySource.read()` return exactly what
`VllmSource` and `NvmlEnergySource` return (a `VllmSnapshot` from the real page parser on the
rendered page, or the page's text; an `EnergySnapshot` of cumulative NVML counters), or raise
`SourceError` as they do, for the simulation's state at its current virtual time; the snapshots
are stamped with that time. They do not move the clock: the caller advances the simulation
between ticks (virtual-time mode), or a `RealTimeDriver` advances it to the wall clock before
each read (real-time mode).

`serve_metrics()` serves the current page at /metrics (and 200 at /health) on 127.0.0.1 with a
small threaded `http.server`; while vLLM is down (a simulated restart) it drops connections
without answering, as a dead server would refuse them.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from exporter.attribution.readings import EnergySnapshot, GpuIdentity, GpuReading, VllmSnapshot
from exporter.sim.run import Simulation
from exporter.sources.errors import SourceError
from exporter.sources.vllm_page import parse

COUNTER = "counter"


class RealTimeDriver:
    """Keeps a simulation in step with a clock: virtual time = `speed` x seconds since `start()`
    (or construction), offset by where the simulation stood then."""

    def __init__(self, sim: Simulation, speed: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.sim = sim
        self.speed = speed
        self._clock = clock
        self._wall0 = clock()
        self._virtual0 = sim.now

    def sync(self) -> float:
        """Advance the simulation to the present; returns its virtual time."""
        with self.sim.lock:
            target = self._virtual0 + (self._clock() - self._wall0) * self.speed
            if target > self.sim.now:
                self.sim.advance_to(target)
            return self.sim.now


class SimVllmSource:
    """vLLM's page, rendered and parsed with the exporter's own parser.

    `read_text()` is `VllmSource.read_text()`: the page's text and its time, for the exporter's
    `WorkReader`, which takes the plugin's families from it where the simulation has the plugin
    (`WorkReader(SimVllmSource(sim))` is the exporter's own road to them). `read()` parses vLLM's
    own families alone, whatever else the page carries."""

    def __init__(self, sim: Simulation, driver: RealTimeDriver | None = None) -> None:
        self.sim = sim
        self.driver = driver

    def read(self) -> VllmSnapshot:
        return parse(*self.read_text())

    def read_text(self) -> tuple[str, float]:
        with self.sim.lock:
            if self.driver is not None:
                self.driver.sync()
            if not self.sim.vllm_up:
                raise SourceError("connection", "connection refused (simulated vLLM restart)")
            return self.sim.page(), self.sim.now

    def close(self) -> None:
        pass


class SimEnergySource:
    """NVML's total-energy counters of the simulated GPUs (method "counter").

    Injected faults, from the simulation's `Faults`, drawn from this source's own seeded random
    stream: `energy_read_error_rate` raises SourceError("nvml_error"); `nvml_error_rate` fails
    one GPU's reading (energy None, error "nvml_error"), the others still read. A failed read
    loses nothing: the counter carries the energy into the next good one."""

    def __init__(self, sim: Simulation, driver: RealTimeDriver | None = None, seed: int | None = None) -> None:
        self.sim = sim
        self.driver = driver
        self._rng = random.Random(f"{sim.seed if seed is None else seed}/energy-reads")
        name = f"NVIDIA {sim.gpu.key} (simulated)"
        self._identities = [
            GpuIdentity(i, f"GPU-5e5e5e5e-0000-4000-8000-{sim.seed % 10**6:06d}{i:06d}", name) for i in range(sim.gpus)
        ]

    @property
    def gpus(self) -> list[GpuIdentity]:
        return list(self._identities)

    @property
    def methods(self) -> dict[int, str]:
        return {i: COUNTER for i, _, _ in self._identities}

    def read(self) -> EnergySnapshot:
        sim = self.sim
        faults = sim.faults
        with sim.lock:
            if self.driver is not None:
                self.driver.sync()
            if faults.energy_read_error_rate and self._rng.random() < faults.energy_read_error_rate:
                raise SourceError("nvml_error", "injected NVML failure")
            now = sim.now
            readings = []
            for i, uuid, name in self._identities:
                if faults.nvml_error_rate and self._rng.random() < faults.nvml_error_rate:
                    readings.append(GpuReading(i, uuid, name, None, None, COUNTER, "nvml_error"))
                    continue
                joules = sim.meter.counter_mj(i, now, sim.energy_at) / 1000.0
                watts = sim.meter.power_watts(i, now, sim.energy_at)
                readings.append(GpuReading(i, uuid, name, joules, watts, COUNTER))
            return EnergySnapshot(timestamp=now, gpus=tuple(readings), modelled=False, origin="simulator")

    def close(self) -> None:
        pass


class MetricsServer:
    """A running page server; `url` is its base URL. Close it (or use it as a context manager)."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        host, port = httpd.server_address[:2]
        self.port = int(port)
        self.url = f"http://{host!s}:{port}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(
    sim: Simulation, port: int = 0, driver: RealTimeDriver | None = None, host: str = "127.0.0.1"
) -> MetricsServer:
    """Serve the simulation's page; with a driver, advance it to the wall clock on each request."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            with sim.lock:
                if driver is not None:
                    driver.sync()
                up = sim.vllm_up
                body = sim.page().encode() if up and path == "/metrics" else b""
            if not up:
                self.close_connection = True  # drop it unanswered, as a dead server would
                return
            if path == "/metrics":
                self._send(200, body, "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/health":
                self._send(200, b"", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="sim-metrics-server", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread)


__all__ = ["MetricsServer", "RealTimeDriver", "SimEnergySource", "SimVllmSource", "serve_metrics"]
