"""Reads a vLLM server's /metrics page: bounded in time and size, every failure typed."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from exporter.attribution.readings import VllmSnapshot
from exporter.sources.http_page import PageClient
from exporter.sources.vllm_page import parse


class VllmSource:
    def __init__(
        self,
        base_url: str,
        metrics_path: str = "/metrics",
        timeout: float = 2.0,
        max_bytes: int = 8 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._page = PageClient(base_url.rstrip("/") + metrics_path, timeout, max_bytes, transport)
        self._clock = clock

    @property
    def url(self) -> str:
        return self._page.url

    def read(self) -> VllmSnapshot:
        return parse(*self.read_text())

    def read_text(self) -> tuple[str, float]:
        """The page, and when it arrived (the energy window is closed right then)."""
        text = self._page.text()
        return text, self._clock()

    def close(self) -> None:
        self._page.close()
