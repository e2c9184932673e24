"""The real exporter process under attack, one class at a time, while a legitimate scraper
scrapes /metrics every 100 ms over keep-alive (as Prometheus does, with its headers and gzip):
the exporter must stay up, answer the scraper within 5 ms at p99, keep every `_total` counter
finite and monotonic, keep the energy classes equal to the measured energy on every scrape,
count each upstream fault under its reason, and keep its memory bounded.

Three processes on 127.0.0.1 (free ports), each stopped by its PID:

- the exporter, `python -m exporter run` with `--energy-source dcgm`: its energy is measured, read
  from a stand-in dcgm-exporter serving a real dcgm-exporter page (tests/fixtures/dcgm) whose
  energy counter rises at 300 W a GPU, so conservation is checked on measured joules;
- the adversary (this module with `--adversary`): the stand-in dcgm-exporter, a hostile vLLM
  server serving a real vLLM 0.32 page (tests/fixtures) whose counters rise with time, spoiled
  per class, and the hostile clients of the exporter's own HTTP server; told which class to play
  on its stdin;
- this process: the legitimate scraper, the invariant checks and the RSS samples (VmRSS of the
  exporter from /proc every second).

The first and the last rows are the same scraper with no attack, in the same run: the baseline.

    python -m benchmarks.bench_hostile [--seconds 20] [--quick] [--classes a,b,...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import http.client
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
VLLM_FIXTURE = REPO / "tests" / "fixtures" / "vllm-0.32-cpu-metrics-under-load.txt"
DCGM_FIXTURE = REPO / "tests" / "fixtures" / "dcgm" / "h100-node-pod-mapping.txt"
GPU = "GPU-4c0fcb2a-3a1f-6d2e-9b7c-0e5d8a41f2b3"  # GPU 0 of the DCGM fixture
WATTS = 300.0  # what each of the fixture's GPUs draws, as its energy counter says
PAGE_CAP = 8 * 1024 * 1024  # the exporter's default --vllm-max-response-bytes
P99_BOUND_MS = 5.0
SCRAPE_EVERY = 0.1
SCRAPE_TIMEOUT = 10.0  # Prometheus's default: a slower answer is a failed scrape
# What Prometheus 3 sends on every scrape.
SCRAPE_HEADERS = {
    "User-Agent": "Prometheus/3.5.0",
    "Accept": "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "Accept-Encoding": "gzip",
    "X-Prometheus-Scrape-Timeout-Seconds": "10",
}

BASELINE = "baseline"
UPSTREAM = (
    "hostile_values",  # +Inf, -Inf, NaN, 1e308, negative counter values
    "decrease",  # every other page's counters at half, no restart
    "duplicate_series",  # a counter given twice with different values
    "truncated",  # the page cut mid-number, no final line feed
    "trickle",  # one byte every 0.5 s
    "stall",  # the request read, never answered
    "name_flood",  # 500 new model names a page
    "http_500",
    "oversized",  # > 8 MiB, with and without Content-Length
)
CLIENTS = (
    "idle_connections",  # 500 connections held open, reopened when closed
    "slowloris",  # 200 heads, one byte a second
    "accept_variety",  # a new Accept version= value every request
    "smuggling",  # request bodies, pipelined and smuggled requests, duplicate framing
    "bare_lf_http09",  # bare-LF lines and HTTP/0.9 requests
)
CLASSES = (BASELINE, *UPSTREAM, *CLIENTS)
# The source_errors_total reasons each upstream class must move (the exporter's vLLM source).
EXPECTED_REASONS: dict[str, frozenset[str]] = {
    "hostile_values": frozenset({"bad_value"}),
    "decrease": frozenset({"counter_decrease"}),
    "duplicate_series": frozenset({"duplicate_series"}),
    "truncated": frozenset({"truncated"}),
    "trickle": frozenset({"timeout"}),
    "stall": frozenset({"timeout"}),
    "name_flood": frozenset({"model_limit"}),
    "http_500": frozenset({"http_status"}),
    "oversized": frozenset({"too_large"}),
}
HOSTILE_VALUES = ("+Inf", "-Inf", "NaN", "1e308", "-5.0", "1.7976931348623157e308")


# --- the pages (pure; tests/unit/benchmarks/test_bench_hostile.py) ---

# The counters of the fixture's page that move with time, per second of the engine's life.
_RATES = {
    "vllm:prompt_tokens_total": 400.0,
    'vllm:prompt_tokens_by_source_total{engine="0",model_name="tiny-llama",source="local_compute"}': 300.0,
    'vllm:prompt_tokens_by_source_total{engine="0",model_name="tiny-llama",source="local_cache_hit"}': 100.0,
    "vllm:prompt_tokens_cached_total": 100.0,
    "vllm:generation_tokens_total": 150.0,
    "vllm:iteration_tokens_total_count": 40.0,
    "vllm:iteration_tokens_total_sum": 550.0,
}
COUNTERS = (
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_cached_total",
    "vllm:iteration_tokens_total_count",
)


@dataclass(frozen=True)
class VllmPage:
    """vLLM 0.32's page (a real one, under load) as a template: the counters that move are
    rendered from the engine's age in seconds, everything else is the fixture's."""

    lines: tuple[str, ...]
    moving: Mapping[int, tuple[str, float, float]]  # line index -> (sample key, value at 0, rate)

    @classmethod
    def load(cls, text: str) -> VllmPage:
        lines = tuple(text.rstrip("\n").split("\n"))
        moving = {}
        for i, line in enumerate(lines):
            key, _, value = line.rpartition(" ")
            name = key.split("{", 1)[0]
            for wanted, rate in _RATES.items():
                if key == wanted or (name == wanted and "{" in key and "source=" not in key):
                    moving[i] = (key, float(value), rate)
        return cls(lines, moving)

    def values(self, age: float) -> dict[str, float]:
        """The moving counters at `age`, by family name (the first series of each)."""
        out: dict[str, float] = {}
        for key, start, rate in self.moving.values():
            out.setdefault(key.split("{", 1)[0], start + rate * age)
        return out

    def render(self, age: float, scale: float = 1.0, override: Mapping[str, str] | None = None) -> list[str]:
        """The page's lines at `age` seconds, every moving counter times `scale`; `override`
        replaces the value text of the samples it names (by family name)."""
        lines = list(self.lines)
        for i, (key, start, rate) in self.moving.items():
            name = key.split("{", 1)[0]
            value = override[name] if override and name in override else repr((start + rate * age) * scale)
            lines[i] = f"{key} {value}"
        return lines


def page_text(lines: Iterable[str]) -> str:
    return "\n".join(lines) + "\n"


def spoiled_page(page: VllmPage, attack: str, age: float, n: int) -> str:
    """The `n`-th page served during `attack` (a class of UPSTREAM with a page, or BASELINE)."""
    if attack == "hostile_values":
        family = COUNTERS[n % len(COUNTERS)]
        return page_text(page.render(age, override={family: HOSTILE_VALUES[n % len(HOSTILE_VALUES)]}))
    if attack == "decrease":  # one counter at a time, so it is no restart (that needs every one down)
        family = COUNTERS[(n // 2) % len(COUNTERS)]
        return page_text(page.render(age, override={family: repr(page.values(age)[family] * 0.5)} if n % 2 else None))
    if attack == "duplicate_series":
        lines = page.render(age)
        for i, line in enumerate(lines):
            if line.startswith("vllm:generation_tokens_total{"):
                key, _, value = line.rpartition(" ")
                lines.insert(i + 1, f"{key} {float(value) * 0.7 + 1.0!r}")
                break
        return page_text(lines)
    if attack == "truncated":
        text = page_text(page.render(age))
        at = text.index("vllm:generation_tokens_total{")
        value_at = text.index("} ", at) + 2
        return text[: value_at + 2]  # the first two digits of the counter: a smaller number
    if attack == "name_flood":
        lines = page.render(age)
        for k in range(500):
            model = f'model_name="flood-{n}-{k}",engine="0"'
            lines += [
                f"vllm:prompt_tokens_total{{{model}}} {10.0 + n}",
                f"vllm:generation_tokens_total{{{model}}} {5.0 + n}",
                f"vllm:iteration_tokens_total_count{{{model}}} {2.0 + n}",
            ]
        return page_text(lines)
    if attack == "oversized":
        text = page_text(page.render(age))
        pad = "# " + "x" * 1021 + "\n"  # comment lines: a parser skips them, the cap must not
        return text + pad * (PAGE_CAP // len(pad) + 64)
    return page_text(page.render(age))


def dcgm_page(template: str, age: float) -> str:
    """dcgm-exporter's page with every GPU's energy counter (mJ, an integer) at `age` seconds of
    WATTS from its fixture value."""

    def moved(match: re.Match[str]) -> str:
        return f"{match.group(1)} {int(float(match.group(2)) + WATTS * age * 1000)}"

    return re.sub(r"^(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION\{.*\}) (\S+)$", moved, template, flags=re.M)


# --- the invariants and the figures (pure) ---

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def counters_of(families: Iterable[object]) -> Samples:
    """Every `_total` sample of the counter families parsed by prometheus_client."""
    out: Samples = {}
    for family in families:
        if getattr(family, "type", None) != "counter":
            continue
        for sample in getattr(family, "samples", ()):
            if sample.name.endswith("_total"):
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def violations(before: Samples, now: Samples) -> list[str]:
    """What is wrong with a scrape: a counter not finite, one below the last value it was seen
    with (`before`: every series seen so far, a series that left the page included), or energy
    classes that do not add up to the measured energy."""
    found = []
    for key, value in now.items():
        if not math.isfinite(value):
            found.append(f"{key[0]} {dict(key[1])} not finite: {value}")
        elif key in before and value < before[key]:
            found.append(f"{key[0]} {dict(key[1])} decreased: {before[key]} -> {value}")
    classes = sum(v for (name, _), v in now.items() if name == "token_economy_energy_joules_total")
    measured = sum(v for (name, _), v in now.items() if name == "token_economy_gpu_energy_joules_total")
    if not math.isclose(classes, measured, rel_tol=1e-6, abs_tol=1e-6):
        found.append(f"energy not conserved: classes {classes!r} J, measured {measured!r} J")
    return found


def gone(before: Samples, now: Samples) -> set[str]:
    """The families of counter series on the previous scrape that are not on this one."""
    return {key[0] for key in before.keys() - now.keys()}


def errors_by_reason(samples: Samples, source: str = "vllm") -> dict[str, float]:
    """The source's `source_errors_total` by reason, and its `counter_resets_total` as `reset`."""
    found = {
        dict(labels)["reason"]: value
        for (name, labels), value in samples.items()
        if name == "token_economy_source_errors_total" and dict(labels).get("source") == source
    }
    for (name, labels), value in samples.items():
        if name == "token_economy_counter_resets_total" and dict(labels).get("source") == source:
            found["reset"] = value
    return found


def moved_reasons(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, int]:
    return {
        reason: round(value - before.get(reason, 0.0))
        for reason, value in after.items()
        if value > before.get(reason, 0.0)
    }


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by the nearest-rank rule; NaN with no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Phase:
    """One class's run: the legitimate scraper's latencies and failures, the invariant
    violations it saw, the exporter's error reasons that moved, and its largest RSS."""

    attack: str
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    first_failure: str = ""
    violations: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    seen: str = ""  # what the hostile client got back (its classes only)
    rss_kib: list[int] = field(default_factory=list)
    exporter_up: bool = True
    series_gone: set[str] = field(default_factory=set)  # counter families with a series that left the page
    after_tick: list[bool] = field(default_factory=list)  # by scrape: the first to see a new tick

    def split(self) -> tuple[list[float], list[float]]:
        """The latencies of the scrapes that were the first to see a new tick (the exposition is
        rendered again then, while the tick's thread holds the GIL) and of the others."""
        fresh = [t for t, new in zip(self.latencies, self.after_tick, strict=True) if new]
        cached = [t for t, new in zip(self.latencies, self.after_tick, strict=True) if not new]
        return fresh, cached

    def missing_reasons(self) -> frozenset[str]:
        return EXPECTED_REASONS.get(self.attack, frozenset()) - self.reasons.keys()


HEADER = (
    "class",
    "legit scrapes",
    "p50 ms",
    "p99 ms",
    "failed scrapes",
    "invariant violations",
    "reasons counted",
    "max RSS MiB",
)


def row(phase: Phase) -> list[str]:
    p50, p99 = (percentile(phase.latencies, q) * 1e3 for q in (0.5, 0.99))
    reasons = ", ".join(f"{reason} +{n}" for reason, n in sorted(phase.reasons.items()))
    if phase.missing_reasons():
        reasons += (", " if reasons else "") + "MISSING " + ", ".join(sorted(phase.missing_reasons()))
    if phase.seen:
        reasons += ("; " if reasons else "") + phase.seen
    failed = str(phase.failures) + (f" ({phase.first_failure})" if phase.failures else "")
    if not phase.exporter_up:
        failed += " EXPORTER DOWN"
    rss = f"{max(phase.rss_kib) / 1024:.1f}" if phase.rss_kib else "nan"
    return [
        phase.attack,
        str(len(phase.latencies)),
        f"{p50:.2f}",
        f"{p99:.2f}",
        failed,
        str(len(phase.violations)),
        reasons or "-",
        rss,
    ]


def table(phases: Sequence[Phase]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row(phase)) + " |" for phase in phases]
    return "\n".join(lines)


def passed(phase: Phase) -> bool:
    return (
        phase.exporter_up
        and not phase.failures
        and not phase.violations
        and not phase.missing_reasons()
        and percentile(phase.latencies, 0.99) * 1e3 <= P99_BOUND_MS
    )


# --- the adversary: a hostile vLLM, a stand-in dcgm-exporter, hostile clients (child process) ---


class Adversary:
    def __init__(self, exporter_port: int) -> None:
        self.exporter_port = exporter_port
        self.attack = BASELINE
        self.started = time.monotonic()
        self.pages = 0
        self.page = VllmPage.load(VLLM_FIXTURE.read_text())
        self.dcgm_template = DCGM_FIXTURE.read_text()
        self.seen: dict[str, int] = {}
        self.clients: list[asyncio.Task[None]] = []

    def age(self) -> float:
        return time.monotonic() - self.started

    def note(self, what: str) -> None:
        self.seen[what] = self.seen.get(what, 0) + 1

    # -- the servers --

    async def vllm(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            while await _read_head(reader):
                attack = self.attack
                self.pages += 1
                if attack == "stall":
                    await reader.read()  # until the exporter gives up and closes
                    return
                if attack == "http_500":
                    await _answer(writer, b"internal server error\n", status=500)
                    continue
                text = spoiled_page(self.page, attack, self.age(), self.pages).encode()
                if attack == "trickle":
                    await _answer(writer, b"", length=len(text))
                    for i in range(min(len(text), 240)):  # a 2-minute cap, long past any deadline
                        writer.write(text[i : i + 1])
                        await writer.drain()
                        await asyncio.sleep(0.5)
                        if writer.is_closing() or reader.at_eof():
                            return
                    return
                if attack == "oversized" and self.pages % 2:
                    await _chunked(writer, text)
                    continue
                await _answer(writer, text)
        writer.close()

    async def dcgm(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            while await _read_head(reader):
                await _answer(writer, dcgm_page(self.dcgm_template, self.age()).encode())
        writer.close()

    # -- the hostile clients of the exporter's HTTP server --

    def play(self, attack: str) -> None:
        for task in self.clients:
            task.cancel()
        self.clients = []
        self.seen = {}
        self.attack = attack
        if attack == "idle_connections":
            self.clients = [asyncio.create_task(self._hold(i, b"")) for i in range(500)]
        elif attack == "slowloris":
            self.clients = [
                asyncio.create_task(self._hold(i, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")) for i in range(200)
            ]
        elif attack == "accept_variety":
            self.clients = [asyncio.create_task(self._accept_variety(i)) for i in range(4)]
        elif attack == "smuggling":
            self.clients = [asyncio.create_task(self._each(i, SMUGGLING)) for i in range(4)]
        elif attack == "bare_lf_http09":
            self.clients = [asyncio.create_task(self._each(i, MALFORMED)) for i in range(4)]

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(HOST, self.exporter_port)

    async def _hold(self, i: int, head: bytes) -> None:
        """A connection held open, sending `head` and then a byte a second; reopened when closed."""
        await asyncio.sleep(i * 0.002)
        while True:
            try:
                reader, writer = await self._connect()
            except OSError:
                self.note("connect failed")
                await asyncio.sleep(0.1)
                continue
            self.note("opened")
            try:
                writer.write(head)
                while not reader.at_eof():
                    with contextlib.suppress(TimeoutError):
                        data = await asyncio.wait_for(reader.read(65536), 1.0)
                        if data:
                            self.note(_status(data))
                        continue
                    if head:
                        writer.write(b"a")
                        await writer.drain()
                self.note("closed by the exporter")
            except ConnectionError:
                self.note("closed by the exporter")
            finally:
                writer.close()
            await asyncio.sleep(0.05)

    async def _accept_variety(self, i: int) -> None:
        """Keep-alive requests, each with an Accept version never sent before: 50 a second a client."""
        n = 0
        while True:
            try:
                reader, writer = await self._connect()
                while True:
                    n += 1
                    version = f"{i}.{n}.{random.randrange(10**6)}"
                    writer.write(
                        f"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain;version={version},"
                        f"application/openmetrics-text;version={n}.{i};q=0.{n % 9 + 1}\r\n\r\n".encode()
                    )
                    await writer.drain()
                    self.note(_status(await _read_response(reader)))
                    await asyncio.sleep(0.02)
            except (OSError, asyncio.IncompleteReadError, ValueError) as err:
                self.note(type(err).__name__)
                await asyncio.sleep(0.05)

    async def _each(self, i: int, requests: Sequence[bytes]) -> None:
        """Each request on a fresh connection, read until the exporter closes it: 25 a second a client."""
        n = i
        while True:
            n += 1
            try:
                reader, writer = await self._connect()
                writer.write(requests[n % len(requests)])
                await writer.drain()
                answer = await asyncio.wait_for(reader.read(1 << 20), 3.0)
                statuses = re.findall(rb"HTTP/1\.1 (\d{3})", answer)
                for status in statuses or [b"no answer"]:
                    self.note(status.decode())
                if any(marker in answer for marker in (b"SMUGGLED", b"/admin")):
                    self.note("ECHOED")
                writer.close()
            except (OSError, TimeoutError) as err:
                self.note(type(err).__name__)
            await asyncio.sleep(0.04)


SMUGGLING = (
    b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 37\r\n\r\nGET /admin HTTP/1.1\r\nX-SMUGGLED: 1\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 37\r\n\r\n"
    b"GET /admin HTTP/1.1\r\nX: 1\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"25\r\nGET /admin HTTP/1.1\r\nX-SMUGGLED: 1\r\n\r\n\r\n0\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\n X-Folded: SMUGGLED\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Evil: a\rSMUGGLED: 1\r\n\r\n",
)
MALFORMED = (
    b"GET /metrics\r\n",  # HTTP/0.9
    b"GET /metrics\n",
    b"GET /metrics HTTP/1.1\nHost: x\n\n",  # bare LF throughout
    b"GET /metrics HTTP/1.1\r\nHost: x\n\r\n",  # a bare LF in a header line
    b"GET /metrics HTTP/1.0\r\nHost: x\r\n\n",
    b"\n\n\nGET /metrics HTTP/1.1\r\n\r\n",
    b"GET  /metrics HTTP/1.1\r\n\r\n",
    b"get /metrics HTTP/1.1\r\n\r\n",
    b"GET /metrics HTTP/2.0\r\n\r\n",
)


def _status(data: bytes) -> str:
    match = re.match(rb"HTTP/1\.1 (\d{3})", data)
    return match.group(1).decode() if match else "other bytes"


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    return head


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    match = re.search(rb"(?i)content-length: *(\d+)", head)
    if match:
        await reader.readexactly(int(match.group(1)))
    return head


async def _answer(writer: asyncio.StreamWriter, body: bytes, status: int = 200, length: int | None = None) -> None:
    reason = "OK" if status == 200 else "Internal Server Error"
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n".encode()
        + body
    )
    await writer.drain()


async def _chunked(writer: asyncio.StreamWriter, body: bytes) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
    for start in range(0, len(body), 65536):
        chunk = body[start : start + 65536]
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def _adversary(vllm_port: int, dcgm_port: int, exporter_port: int) -> None:
    adversary = Adversary(exporter_port)
    servers = [
        await asyncio.start_server(adversary.vllm, HOST, vllm_port, limit=1 << 16),
        await asyncio.start_server(adversary.dcgm, HOST, dcgm_port, limit=1 << 16),
    ]
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, _context: None)  # hung-up clients are the point here
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "quit")

    threading.Thread(target=read_stdin, daemon=True).start()
    print("ready", flush=True)
    while (command := await commands.get()) != "quit":
        if command == "stats":
            print(json.dumps(adversary.seen), flush=True)
        else:
            adversary.play(command)
            print("playing", command, flush=True)
    for server in servers:
        server.close()


# --- the run (this process: the exporter, the adversary, the legitimate scraper) ---


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> int | None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


class Scraper:
    """The legitimate scraper: Prometheus's request over one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None
        self.last: Samples = {}  # the latest scrape's counters
        self.highest: Samples = {}  # every counter series seen in the run, at its latest value
        self.tick = b""  # the last tick's timestamp on the latest scrape

    def seen(self, now: Samples) -> None:
        self.last = now
        self.highest.update(now)

    def scrape(self) -> bytes:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=SCRAPE_TIMEOUT)
        try:
            self.conn.request("GET", "/metrics", headers=SCRAPE_HEADERS)
            response = self.conn.getresponse()
            body = response.read()
        except Exception:
            self.conn.close()
            self.conn = None
            raise
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        return gzip.decompress(body) if response.getheader("Content-Encoding") == "gzip" else body

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def last_tick(body: bytes) -> bytes:
    match = re.search(rb"^token_economy_last_tick_timestamp_seconds (\S+)", body, re.M)
    return match.group(1) if match else b""


def parse_exposition(body: bytes) -> Samples:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    return counters_of(text_string_to_metric_families(body.decode()))


def run_phase(
    attack: str, seconds: float, scraper: Scraper, exporter: subprocess.Popen[bytes], adversary: AdversaryProcess
) -> Phase:
    phase = Phase(attack)
    adversary.send(attack)
    reasons_before = errors_by_reason(scraper.last)
    started = time.monotonic()
    next_at = started
    n = 0
    while time.monotonic() - started < seconds:
        next_at += SCRAPE_EVERY
        t0 = time.perf_counter()
        try:
            body = scraper.scrape()
        except Exception as err:
            phase.failures += 1
            phase.first_failure = phase.first_failure or f"{type(err).__name__}: {err}"[:80]
        else:
            phase.latencies.append(time.perf_counter() - t0)
            tick = last_tick(body)
            phase.after_tick.append(tick != scraper.tick)
            scraper.tick = tick
            now = parse_exposition(body)
            phase.violations += violations(scraper.highest, now)
            phase.series_gone |= gone(scraper.last, now)
            scraper.seen(now)
        if n % 10 == 0:
            rss = rss_kib(exporter.pid)
            if rss is not None:
                phase.rss_kib.append(rss)
        n += 1
        time.sleep(max(0.0, next_at - time.monotonic()))
    phase.exporter_up = exporter.poll() is None
    if attack in UPSTREAM:
        phase.reasons = moved_reasons(reasons_before, errors_by_reason(scraper.last))
    elif attack in CLIENTS:
        seen = adversary.stats()
        phase.seen = "client got " + ", ".join(f"{k}: {v}" for k, v in sorted(seen.items()))
    return phase


class AdversaryProcess:
    """The adversary child, driven over its stdin."""

    def __init__(self, vllm_port: int, dcgm_port: int, exporter_port: int) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.bench_hostile",
                "--adversary",
                f"{vllm_port},{dcgm_port},{exporter_port}",
            ],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the adversary did not start")

    def send(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stats(self) -> dict[str, int]:
        return dict(json.loads(self.send("stats")))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        stop(self.proc)


def wait_ready(port: int, exporter: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exporter.poll() is not None:
            raise RuntimeError(f"the exporter exited {exporter.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        time.sleep(0.2)
    raise RuntimeError(f"the exporter was not ready in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def run(seconds: float, classes: Sequence[str]) -> list[Phase]:
    vllm_port, dcgm_port, exporter_port = free_port(), free_port(), free_port()
    adversary = AdversaryProcess(vllm_port, dcgm_port, exporter_port)
    workdir = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    log_path = workdir / "exporter.log"
    log = log_path.open("wb")
    exporter = subprocess.Popen(
        [
            sys.executable, "-m", "exporter", "run",
            "--vllm-url", f"http://{HOST}:{vllm_port}",
            "--listen-address", f"{HOST}:{exporter_port}",
            "--interval", "1",
            "--energy-source", "dcgm",
            "--dcgm-url", f"http://{HOST}:{dcgm_port}/metrics",
            "--gpus", GPU,
            "--max-models", "8",
        ],
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    scraper = Scraper(exporter_port)
    phases = []
    try:
        wait_ready(exporter_port, exporter, log_path)
        time.sleep(2.5)  # a few ticks of normal work before the first row
        scraper.seen(parse_exposition(scraper.scrape()))
        for attack in [*classes, f"{BASELINE} (after)"] if BASELINE in classes else classes:
            name = attack.split(" ")[0]
            phase = run_phase(name, seconds, scraper, exporter, adversary)
            phase.attack = attack
            phases.append(phase)
            print(f"  {row(phase)}", file=sys.stderr, flush=True)
            if not phase.exporter_up:
                break
            adversary.send(BASELINE)
            time.sleep(1.5)  # the next class starts from a page that reads
            with contextlib.suppress(Exception):
                scraper.seen(parse_exposition(scraper.scrape()))
    finally:
        scraper.close()
        code = stop(exporter)
        adversary.close()
        log.close()
        if code not in (0, None):
            print(f"the exporter exited {code}; its log: {log_path}", file=sys.stderr)
    return phases


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0, help="per class (default 20)")
    parser.add_argument("--quick", action="store_true", help="3 s per class")
    parser.add_argument("--classes", default=",".join(CLASSES), help="comma-separated, of: " + ", ".join(CLASSES))
    parser.add_argument("--adversary", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.adversary:
        vllm_port, dcgm_port, exporter_port = (int(p) for p in args.adversary.split(","))
        asyncio.run(_adversary(vllm_port, dcgm_port, exporter_port))
        return 0
    classes = [c for c in args.classes.split(",") if c]
    unknown = set(classes) - set(CLASSES)
    if unknown:
        parser.error(f"unknown classes: {', '.join(sorted(unknown))}")
    seconds = 3.0 if args.quick else args.seconds
    # Stopped by a signal, the run still stops the exporter and the adversary (its `finally`),
    # also where a background start left SIGINT ignored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"{len(classes)} classes, {seconds:g} s each, a legitimate scrape every {SCRAPE_EVERY * 1e3:.0f} ms, "
          f"{os.cpu_count()} CPUs", file=sys.stderr)  # fmt: skip
    phases = run(seconds, classes)
    print(table(phases))
    failed = [phase.attack for phase in phases if not passed(phase)]
    slow = [p.attack for p in phases if percentile(p.latencies, 0.99) * 1e3 > P99_BOUND_MS]
    print()
    print(f"p99 over {P99_BOUND_MS:g} ms: {', '.join(slow) or 'none'}")
    print(f"classes failing an invariant, a scrape or a reason: {', '.join(set(failed) - set(slow)) or 'none'}")
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} CPUs)")
    print("p99 ms of the scrapes first to see a new tick (n) | of the others (n) | RSS MiB first -> last:")
    for phase in phases:
        fresh, cached = phase.split()
        rss = " -> ".join(f"{kib / 1024:.1f}" for kib in phase.rss_kib[:1] + phase.rss_kib[-1:])
        print(
            f"  {phase.attack}: {percentile(fresh, 0.99) * 1e3:.2f} ({len(fresh)}) | "
            f"{percentile(cached, 0.99) * 1e3:.2f} ({len(cached)}) | {rss}"
        )
    for phase in phases:
        for violation in phase.violations[:3]:
            print(f"  {phase.attack}: {violation}")
        if phase.series_gone:
            print(
                f"  {phase.attack}: counter series left the page (no decrease): {', '.join(sorted(phase.series_gone))}"
            )
    return 1 if set(failed) - set(slow) else 0


if __name__ == "__main__":
    sys.exit(main())
