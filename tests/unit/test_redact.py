"""No secret leaves the process: a URL's password, a user given alone (often a token) and query
parameters that carry credentials become ***; everything else in a URL, and every URL without
credentials, stays as it was, character for character."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import pytest

from exporter.redact import MASK, redact_text, redact_url, redact_value


@pytest.mark.parametrize(
    "url, shown",
    [
        ("http://user:hunter2@vllm:8000", "http://user:***@vllm:8000"),
        ("http://user:hunter2@vllm:8000/", "http://user:***@vllm:8000/"),
        ("https://user:hunter2@vllm.ml.svc/v1/metrics", "https://user:***@vllm.ml.svc/v1/metrics"),
        ("http://:hunter2@vllm", "http://:***@vllm"),  # a password without a user
        ("http://ghp_abc123@vllm/", "http://***@vllm/"),  # a user alone is often a token
        ("http://user:@vllm", "http://user:***@vllm"),
        ("http://user:p@ss:w@rd@vllm:8000/x", "http://user:***@vllm:8000/x"),  # "@" in the password, unencoded
        ("http://user:p%40ss@vllm", "http://user:***@vllm"),
        ("http://user:hunter2@[::1]:8000/metrics", "http://user:***@[::1]:8000/metrics"),
        ("http://user:hunter2@[fe80::1%25eth0]:8000", "http://user:***@[fe80::1%25eth0]:8000"),
        ("http://user:hunter2@10.0.3.17:9400/metrics", "http://user:***@10.0.3.17:9400/metrics"),
        ("HTTPS://USER:HUNTER2@VLLM", "HTTPS://USER:***@VLLM"),
    ],
)
def test_user_information_is_redacted(url, shown):
    assert redact_url(url) == shown
    assert "hunter2" not in shown.lower() and "ghp_abc123" not in shown


@pytest.mark.parametrize(
    "url, shown",
    [
        ("http://dcgm:9400/metrics?token=abc", "http://dcgm:9400/metrics?token=***"),
        ("http://dcgm/metrics?access_token=abc&format=text", "http://dcgm/metrics?access_token=***&format=text"),
        ("http://dcgm/metrics?format=text&api_key=abc", "http://dcgm/metrics?format=text&api_key=***"),
        ("http://dcgm/?apikey=abc;page=2", "http://dcgm/?apikey=***;page=2"),
        ("http://dcgm/?X-API-KEY=abc", "http://dcgm/?X-API-KEY=***"),
        ("http://dcgm/?password=abc&passwd=def&pwd=ghi", "http://dcgm/?password=***&passwd=***&pwd=***"),
        ("http://dcgm/?client_secret=abc", "http://dcgm/?client_secret=***"),
        ("http://dcgm/?auth=abc&Authorization=Bearer%20x", "http://dcgm/?auth=***&Authorization=***"),
        (
            "http://s3/b/o?X-Amz-Credential=AK%2F1&X-Amz-Signature=f00",
            "http://s3/b/o?X-Amz-Credential=***&X-Amz-Signature=***",
        ),
        ("http://blob/c?sv=2022&sig=abc%3D", "http://blob/c?sv=2022&sig=***"),
        ("http://dcgm/?session=abc&jwt=e.y.J", "http://dcgm/?session=***&jwt=***"),
        ("http://dcgm/#access_token=abc&state=1", "http://dcgm/#access_token=***&state=1"),
        ("http://u:pw@dcgm/?token=abc", "http://u:***@dcgm/?token=***"),
    ],
)
def test_credentials_in_parameters_are_redacted(url, shown):
    assert redact_url(url) == shown
    assert MASK in shown


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000",
        "http://vllm:8000/",
        "https://vllm.ml-serving.svc.cluster.local/v1",
        "http://[::1]:8000/metrics",
        "http://[2001:db8::7]/metrics",
        "http://dcgm:9400/metrics?format=text&page=2",
        "http://dcgm/?design=a&signal=b&keyboard=c&monkeys=d",  # "sig", "key" only as words
        "http://dcgm/?token=",  # nothing to hide
        "http://dcgm/?token",
        "http://dcgm/users/@me/metrics",  # an "@" in the path is not user information
        "http://dcgm/a#section",
        "vllm:8000",
        "not a url at all",
        "",
    ],
)
def test_a_url_without_credentials_is_unchanged(url):
    assert redact_url(url) == url


def test_text_with_urls_in_it():
    text = (
        "GET http://admin:hunter2@vllm:8000/metrics failed: [Errno 111] Connection refused; "
        "'https://dcgm:9400/metrics?token=s3cr3t' (retry http://vllm:8000/metrics)"
    )
    assert redact_text(text) == (
        "GET http://admin:***@vllm:8000/metrics failed: [Errno 111] Connection refused; "
        "'https://dcgm:9400/metrics?token=***' (retry http://vllm:8000/metrics)"
    )
    assert redact_text("plain message, no url: a:b@c") == "plain message, no url: a:b@c"
    assert redact_text('url="http://u:p@h/"') == 'url="http://u:***@h/"'
    assert redact_text("<a href=http://u:p@h/>") == "<a href=http://u:***@h/>"


def test_values_of_every_shape():
    secret = "http://u:hunter2@vllm:8000"
    shown = "http://u:***@vllm:8000"
    assert redact_value(secret) == shown
    assert redact_value({"url": secret, secret: 1}) == {"url": shown, shown: 1}
    assert redact_value([secret, 1, None]) == [shown, 1, None]
    assert redact_value((secret, 2.5, True)) == (shown, 2.5, True)
    assert redact_value({secret}) == {shown}
    assert redact_value({"nested": [{"deep": (secret,)}]}) == {"nested": [{"deep": (shown,)}]}
    error = ConnectionError(f"cannot reach {secret}")
    assert redact_value(error) == f"cannot reach {shown}"
    plain = ConnectionError("refused")
    assert redact_value(plain) is plain
    path = Path("/run/token-economy")
    assert redact_value(path) is path
    Pair = namedtuple("Pair", "a b")
    assert redact_value(Pair(secret, 1)) == f"Pair(a='{shown}', b=1)"


def test_punctuation_after_a_url_in_text_stays_text():
    assert redact_text("cannot read http://h/m?token=abc: refused") == "cannot read http://h/m?token=***: refused"
    assert redact_text("see http://u:p@h/m.") == "see http://u:***@h/m."
    assert redact_text("(at http://u:p@[::1]), retrying") == "(at http://u:***@[::1]), retrying"
    assert redact_text("http://u:p@h:8000, http://v:q@k:8000;") == "http://u:***@h:8000, http://v:***@k:8000;"
