"""Reads a vLLM server's /metrics page: bounded in time and size, every failure typed."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from exporter.attribution.readings import VllmSnapshot
from exporter.sources.errors import SourceError
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
        self.url = base_url.rstrip("/") + metrics_path
        self._max_bytes = max_bytes
        self._clock = clock
        # No keep-alive surprises on restarts: a refused connection must surface at once.
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"Accept": "text/plain"},
            follow_redirects=False,
            trust_env=False,
        )

    def read(self) -> VllmSnapshot:
        return parse(*self.read_text())

    def read_text(self) -> tuple[str, float]:
        """The page, and when it arrived (the energy window is closed right then)."""
        body = self._fetch()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SourceError("parse", f"page is not UTF-8: {err}") from None
        return text, self._clock()

    def _fetch(self) -> bytes:
        try:
            with self._client.stream("GET", self.url) as response:
                if response.status_code != 200:
                    raise SourceError("http_status", f"HTTP {response.status_code} from {self.url}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self._max_bytes:
                    raise SourceError("too_large", f"{declared} bytes > {self._max_bytes}")
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise SourceError("too_large", f"more than {self._max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except SourceError:
            raise
        except httpx.TimeoutException as err:
            raise SourceError("timeout", f"{type(err).__name__} after {self._client.timeout.read}s") from None
        except httpx.ConnectError as err:
            raise SourceError("connection", str(err) or "connection refused") from None
        except (httpx.HTTPError, OSError) as err:
            raise SourceError("connection", f"{type(err).__name__}: {err}") from None

    def close(self) -> None:
        self._client.close()
