"""The JSON Schema (draft 2020-12) of a scenario suite: what `voicectl eval schema` prints and what
every suite is validated against before anything else reads it (runtime.evals.suite).

What the schema cannot say is checked after it, with the same line numbers: a turn does exactly one
thing (say, wav, dtmf or silence_ms), ``barge_in_after_ms`` goes with speech, and every regex is one
RE2 takes (the tenant's patterns run in linear time, runtime.control.patterns).
"""

from __future__ import annotations

from typing import Any

MAX_SCENARIOS = 50
MAX_TURNS = 30
MAX_SAY_CHARS = 500
MAX_PATTERNS = 20
MAX_TOOL_EXPECTATIONS = 20
TOOL_NAME = r"^[a-zA-Z][a-zA-Z0-9_]{0,63}$"
E164 = r"^\+[1-9][0-9]{6,14}$"
# piper (the packaged voice) or espeak-ng with one of its voice names, e.g. espeak:en-gb+f3.
VOICE = r"^(piper|espeak(:[a-z]{2,3}(-[a-z0-9]{1,8}){0,2}(\+[a-z0-9]{1,8})?)?)$"
TURN_ACTIONS = ("say", "wav", "dtmf", "silence_ms")

_PATTERNS = {"type": "array", "maxItems": MAX_PATTERNS,
             "items": {"type": "string", "minLength": 1, "maxLength": 200},
             "description": "regexes (RE2 syntax, case-insensitive) matched against what the agent said"}

SUITE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://voicectl.dev/schemas/eval-suite.json",
    "title": "voicectl evaluation suite",
    "type": "object",
    "required": ["name", "scenarios"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "description": {"type": "string", "maxLength": 2000},
        "caller": {"$ref": "#/$defs/caller"},
        "scenarios": {"type": "array", "minItems": 1, "maxItems": MAX_SCENARIOS,
                      "items": {"$ref": "#/$defs/scenario"}},
    },
    "$defs": {
        "caller": {
            "type": "object", "additionalProperties": False,
            "description": "how the synthetic caller sounds (suite-wide, per scenario, or per turn for voice/speed)",
            "properties": {
                "voice": {"type": "string", "pattern": VOICE,
                          "description": "piper (default) or espeak[:VOICE], e.g. espeak:en-gb+f3"},
                "speed": {"type": "number", "minimum": 0.5, "maximum": 2.0, "description": "1.0: normal"},
                "noise_db": {"type": "number", "minimum": -90, "maximum": -10,
                             "description": "white line noise under the whole call, dBFS (e.g. -45)"},
                "from": {"type": "string", "pattern": E164, "description": "the caller's number"},
                "quiet_ms": {"type": "integer", "minimum": 300, "maximum": 5000,
                             "description": "agent silence that counts as done talking (default 900)"},
            },
        },
        "scenario": {
            "type": "object", "required": ["name", "turns"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 200},
                "caller": {"$ref": "#/$defs/caller"},
                "max_duration_s": {"type": "integer", "minimum": 5, "maximum": 600,
                                   "description": "the call is hung up after this long (default 120)"},
                "turns": {"type": "array", "maxItems": MAX_TURNS, "items": {"$ref": "#/$defs/turn"}},
                "expect": {"$ref": "#/$defs/call_expect"},
                "judge": {"type": "object", "required": ["rubric"], "additionalProperties": False,
                          "properties": {"rubric": {"type": "string", "minLength": 1, "maxLength": 2000}},
                          "description": "an LLM grades the transcript 1-5 against the rubric (with the "
                                         "tenant's LLM credential); kept apart from the score"},
            },
        },
        "turn": {
            "type": "object", "additionalProperties": False, "minProperties": 1,
            "description": "exactly one of say, wav, dtmf or silence_ms",
            "properties": {
                "say": {"type": "string", "minLength": 1, "maxLength": MAX_SAY_CHARS,
                        "description": "spoken by the local TTS once the agent has stopped talking"},
                "wav": {"type": "string", "minLength": 1, "maxLength": 500,
                        "description": "a WAV file (path relative to the suite file) played as the line"},
                "dtmf": {"type": "string", "pattern": "^[0-9*#A-D]{1,20}$", "description": "keys pressed"},
                "silence_ms": {"type": "integer", "minimum": 100, "maximum": 30000,
                               "description": "the caller says nothing for this long"},
                "barge_in_after_ms": {"type": "integer", "minimum": 0, "maximum": 30000,
                                      "description": "speak over the agent this long after it starts "
                                                     "talking, instead of waiting for it to finish"},
                "voice": {"type": "string", "pattern": VOICE},
                "speed": {"type": "number", "minimum": 0.5, "maximum": 2.0},
                "expect": {"$ref": "#/$defs/turn_expect"},
            },
        },
        "turn_expect": {
            "type": "object", "additionalProperties": False,
            "description": "checked against what happened between this turn and the next",
            "properties": {
                "said": _PATTERNS,
                "not_said": _PATTERNS,
                "tools": {"$ref": "#/$defs/tools"},
                "transferred": {"type": "boolean"},
                "max_first_audio_ms": {"type": "integer", "minimum": 50, "maximum": 60000,
                                       "description": "the caller's last word to the agent's first audio"},
                "no_talk_over": {"type": "boolean", "description": "the agent never speaks over the caller"},
            },
        },
        "call_expect": {
            "type": "object", "additionalProperties": False,
            "description": "checked against the whole call",
            "properties": {
                "said": _PATTERNS,
                "not_said": _PATTERNS,
                "tools": {"$ref": "#/$defs/tools"},
                "transferred": {"type": "boolean"},
                "max_first_audio_ms": {"type": "integer", "minimum": 50, "maximum": 60000},
                "no_talk_over": {"type": "boolean"},
                "ended_by": {"enum": ["agent", "caller"], "description": "who hung up"},
            },
        },
        "tools": {
            "type": "array", "maxItems": MAX_TOOL_EXPECTATIONS,
            "items": {
                "type": "object", "required": ["name"], "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "pattern": TOOL_NAME},
                    "arguments": {"type": "object", "maxProperties": 30,
                                  "additionalProperties": {"$ref": "#/$defs/matcher"},
                                  "description": "argument -> a value, or a matcher"},
                    "called": {"type": "boolean", "description": "false: the tool must not be called (with "
                                                                  "these arguments)"},
                },
            },
        },
        "matcher": {
            "anyOf": [
                {"type": ["string", "number", "boolean", "null"]},
                {"type": "object", "additionalProperties": False, "minProperties": 1,
                 "properties": {
                     "equals": {"type": ["string", "number", "boolean", "null"]},
                     "regex": {"type": "string", "minLength": 1, "maxLength": 200},
                     "one_of": {"type": "array", "minItems": 1, "maxItems": 50,
                                "items": {"type": ["string", "number", "boolean", "null"]}},
                     "min": {"type": "number"},
                     "max": {"type": "number"},
                     "present": {"type": "boolean"},
                 }},
            ],
        },
    },
}
