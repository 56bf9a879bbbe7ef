"""Percentage rollout as functions: sticky buckets by caller number, the share they give, the
stop conditions' verdict, the p95 of the arm."""

from __future__ import annotations

import pytest

from runtime.control.rollouts import ArmStats, in_rollout, judge, p95

NUMBERS = [f"+1555{n:07d}" for n in range(10_000)]


def test_a_caller_keeps_its_arm() -> None:
    first = [in_rollout("rol_a", n, 30) for n in NUMBERS[:500]]
    assert first == [in_rollout("rol_a", n, 30) for n in NUMBERS[:500]]
    # Formatting of the same number does not move it.
    assert in_rollout("rol_a", "+1 555 000-0042", 30) == in_rollout("rol_a", "+15550000042", 30)


@pytest.mark.parametrize("percent", [1, 10, 50, 90])
def test_the_share_on_the_candidate_is_the_percentage(percent: int) -> None:
    share = sum(in_rollout("rol_share", n, percent) for n in NUMBERS) / len(NUMBERS) * 100
    assert abs(share - percent) < 1.5, share


def test_raising_the_percentage_keeps_those_already_in() -> None:
    at_20 = {n for n in NUMBERS if in_rollout("rol_b", n, 20)}
    at_40 = {n for n in NUMBERS if in_rollout("rol_b", n, 40)}
    assert at_20 < at_40
    assert all(in_rollout("rol_b", n, 100) for n in NUMBERS[:100])


def test_each_rollout_draws_its_own_callers() -> None:
    one = {n for n in NUMBERS if in_rollout("rol_one", n, 50)}
    two = {n for n in NUMBERS if in_rollout("rol_two", n, 50)}
    assert 0.4 < len(one & two) / len(one) < 0.6


def rollout(**stop) -> dict:
    return {"stop_conditions": {"min_calls": 10, **stop}, "auto_promote_after": stop.pop("auto", None)}


def test_nothing_is_judged_before_the_minimum_of_calls() -> None:
    assert judge(rollout(max_failure_rate=0.0), ArmStats(2, calls=9, failures=9)) == ("wait", [])


def test_a_breach_reverts_and_names_every_condition_that_tripped() -> None:
    stats = ArmStats(2, calls=10, failures=3, transfers=6, p95_first_audio_ms=2400.0)
    verdict = judge(rollout(max_failure_rate=0.2, max_transfer_rate=0.5, max_p95_first_audio_ms=2000), stats)
    assert verdict == ("revert", ["failure_rate", "transfer_rate", "p95_first_audio_ms"])
    assert judge(rollout(max_failure_rate=0.3, max_transfer_rate=None), stats) == ("wait", [])  # at the limit is fine
    assert judge({"stop_conditions": {"min_calls": 10}}, ArmStats(2, calls=10, failures=3)) == ("revert", ["failure_rate"])


def test_enough_good_calls_promote_when_asked() -> None:
    good = ArmStats(2, calls=50, failures=1)
    assert judge({"stop_conditions": {"min_calls": 10}, "auto_promote_after": 50}, good) == ("promote", [])
    assert judge({"stop_conditions": {"min_calls": 10}, "auto_promote_after": 51}, good) == ("wait", [])
    assert judge({"stop_conditions": {"min_calls": 10}, "auto_promote_after": None}, good) == ("wait", [])


def test_arm_numbers() -> None:
    stats = ArmStats(3, calls=8, failures=2, transfers=1)
    assert (stats.failure_rate, stats.transfer_rate) == (0.25, 0.125)
    assert ArmStats(3).to_dict() == {"version": 3, "calls": 0, "failures": 0, "transfers": 0,
                                     "p95_first_audio_ms": None, "failure_rate": 0.0, "transfer_rate": 0.0}
    assert p95([]) is None and p95([5.0]) == 5.0
    assert p95([float(v) for v in range(1, 101)]) == 95.0
