"""The promotion gate: no version goes live (promoted, or rolled out to a share of calls) unless its
latest evaluation on the required suite scored at least the minimum.

The policy is the tenant's ``rollout_required_suite_id`` and ``rollout_min_eval_score``; an agent's
own values, where set, override them one by one. The gate is on when both end up set. Version 1
(made by ``agent create``) is never gated: an agent must be able to answer before anything can be
evaluated against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.control.errors import Conflict
from runtime.store.store import Store


class EvaluationRequired(Conflict):
    """409 ``evaluation_required`` (exit 4): the version's latest evaluation on the required suite is
    missing or scored below the threshold."""

    code = "evaluation_required"


@dataclass(frozen=True)
class GatePolicy:
    suite_id: str
    threshold: float


def policy(tenant: dict[str, Any], agent: dict[str, Any]) -> GatePolicy | None:
    """The gate that applies to ``agent``'s versions (None: off)."""
    suite = agent.get("rollout_required_suite_id") or tenant.get("rollout_required_suite_id")
    threshold = agent.get("rollout_min_eval_score")
    if threshold is None:
        threshold = tenant.get("rollout_min_eval_score")
    if suite is None or threshold is None:
        return None
    return GatePolicy(suite, float(threshold))


async def latest_evaluation(store: Store, tenant_id: str, agent_id: str, version: int,
                            suite_id: str) -> dict[str, Any] | None:
    """The newest finished evaluation of the version on the suite."""
    rows, _ = await store.evaluations.list(
        tenant_id=tenant_id, equals={"agent_id": agent_id, "agent_version": version, "suite_id": suite_id,
                                     "status": "done"},
        limit=1, descending=True, count=False)
    return rows[0] if rows else None


async def check(store: Store, tenant: dict[str, Any], agent: dict[str, Any], version: int) -> dict[str, Any] | None:
    """Raise EvaluationRequired unless ``version`` may go live; the evaluation that let it (None:
    the gate is off, or version 1)."""
    gate = policy(tenant, agent)
    if gate is None or version == 1:
        return None
    found = await latest_evaluation(store, tenant["id"], agent["id"], version, gate.suite_id)
    score = found["score"] if found is not None else None
    details = {"required_suite_id": gate.suite_id, "score": score, "threshold": gate.threshold,
               "version": version, "evaluation_id": found["id"] if found is not None else None}
    if found is None:
        raise EvaluationRequired(
            f"version {version} has no evaluation on the required suite {gate.suite_id}: run `voicectl eval run "
            f"--suite {gate.suite_id} --version {version}` first (or, with an admin key, --force --reason)", details)
    if score is None or score < gate.threshold:
        raise EvaluationRequired(
            f"version {version} scored {score} on the required suite {gate.suite_id}, below the threshold "
            f"{gate.threshold} (or, with an admin key, --force --reason)", details)
    return found
