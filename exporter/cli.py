"""`token-economy-exporter run`: flags over environment over file, then the loop until SIGTERM.

Signals, as an orchestrator or an operator sends them:
- SIGTERM, SIGINT and SIGQUIT stop cleanly (the server and the sources closed, exit status 0)
  within 5 s, even while a read hangs. SIGQUIT's usual meaning is "quit"; its core dump would
  only lose the totals' last scrape, so it stops like SIGTERM.
- SIGHUP re-reads the web config file (--web-config-file) at once, as its watcher does when the
  file or a certificate changes; without one it is ignored with a log line. The process never
  dies of a closed terminal or of a reload sent by habit (the other settings are read at start-up).
- SIGUSR1 and SIGUSR2 are ignored with a log line: they mean nothing here, and a stray one (a
  log-rotation script, a mistaken `kill -USR1`) must not take the metrics down.
The handler only queues the signal; a thread of its own logs it and acts, so a signal never
logs from inside another log call on the main thread. Before the exporter runs (while it opens
its sources), a stop signal ends start-up at once."""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

from exporter import __version__
from exporter.config import (
    CONFIG_FILE_ENV,
    Settings,
    default_text,
    describe_errors,
    env_name,
    flag_name,
    load_settings,
)
from exporter.redact import redact_text

EXIT_USAGE = 2

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
IGNORED_SIGNALS = {
    signal.SIGHUP: "settings are read at start-up only (SIGHUP re-reads only a --web-config-file); "
    "restart the exporter to change them",
    signal.SIGUSR1: "SIGUSR1 has no meaning here; send SIGTERM to stop",
    signal.SIGUSR2: "SIGUSR2 has no meaning here; send SIGTERM to stop",
}


class Signals:
    """Turns the signals above into a stop event and log lines (see the module's docstring)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._received: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._running = False
        self._previous: dict[int, Any] = {}
        self._reload: Callable[[], object] | None = None

    def install(self) -> None:
        for sig in (*STOP_SIGNALS, *IGNORED_SIGNALS):
            self._previous[sig] = signal.signal(sig, self.handle)

    def restore(self) -> None:
        """The handlers from before `install` (main() may run inside another program, a test)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous.clear()

    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        if not self._running and signum in STOP_SIGNALS:
            raise SystemExit(0)  # still starting: nothing to close yet
        self._received.put(signum)  # SimpleQueue.put is safe in a signal handler; logging is not

    def serve(self, log: FilteringBoundLogger, reload: Callable[[], object] | None = None) -> threading.Event:
        """From now on, signals are logged and acted on by a thread of their own; SIGHUP calls
        `reload` where one is given (the web config's re-read)."""
        self._reload = reload
        self._running = True
        threading.Thread(target=self._act, args=(log,), name="signals", daemon=True).start()
        return self.stop

    def _act(self, log: FilteringBoundLogger) -> None:
        while True:
            signum = self._received.get()
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP and self._reload is not None:
                log.info("signal_reload", signal=name, what="web_config_file")
                try:  # logs web_config_reloaded, or web_config_reload_failed and keeps the old one
                    self._reload()
                except Exception as err:  # this thread must live on: it is what stops the process
                    log.error("reload_failed", error=repr(err))
            elif signum in IGNORED_SIGNALS:
                log.warning("signal_ignored", signal=name, reason=IGNORED_SIGNALS[signal.Signals(signum)])
            elif self.stop.is_set():
                log.info("signal_while_stopping", signal=name)
            else:
                log.info("stopping", signal=name)
                self.stop.set()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="token-economy-exporter",
        description="What each vLLM input and output token costs, in joules, money and CO2, for Prometheus.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="run the sidecar beside a vLLM server",
        description="Every flag can also be set as TOKEN_ECONOMY_<NAME> in the environment.",
    )
    run.add_argument("--config", metavar="FILE", help=f"TOML file of settings (also {CONFIG_FILE_ENV})")
    for name, field in Settings.model_fields.items():
        run.add_argument(
            flag_name(name),
            dest=name,
            metavar=name.upper(),
            default=None,
            help=f"{field.description} [{env_name(name)}; default: {default_text(name)}]",
        )
    simulate = commands.add_parser(
        "simulate",
        help="run a simulated vLLM server and GPU, and the exporter on them (no GPU needed)",
        description="A simulated vLLM engine and GPU behind a local endpoint, the exporter scraping it, and a live "
        "summary of what it attributes next to the simulator's ground truth.",
    )
    from exporter.simulate import add_arguments

    add_arguments(simulate)
    return parser


def _fail(lines: Sequence[str]) -> int:
    for line in lines:
        # A source's start-up error may name the URL it could not read, password and all.
        print(f"token-economy-exporter: error: {redact_text(line)}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "simulate":
        from exporter.simulate import run as simulate

        return simulate(args)
    values = {name: getattr(args, name) for name in Settings.model_fields}
    if args.config:
        if not os.path.isfile(args.config):
            return _fail([f"setting config (--config / {CONFIG_FILE_ENV}): no such file: {args.config}"])
        os.environ[CONFIG_FILE_ENV] = args.config
    try:
        settings = load_settings(values)
    except ValidationError as err:
        return _fail(describe_errors(err))
    except (OSError, ValueError) as err:  # an unreadable or malformed TOML file
        return _fail([f"setting config ({CONFIG_FILE_ENV}): {err}"])

    from exporter.app import StartupError, build

    signals = Signals()
    signals.install()  # before the sources open: a SIGHUP during start-up must not kill either
    try:
        try:
            app = build(settings)
        except StartupError as err:
            return _fail([str(err)])
        clean = app.run(signals.serve(app.log, app.reload if app.web is not None else None))
    finally:
        signals.restore()
    if not clean:
        # A thread is stuck in a read or a close that will not return: do not wait for it at exit.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
