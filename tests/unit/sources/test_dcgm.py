"""The DCGM energy source over a scripted dcgm-exporter (httpx's MockTransport: no socket): what
a read gives, every failure typed, opening and its bounded wait, dcgm-exporter restarts and
driver reloads, and conservation through the real loop and Attributor: the energy attributed to
the token classes is the increase of this pod's GPU counters, never the node's."""

import httpx
import pytest
import structlog

from exporter.ledger import Ledger
from exporter.loop import CollectionLoop
from exporter.sources import dcgm_page
from exporter.sources.dcgm import FIDELITY, DcgmEnergySource, DcgmUnavailable
from exporter.sources.errors import SourceError
from tests.dcgm_pages import (
    A100,
    H100,
    H100_ENERGY_MJ,
    MIG_LARGE_POD,
    MIG_SMALL_POD,
    NAMESPACE,
    POD,
    h100_page,
    load,
    with_energy,
    without_gpu,
    without_pod_labels,
)
from tests.fakes.pynvml_fake import FakeClock
from tests.loop_rig import ScriptedVllm, rig_attributor

URL = "http://10.0.0.7:9400/metrics"


class Node:
    """The node's dcgm-exporter: serves `page`, or fails as told; counts the requests."""

    def __init__(self, page: str) -> None:
        self.page = page
        self.status = 200
        self.error: Exception | None = None
        self.requests = 0
        self.transport = httpx.MockTransport(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.error is not None:
            raise self.error
        return httpx.Response(self.status, text=self.page)


class Recorder:
    """A logger that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []

    def info(self, event: str, **kw) -> None:
        self.events.append(("info", event, kw))

    def warning(self, event: str, **kw) -> None:
        self.events.append(("warning", event, kw))

    def named(self, event: str) -> list[dict]:
        return [kw for _, name, kw in self.events if name == event]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


def open_source(node: Node, clock: FakeClock, **kw) -> DcgmEnergySource:
    if "uuids" not in kw:
        kw.setdefault("pod", POD)
        kw.setdefault("namespace", NAMESPACE)
    kw.setdefault("open_wait", 0.0)
    return DcgmEnergySource(URL, clock=clock, transport=node.transport, **kw)


def read_error(source: DcgmEnergySource) -> SourceError:
    with pytest.raises(SourceError) as caught:
        source.read()
    return caught.value


# -- reading --------------------------------------------------------------------------------------


def test_a_read_gives_this_pods_gpus_in_joules(clock):
    source = open_source(Node(load("h100-node-pod-mapping.txt")), clock)
    clock.advance(5)
    snapshot = source.read()
    assert (snapshot.timestamp, snapshot.modelled, snapshot.origin) == (105.0, False, "dcgm")
    assert [(g.index, g.uuid, g.method, g.error) for g in snapshot.gpus] == [
        (0, H100[0], "counter", None),
        (1, H100[1], "counter", None),
    ]
    assert [g.energy_joules for g in snapshot.gpus] == [mj / 1000 for mj in H100_ENERGY_MJ]
    assert snapshot.gpus[0].power_watts == pytest.approx(402.117)
    assert source.gpus == [g.identity for g in snapshot.gpus]
    source.close()


def test_a_gpu_missing_from_a_page_reads_as_unknown_and_the_others_still_read(clock):
    node = Node(load("h100-node-pod-mapping.txt"))
    source = open_source(node, clock)
    node.page = without_gpu(node.page, H100[1])
    gpu0, gpu1 = source.read().gpus
    assert gpu0.energy_joules == H100_ENERGY_MJ[0] / 1000 and gpu0.error is None
    assert (gpu1.energy_joules, gpu1.power_watts, gpu1.error) == (None, None, "dcgm_gpu_missing")
    assert gpu1.identity == (1, H100[1], "NVIDIA H100 80GB HBM3")  # labels stay as opened


def test_an_unusable_value_is_a_gpu_error(clock):
    node = Node(load("h100-node-pod-mapping.txt"))
    source = open_source(node, clock)
    node.page = with_energy(node.page, {H100[0]: -3})
    assert source.read().gpus[0].error == "dcgm_bad_value"
    node.page = node.page.replace('DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{gpu="0"', 'X{gpu="0"')
    gpu0 = source.read().gpus[0]
    assert (gpu0.energy_joules, gpu0.error) == (None, "dcgm_no_energy_sample") and gpu0.power_watts > 0


@pytest.mark.parametrize(
    "fail, reason",
    [
        (lambda node: setattr(node, "error", httpx.ConnectError("connection refused")), "connection"),
        (lambda node: setattr(node, "error", httpx.ReadTimeout("slow")), "timeout"),
        (lambda node: setattr(node, "error", httpx.RemoteProtocolError("peer closed")), "connection"),
        (lambda node: setattr(node, "status", 503), "http_status"),
        (lambda node: setattr(node, "page", "# dcgm-exporter is starting\n"), "parse"),
        (lambda node: setattr(node, "page", "x" * 70_000), "too_large"),
    ],
)
def test_a_failed_page_is_a_typed_source_error(clock, fail, reason):
    node = Node(load("h100-node-pod-mapping.txt"))
    source = open_source(node, clock, max_bytes=64 * 1024)
    fail(node)
    assert read_error(source).reason == reason


def test_a_page_without_a_declared_length_is_cut_at_the_bound(clock):
    node = Node(load("h100-node-pod-mapping.txt"))
    source = open_source(node, clock, max_bytes=64 * 1024)
    node.transport.handler = lambda request: httpx.Response(200, content=iter([b"x" * 40_000] * 3))
    assert read_error(source).reason == "too_large"


def test_a_page_that_is_not_utf8_is_a_parse_error(clock):
    node = Node(load("h100-node-pod-mapping.txt"))
    source = open_source(node, clock)
    node.transport.handler = lambda request: httpx.Response(200, content=b"\xff\xfe\x00")
    assert read_error(source).reason == "parse"


def test_nothing_but_a_source_error_leaves_a_read(clock, monkeypatch):
    source = open_source(Node(load("h100-node-pod-mapping.txt")), clock)

    def broken(text):
        raise RecursionError("a bug")

    monkeypatch.setattr("exporter.sources.dcgm.parse", broken)
    err = read_error(source)
    assert err.reason == "internal" and "RecursionError" in err.detail


def test_dcgm_exporter_restarting_and_a_driver_reload(clock):
    node = Node(h100_page(1_000_000, 2_000_000))
    source = open_source(node, clock)
    node.error = httpx.ConnectError("connection refused")  # dcgm-exporter restarts
    assert read_error(source).reason == "connection"
    node.error = None
    node.page = without_pod_labels(h100_page(1_500_000, 2_400_000))  # its first scrape: no pod labels yet
    assert [g.energy_joules for g in source.read().gpus] == [1500.0, 2400.0]  # the driver's counter went on
    node.page = h100_page(4_000, 2_600_000)  # the driver reloaded on GPU 0: its counter restarted
    assert [g.energy_joules for g in source.read().gpus] == [4.0, 2600.0]  # passed on; the core sees the reset


def test_a_counter_standing_still_while_power_is_drawn_is_said_once(clock):
    log = Recorder()
    node = Node(h100_page(1_000_000, 2_000_000))
    source = open_source(node, clock, log=log)
    for _ in range(3):
        source.read()
    (said,) = log.named("dcgm_energy_in_steps")
    assert said["effect"] == FIDELITY and "-c" in FIDELITY


def test_a_reading_that_repeats_the_last_counters_keeps_their_time(clock):
    # dcgm-exporter refreshes once per collect interval: our reads in between repeat its values,
    # and keep the time they were first seen, so the core knows nothing newer was measured.
    node = Node(h100_page(1_000_000, 2_000_000))
    source = open_source(node, clock)
    clock.advance(5)
    first = source.read().timestamp
    clock.advance(5)
    assert source.read().timestamp == first == 105.0
    node.page = h100_page(1_030_000, 2_040_000)
    clock.advance(5)
    assert source.read().timestamp == 115.0


def test_mig_whole_board_is_read_once(clock):
    source = open_source(Node(load("a100-node-mig.txt")), clock, pod=MIG_LARGE_POD)
    (gpu,) = source.read().gpus
    assert (gpu.uuid, gpu.energy_joules, gpu.method) == (A100[1], 95544310731 / 1000, "counter")
    assert source.selection.mig == (A100[1],)


# -- opening --------------------------------------------------------------------------------------


def test_opening_waits_for_dcgm_exporter_to_map_this_pod(clock):
    """The sidecar starts with vLLM; dcgm-exporter maps the pod at its next collection."""
    log = Recorder()
    node = Node(load("h100-node-pod-mapping.txt"))
    node.error = httpx.ConnectError("connection refused")
    page = node.page
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        clock.advance(seconds)
        node.error = None
        node.page = without_pod_labels(page) if len(sleeps) == 1 else page

    source = open_source(node, clock, open_wait=40.0, retry_period=2.0, sleep=sleep, log=log)
    assert [g.uuid for g in source.gpus] == H100[:2] and node.requests == 3 and sleeps == [2.0, 2.0]
    (waiting,) = log.named("dcgm_waiting")
    assert waiting["reason"] == "connection" and waiting["seconds"] == 40.0


def test_opening_gives_up_after_the_wait_with_the_last_reason(clock):
    node = Node(load("h100-node-pod-mapping.txt"))
    with pytest.raises(DcgmUnavailable) as caught:
        open_source(node, clock, pod="vllm-elsewhere", open_wait=10.0, retry_period=2.0, sleep=clock.advance)
    assert caught.value.reason == "pod_not_found" and "still so after 10 s" in str(caught.value)
    assert node.requests == 6  # at 0, 2, 4, 6, 8 and 10 s


@pytest.mark.parametrize(
    "page, kw, reason",
    [
        ("a100-node-mig.txt", {"pod": MIG_SMALL_POD}, "mig"),
        ("h100-node-pod-mapping.txt", {"uuids": ["0"]}, "gpu_index"),
        ("l40s-node-no-pod-mapping.txt", {"pod": None, "namespace": None}, "no_selection"),
    ],
)
def test_opening_fails_at_once_where_waiting_cannot_help(clock, page, kw, reason):
    node = Node(load(page))
    with pytest.raises(DcgmUnavailable) as caught:
        open_source(node, clock, open_wait=60.0, sleep=pytest.fail, **kw)
    assert caught.value.reason == reason and node.requests == 1


def test_the_refused_mig_slice_keeps_its_identity_for_a_fallback(clock):
    with pytest.raises(DcgmUnavailable) as caught:
        open_source(Node(load("a100-node-mig.txt")), clock, pod=MIG_SMALL_POD)
    assert caught.value.gpus == ((0, A100[0], "NVIDIA A100-SXM4-80GB"),)


# -- conservation through the real loop and core --------------------------------------------------


def rig(source: DcgmEnergySource, vllm: ScriptedVllm) -> tuple[CollectionLoop, Ledger]:
    attributor = rig_attributor()
    ledger = Ledger()
    ticks = iter(range(10**6))
    loop = CollectionLoop(
        vllm, source, attributor, ledger, structlog.get_logger(), 5.0, clock=lambda: next(ticks) / 1000
    )
    return loop, ledger


def test_the_attributed_energy_is_the_increase_of_this_pods_counters_only(clock):
    """A short run as dcgm-exporter shows it: steps of its collect interval, a restart (page gone,
    then a page without pod labels), while the node's other GPUs burn far more."""
    node = Node(h100_page(50_000_000, 70_000_000, others_mj=90_000_000))
    source = open_source(node, clock)
    vllm = ScriptedVllm()
    loop, ledger = rig(source, vllm)
    script = [  # (GPU 0 mJ, GPU 1 mJ, what dcgm-exporter does)
        (50_000_000, 70_000_000, "page"),  # the baseline
        (50_000_000, 70_000_000, "page"),  # no collection since: a step of nothing
        (53_100_000, 73_050_000, "page"),
        (53_100_000, 73_050_000, "down"),  # restarting
        (56_800_000, 76_300_000, "no pod labels"),  # its first scrape after the restart
        (60_020_000, 79_900_000, "page"),
    ]
    for tick, (gpu0, gpu1, state) in enumerate(script):
        t = 5.0 * (tick + 1)
        clock.now = vllm.t = t
        vllm.tokens = 1000.0 * tick
        node.error = httpx.ConnectError("refused") if state == "down" else None
        page = h100_page(gpu0, gpu1, others_mj=90_000_000 + 40_000_000 * tick)
        node.page = without_pod_labels(page) if state == "no pod labels" else page
        loop.tick()
    view = ledger.view()
    increase = ((60_020_000 - 50_000_000) + (79_900_000 - 70_000_000)) / 1000
    assert sum(view.energy.values()) == pytest.approx(increase, rel=1e-12)
    assert {gpu.uuid: joules for gpu, joules in view.gpu_energy.items()} == pytest.approx(
        {H100[0]: (60_020_000 - 50_000_000) / 1000, H100[1]: (79_900_000 - 70_000_000) / 1000}
    )
    assert view.source_errors[("energy", "connection")] == 1 and view.origins["energy"] == "dcgm"


def test_a_driver_reload_counts_the_new_counter_as_the_increase(clock):
    node = Node(h100_page(50_000_000, 70_000_000))
    source = open_source(node, clock)
    vllm = ScriptedVllm()
    loop, ledger = rig(source, vllm)
    for tick, (gpu0, gpu1) in enumerate([(50_000_000, 70_000_000), (51_000_000, 71_000_000), (400_000, 72_500_000)]):
        clock.now = vllm.t = 5.0 * (tick + 1)
        vllm.tokens = 500.0 * tick
        node.page = h100_page(gpu0, gpu1)
        loop.tick()
    # Prometheus rate() semantics: a counter that went down restarted, and its value is the increase.
    assert sum(ledger.view().energy.values()) == pytest.approx((1_000_000 + 400_000 + 2_500_000) / 1000)
    assert ledger.view().resets["energy"] == 1


def test_the_parser_module_is_what_the_source_reads_with():
    # The source parses with the pure module (so its unit tests cover what the source does).
    assert DcgmEnergySource.read.__globals__["parse"] is dcgm_page.parse
