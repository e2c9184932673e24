"""The two ways out of vLLM's process: prometheus_client families on vLLM's own /metrics, and a
small file of the same text in a directory the sidecar mounts.

The file is the cheap channel: the sidecar reads it without asking vLLM for anything, where each
read of vLLM's page costs its API-server process milliseconds of CPU (README, "Benchmarks")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from exporter.plugin.state import Table
from exporter.sources import plugin_families as f

SNAPSHOT_PREFIX = "plugin-"
SNAPSHOT_SUFFIX = ".prom"


class SnapshotWriter:
    """Writes `plugin-<pid>.prom` atomically (a reader sees the old file or the new one, never
    half of one). One file per API-server process; the sidecar sums them as Prometheus would."""

    def __init__(self, directory: Path, pid: int) -> None:
        self.path = directory / f"{SNAPSHOT_PREFIX}{pid}{SNAPSHOT_SUFFIX}"
        self._partial = directory / f".{SNAPSHOT_PREFIX}{pid}{SNAPSHOT_SUFFIX}.partial"

    def write(self, text: str) -> None:
        with open(self._partial, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(self._partial, self.path)


class Mirror:
    """The table as prometheus_client families, registered once per process in the registry vLLM
    serves. Counters advance by what the table gained since the last push, so vLLM's multiprocess
    mode can sum them over processes; gauges are set."""

    def __init__(self, prometheus_client: Any) -> None:
        self._metrics: dict[f.PluginFamily, Any] = {}
        self._children: dict[tuple[f.PluginFamily, tuple[str, ...]], Any] = {}
        self._pushed: dict[tuple[f.PluginFamily, tuple[str, ...]], float] = {}
        for family in f.FAMILIES:
            if family.kind is f.Kind.COUNTER:
                metric = prometheus_client.Counter(family.base, family.help, family.labels)
            else:
                metric = prometheus_client.Gauge(
                    family.base, family.help, family.labels, multiprocess_mode=family.multiprocess_mode
                )
            self._metrics[family] = metric

    def push(self, table: Table) -> None:
        for family, series in table.items():
            for labels, value in series.items():
                key = (family, labels)
                last = self._pushed.get(key)
                if last == value:
                    continue  # most series stand still between rounds; prometheus_client locks per call
                child = self._children.get(key)
                if child is None:
                    metric = self._metrics[family]
                    child = self._children[key] = metric.labels(*labels) if labels else metric
                if family.kind is f.Kind.GAUGE:
                    child.set(value)
                elif value > (last or 0.0):
                    child.inc(value - (last or 0.0))
                else:
                    continue  # a counter never goes back: what it lost stays counted
                self._pushed[key] = value
