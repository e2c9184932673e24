"""`token-economy-exporter run`: flags over environment over file, then the loop until SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence

from pydantic import ValidationError

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

EXIT_USAGE = 2


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
        print(f"token-economy-exporter: error: {line}", file=sys.stderr)
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

    try:
        app = build(settings)
    except StartupError as err:
        return _fail([str(err)])

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    app.run(stop)
    return 0
