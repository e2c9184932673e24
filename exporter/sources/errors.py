"""The one error a read raises: a failed read, with a low-cardinality reason. (Opening a source at
start-up has errors of its own, such as NvmlUnavailable and EnergySourceError.)"""

from __future__ import annotations


class SourceError(Exception):
    """A failed read. `reason` is a low-cardinality label for `source_errors_total`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
