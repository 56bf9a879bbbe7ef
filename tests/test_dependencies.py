"""Every package the code imports directly is declared in pyproject.toml (not only brought in by
another package, which may drop it in any release)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {"runtime", "voicectl"}


def _imported_modules() -> set[str]:
    names: set[str] = set()
    for folder in ("runtime", "voicectl"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names - OURS - set(sys.stdlib_module_names)


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_normal(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]) for spec in project["dependencies"]}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_directly_imported_package_is_declared() -> None:
    distributions = packages_distributions()
    declared = _declared()
    missing = {}
    for module in sorted(_imported_modules()):
        owners = {_normal(d) for d in distributions.get(module, [])}
        assert owners, f"{module} is imported but no installed package provides it"
        if not owners & declared:
            missing[module] = sorted(owners)
    assert not missing, f"imported directly but not declared in pyproject.toml: {missing}"
