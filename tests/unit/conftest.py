"""The unit folder is the fast loop: its tests start no processes and open no network sockets.
Every test here runs with both refused; one that tries fails at once, naming what it tried.
Tests that need a socket, a server or a child process belong in tests/integration.

Refused: connect, connect_ex, bind and sendto on an AF_INET or AF_INET6 socket (so no client,
no server, no port probe, no datagram), and name lookups; subprocess.Popen and everything built
on it (subprocess.run, os.popen, asyncio's subprocesses); the forks, spawns and execs of the os
module; and the fork_exec that multiprocessing's spawn and forkserver use. Allowed: threads, and
AF_UNIX sockets, such as the socket pairs asyncio and selectors wake themselves with.

The refusal is pytest.fail, which no `except Exception` catches; a violation that is caught
anyway (a bare except, a thread that dies of it) still fails the test when it ends."""

from __future__ import annotations

import _posixsubprocess
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

MESSAGE = "unit tests start no processes and open no sockets: move this test to tests/integration"
NETWORK_FAMILIES = (socket.AF_INET, socket.AF_INET6)
OS_PROCESS_CALLS = ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "execv", "execve")

_failed_already = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if call.when in ("setup", "call") and report.failed:
        item.stash[_failed_already] = True
    return report


@pytest.fixture(autouse=True)
def no_sockets_or_processes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    attempts: list[str] = []

    def refuse(what: str) -> None:
        attempts.append(what)
        pytest.fail(f"{MESSAGE} ({what})")

    def network_only(name: str) -> Callable[..., Any]:
        original = getattr(socket.socket, name)

        def guarded(sock: socket.socket, address: Any, *args: Any) -> Any:
            if sock.family in NETWORK_FAMILIES:
                refuse(f"socket {name} to {address!r}")
            return original(sock, address, *args)

        return guarded

    def popen(process: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        refuse(f"subprocess.Popen of {args!r}")

    def refused(what: str) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            refuse(what)

        return guarded

    for name in ("connect", "connect_ex", "bind", "sendto"):
        monkeypatch.setattr(socket.socket, name, network_only(name))
    monkeypatch.setattr(socket, "getaddrinfo", refused("a name lookup (getaddrinfo)"))
    monkeypatch.setattr(subprocess.Popen, "_execute_child", popen)
    monkeypatch.setattr(_posixsubprocess, "fork_exec", refused("a child process (fork_exec)"))
    for name in OS_PROCESS_CALLS:
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refused(f"os.{name}"))

    yield

    if attempts and not request.node.stash.get(_failed_already, False):
        pytest.fail(f"{MESSAGE}; the test caught or outlived the refusal of: {', '.join(attempts)}", pytrace=False)
