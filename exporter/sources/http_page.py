"""One page over HTTP, bounded in time and size, every failure a typed SourceError: how the
sources fetch vLLM's page and dcgm-exporter's."""

from __future__ import annotations

import httpx

from exporter.sources.errors import SourceError


class PageClient:
    def __init__(self, url: str, timeout: float, max_bytes: int, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url
        self._max_bytes = max_bytes
        # No redirects and no proxy settings from the environment: the URL is exactly what was
        # configured. No keep-alive surprises on restarts: a refused connection surfaces at once.
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"Accept": "text/plain"},
            follow_redirects=False,
            trust_env=False,
        )

    def text(self) -> str:
        body = self._fetch()
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SourceError("parse", f"page is not UTF-8: {err}") from None

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
