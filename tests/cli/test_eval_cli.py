"""voicectl eval suite|list|show|schema, the gate options of tenant and agent update, promote with
--force --reason, and agent rollout start|status|stop, in-process (no calls: the real-call runs
are in tests/evals/test_evaluations_e2e.py)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_cli import Cli, cli, ready  # noqa: F401 (fixtures)

SUITE = """name: smoke
scenarios:
  - name: greets
    turns:
      - say: "Hello?"
        expect: {said: ["hello"]}
"""


def suite_file(tmp_path: Path, text: str = SUITE, name: str = "smoke.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_suite_is_stored_once_with_its_id_and_sha256(ready: Cli, tmp_path: Path) -> None:  # noqa: F811
    path = suite_file(tmp_path)
    out = ready("eval", "suite", "add", "--tenant", "acme", str(path)).stdout
    assert out.startswith("stored: suite smoke sui_") and "(1 scenarios)" in out and "sha256 " in out
    again = ready.json("eval", "suite", "add", "--tenant", "acme", str(path))
    assert again["created"] is False and again["id"] in out and len(again["sha256"]) == 64
    listed = ready.json("eval", "suite", "list", "--tenant", "acme")
    assert [s["id"] for s in listed["items"]] == [again["id"]]
    shown = ready.json("eval", "suite", "show", again["id"], "--tenant", "acme")
    assert shown["source"] == SUITE and shown["wav_files"] == []
    ready("eval", "suite", "show", "sui_nope", "--tenant", "acme", code=3)


def test_a_bad_suite_says_where_and_stores_nothing(ready: Cli, tmp_path: Path) -> None:  # noqa: F811
    bad = suite_file(tmp_path, SUITE.replace('say: "Hello?"', 'say: "Hello?"\n        dtmf: "1"'), "bad.yaml")
    result = ready("eval", "suite", "add", "--tenant", "acme", str(bad), code=2)
    assert "bad.yaml is not a valid suite" in result.stderr
    assert "line 5: scenarios[0].turns[0]: a turn does exactly one of say, wav, dtmf, silence_ms" in result.stderr
    wav = suite_file(tmp_path, SUITE.replace('say: "Hello?"', "wav: missing.wav"), "wav.yaml")
    assert "missing.wav cannot be read" in ready("eval", "suite", "add", "--tenant", "acme", str(wav), code=2).stderr
    ready("eval", "suite", "add", "--tenant", "acme", str(tmp_path / "nowhere.yaml"), code=2)
    assert ready.json("eval", "suite", "list", "--tenant", "acme")["items"] == []


def test_eval_run_refuses_bad_options_before_calling(ready: Cli, tmp_path: Path) -> None:  # noqa: F811
    path = suite_file(tmp_path)
    assert "give a suite file or --suite ID" in ready("eval", "run", "--tenant", "acme", "--agent", "sales",
                                                      code=2).stderr
    assert "give a suite file or --suite ID" in ready("eval", "run", str(path), "--suite", "sui_x", "--tenant",
                                                      "acme", "--agent", "sales", code=2).stderr
    ready("eval", "run", "--suite", "sui_nope", "--tenant", "acme", "--agent", "sales", code=3)
    ready("eval", "run", str(path), "--tenant", "acme", "--agent", "nobody", code=3)
    assert "no version 9" in ready("eval", "run", str(path), "--tenant", "acme", "--agent", "sales",
                                   "--version", "9", code=3).stderr
    assert "concurrency is 1 to" in ready("eval", "run", str(path), "--tenant", "acme", "--agent", "sales",
                                          "--concurrency", "99", code=2).stderr
    assert "could not be reached" in ready("eval", "run", str(path), "--tenant", "acme", "--agent", "sales",
                                           "--url", "http://127.0.0.1:9", code=8).stderr
    assert ready.json("eval", "list", "--tenant", "acme", "--agent", "sales")["items"] == [], "nothing ran"


def test_the_schema_is_printed_as_json(cli: Cli) -> None:  # noqa: F811
    schema = json.loads(cli("eval", "schema").stdout)
    assert schema["title"] == "voicectl evaluation suite" and "scenario" in schema["$defs"]


def test_the_gate_and_a_forced_promotion_from_the_cli(ready: Cli, tmp_path: Path) -> None:  # noqa: F811
    suite = ready.json("eval", "suite", "add", "--tenant", "acme", str(suite_file(tmp_path)))
    assert "needs both" in ready("tenant", "update", "acme", "--rollout-min-eval-score", "0.9", code=2).stderr
    tenant = ready.json("tenant", "update", "acme", "--rollout-required-suite", suite["id"],
                        "--rollout-min-eval-score", "0.9")
    assert (tenant["rollout_required_suite_id"], tenant["rollout_min_eval_score"]) == (suite["id"], 0.9)
    ready.json("agent", "update", "sales", "--tenant", "acme", "--greeting", "Hi, version two.")
    refused = ready("agent", "promote", "sales", "--tenant", "acme", code=4)
    assert f"version 2 has no evaluation on the required suite {suite['id']}" in refused.stderr
    assert "--reason" in ready("agent", "promote", "sales", "--tenant", "acme", "--force", code=2).stderr
    agent = ready.json("agent", "promote", "sales", "--tenant", "acme", "--force", "--reason", "typo fix")
    assert agent["active_version"] == 2
    versions = ready.json("agent", "versions", "sales", "--tenant", "acme")["items"]
    assert (versions[1]["promote_forced"], versions[1]["promote_reason"]) == (True, "typo fix")
    assert versions[1]["promoted_by"].startswith("cli")
    agent = ready.json("agent", "update", "sales", "--tenant", "acme", "--min-eval-score", "0.5")
    assert agent["rollout_min_eval_score"] == 0.5 and agent["latest_version"] == 2
    agent = ready.json("agent", "update", "sales", "--tenant", "acme", "--tenant-gate")
    assert agent["rollout_min_eval_score"] is None
    tenant = ready.json("tenant", "update", "acme", "--no-rollout-gate")
    assert tenant["rollout_required_suite_id"] is None and tenant["rollout_min_eval_score"] is None


def test_a_rollout_from_the_cli(ready: Cli) -> None:  # noqa: F811
    ready.json("agent", "update", "sales", "--tenant", "acme", "--greeting", "Hi, version two.")
    ready("agent", "rollout", "status", "sales", "--tenant", "acme", code=3)
    started = ready.json("agent", "rollout", "start", "sales", "--tenant", "acme", "--version", "2", "--percent",
                         "25", "--max-transfer-rate", "0.3", "--min-calls", "5", "--auto-promote-after", "100")
    assert (started["status"], started["percent"], started["candidate_version"]) == ("running", 25, 2)
    assert started["stop_conditions"] == {"max_failure_rate": 0.2, "max_transfer_rate": 0.3,
                                          "max_p95_first_audio_ms": None, "min_calls": 5}
    ready("agent", "rollout", "start", "sales", "--tenant", "acme", "--version", "2", "--percent", "5", code=4)
    ready("agent", "rollout", "start", "sales", "--tenant", "acme", "--version", "2", "--percent", "0", code=2)
    text = ready("agent", "rollout", "status", "sales", "--tenant", "acme").stdout
    assert "version 2 on 25% of new calls beside version 1; running" in text
    assert "base (v1)" in text and "candidate (v2)" in text and "failure rate" in text
    stopped = ready.json("agent", "rollout", "stop", "sales", "--tenant", "acme")
    assert (stopped["status"], stopped["end_reason"]) == ("stopped", "stopped")
    ready("agent", "rollout", "stop", "sales", "--tenant", "acme", code=3)
