"""A short run of `python -m benchmarks.bench_hostile`: the real exporter process against the
hostile vLLM server and a hostile client, one class of each, with the legitimate scraper beside
them. The benchmark's figures (latency, RSS) are not checked here, only what must hold whatever
the machine: the exporter stays up, no legitimate scrape fails, no counter misbehaves, and each
upstream fault is counted under its reason."""

import pytest

from benchmarks.bench_hostile import run

pytestmark = pytest.mark.integration


def test_the_exporter_withstands_a_short_hostile_run():
    phases = run(3.0, ["truncated", "http_500", "stall", "smuggling"])
    assert [p.attack for p in phases] == ["truncated", "http_500", "stall", "smuggling"]
    for phase in phases:
        assert phase.exporter_up, phase.attack
        assert phase.failures == 0, (phase.attack, phase.first_failure)
        assert phase.violations == [], (phase.attack, phase.violations[:3])
        assert not phase.missing_reasons(), (phase.attack, phase.reasons)
        assert len(phase.latencies) >= 20 and phase.rss_kib, phase.attack
    assert "ECHOED" not in phases[-1].seen and "400" in phases[-1].seen
