"""Finding samples in Prometheus's text format without parsing a whole page: the few families a
source needs, by substring search, and their labels, bounded. Pure: text in, values out.

vLLM's page is ~55 KB, mostly histogram buckets we never use, and dcgm-exporter's holds dozens
of families per GPU; one C-level search per wanted family skips the rest without a Python loop
over its lines, and is many times cheaper than a full parse."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from exporter.sources.errors import SourceError

MAX_LABELS = 256  # per sample: dcgm-exporter may copy a pod's Kubernetes labels onto its series
MAX_LABEL_TEXT = 64 * 1024  # characters between the braces of one sample

_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_ESCAPES = re.compile(r"\\(.)")


def samples(text: str, names: Iterable[str]) -> Iterator[tuple[str, str, str]]:
    """(name, label text, value text) of each sample of the named families. A name must be
    followed by `{` or a blank, so `..._total` never matches `..._total_created`."""
    for name in names:
        needle = "\n" + name
        pos = 0 if text.startswith(name) else text.find(needle)
        while pos >= 0:
            start = pos + 1 if text[pos] == "\n" else pos
            end = text.find("\n", start)
            if end < 0:
                end = len(text)
            cut = start + len(name)
            follow = text[cut : cut + 1]
            if follow == "{":
                close = text.rfind("}", cut, end)
                if close > cut:
                    yield name, text[cut + 1 : close], text[close + 1 : end]
            elif follow in (" ", "\t"):
                yield name, "", text[cut:end]
            pos = text.find(needle, end)


def complete(text: str) -> None:
    """SourceError("truncated") unless the page ends where the format says a page ends: after a
    line feed. A page cut mid-number would otherwise be read as a smaller counter."""
    if text and not text.endswith("\n"):
        raise SourceError("truncated", "the page does not end with a line feed: cut short")


def value_of(rest: str) -> float | None:
    """The sample value that follows a name and its labels (a timestamp may follow it); None
    when it is not a number. NaN and infinities are numbers here: callers decide."""
    parts = rest.split()
    if not parts:
        return None
    try:
        return float(parts[0])
    except ValueError:
        return None


def labels(label_text: str) -> dict[str, str]:
    """The labels of one sample; SourceError("parse") when there are absurdly many."""
    if len(label_text) > MAX_LABEL_TEXT:
        raise SourceError("parse", f"a sample's labels take {len(label_text)} characters (more than {MAX_LABEL_TEXT})")
    pairs = _LABEL.findall(label_text)
    if len(pairs) > MAX_LABELS:
        raise SourceError("parse", f"a sample has {len(pairs)} labels (more than {MAX_LABELS})")
    return {key: _unescape(value) for key, value in pairs}


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return _ESCAPES.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)
