"""The log lines as the exporter writes them (the real structlog set-up, captured on stderr): no
line carries the password of a URL, whether it sits in the event's text, in a value, in a nested
value or in a traceback; lines without credentials are written as they were."""

from __future__ import annotations

import json

import pytest
import structlog

from exporter import log as logging_setup
from exporter.log import Episode, get_logger

SECRET = "http://admin:hunter2@vllm:8000/metrics"
SHOWN = "http://admin:***@vllm:8000/metrics"


@pytest.fixture(autouse=True)
def _restore_structlog():
    yield
    structlog.reset_defaults()


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    err = capsys.readouterr().err
    assert "hunter2" not in err and "s3cr3t" not in err
    return [json.loads(line) for line in err.splitlines()]


def test_values_and_the_event_text_are_redacted(capsys):
    logging_setup.configure("json", "debug")
    log = get_logger(source="vllm", url=SECRET)
    log.warning(f"cannot read {SECRET}", detail=f"GET {SECRET}: [Errno 111] Connection refused")
    log.info("dcgm_waiting", url="https://dcgm:9400/metrics?token=s3cr3t", seconds=2.0, retries=3, up=False)
    first, second = _lines(capsys)
    assert first["event"] == f"cannot read {SHOWN}"
    assert first["detail"] == f"GET {SHOWN}: [Errno 111] Connection refused"
    assert (first["url"], first["source"], first["level"]) == (SHOWN, "vllm", "warning")
    assert second["url"] == "https://dcgm:9400/metrics?token=***"
    assert (second["seconds"], second["retries"], second["up"]) == (2.0, 3, False)


def test_nested_values_and_objects_are_redacted(capsys):
    logging_setup.configure("json", "info")
    get_logger().info(
        "sources", urls=[SECRET, "http://vllm:8000"], by_name={"vllm": (SECRET,)}, error=ConnectionError(SECRET)
    )
    (line,) = _lines(capsys)
    assert line["urls"] == [SHOWN, "http://vllm:8000"]
    assert line["by_name"] == {"vllm": [SHOWN]}
    assert line["error"] == SHOWN


def test_a_traceback_is_redacted(capsys):
    logging_setup.configure("json", "info")
    try:
        raise ConnectionError(f"cannot connect to {SECRET}")
    except ConnectionError:
        get_logger().exception("tick_failed")
    (line,) = _lines(capsys)
    assert f"ConnectionError: cannot connect to {SHOWN}" in str(line["exception"])


def test_an_episode_detail_is_redacted(capsys):
    logging_setup.configure("json", "info")
    episode = Episode(get_logger(), "vllm")
    episode.failed("connect", f"cannot reach {SECRET}")
    (line,) = _lines(capsys)
    assert line["detail"] == f"cannot reach {SHOWN}" and line["event"] == "source_lost"


def test_the_console_format_is_redacted_too(capsys):
    logging_setup.configure("console", "info")
    get_logger().warning("source_lost", detail=SECRET)
    err = capsys.readouterr().err
    assert SHOWN in err and "hunter2" not in err


def test_a_line_without_credentials_is_unchanged(capsys):
    logging_setup.configure("json", "info")
    values = {"url": "http://[::1]:8000/metrics?format=text", "gpus": ["GPU-1", "GPU-2"], "watts": 412.5, "n": None}
    get_logger().info("started at http://127.0.0.1:9477/", **values)
    (line,) = _lines(capsys)
    assert line["event"] == "started at http://127.0.0.1:9477/"
    assert {key: line[key] for key in values} == values
