"""What the exporter has learned, kept across restarts in one file (`--state-file`): the fitted
costs and the idle-power samples, as the core exports them. Half an hour of traffic goes into
costs worth trusting; a restart (a new image, an evicted pod, kill -9) should not throw it away.

The file is JSON, written atomically (a temporary file in the same directory, flushed to disk,
then renamed over the old one), so a crash leaves the old state or the new one, never half of
either. It names what it was learned for (`identity`: the exporter's version, the GPU, the
model): a state for anything else is foreign. One that is corrupt, foreign or older than
`max_age_seconds` is ignored, with the reason, and the exporter starts from its prior."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

FORMAT = 1
MAX_BYTES = 1024 * 1024  # a state is a few kilobytes; anything larger is not ours


@dataclass(frozen=True, slots=True)
class Loaded:
    core: dict[str, object] | None  # the core's state, None when there is none to resume from
    reason: str  # "resumed", or why not: absent, unreadable, corrupt, foreign, stale
    age_seconds: float = 0.0


class StateFile:
    def __init__(
        self,
        path: Path,
        identity: Mapping[str, str | float],
        max_age_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._identity = dict(identity)
        self._max_age = max_age_seconds
        self._clock = clock

    def load(self) -> Loaded:
        try:
            with self.path.open("rb") as file:
                raw = file.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return Loaded(None, "absent")
        except OSError as err:
            return Loaded(None, f"unreadable: {err.strerror or err}")
        if len(raw) > MAX_BYTES:
            return Loaded(None, f"corrupt: larger than {MAX_BYTES} bytes")
        try:
            document = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError) as err:
            return Loaded(None, f"corrupt: {err}")
        return self._check(document)

    def _check(self, document: object) -> Loaded:
        if (
            not isinstance(document, dict)
            or document.get("format") != FORMAT
            or not isinstance(document.get("core"), dict)
        ):
            return Loaded(None, "corrupt: not a state file of this format")
        if document.get("identity") != self._identity:
            return Loaded(None, f"foreign: written for {document.get('identity')!r}")
        saved = document.get("saved_unixtime")
        if not isinstance(saved, (int, float)) or isinstance(saved, bool) or not math.isfinite(saved):
            return Loaded(None, "corrupt: no time of writing")
        age = self._clock() - saved
        if age > self._max_age or age < -60:  # from the future beyond clock skew: not trusted either
            return Loaded(None, f"stale: written {age:.0f} s ago (limit {self._max_age:.0f} s)")
        return Loaded(document["core"], "resumed", max(age, 0.0))

    def save(self, core: Mapping[str, object]) -> None:
        """Replace the file atomically. OSError when the directory cannot be written."""
        document = {"format": FORMAT, "identity": self._identity, "saved_unixtime": self._clock(), "core": core}
        data = json.dumps(document, allow_nan=False, separators=(",", ":")).encode()
        descriptor, temporary = tempfile.mkstemp(prefix=".state-", dir=self.path.parent)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a state can hold")
