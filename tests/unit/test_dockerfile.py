"""The image recipe, checked without a container engine: the Dockerfile is parsed as Docker
parses it (continuations, exec-form JSON) and its promises are checked one by one. Its
HEALTHCHECK command and ENTRYPOINT are run for real in tests/integration/test_dockerfile_healthcheck.py."""

import re
from pathlib import Path

from tests.dockerfile import (
    DOCKERFILE,
    DOCKERIGNORE,
    FINAL,
    PARSED,
    ROOT,
    env_of_final,
    exec_form,
    final,
    healthcheck_argv,
    stages,
)


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
