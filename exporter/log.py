"""structlog set-up: JSON lines for containers, a console renderer for people; no line carries
the password of a URL (exporter.redact), whoever wrote it."""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

from exporter.redact import redact_value

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(log_format: str = "json", level: str = "info") -> None:
    renderer = (
        structlog.processors.JSONRenderer() if log_format == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,  # after the traceback is text, so its URLs are redacted too
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def redact_secrets(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """The credentials of every URL in the event become *** (exporter.redact): in its text, in
    every value, in a formatted traceback. A source's error message may hold the URL it read, with
    the password it was given, so this cannot be left to the places that log."""
    return {key: redact_value(value) for key, value in event_dict.items()}


def get_logger(**context: object) -> FilteringBoundLogger:
    logger: FilteringBoundLogger = structlog.get_logger("token_economy_exporter").bind(**context)
    return logger


class Episode:
    """Logs a source's state changes only: the first failure of an outage (and a change of
    cause), then its recovery with how many reads failed in between."""

    __slots__ = ("_failures", "_log", "_reason", "_source")

    def __init__(self, log: FilteringBoundLogger, source: str) -> None:
        self._log = log
        self._source = source
        self._reason: str | None = None
        self._failures = 0

    def failed(self, reason: str, detail: str = "") -> None:
        self._failures += 1
        if reason != self._reason:
            self._log.warning(
                "source_lost" if self._reason is None else "source_failure_changed",
                source=self._source,
                reason=reason,
                detail=detail,
            )
            self._reason = reason

    def succeeded(self) -> None:
        if self._reason is not None:
            self._log.info("source_recovered", source=self._source, failed_reads=self._failures)
        self._reason = None
        self._failures = 0
