"""The LiveKit packages installed are the ones constraints.txt pins: the bridge's wire shapes (the
protobufs of livekit-protocol, the SDK's events) are checked against these versions, so a drift
between the lock and the environment must show here, not in a call."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"


@pytest.mark.parametrize("package", ["livekit", "livekit-api", "livekit-protocol"])
def test_the_installed_livekit_packages_are_the_pinned_ones(package: str) -> None:
    pins = dict(line.split("==", 1) for line in CONSTRAINTS.read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert version(package) == pins[package].strip(), f"{package}: installed {version(package)}, pinned {pins[package]}"
