"""Event models: DESIGN.md's first topics kept, one payload type and one README row per topic, the wire shape."""

from __future__ import annotations

import os
import re
from dataclasses import fields
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


def readme_event_table() -> dict[str, list[str]]:
    """The README's event table (section "Events and webhooks"): topic -> the `names` in its data cell."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Events and webhooks", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 3:
            rows[cells[0].strip("`")] = re.findall(r"`([a-z0-9_]+)`", cells[1])
    return rows


def test_every_topic_has_a_payload_type_and_a_readme_row():
    """Topics added after DESIGN.md's 16 (webhook.disabled, ...) are documented like the first ones:
    a typed payload each, and a row in the README's event table naming exactly its data fields."""
    assert "webhook.disabled" in TOPICS
    assert set(PAYLOAD_TYPES) == set(TOPICS)
    table = readme_event_table()
    assert sorted(table) == sorted(TOPICS), "the README's event table and TOPICS differ"
    for topic, payload in PAYLOAD_TYPES.items():
        assert table[topic] == [f.name for f in fields(payload)], topic


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
