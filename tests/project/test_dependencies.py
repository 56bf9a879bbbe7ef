"""Every package the code imports directly is declared in pyproject.toml (not only brought in by
another package, which may drop it in any release): in ``[project] dependencies`` or in one of the
optional extras; every package declared there is one the code imports; and constraints.txt pins
every declared package."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
OURS = {"runtime", "voicectl"}
PROJECT = "voicectl"
# Extras that are not the runtime's: the test tools.
NOT_RUNTIME = {"test"}
# Declared but imported under a name the scan cannot see on every Python.
IMPORTED_ELSEWHERE = {"audioop-lts": "audioop on Python 3.13+, where it left the standard library"}


def _imported_modules() -> set[str]:
    """The dotted names the code imports (``from a import b`` gives ``a.b``: ``b`` may be a
    sub-package of a namespace package, as ``livekit.rtc``), ours and the standard library left out."""
    names: set[str] = set()
    for folder in ("runtime", "voicectl"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] not in OURS | set(sys.stdlib_module_names)}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def extras() -> dict[str, set[str]]:
    """Each optional extra's packages (normalised names), an extra naming ``voicectl[a,b]``
    expanded to the packages of a and b."""
    raw = project()["optional-dependencies"]

    def expand(name: str, seen: tuple[str, ...] = ()) -> set[str]:
        assert name not in seen, f"extras refer to each other in a loop: {seen + (name,)}"
        packages: set[str] = set()
        for spec in raw[name]:
            req = Requirement(spec)
            if _normal(req.name) == PROJECT:
                for inner in req.extras:
                    packages |= expand(inner, seen + (name,))
            else:
                packages.add(_normal(req.name))
        return packages

    return {name: expand(name) for name in raw}


def core() -> set[str]:
    return {_normal(Requirement(spec).name) for spec in project()["dependencies"]}


def _declared() -> set[str]:
    """Core dependencies and every runtime extra (what an import of the code may rely on)."""
    return core().union(*(packages for name, packages in extras().items() if name not in NOT_RUNTIME))


@cache
def _distributions() -> dict[str, list[str]]:
    return packages_distributions()


@cache
def _files(dist: str) -> tuple[str, ...]:
    return tuple(str(f) for f in distribution(dist).files or ())


def owners(module: str) -> set[str]:
    """The installed distributions providing ``module`` (dotted); for a namespace package shared by
    several (``livekit``, ``google``), the one holding the sub-package named."""
    parts = module.split(".")
    candidates = set(_distributions().get(parts[0], []))
    if len(candidates) > 1:
        for depth in range(len(parts), 1, -1):
            prefix = "/".join(parts[:depth])
            found = {d for d in candidates
                     if any(f.startswith(prefix + "/") or f == prefix + ".py" for f in _files(d))}
            if found:
                return {_normal(d) for d in found}
    return {_normal(d) for d in candidates}


def test_every_directly_imported_package_is_declared() -> None:
    declared = _declared()
    missing = {}
    for module in sorted(_imported_modules()):
        found = owners(module)
        assert found, f"{module} is imported but no installed package provides it"
        if not found & declared:
            missing[module] = sorted(found)
    assert not missing, f"imported directly but not declared in pyproject.toml (core or an extra): {missing}"


def test_every_declared_package_is_imported_by_the_code() -> None:
    used = set().union(*(owners(module) for module in _imported_modules()))
    unused = _declared() - used - set(IMPORTED_ELSEWHERE)
    assert not unused, f"declared in pyproject.toml but imported nowhere in runtime/ or voicectl/: {sorted(unused)}"


def test_constraints_pin_every_declared_package() -> None:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", f"not a pin: {line}"
            pins[_normal(req.name)] = req
    specs = [*project()["dependencies"], *(s for group in project()["optional-dependencies"].values() for s in group)]
    unpinned, outside = [], []
    for spec in specs:
        req = Requirement(spec)
        name = _normal(req.name)
        if name == PROJECT or (req.marker is not None and not req.marker.evaluate()):
            continue  # an extra naming others; a package for another Python (not in this lock)
        if name not in pins:
            unpinned.append(name)
        elif not req.specifier.contains(next(iter(pins[name].specifier)).version, prereleases=True):
            outside.append(f"{name}: pinned {pins[name].specifier}, declared {req.specifier}")
    assert not unpinned, f"declared in pyproject.toml but not pinned in constraints.txt: {sorted(set(unpinned))}"
    assert not outside, f"pins outside the declared range: {outside}"
