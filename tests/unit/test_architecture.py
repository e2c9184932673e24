"""The layering the code is meant to have, checked on its imports. The data flows sources -> core
-> ledger -> collector/server; each part imports only parts beneath it (the core nothing of the
package, the sources the core's types, the ledger the core, the collector the ledger and the
catalogue...), and the core is pure. A new import that breaks a rule fails here, naming it.

Read from the source text (ast), so nothing is imported or run; imports inside functions count."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "exporter"

# Which parts of the package each part may import (itself always). The core imports nothing of
# the package outside itself; the sources only the core's types; and nothing imports the wiring.
ALLOWED: dict[str, set[str]] = {
    "exporter.attribution": set(),
    "exporter.sources": {"exporter.attribution"},
    # The vLLM stat-logger plugin runs in vLLM's process: it counts, and measures through the NVML
    # source; it never attributes. Its family names are the sources' (sources/plugin_families.py):
    # the contract lives with the side that reads it, so no import climbs back up.
    "exporter.plugin": {"exporter", "exporter.attribution", "exporter.sources"},
    "exporter.ledger": {"exporter.attribution"},
    "exporter.catalogue": {"exporter.attribution", "exporter.ledger"},
    "exporter.collector": {"exporter.attribution", "exporter.ledger", "exporter.catalogue"},
    "exporter.redact": set(),  # a leaf: credentials out of URLs and text, for logs, pages and errors
    "exporter.log": {"exporter.redact"},
    # TLS, basic auth and headers from an exporter-toolkit web config file: a leaf the server and
    # the wiring use.
    "exporter.webconfig": set(),
    "exporter.server": {"exporter", "exporter.ledger", "exporter.webconfig"},
    "exporter.loop": {"exporter.attribution", "exporter.ledger", "exporter.log", "exporter.sources"},
    "exporter.config": {"exporter.attribution", "exporter.redact", "exporter.sources"},
    # The simulator counts its steps with the plugin's own counter and table, so the families it
    # serves mean what the real plugin's mean (and the version it reports is the package's).
    "exporter.sim": {"exporter", "exporter.attribution", "exporter.plugin", "exporter.sources"},
    "exporter.app": {
        "exporter",
        "exporter.attribution",
        "exporter.sources",
        "exporter.ledger",
        "exporter.catalogue",
        "exporter.collector",
        "exporter.log",
        "exporter.server",
        "exporter.loop",
        "exporter.config",
        "exporter.webconfig",
    },
    "exporter.simulate": {
        "exporter.app",
        "exporter.attribution",
        "exporter.config",
        "exporter.sim",
        "exporter.sources",
    },
    "exporter.cli": {"exporter", "exporter.config", "exporter.app", "exporter.redact", "exporter.simulate"},
    "exporter.__main__": {"exporter.cli"},
    "exporter": set(),
}
# The core is pure: it may use these standard modules of data and arithmetic, and nothing else:
# no I/O, no clock, no threads, no randomness, no third-party library. Widen with care.
CORE_STDLIB = {"__future__", "bisect", "collections", "dataclasses", "enum", "functools", "heapq", "itertools"}
CORE_STDLIB |= {"math", "numbers", "operator", "re", "statistics", "types", "typing"}
IMPURE_BUILTINS = {"open", "input", "print", "breakpoint", "exec", "eval", "__import__"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path) -> Iterator[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from a import b` imports module a.b where there is one, else a name of a.
            yield from (f"{base}.{alias.name}" for alias in node.names)


def part(module: str) -> str:
    """The part of the package a module belongs to: the longest ALLOWED key that contains it."""
    return max((key for key in ALLOWED if module == key or module.startswith(key + ".")), key=len)


def internal_imports() -> dict[str, set[str]]:
    mods = modules()
    graph = {}
    for name, path in mods.items():
        targets = set()
        for imported in imports(name, path):
            if imported == "exporter" or imported.startswith("exporter."):
                module = imported
                while module not in mods and "." in module:  # a name inside a module: the module
                    module = module.rpartition(".")[0]
                targets.add(module)
        graph[name] = targets - {name}
    return graph


def test_every_module_belongs_to_a_part():
    for name in modules():
        assert part(name), name


def test_each_part_imports_only_what_its_layer_allows():
    broken = []
    for name, targets in internal_imports().items():
        own = part(name)
        for target in targets:
            other = part(target)
            if other != own and other not in ALLOWED[own]:
                broken.append(f"{name} imports {target} ({own} may import {sorted(ALLOWED[own]) or 'nothing'})")
    assert not broken, "\n".join(broken)


def test_the_core_is_pure():
    for name, path in modules().items():
        if part(name) != "exporter.attribution":
            continue
        for imported in imports(name, path):
            top = imported.split(".")[0]
            if top == "exporter":
                continue
            assert top in sys.stdlib_module_names, f"{name} imports {imported}: the core takes no library"
            assert top in CORE_STDLIB, f"{name} imports {imported}: the core does no I/O, reads no clock, draws no dice"
        calls = {
            node.func.id
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        assert not calls & IMPURE_BUILTINS, f"{name} calls {sorted(calls & IMPURE_BUILTINS)}: the core does no I/O"


def test_no_import_cycles():
    graph = internal_imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target] if target in path else [node, target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
