"""Event models: exactly the topics of DESIGN.md, one payload type each, and the wire shape."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from runtime.events.models import PAYLOAD_TYPES, CallFailed, Event
from runtime.events.topics import TOPICS, matches, unknown_patterns


def design_doc() -> Path | None:
    """shared/DESIGN.md, found by walking up from the repository root (the workspace keeps
    shared/ beside the checkout; CI beside its clone)."""
    root = Path(__file__).resolve().parents[2]
    for folder in (root, *root.parents):
        if (candidate := folder / "shared" / "DESIGN.md").is_file():
            return candidate
    return None


def test_the_design_topics_are_all_still_there():
    """The project owns the topic list now (DESIGN.md): its first 16 topics stay, each with its
    payload type; topics added later live in the topic module."""
    assert set(PAYLOAD_TYPES) == set(TOPICS)
    design = design_doc()
    if design is None:
        if os.environ.get("CI") == "true":
            pytest.fail("shared/DESIGN.md was not found above the repository (CI lays shared/ beside the clone)")
        pytest.skip("shared/DESIGN.md is not above this checkout")
    text = design.read_text()
    block = text.split("The topics, exactly:", 1)[1].split("A new topic is added here first", 1)[0]
    first = re.findall(r"`([a-z_.]+)`", block)
    assert len(first) == 16 and [t for t in TOPICS if t in first] == first, (first, TOPICS)


def test_event_envelope():
    event = Event.of(CallFailed(reason="busy"), tenant_id="ten_1", call_id="call_1", seq=3, trace_id="tr_1")
    data = event.to_dict()
    assert set(data) == {"id", "topic", "tenant_id", "call_id", "seq", "ts", "trace_id", "data"}
    assert data["topic"] == "voice.call.failed" and data["seq"] == 3
    assert data["data"] == {"reason": "busy", "message": None}
    assert data["id"].startswith("evt_") and data["ts"].endswith("Z")


def test_glob_matching():
    assert matches("voice.call.completed", ["voice.call.*"])
    assert matches("transcript.interim", ["transcript.*"])
    assert matches("dtmf.received", ["*"])
    assert not matches("call.connected", ["voice.call.*"])
    assert unknown_patterns(["voice.cal.*", "call.*"]) == ["voice.cal.*"]
