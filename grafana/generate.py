"""Write the dashboards' JSON from the code: `python -m grafana.generate` (from the repository root).

`python -m grafana.generate --check` writes nothing and exits 1 when a committed JSON file differs
from what the code builds (what CI runs, through tests/unit/test_grafana_dashboards.py).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from grafana import overview

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"

# file name -> builder of the dashboard model
DASHBOARDS: dict[str, Callable[[], object]] = {
    "token-economy-overview.json": overview.build,
}


def render(build: Callable[[], object]) -> str:
    """The dashboard as committed: 2-space indented JSON, keys in the SDK's order, final newline."""
    return json.dumps(build(), cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"


def rendered() -> dict[Path, str]:
    return {DASHBOARD_DIR / name: render(build) for name, build in DASHBOARDS.items()}


def drift() -> list[str]:
    """One unified diff per dashboard whose committed JSON differs from the code (empty: none)."""
    diffs = []
    for path, text in rendered().items():
        committed = path.read_text(encoding="utf-8") if path.exists() else ""
        if committed != text:
            diffs.append(
                "".join(
                    difflib.unified_diff(
                        committed.splitlines(keepends=True),
                        text.splitlines(keepends=True),
                        f"{path.name} (committed)",
                        f"{path.name} (from the code)",
                        n=2,
                    )
                )
                or f"{path}: missing\n"
            )
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the committed JSON drifted")
    args = parser.parse_args(argv)
    if args.check:
        diffs = drift()
        for diff in diffs:
            sys.stdout.write(diff)
        if diffs:
            print("dashboards drifted from grafana/*.py: run python -m grafana.generate", file=sys.stderr)
        return 1 if diffs else 0
    DASHBOARD_DIR.mkdir(parents=True, exist_ok=True)
    for path, text in rendered().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
