"""Fuzzing, with Hypothesis, of what reads bytes the exporter does not control: the page parsers
(vLLM's page, the plugin's families, dcgm-exporter's page), the core behind the vLLM parser, and
the HTTP server's request handling. Each target is a property over generated inputs, grammar-based
(real family names, labels with escapes, hostile numbers, timestamps, comments, blank lines,
pipelined requests, smuggling framings) and then mutated byte by byte, plus arbitrary text.

Invariants:

- a parser returns its reading (or None where it may) or raises SourceError, nothing else;
  every number in a reading is finite and in bounds (counters 0..2^53, vLLM's KV usage 0..1, a
  KV capacity 0..2^40); a field given by a series that appears twice on the page is left out
  (unknown), never one of the two values; no two engines of a reading share a name;
- the core, ticked over a sequence of such pages: every exported `_total` counter stays finite
  and never decreases, and the energy classes add up to the measured energy, on every tick;
- the HTTP request path (the server's own `_read_request` over a stream fed with the bytes, no
  socket, then its `_respond`, without TLS or basic auth): raises nothing but BadRequest (answered and closed) or an
  incomplete read (the client went); every answer's status is one the server may give; its head
  is made only of the server's own lines (no request byte is echoed into it); the metrics
  cache holds at most its few formats.

Run by `python -m benchmarks.fuzz --cases 100000` (each target that many cases; zero crashes
expected); the fast subset runs in CI as tests/unit/test_fuzz_parsers.py and test_fuzz_http.py.
Nothing here opens a socket or starts a process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import logging
import math
import random
import re
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import structlog
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter import __version__
from exporter.attribution.attributor import TickResult
from exporter.attribution.counters import MAX_COUNTER
from exporter.attribution.readings import EnergySnapshot, GpuReading, VllmSnapshot
from exporter.catalogue import BUILD_LABELS
from exporter.collector import LedgerCollector
from exporter.landing import HEADERS as LANDING_HEADERS
from exporter.ledger import Ledger, TickRecord
from exporter.loop import CollectionLoop
from exporter.server import (
    FORMATS,
    MAX_HEAD,
    BadRequest,
    HttpServer,
    MetricsCache,
    Request,
    Routes,
    _response,
    metrics_format,
    wants_gzip,
)
from exporter.sources import dcgm_page, plugin_page, vllm_page
from exporter.sources import plugin_families as pf
from exporter.sources.errors import SourceError
from exporter.webconfig import NO_WEB_CONFIG, parse_basic

# --- the grammar ---------------------------------------------------------------------------

T = TypeVar("T")

HOSTILE_NUMBERS = (
    "+Inf", "-Inf", "Inf", "inf", "NaN", "nan", "-0", "0", "1e308", "-1e308", "1.7976931348623157e308", "1e309",
    "9007199254740992", "9007199254740993", "9.9e15", "-5", "-0.0", "0x10", "1_000", "١٢٣", "", "1e", ".", "+",
    "4.9e-324", "00012", " 12", "12abc", "9223372036854775792", "140737488355328",
)  # fmt: skip
TIMESTAMPS = ("", "", "", " 1700000000000", " -1", " NaN", " 1e400", " x")
LABEL_VALUES = ("", "m", "unknown", "0", "1", "a\\\\b", 'q\\"uote', "new\\nline", "}", "{", "=", ",", " ")
COMMENTS = (
    "",
    "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
    "# TYPE vllm:x counter",
    "#",
    "   ",
)
PIECES = ("\n", "{", "}", '"', "\\", " ", "0", "e", "#", "\x00", "é")
# What arbitrary text is drawn from without Hypothesis: mostly ASCII, and the characters that
# split lines or words in one reader and not another.
_ALPHABET = (
    [chr(c) for c in range(32, 127)] * 4
    + [chr(c) for c in range(32)]
    + ["\x7f", "\x85", "\xa0", "é", "\u2028", "\u2029", "中", "\U0001f600", "\ufeff"]
)


class Chooser(Protocol):
    """Where the grammar's choices come from: Hypothesis's draws (shrinkable, in the tests) or a
    PRNG seeded by Hypothesis (many times faster, in the benchmark)."""

    def int(self, lo: int, hi: int) -> int: ...
    def pick(self, options: Sequence[T]) -> T: ...
    def text(self, max_size: int, exclude: str = "") -> str: ...
    def binary(self, max_size: int) -> bytes: ...
    def float(self) -> float: ...


class Draws:
    def __init__(self, draw: Any) -> None:
        self._draw = draw

    def int(self, lo: int, hi: int) -> int:
        return int(self._draw(st.integers(lo, hi)))

    def pick(self, options: Sequence[T]) -> T:
        return cast(T, self._draw(st.sampled_from(options)))

    def text(self, max_size: int, exclude: str = "") -> str:
        chars = st.characters(blacklist_characters=exclude, blacklist_categories=("Cs",))
        return str(self._draw(st.text(alphabet=chars, max_size=max_size)))

    def binary(self, max_size: int) -> bytes:
        return bytes(self._draw(st.binary(max_size=max_size)))

    def float(self) -> float:
        return float(self._draw(st.floats(allow_nan=True, allow_infinity=True)))


class Seeded:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def int(self, lo: int, hi: int) -> int:
        return self._rng.randint(lo, hi)

    def pick(self, options: Sequence[T]) -> T:
        return options[self._rng.randrange(len(options))]

    def text(self, max_size: int, exclude: str = "") -> str:
        size = self._rng.randint(0, max_size)
        return "".join(c for c in self._rng.choices(_ALPHABET, k=size) if c not in exclude)

    def binary(self, max_size: int) -> bytes:
        return self._rng.randbytes(self._rng.randint(0, max_size))

    def float(self) -> float:
        return float(struct.unpack("<d", self._rng.randbytes(8))[0])  # NaNs, infinities, subnormals


def grammar(generate: Callable[..., T], *args: Any) -> st.SearchStrategy[T]:
    """The grammar as a Hypothesis strategy: every choice a draw, so a failure shrinks."""
    return st.composite(lambda draw: generate(Draws(draw), *args))()


def seeded(generate: Callable[..., T], *args: Any) -> st.SearchStrategy[T]:
    """The grammar over a PRNG whose seed Hypothesis draws: one draw a case."""
    return st.randoms(use_true_random=True).map(lambda rng: generate(Seeded(rng), *args))


def gen_number(c: Chooser) -> str:
    kind = c.int(0, 3)
    if kind == 0:
        return c.pick(HOSTILE_NUMBERS)
    if kind == 1:
        return str(c.int(0, 10**7))
    if kind == 2:
        return repr(c.float())
    return f"{c.int(0, 10**9) / 1000:.6g}"


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{name}="{value}"' for name, value in pairs) + "}" if pairs else ""


Sample = tuple[str, dict[str, str], str]  # family, labels (unescaped), the text after the labels


def gen_line(c: Chooser, families: Sequence[str], label_names: Sequence[str]) -> tuple[str, Sample]:
    """One sample's line: a family, some of the labels (values with escapes), a number, perhaps
    a timestamp."""
    family = c.pick(families)
    names = list(dict.fromkeys(c.pick(label_names) for _ in range(c.int(0, len(label_names)))))
    pairs = [(name, c.pick(LABEL_VALUES) if c.int(0, 1) else c.text(12, '"\\\n')) for name in names]
    rest = f"{c.pick((' ', ' ', chr(9), '  '))}{gen_number(c)}{c.pick(TIMESTAMPS)}"
    return f"{family}{_labels(pairs)}{rest}", (family, {n: _unescape(v) for n, v in pairs}, rest)


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


Edit = tuple[int, int, str]


def gen_edits(c: Chooser, most: int = 6) -> list[Edit]:
    return [(c.int(0, 10**6), c.int(0, 2), c.pick(PIECES)) for _ in range(c.int(0, most))]


def mutate(text: str, edits: Sequence[Edit]) -> str:
    """Each edit (position, kind, text): 0 inserts the text, 1 deletes a character, 2 replaces one."""
    for position, kind, piece in edits:
        at = position % (len(text) + 1)
        if kind == 0:
            text = text[:at] + piece + text[at:]
        elif kind == 1:
            text = text[:at] + text[at + 1 :]
        else:
            text = text[:at] + piece + text[at + 1 :]
    return text


Page = tuple[str, list[Sample], bool]


def gen_page(c: Chooser, families: Sequence[str], label_names: Sequence[str]) -> Page:
    """(text, the samples it holds, whether the text is exactly the grammar's: no mutation); one
    case in six is arbitrary text instead."""
    if c.int(0, 5) == 0:
        return c.text(300), [], False
    lines: list[str] = []
    samples: list[Sample] = []
    for _ in range(c.int(0, 14)):
        if c.int(0, 4) == 0:
            lines.append(c.pick(COMMENTS))
            continue
        line, sample = gen_line(c, families, label_names)
        lines.append(line)
        samples.append(sample)
    text = "\n".join(lines) + c.pick(("\n", "\n", "\n", "", "\r\n"))
    edits = gen_edits(c) if c.int(0, 1) else []
    return (mutate(text, edits), samples, False) if edits else (text, samples, True)


# --- the vLLM page parser --------------------------------------------------------------------

VLLM_FAMILIES = (
    *vllm_page._FIELDS,
    vllm_page._BY_SOURCE,
    vllm_page._CACHE_CONFIG,
    "vllm:num_requests_waiting_by_reason",
)
VLLM_LABELS = ("model_name", "engine", "source", "kv_cache_size_tokens", "num_gpu_blocks", "block_size")
COUNTER_FIELDS = (
    "prompt_tokens", "generation_tokens", "cached_prompt_tokens", "computed_prompt_tokens", "scheduled_prompt_tokens",
    "scheduled_decode_tokens", "prefill_steps", "kv_usage_steps", "steps", "step_tokens", "preemptions", "created",
)  # fmt: skip


class Violation(AssertionError):
    """An invariant that did not hold."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise Violation(what)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def check_engine_numbers(engine: Any, kv_bound: float | None) -> None:
    for name in COUNTER_FIELDS:
        value = getattr(engine, name)
        check(value is None or (math.isfinite(value) and 0 <= value <= MAX_COUNTER), f"{name} = {value!r}")
    usage = engine.kv_cache_usage
    check(usage is None or (math.isfinite(usage) and 0 <= usage <= (kv_bound or MAX_COUNTER)), f"kv usage {usage!r}")
    capacity = engine.kv_cache_capacity_tokens
    check(capacity is None or (math.isfinite(capacity) and 0 <= capacity <= MAX_COUNTER), f"capacity {capacity!r}")
    for name in ("requests_running", "requests_waiting"):
        value = getattr(engine, name)
        check(value is None or (math.isfinite(value) and value >= 0), f"{name} = {value!r}")


def check_vllm(text: str, samples: list[tuple[str, dict[str, str], str]], exact: bool) -> str:
    """The invariants of one parse; what happened ("reading" or the SourceError's reason)."""
    try:
        snapshot = vllm_page.parse(text, 1.0)
    except SourceError as err:
        return err.reason
    check(isinstance(snapshot, VllmSnapshot), f"returned {type(snapshot).__name__}")
    for engine in snapshot.engines:
        check_engine_numbers(engine, 1.0)
        if engine.kv_cache_capacity_tokens is not None:
            capacity = engine.kv_cache_capacity_tokens
            check(0 < capacity <= vllm_page.MAX_CAPACITY_TOKENS, f"capacity {capacity!r} outside (0, 2^40]")
    no_shared_names(snapshot.engines)
    if exact:
        _check_duplicates(snapshot, samples)
    return "reading"


def no_shared_names(engines: Sequence[Any]) -> None:
    """No two engines of a reading share (model_name, engine): the core would count them as one
    series jumping between two values. (A sample without a model_name label and one with
    model_name="unknown" did, until both parsers keyed the first as "unknown" too.)"""
    names = [(e.model_name, e.engine) for e in engines]
    shared = sorted({name for name in names if names.count(name) > 1})
    check(not shared, f"two engines share a name: {shared}")


def _check_duplicates(snapshot: VllmSnapshot, samples: list[tuple[str, dict[str, str], str]]) -> None:
    """On an unmutated page: a field given by two plausible samples of one engine is None; a
    field given by one is that sample's value."""
    given: dict[tuple[str, str, str], list[float]] = {}
    for family, labels, rest in samples:
        value = _float(rest.split()[0]) if rest.split() else None  # the value's rule: the first word
        if value is None or (family not in vllm_page._FIELDS and family != vllm_page._BY_SOURCE):
            continue
        if family == vllm_page._BY_SOURCE:
            if labels.get("source") != "local_compute":
                continue
            field_name = "computed_prompt_tokens"
        else:
            field_name = vllm_page._FIELDS[family]
        if not vllm_page._plausible(field_name, value):
            continue
        model = labels.get("model_name", "")
        given.setdefault((model or "unknown", labels.get("engine", "0"), field_name), []).append(value)
    engines = {(e.model_name, e.engine): e for e in snapshot.engines}
    for (model, engine, field_name), values in given.items():
        sample = engines.get((model, engine))
        got = None if sample is None else getattr(sample, field_name)
        if len(values) > 1:
            check(got is None, f"{field_name} of {model}/{engine} read as {got!r} from a duplicated series {values}")
        else:
            check(got == values[0], f"{field_name} of {model}/{engine} read as {got!r}, the page says {values[0]!r}")


# --- the plugin's families -------------------------------------------------------------------

PLUGIN_FAMILIES = tuple(family.name for family in pf.FAMILIES)
PLUGIN_LABELS = tuple(dict.fromkeys(label for family in pf.FAMILIES for label in family.labels))


def check_plugin(text: str) -> str:
    try:
        reading = plugin_page.parse(text, "@x")
    except SourceError as err:
        return err.reason
    if reading is None:
        return "none"
    check(isinstance(reading, plugin_page.PluginReading), f"returned {type(reading).__name__}")
    for engine in reading.engines:
        check_engine_numbers(engine, None)
    for gpu in reading.gpus or ():
        check(gpu.energy_joules is None or 0 <= gpu.energy_joules <= MAX_COUNTER, f"energy {gpu.energy_joules!r}")
        check(gpu.power_watts is None or 0 <= gpu.power_watts <= MAX_COUNTER, f"power {gpu.power_watts!r}")
        check(isinstance(gpu.index, int) and gpu.index >= 0, f"index {gpu.index!r}")
    no_shared_names(reading.engines)
    return "reading"


# --- dcgm-exporter's page --------------------------------------------------------------------

DCGM_FAMILIES = (*dcgm_page.FAMILIES, "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_X")
DCGM_LABELS = ("gpu", "UUID", "uuid", "modelName", "GPU_I_ID", "GPU_I_PROFILE", "pod", "namespace", "container")


def check_dcgm(text: str) -> str:
    try:
        parsed = dcgm_page.parse(text)
    except SourceError as err:
        return err.reason
    for sample in parsed.samples:
        blank = dcgm_page.INT64_BLANK if sample.family == dcgm_page.ENERGY else dcgm_page.FP64_BLANK
        check(sample.value is None or (math.isfinite(sample.value) and 0 <= sample.value < blank), f"{sample}")
        check(sample.index is None or sample.index >= 0, f"index {sample.index!r}")
    for board in parsed.boards().values():
        energy = board.energy_joules
        check(energy is None or (math.isfinite(energy) and energy >= 0), f"board energy {energy!r}")
        check((energy is None) == (board.problem is not None), f"board {board}")
    with_uuid = [s for s in parsed.samples if s.uuid]
    if with_uuid:
        with contextlib.suppress(dcgm_page.SelectionError):
            dcgm_page.select(parsed, [with_uuid[0].uuid])
    return "reading"


# --- the core behind the vLLM parser ---------------------------------------------------------


@dataclass
class _PageSource:
    text: str = ""
    t: float = 0.0

    def read(self) -> VllmSnapshot:
        return vllm_page.parse(self.text, self.t)


@dataclass
class _EnergySource:
    joules: float = 0.0
    t: float = 0.0
    spoil: float | None = None

    def read(self) -> EnergySnapshot:
        value = self.joules if self.spoil is None else self.spoil
        return EnergySnapshot(self.t, (GpuReading(0, "GPU-a", "NVIDIA H100 80GB HBM3", value, 300.0, "counter"),))


CORE_FAMILIES = (
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_cached_total",
    "vllm:iteration_tokens_total_count",
)
CORE_LABELS = ("model_name", "engine", "source")
ENERGY_SPOILS = (None, None, None, math.inf, -1.0, math.nan, 1e308)


def gen_tick(c: Chooser) -> dict[str, Any]:
    """One tick of the core's trace: the engine's progress, the energy (sometimes spoiled), a few
    hostile samples beside the engine's, perhaps mutations of the page, perhaps a restart."""
    return {
        "tokens": c.int(0, 20_000),
        "watts": c.int(0, 1_400_000) / 1000,
        "energy": c.pick(ENERGY_SPOILS),
        "extra": [gen_line(c, VLLM_FAMILIES, CORE_LABELS)[0] for _ in range(c.int(0, 3))],
        "edits": gen_edits(c, 3) if c.int(0, 2) == 0 else [],
        "restart": bool(c.int(0, 1)),
    }


def gen_trace(c: Chooser, most: int = 12) -> list[dict[str, Any]]:
    return [gen_tick(c) for _ in range(c.int(2, most))]


def _exported(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if family.type == "counter" and s.name.endswith("_total"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def check_core(trace: list[dict[str, Any]]) -> int:
    """Ticks the collection loop (the real core, ledger and collector) over pages made of an
    engine's real counters, hostile extra samples and mutations; the ledger's invariants after
    every tick. The ticks run."""
    from tests.loop_rig import BUILD, rig_attributor

    ledger, source, energy = Ledger(), _PageSource(), _EnergySource()
    clock = iter(range(10**6))
    quiet = structlog.wrap_logger(
        structlog.PrintLogger(io.StringIO()),
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        processors=[],
    )
    loop = CollectionLoop(
        source, energy, rig_attributor(), ledger, quiet, 1.0,
        clock=lambda: float(next(clock)) / 1000, wall_clock=lambda: 1.7e9,
    )  # fmt: skip
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, BUILD))
    before: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    tokens, created = 0.0, 1000.0
    for i, tick in enumerate(trace):
        if tick["restart"] and i % 5 == 4:
            tokens, created = 0.0, created + 100.0
        tokens += tick["tokens"]
        energy.joules += tick["watts"]
        energy.spoil = tick["energy"]
        source.t = energy.t = float(i)
        engine = '{model_name="m",engine="0"}'
        lines = [f"{name}{engine} {tokens * share!r}" for name, share in zip(CORE_FAMILIES, (1.0, 0.5, 0.1, 0.25))]
        lines += [f"vllm:prompt_tokens_created{engine} {created!r}", f"vllm:num_requests_running{engine} 1.0"]
        lines += tick["extra"]
        source.text = mutate("\n".join(lines) + "\n", tick["edits"])
        loop.tick()
        now = _exported(registry)
        for key, value in now.items():
            check(math.isfinite(value), f"{key} = {value}")
            check(value >= before.get(key, 0.0), f"{key} decreased: {before.get(key)} -> {value}")
        measured = sum(v for (name, _), v in now.items() if name == "token_economy_gpu_energy_joules_total")
        classes = sum(v for (name, _), v in now.items() if name == "token_economy_energy_joules_total")
        check(math.isclose(classes, measured, rel_tol=1e-9, abs_tol=1e-6), f"classes {classes} != measured {measured}")
        before.update(now)
    return len(trace)


# --- the HTTP request path -------------------------------------------------------------------

ALLOWED_STATUSES = frozenset({200, 400, 404, 405, 413, 431, 503})
BAD_REQUEST_REASONS = frozenset(
    {
        "request_line", "header_line", "duplicate_framing", "content_length", "body_too_large", "head_too_large",
        "too_many_headers",
    }
)  # fmt: skip
# The landing page's own fixed headers (its content policy and friends): never the client's bytes.
_LANDING_LINES = "".join("|" + re.escape(f"{name}: {value}") for name, value in LANDING_HEADERS)
_HEAD_LINE = re.compile(
    r"HTTP/1\.1 \d{3} [A-Za-z ]+|Content-Length: \d+|Content-Encoding: gzip|Connection: close|"
    + re.escape(f"Server: token-economy-exporter/{__version__}")
    + r"|Content-Type: (?:text/plain; charset=utf-8|text/html; charset=utf-8|text/plain; version=[0-9.]+; charset=utf-8"
    r"|text/plain; version=1\.0\.0; charset=utf-8; escaping=underscores"
    r"|application/openmetrics-text; version=1\.0\.0; charset=utf-8; escaping=underscores"
    r"|application/openmetrics-text; version=[0-9.]+; charset=utf-8)" + _LANDING_LINES
)


class _Server:
    """The state HttpServer's request path reads (its timeout, its routes, its counts, its web
    config) and that path's own methods, so they run over a stream without a listening socket."""

    _read_request = HttpServer._read_request
    _respond = HttpServer._respond
    _answer = HttpServer._answer

    def __init__(self, routes: Routes) -> None:
        self._routes = routes
        self._head_timeout = 10.0
        self._counts: Counter[str] = Counter()
        self._web = lambda: NO_WEB_CONFIG  # no TLS, no basic auth: bcrypt's 0.1 s a check is not fuzzed

    def _count(self, what: str) -> None:
        self._counts[what] += 1


@dataclass
class HttpHarness:
    loop: asyncio.AbstractEventLoop
    server: _Server
    cache: MetricsCache
    outcomes: Counter[str] = field(default_factory=Counter)

    @classmethod
    def create(cls) -> HttpHarness:
        ledger = Ledger()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(LedgerCollector(ledger, dict.fromkeys(BUILD_LABELS, "fuzz")))
        ledger.publish(TickRecord({}, TickResult(tokens={("m", "input"): 1.0}, models=("m",))))
        cache = MetricsCache(registry, ledger, clock=lambda: 0.0)
        routes = Routes(cache, ledger, "http://127.0.0.1:8000", "nvml", stale_after_seconds=30.0, clock=lambda: 1.7e9)
        return cls(asyncio.new_event_loop(), _Server(routes), cache)

    def close(self) -> None:
        self.loop.close()

    def serve(self, data: bytes) -> list[bytes]:
        """What the server answers to `data` sent on one connection and then closed."""
        return self.loop.run_until_complete(self._serve(data))

    async def _serve(self, data: bytes) -> list[bytes]:
        reader = asyncio.StreamReader(limit=MAX_HEAD)
        reader.feed_data(data)
        reader.feed_eof()
        answers: list[bytes] = []
        server = self.server
        fresh = True
        try:
            while True:
                deadline = asyncio.get_running_loop().time() + 10.0
                request = await server._read_request(reader, deadline, fresh)
                check(isinstance(request, Request), f"a request of type {type(request).__name__}")
                close = request.close or "transfer-encoding" in request.headers
                answers.append(await server._respond(request, close))
                fresh = False
                if close:
                    self.outcomes["closed"] += 1
                    break
        except BadRequest as err:
            check(err.status in ALLOWED_STATUSES, f"BadRequest status {err.status}")
            check(err.reason in BAD_REQUEST_REASONS, f"BadRequest reason {err.reason!r}")
            answers.append(_response(err.status, "text/plain; charset=utf-8", f"{err.reason}\n".encode(), False, True))
            self.outcomes[f"bad:{err.reason}"] += 1
        except asyncio.IncompleteReadError:
            self.outcomes["client went"] += 1
        return answers


def check_http(harness: HttpHarness, data: bytes) -> int:
    """The invariants of the answers to one connection's bytes; the number of answers."""
    answers = harness.serve(data)
    for answer in answers:
        head, sep, _body = answer.partition(b"\r\n\r\n")
        check(bool(sep), f"an answer without a head: {answer[:80]!r}")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        check(status in ALLOWED_STATUSES, f"status {status}")
        for line in lines:
            check(_HEAD_LINE.fullmatch(line) is not None, f"a head line that is not the server's: {line!r}")
    check(len(harness.cache) <= 6, f"the metrics cache holds {len(harness.cache)} entries")
    return len(answers)


METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "CONNECT", "get", "GET ", "G\x00T", "PRI", "")
TARGETS = (
    "/metrics", "/healthz", "/readyz", "/", "/nope", "/metrics?x=1", "*", "/metrics#frag", "http://h/metrics",
    "/%00", "/\x7f", "/é", "//", "/" + "a" * 300, "",
)  # fmt: skip
VERSIONS = ("HTTP/1.1", "HTTP/1.0", "HTTP/1.9", "HTTP/2.0", "HTTP/1.10", "http/1.1", "HTTP/1.1 ", "")
HEADER_NAMES = (
    "Host", "Accept", "Accept-Encoding", "Connection", "Content-Length", "Transfer-Encoding",
    "X-Prometheus-Scrape-Timeout-Seconds", "User-Agent", "X", "Host ", " Host", "Ho st", "Hóst", "",
    "Content-Length\x00",
)  # fmt: skip
HEADER_VALUES = (
    "", "x", "close", "keep-alive", "0", "5", "-1", "+5", "16385", "99999999999999", " 5", "chunked", "gzip",
    "gzip;q=0", "gzip;q=nan", "*;q=1", "x-gzip;q=0.5", "identity, gzip;q=0.001",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "text/plain;version=1.0.0", "text/plain;version=99999999999.1", "text/plain;version=1..0",
    "application/openmetrics-text",
    "application/openmetrics-text;version=0.0.1", "text/plain;q=-1;version=1", "text/plain;version=1;q=inf",
    "a\rb", "a\x00b", "a\x7fb", "\tx\t", "é", "x" * 200, ";;;,,,==", 'text/plain;version="1.0.0"',
)  # fmt: skip
EOLS = ("\r\n", "\r\n", "\r\n", "\n", "\r", "")


def gen_request(c: Chooser) -> bytes:
    """One request: a request line (HTTP/0.9 one time in ten), headers of real and broken names
    and hostile values, line ends of every kind, perhaps a body."""
    well_formed = c.int(0, 2) > 0  # two requests in three start as a scraper's would
    eol = "\r\n" if well_formed else c.pick(EOLS)
    if well_formed:
        line = f"{c.pick(('GET', 'GET', 'HEAD', 'POST'))} {c.pick(TARGETS[:7])} {c.pick(VERSIONS[:2])}"
    elif c.int(0, 3) == 0:
        line = f"{c.pick(METHODS)} {c.pick(TARGETS)}"
    else:
        line = f"{c.pick(METHODS)} {c.pick(TARGETS)} {c.pick(VERSIONS)}"
    headers = [
        f"{c.pick(HEADER_NAMES)}{c.pick((': ', ':', ' : ', ':  '))}"
        f"{c.pick(HEADER_VALUES) if c.int(0, 3) else c.text(20)}{c.pick(EOLS) if c.int(0, 3) == 0 else eol}"
        for _ in range(c.int(0, 6) if c.int(0, 19) else c.int(60, 70))  # past MAX_HEADERS one time in 20
    ]
    if c.int(0, 19) == 0:  # a head past MAX_HEAD
        headers.append(f"X-Long: {'x' * c.int(MAX_HEAD - 200, MAX_HEAD + 200)}{eol}")
    body = c.pick(("", "", "0\r\n\r\n", "GET /admin HTTP/1.1\r\n\r\n", "x" * 20))
    return (line + eol + "".join(headers) + eol + body).encode("utf-8", "surrogatepass")


def gen_connection(c: Chooser) -> bytes:
    """A connection's bytes: one to four requests, pipelined, sometimes mutated or cut short;
    or arbitrary bytes."""
    if c.int(0, 4) == 0:
        return c.binary(200)
    data = b"".join(gen_request(c) for _ in range(c.int(1, 4)))
    for position, kind, piece in gen_edits(c) if c.int(0, 2) == 0 else []:
        at = position % (len(data) + 1)
        raw = piece.encode()
        data = data[:at] + raw + data[at:] if kind == 0 else data[:at] + (raw if kind == 2 else b"") + data[at + 1 :]
    if c.int(0, 5) == 0:
        data = data[: c.int(0, len(data))]
    return data


def gen_accept(c: Chooser) -> str:
    if c.int(0, 1):
        return c.text(200)
    return ",".join(c.pick(HEADER_VALUES) for _ in range(c.int(0, 8)))


# --- running the targets ---------------------------------------------------------------------


@dataclass
class Target:
    name: str
    run: Callable[[int, Counter[str], Strategy], None]  # (cases, outcomes, grammar or seeded)


def _settings(cases: int) -> settings:
    return settings(
        max_examples=cases,
        deadline=None,
        database=None,
        phases=(Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        derandomize=False,
    )


Strategy = Callable[..., st.SearchStrategy[Any]]  # grammar or seeded


def fuzz_vllm(cases: int, outcomes: Counter[str], how: Strategy = seeded) -> None:
    @_settings(cases)
    @given(case=how(gen_page, VLLM_FAMILIES, VLLM_LABELS))
    def run(case: Page) -> None:
        outcomes[_checked(check_vllm, *case)] += 1

    run()


def fuzz_plugin(cases: int, outcomes: Counter[str], how: Strategy = seeded) -> None:
    @_settings(cases)
    @given(case=how(gen_page, PLUGIN_FAMILIES, PLUGIN_LABELS))
    def run(case: Page) -> None:
        outcomes[_checked(check_plugin, case[0])] += 1

    run()


def fuzz_dcgm(cases: int, outcomes: Counter[str], how: Strategy = seeded) -> None:
    @_settings(cases)
    @given(case=how(gen_page, DCGM_FAMILIES, DCGM_LABELS))
    def run(case: Page) -> None:
        outcomes[_checked(check_dcgm, case[0])] += 1

    run()


def fuzz_core(cases: int, outcomes: Counter[str], how: Strategy = seeded) -> None:
    @_settings(cases)
    @given(trace=how(gen_trace))
    def run(trace: list[dict[str, Any]]) -> None:
        outcomes["ticks"] += _checked(check_core, trace)
        outcomes["traces"] += 1

    run()


def fuzz_http(cases: int, outcomes: Counter[str], how: Strategy = seeded) -> None:
    harness = HttpHarness.create()
    try:

        @_settings(cases)
        @given(data=how(gen_connection))
        def run(data: bytes) -> None:
            outcomes["answers"] += _checked(check_http, harness, data)
            outcomes["connections"] += 1

        run()
        outcomes.update(harness.outcomes)
    finally:
        harness.close()


def check_negotiation(accept: str) -> str:
    """The Accept, Accept-Encoding and Authorization readers over any text: a format index, a
    bool, and None or (user, password)."""
    fmt = metrics_format(accept)
    check(0 <= fmt < len(FORMATS), f"format {fmt}")
    check(isinstance(wants_gzip(accept), bool), "wants_gzip")
    for authorization in (accept, "Basic " + accept, "Basic " + base64.b64encode(accept.encode()).decode()):
        credentials = parse_basic(authorization)
        check(
            credentials is None or (isinstance(credentials[0], str) and isinstance(credentials[1], bytes)),
            f"credentials {credentials!r}",
        )
    return f"format {fmt}"


def fuzz_negotiation(cases: int, outcomes: Counter[str], how: Strategy = seeded) -> None:
    @_settings(cases)
    @given(accept=how(gen_accept))
    def run(accept: str) -> None:
        outcomes[_checked(check_negotiation, accept)] += 1

    run()


def _checked(check_one: Callable[..., T], *case: Any) -> T:
    """The check's result; a failure names the input, as the seeded strategy cannot shrink it."""
    try:
        return check_one(*case)
    except Exception as err:
        shown = repr(case if len(case) > 1 and not isinstance(case[0], HttpHarness) else case[-1])
        raise Violation(f"{type(err).__name__}: {err}\n  input: {shown[:3000]}") from err


TARGETS_RUN = (
    Target("vllm_page.parse", fuzz_vllm),
    Target("plugin_page.parse", fuzz_plugin),
    Target("dcgm_page.parse", fuzz_dcgm),
    Target("HTTP request path", fuzz_http),
    Target("Accept, Accept-Encoding, Authorization readers", fuzz_negotiation),
    Target("core over vLLM pages (traces)", fuzz_core),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fuzz the page parsers and the HTTP request handling.")
    parser.add_argument("--cases", type=int, default=100_000, help="cases per target (default 100000)")
    parser.add_argument("--core-cases", type=int, default=None, help="traces for the core (default cases / 50)")
    parser.add_argument("--targets", default=None, help="comma-separated substrings of target names")
    parser.add_argument(
        "--grammar",
        action="store_true",
        help="every choice a Hypothesis draw (shrinks a failure to a minimal input; ~10x slower) instead of a "
        "PRNG seeded by Hypothesis",
    )
    args = parser.parse_args(argv)
    how = grammar if args.grammar else seeded
    chosen = [t for t in TARGETS_RUN if not args.targets or any(s in t.name for s in args.targets.split(","))]
    print("| target | cases | seconds | cases/s | crashes | outcomes |")
    print("|---|---|---|---|---|---|")
    failed = 0
    for target in chosen:
        cases = args.cases if "core" not in target.name else (args.core_cases or max(1, args.cases // 50))
        outcomes: Counter[str] = Counter()
        started = time.perf_counter()
        crash = ""
        try:
            target.run(cases, outcomes, how)
        except Exception as err:  # a crash or an invariant: shown with Hypothesis's shrunk example
            crash = f"{type(err).__name__}: {err}"
            failed += 1
        seconds = time.perf_counter() - started
        done = outcomes["traces"] or outcomes["connections"] or sum(outcomes.values())
        shown = ", ".join(f"{k} {v}" for k, v in outcomes.most_common(9))
        print(f"| {target.name} | {done} | {seconds:.1f} | {done / seconds:.0f} | {1 if crash else 0} | {shown} |")
        if crash:
            print(f"CRASH in {target.name}: {crash[:2000]}", file=sys.stderr)
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
