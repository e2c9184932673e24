"""Secrets out of URLs, and out of any text or value that holds URLs, so that what the exporter
shows (its landing page, its log lines, its start-up errors) never carries a password it was given.

A URL keeps its scheme, host, port, path and the names of its parameters, so it still says where
the exporter reads from; the password of its user information becomes `***` (and a user given
alone, often a token itself, `***` too), and so does the value of every query or fragment
parameter whose name looks like a credential (token, key, password, secret, auth, signature...).
A URL without any of these comes back unchanged, character for character. Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping

MASK = "***"

# A URL inside free text (an error message, a log line): a scheme, "://" and everything up to
# the first blank, quote or angle bracket, less the punctuation that ends a clause ("cannot read
# http://host/metrics?token=abc: refused" ends the token before the colon).
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>`]*[^\s\"'<>`.,;:!?)}]")
# Where the authority (user information, host, port) ends, as urlsplit and WHATWG parse it.
_AUTHORITY_END = re.compile(r"[/?#]")
# A parameter: its separator, its name and its value, in a query or a fragment.
_PARAMETER = re.compile(r"(?P<lead>[?#&;])(?P<name>[^=&;#]*)=(?P<value>[^&;#]*)")
# Names of parameters that carry credentials: access_token, api_key, X-Amz-Signature, sig (SAS),
# password, client_secret, auth... Short words count only as whole words of the name ("sig", not
# "design"; "key" ends a word, so "apikey" but not "keyboard").
_SECRET_NAME = re.compile(
    r"token|secret|passw|pwd|auth|credential|signature|key(?![a-z])|(?<![a-z])(?:sig|session|jwt)(?![a-z])",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """`url` with its credentials replaced by `***`; unchanged when it holds none (or is not a URL)."""
    start = url.find("://")
    if start < 0:
        return url
    start += 3
    end = _AUTHORITY_END.search(url, start)
    stop = end.start() if end else len(url)
    authority = url[start:stop]
    at = authority.rfind("@")  # the host follows the last "@" (a password may hold one, unencoded)
    if at >= 0:
        user, colon, _ = authority[:at].partition(":")
        authority = (f"{user}:{MASK}" if colon else MASK) + authority[at:]
    rest = url[stop:]
    if "=" in rest:
        rest = _PARAMETER.sub(_mask_parameter, rest)
    return url[:start] + authority + rest


def _mask_parameter(match: re.Match[str]) -> str:
    if not match["value"] or not _SECRET_NAME.search(match["name"]):
        return match[0]
    return f"{match['lead']}{match['name']}={MASK}"


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted (see `redact_url`)."""
    if "://" not in text:
        return text
    return _URL.sub(lambda match: redact_url(match[0]), text)


def redact_value(value: object) -> object:
    """A value to log or show, with the URLs of every string in it redacted: strings, the keys
    and values of mappings, the items of lists, tuples and sets. Numbers, booleans and None come
    back as they are; another object comes back as it is unless its text holds a URL with
    credentials, in which case its text comes back, redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {redact_value(key): redact_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)) and type(value) in (list, tuple, set, frozenset):
        return type(value)(redact_value(item) for item in value)  # not a named tuple: that takes no iterable
    for text in (str(value), repr(value)):
        if redact_text(text) != text:
            return redact_text(str(value))
    return value
