"""Real Prometheus and Alertmanager servers, a webhook receiver and a load generator, for the
integration tests. Every server listens on 127.0.0.1 on a free port, keeps its config, data and
log in a directory of the test's own, runs in its own session, and is stopped by its PID.

The tools are the Debian packages `prometheus` (with `promtool`) and `prometheus-alertmanager`,
which scripts/test.sh installs with apt-get. A missing tool fails the test with the command that installs it: a
skipped integration suite would pass CI while proving nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.vllm_server import HOST, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES = REPO_ROOT / "deploy" / "prometheus" / "token-economy.rules.yml"
RULE_TESTS = sorted((REPO_ROOT / "deploy" / "prometheus" / "tests").glob("*.test.yml"))
DASHBOARDS = sorted((REPO_ROOT / "grafana" / "dashboards").glob("*.json"))

INSTALL_HINT = (
    "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
    "--no-install-recommends prometheus prometheus-alertmanager"
)


def tool(*names: str) -> str:
    """The first of `names` found on PATH; fails the test (never skips) when none is."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"{' or '.join(names)} not found on PATH. Install the real tools:\n  {INSTALL_HINT}", pytrace=False)


def stop_process(proc: subprocess.Popen[Any]) -> int | None:
    """SIGTERM by its PID, SIGKILL if it has not ended 10 s later; its exit status."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    """Poll predicate() until it returns something truthy; that value. AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Server:
    """A child process on a loopback port, with a log file; stopped by PID (SIGTERM, then SIGKILL)."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, ready_timeout: float = 30.0) -> Server:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode} before ready:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/-/ready", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{self.name} not ready in {ready_timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        stop_process(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class Prometheus(Server):
    """A Prometheus that scrapes `targets` every second and evaluates `rule_files` every second."""

    name = "prometheus"

    def __init__(
        self,
        workdir: Path,
        targets: Iterable[str],
        rule_files: Iterable[Path] = (),
        alertmanager: str | None = None,
        external_labels: dict[str, str] | None = None,
        scrape_options: dict[str, Any] | None = None,
    ) -> None:
        """`scrape_options`: more keys of the scrape config (scheme, tls_config, basic_auth...)."""
        super().__init__(workdir)
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "900ms",
                "evaluation_interval": "1s",
                "external_labels": dict(external_labels or {}),
            },
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": "token-economy",
                    "static_configs": [{"targets": list(targets)}],
                    **(scrape_options or {}),
                }
            ],
        }
        if alertmanager:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def command(self) -> list[str]:
        return [
            tool("prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
            # Alerts reach Alertmanager a second after they fire, not a minute.
            "--rules.alert.resend-delay=1s",
        ]

    def api(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10.0)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def query_range(self, expr: str, seconds: float, step: str = "1s") -> list[dict]:
        end = time.time()
        return self.api("query_range", query=expr, start=end - seconds, end=end, step=step)["result"]

    def rule_groups(self) -> list[dict]:
        return self.api("rules")["groups"]


class Alertmanager(Server):
    """An Alertmanager that sends every alert to one webhook, grouped by alertname, within a second."""

    name = "alertmanager"

    def __init__(self, workdir: Path, webhook_url: str, group_by: list[str]) -> None:
        super().__init__(workdir)
        config = {
            "route": {
                "receiver": "webhook",
                "group_by": group_by,
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [{"name": "webhook", "webhook_configs": [{"url": webhook_url, "send_resolved": False}]}],
        }
        self.config_path = workdir / "alertmanager.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def command(self) -> list[str]:
        return [
            tool("prometheus-alertmanager", "alertmanager"),
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
            # No cluster: without this it also listens for peers on 0.0.0.0.
            "--cluster.listen-address=",
        ]

    def alerts(self) -> list[dict]:
        return httpx.get(f"{self.url}/api/v2/alerts", timeout=5.0).json()


class WebhookReceiver:
    """An HTTP server on loopback that records every JSON body POSTed to it (Alertmanager's webhook)."""

    def __init__(self) -> None:
        self.payloads: list[dict] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.payloads.append({"received": time.monotonic(), **json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/alerts"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def alerts(self, **labels: str) -> list[dict]:
        """Every alert received so far whose labels include `labels`, with its arrival time."""
        with self._lock:
            return [
                {"received": p["received"], **a}
                for p in self.payloads
                for a in p["alerts"]
                if labels.items() <= a["labels"].items()
            ]


class LoadGenerator:
    """Keeps a vLLM server busy from a few threads: short prompts, and prompts that share a long
    prefix (whole KV blocks, so vLLM's prefix cache hits and cached_input tokens appear)."""

    # About 280 tokens of the test model: two whole 128-token KV blocks, and room for the answer
    # within the server's 512-token context.
    SHARED_PREFIX = "You are a careful assistant who explains the economics of tokens. " * 10

    def __init__(self, server, workers: int = 2, pause_s: float = 0.2) -> None:
        self._server = server
        self._stop = threading.Event()
        self._pause_s = pause_s
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True) for i in range(workers)
        ]
        self.requests = 0
        self.errors: list[str] = []

    def _run(self, worker: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            if i % 2:
                prompt = f"{self.SHARED_PREFIX}Question {worker}.{i}: why does decoding cost more?"
            else:
                prompt = f"Worker {worker} request {i}: " + "count tokens " * (4 + i % 16)
            try:
                self._server.complete(prompt, max_tokens=8 + (i % 4) * 8)
                self.requests += 1
            except Exception as exc:
                self.errors.append(repr(exc))
            # Leave the CPU to the exporter and Prometheus now and then (2 cores in CI).
            self._stop.wait(self._pause_s)

    def __enter__(self) -> LoadGenerator:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def dashboard_queries(path: Path) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query of every panel of a dashboard JSON file."""
    board = json.loads(path.read_text())
    out = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                out.append((inner["title"], target["refId"], target["expr"]))
    return out


def grafana_interpolate(expr: str, *, scrape_interval_s: float, step_s: float, range_s: float) -> str:
    """Substitute what Grafana substitutes: every template variable ($model_name, $instance, ...)
    by a regex that matches all (the dashboards' `All` value, `.*`), and the built-in intervals the
    way Grafana computes them ($__rate_interval = max($__interval + scrape interval, 4 x scrape))."""
    rate_interval = max(step_s + scrape_interval_s, 4 * scrape_interval_s)
    expr = expr.replace("$__rate_interval", f"{rate_interval:g}s")
    expr = expr.replace("$__interval", f"{step_s:g}s").replace("$__range", f"{range_s:g}s")
    expr = re.sub(r"\$\{?(?!__)[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)
    assert "$" not in expr, expr
    return expr


def rules_with_alert_changed(source: Path, dest: Path, alert: str, threshold: str, for_: str) -> Path:
    """A copy of a rules file where one alert's threshold (the number after `>` that ends its
    expr) and its `for:` are replaced; everything else is the shipped file as it is."""
    doc = yaml.safe_load(source.read_text())
    found = 0
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"], n = re.subn(r">\s*[0-9][0-9.eE+-]*\s*$", f"> {threshold}", rule["expr"].strip())
                assert n == 1, f"{alert}: no `> number` at the end of {rule['expr']!r}"
                rule["for"] = for_
                found += 1
    assert found == 1, f"{alert} appears {found} times in {source}"
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest
