"""Load a repository script (benchmarks/*.py, notebooks/make_notebooks.py, data/*.py) as a module by its path:
the scripts are not a package, and the library never imports them."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


def load_script(relpath: str) -> ModuleType:
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
