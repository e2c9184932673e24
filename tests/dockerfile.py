"""The image recipe as Docker reads it, for the tests that check the Dockerfile's promises
(tests/unit/test_dockerfile.py) and the one that runs its HEALTHCHECK and ENTRYPOINT against a
live exporter (tests/integration/test_dockerfile_healthcheck.py): continuation lines joined,
comments dropped, exec-form JSON checked."""

import json
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) in order, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return out


def stages(parsed):
    result = []
    for keyword, args in parsed:
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


PARSED = instructions(DOCKERFILE.read_text())
FINAL = stages(PARSED)[-1]


def exec_form(args: str) -> list[str]:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"not exec form (a JSON array), so it would need a shell: {args}")
    assert isinstance(value, list) and value and all(isinstance(v, str) for v in value), args
    return value


def final(keyword: str) -> list[str]:
    return [args for kw, args in FINAL if kw == keyword]


def env_of_final() -> dict[str, str]:
    env = {}
    for args in final("ENV"):
        for item in shlex.split(args):
            key, sep, value = item.partition("=")
            assert sep, f"use ENV KEY=VALUE: {args}"
            env[key] = value
    return env


def healthcheck_argv() -> list[str]:
    (args,) = final("HEALTHCHECK")
    options, sep, command = args.partition("CMD ")
    assert sep, "HEALTHCHECK must run a command"
    assert all(opt.startswith("--") for opt in options.split()), options
    return exec_form(command.strip())
