"""`pip install .` (not editable) ships every Python package of the source tree: pyproject.toml
lists them by hand, and a package missing there breaks only a newcomer's quick start."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("bff", "demo_site")
        for init in (ROOT / top).rglob("*.py")  # a folder without __init__.py is a package too
        if "__pycache__" not in init.parts
    }
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
