"""The suite format: the shipped suites load; every kind of mistake is reported with its line and
field, all at once; YAML that could expand without bound is refused; the JSON Schema is valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from runtime.evals.schema import SUITE_SCHEMA
from runtime.evals.suite import MAX_SUITE_BYTES, SuiteInvalid, digest, load_suite

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "evals"


def errors_of(text: str) -> list[dict]:
    with pytest.raises(SuiteInvalid) as caught:
        load_suite(text, where="t.yaml")
    assert caught.value.status == 422 and caught.value.code == "invalid_suite"
    assert caught.value.message.startswith("t.yaml is not a valid suite:")
    return caught.value.details["errors"]


def test_the_schema_is_valid_json_schema() -> None:
    Draft202012Validator.check_schema(SUITE_SCHEMA)
    json.dumps(SUITE_SCHEMA)  # printable by `voicectl eval schema`


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_suites_load(path: Path) -> None:
    suite = load_suite(path.read_text(), where=path.name)
    assert suite.scenarios and all(s.turns for s in suite.scenarios)
    assert suite.sha256 == digest(path.read_text())


def test_a_suite_becomes_typed_scenarios_with_the_caller_settings_merged() -> None:
    suite = load_suite("""
name: s
caller: {voice: "espeak:en-gb+f3", speed: 1.2, noise_db: -45}
scenarios:
  - name: one
    caller: {from: "+15550001234", quiet_ms: 700}
    max_duration_s: 30
    judge: {rubric: "Polite?"}
    turns:
      - say: Hello
        voice: piper
      - dtmf: "0#"
      - silence_ms: 1500
      - say: Over you
        barge_in_after_ms: 500
        expect: {said: [hi], no_talk_over: true}
    expect: {ended_by: caller}
""")
    (scenario,) = suite.scenarios
    assert (scenario.caller.voice, scenario.caller.speed, scenario.caller.noise_db) == ("espeak:en-gb+f3", 1.2, -45)
    assert (scenario.caller.from_, scenario.caller.quiet_ms, scenario.max_duration_s) == ("+15550001234", 700, 30)
    assert [t.action for t in scenario.turns] == ["say", "dtmf", "silence", "say"]
    assert scenario.turns[0].voice == "piper" and scenario.turns[1].voice == "espeak:en-gb+f3"
    assert scenario.turns[1].text == "0#" and scenario.turns[2].silence_ms == 1500
    assert scenario.turns[3].barge_in_after_ms == 500 and scenario.turns[3].expect == {"said": ["hi"], "no_talk_over": True}
    assert scenario.rubric == "Polite?" and scenario.expect == {"ended_by": "caller"}


def test_every_mistake_is_reported_with_its_line_and_field() -> None:
    found = errors_of("""name: s
scenarios:
  - name: a
    turns:
      - say: hello
        dtmf: "1"
      - dtmf: "1"
        barge_in_after_ms: 10
      - silence_ms: 50
      - say: hi
        expect:
          said: ["(?=x)"]
          tools:
            - name: create_booking
              arguments: {party_size: {between: 2}, time: {regex: "(a)\\\\1"}, day: {min: 3, max: 1}}
    expect: {ended_by: nobody, speed: 2}
    colour: red
  - name: a
    turns: []
""")
    by_field = {e["field"]: e for e in found}
    expected_lines = {
        "scenarios[0].turns[0]": 5,
        "scenarios[0].turns[1].barge_in_after_ms": 8,
        "scenarios[0].turns[2].silence_ms": 9,
        "scenarios[0].turns[3].expect.said[0]": 12,
        "scenarios[0].turns[3].expect.tools[0].arguments.party_size": 15,
        "scenarios[0].turns[3].expect.tools[0].arguments.time.regex": 15,
        "scenarios[0].turns[3].expect.tools[0].arguments.day": 15,
        "scenarios[0].expect.ended_by": 16,
        "scenarios[0]": 3,
        "scenarios[1].name": 18,
    }
    for field, line in expected_lines.items():
        assert field in by_field, (field, found)
        assert by_field[field]["line"] == line, (field, by_field[field])
    assert "exactly one of say, wav, dtmf, silence_ms (found: say, dtmf)" in by_field["scenarios[0].turns[0]"]["message"]
    assert "goes with say or wav" in by_field["scenarios[0].turns[1].barge_in_after_ms"]["message"]
    assert "lookahead" in by_field["scenarios[0].turns[3].expect.said[0]"]["message"]
    assert "backreference" in by_field["scenarios[0].turns[3].expect.tools[0].arguments.time.regex"]["message"]
    assert "argument matcher" in by_field["scenarios[0].turns[3].expect.tools[0].arguments.party_size"]["message"]
    assert "min is larger than max" in by_field["scenarios[0].turns[3].expect.tools[0].arguments.day"]["message"]
    assert "'colour' was unexpected" in by_field["scenarios[0]"]["message"]
    assert "unique" in by_field["scenarios[1].name"]["message"]


@pytest.mark.parametrize(("text", "field", "words"), [
    ("", "(file)", "empty"),
    ("- 1\n", "(top level)", "is not of type 'object'"),
    ("name: s\n", "(top level)", "'scenarios' is a required property"),
    ("name: s\nscenarios: [\n", "(yaml)", "not valid YAML"),
    ("name: &a s\nscenarios: [{name: *a, turns: []}]\n", "(yaml)", "anchors and aliases"),
    ("name: s\nscenarios: []\n", "scenarios", "should be non-empty"),
    ("name: s\nscenarios: [{name: x, turns: [{say: hi, voice: 'festival'}]}]\n", "scenarios[0].turns[0].voice",
     "does not match"),
    ("name: s\nscenarios: [{name: x, turns: [{dtmf: '12x'}]}]\n", "scenarios[0].turns[0].dtmf", "does not match"),
    ("name: s\nscenarios: [{name: x, turns: [{}]}]\n", "scenarios[0].turns[0]", "non-empty"),
    ("name: s\nscenarios: [{name: x, turns: [], caller: {from: '555'}}]\n", "scenarios[0].caller.from",
     "does not match"),
    ("name: s\nscenarios: [{name: x, turns: [{say: yes}]}]\n", "scenarios[0].turns[0].say",
     "quote it: YAML reads yes"),
])
def test_bad_suites_say_what_is_wrong(text: str, field: str, words: str) -> None:
    found = errors_of(text)
    assert any(e["field"] == field and words in e["message"] for e in found), found


def test_a_suite_larger_than_the_bound_is_refused_before_parsing() -> None:
    found = errors_of("name: s\n# " + "x" * MAX_SUITE_BYTES + "\n")
    assert found == [{"field": "(file)", "message": f"larger than {MAX_SUITE_BYTES} bytes"}]


def test_the_digest_covers_the_wav_files() -> None:
    text = "name: s\nscenarios: [{name: x, turns: [{wav: a.wav}]}]\n"
    one, other = digest(text, {"a.wav": b"RIFF1"}), digest(text, {"a.wav": b"RIFF2"})
    assert one != other and load_suite(text, assets={"a.wav": b"RIFF1"}).sha256 == one
    assert load_suite(text).wav_paths == ["a.wav"]
