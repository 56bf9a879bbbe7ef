"""Docs kept true: the README's route table, quick start and CI command."""

from __future__ import annotations

import re
from pathlib import Path

from runtime.api.docs import route_table
from runtime.api.routes import all_routes

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_route_table_matches_the_routes():
    match = re.search(r"<!-- routes:begin[^>]*-->\n(.*?)\n<!-- routes:end -->", README, re.DOTALL)
    assert match, "README.md lost its generated route table markers"
    assert match.group(1).strip() == route_table(all_routes()).strip(), (
        "README route table is stale: regenerate it with `python -m runtime.api.docs`"
    )


def test_quick_start_is_two_commands_and_ci_runs_the_readme_test_command():
    quick = README.split("## Quick start", 1)[1].split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in quick.splitlines()[1:] if line.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^\s*(exec\s+)?make test\b", ci, re.MULTILINE), ".ci/run must run the README's `make test`"
