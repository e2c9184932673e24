"""The repository's scripts (scripts/*.py are not a package) imported as modules, once each."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(stem: str) -> ModuleType:
    """scripts/<stem>.py as the module `token_economy_<stem>`, executed on first use only."""
    name = f"token_economy_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{stem}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]
