"""Event models: exactly the topics of DESIGN.md, one payload type each, and the wire shape."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runtime.events.models import PAYLOAD_TYPES, CallFailed, Event
from runtime.events.topics import TOPICS, matches, unknown_patterns


def test_topics_are_exactly_those_of_the_design():
    assert set(PAYLOAD_TYPES) == set(TOPICS)
    design = Path(__file__).resolve().parents[2] / "shared" / "DESIGN.md"  # shared/ beside the repository
    if not design.exists():  # a checkout on its own: the model test above still ran
        pytest.skip("shared/DESIGN.md is not beside this checkout")
    text = design.read_text()
    block = text.split("The topics, exactly:", 1)[1].split("A new topic is added here first", 1)[0]
    assert tuple(re.findall(r"`([a-z_.]+)`", block)) == TOPICS


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
