"""Which models get series of their own. Model names come from vLLM's page, and a page (or a
gateway that names a model per tenant) can carry any number of them: every name kept forever
grew one exporter to 44k models and 317k series. At most `limit` models are followed at once,
each until it has not been seen for `expiry_seconds`; engines of any further model are counted
under one model, `OVERFLOW_MODEL`, so that their work still pays for its energy. Pure: the
timestamps come with the readings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from exporter.attribution.readings import EngineSample

OVERFLOW_MODEL = "other"  # the model_name of work beyond the limit
DEFAULT_MAX_MODELS = 64  # a server serves one model, a few with LoRA names; 64 is far beyond
DEFAULT_MODEL_EXPIRY_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class Admission:
    engines: tuple[EngineSample, ...]  # as read, those beyond the limit under OVERFLOW_MODEL
    overflowed: int  # engines counted under OVERFLOW_MODEL in this reading
    expired: tuple[str, ...]  # models that left the roster in this reading (not seen for long)


class ModelRoster:
    __slots__ = ("_expiry", "_limit", "_seen")

    def __init__(self, limit: int, expiry_seconds: float) -> None:
        self._limit = max(limit, 1)
        self._expiry = expiry_seconds
        self._seen: dict[str, float] = {}  # model -> when last read, oldest first

    @property
    def expiry_seconds(self) -> float:
        return self._expiry

    def admit(self, engines: Iterable[EngineSample], timestamp: float) -> Admission:
        expired = self._expire(timestamp)
        admitted: list[EngineSample] = []
        overflowed = 0
        for engine in engines:
            name = engine.model_name
            if name not in self._seen and self._followed() >= self._limit:
                overflowed += 1
                # Its own counter series still (engine@model), so that models coming and going
                # under one name never look like a counter going down.
                admitted.append(replace(engine, model_name=OVERFLOW_MODEL, engine=f"{engine.engine}@{name}"))
                continue
            self._seen.pop(name, None)
            self._seen[name] = timestamp
            admitted.append(engine)
        if overflowed:
            self._seen.pop(OVERFLOW_MODEL, None)
            self._seen[OVERFLOW_MODEL] = timestamp  # not counted against the limit: see _expire
        return Admission(tuple(admitted), overflowed, expired)

    def _followed(self) -> int:
        return len(self._seen) - (OVERFLOW_MODEL in self._seen)

    def _expire(self, timestamp: float) -> tuple[str, ...]:
        expired = [name for name, seen in self._seen.items() if timestamp - seen > self._expiry]
        for name in expired:
            del self._seen[name]
        return tuple(expired)
