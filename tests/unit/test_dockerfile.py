"""The image recipe, checked without a container engine: the Dockerfile is parsed as Docker
parses it (continuations, exec-form JSON) and its promises are checked one by one; its
HEALTHCHECK command and ENTRYPOINT are then run for real against a live exporter."""

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
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


def test_every_stage_builds_on_a_slim_python_3_11_or_newer():
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", DOCKERFILE.read_text(), re.M))
    images = [args.split()[0] for kw, args in PARSED if kw == "FROM"]
    assert len(images) >= 1
    for written in images:
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], written)
        match = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image)
        assert match and int(match.group(1)) >= 11, image


def test_the_final_stage_runs_as_a_numeric_non_root_user():
    users = final("USER")
    assert users, "the final stage has no USER: it would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, users[-1]
    assert group == "" or (group.isdigit() and int(group) != 0), users[-1]
    # Nothing after USER may switch back.
    assert [kw for kw, _ in FINAL].index("USER") > max(i for i, (kw, _) in enumerate(FINAL) if kw in ("RUN", "COPY"))


def test_entrypoint_cmd_and_healthcheck_need_no_shell():
    entrypoint, cmd = exec_form(final("ENTRYPOINT")[-1]), exec_form(final("CMD")[-1])
    assert entrypoint[:2] != ["/bin/sh", "-c"] and cmd[:2] != ["/bin/sh", "-c"]
    argv = healthcheck_argv()
    assert "sh" not in Path(argv[0]).name and Path(argv[0]).name.startswith("python")
    assert "/healthz" in " ".join(argv)
    # The entrypoint is this package: `python -m exporter`, whose `run` the CMD names.
    assert entrypoint[1:] == ["-m", "exporter"] and (ROOT / "exporter" / "__main__.py").is_file()
    assert cmd == ["run"]


def test_no_remote_add_and_copies_from_the_context_only():
    for keyword, args in PARSED:
        if keyword == "ADD":
            assert not re.search(r"(https?|git)://|git@", args), f"ADD of a remote URL: {args}"
    for args in final("COPY"):
        assert args.startswith("--from="), f"the final stage takes only the build stage's output: {args}"


def dockerignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a directory covers
    everything below it; `!` re-includes."""
    ignored = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[: i + 1])) for i in range(len(parts))):
            ignored = not negate
    return ignored


def test_the_build_context_holds_what_the_copies_need_and_nothing_else():
    sources = []
    for args in (a for kw, a in PARSED if kw == "COPY" and not a.startswith("--from=")):
        *srcs, _dest = args.split()
        sources += srcs
    assert sources, "the build stage copies nothing"
    for src in sources:
        assert (ROOT / src).exists(), src
        files = (
            [src]
            if (ROOT / src).is_file()
            else [str(p.relative_to(ROOT)) for p in (ROOT / src).rglob("*.py") if "__pycache__" not in p.parts]
        )
        assert files and not any(dockerignored(f) for f in files), f"{src} is excluded by .dockerignore"
    for outside in (
        "tests/unit/test_cli.py",
        ".git/HEAD",
        "helm/token-economy-exporter/Chart.yaml",
        ".venv/bin/python",
        "exporter/__pycache__/cli.cpython-311.pyc",
    ):
        assert dockerignored(outside), f"{outside} would be sent to the build"
    # pyproject.toml names README.md as the readme: the build needs both.
    assert {"pyproject.toml", "README.md"} <= set(sources)


def test_read_only_root_filesystem_is_possible():
    env = env_of_final()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "Python would try to write bytecode at run time"
    build = " ".join(a for kw, a in stages(PARSED)[0] if kw == "RUN")
    assert "compileall" in build, "without bytecode compiled at build time every start recompiles"
    assert not final("VOLUME"), "a VOLUME is a writable path the sidecar does not need"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_argv(argv: list[str]) -> list[str]:
    # The image's interpreter is its venv's python; here it is this test's.
    assert Path(argv[0]).name.startswith("python"), argv
    return [sys.executable, *argv[1:]]


def test_the_healthcheck_passes_against_a_running_exporter_and_fails_without_one(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEN_ECONOMY_")}
    env.update(env_of_final())
    env.update(
        PATH=os.environ.get("PATH", ""),
        PYTHONPATH=str(ROOT),
        TOKEN_ECONOMY_LISTEN_ADDRESS=f"127.0.0.1:{port}",
        TOKEN_ECONOMY_ENERGY_SOURCE="phase-model",
        TOKEN_ECONOMY_VLLM_URL=f"http://127.0.0.1:{free_port()}",
        TOKEN_ECONOMY_INTERVAL="0.5",
    )
    check = image_argv(healthcheck_argv())
    argv = image_argv(exec_form(final("ENTRYPOINT")[-1])) + exec_form(final("CMD")[-1])
    exporter = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(check, env=env, capture_output=True, timeout=10, check=False).returncode != 0:
            assert exporter.poll() is None, exporter.stdout.read().decode()
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.2)
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)
    assert exporter.returncode == 0
    assert subprocess.run(check, env=env, capture_output=True, timeout=10, check=False).returncode != 0
    assert list(tmp_path.iterdir()) == [], "the exporter wrote into its working directory"
