"""Stored suites (``voicectl eval suite add``, ``GET /api/v1/eval-suites``) and the evaluations of a
tenant's agents (``GET /api/v1/agents/{id}/evaluations``).

A suite is stored as written, with the WAV files it plays (base64), under the sha256 of both
(runtime.evals.suite.digest); adding the same content again finds the row already there.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime.control.errors import NotFound
from runtime.control.models import Public
from runtime.control.pagination import Page, PageRequest
from runtime.evals.suite import Suite, SuiteInvalid, load_suite
from runtime.ids import new_id, now_iso
from runtime.store.errors import UniqueViolation
from runtime.store.store import Store

MAX_ASSETS = 20
MAX_ASSET_BYTES = 1024 * 1024
MAX_ASSETS_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class SuiteSummary(Public):
    id: str
    tenant_id: str
    name: str
    sha256: str
    scenarios: int
    created_at: str
    wav_files: list[str]


@dataclass(frozen=True)
class StoredSuite(Public):
    id: str
    tenant_id: str
    name: str
    sha256: str
    scenarios: int
    created_at: str
    wav_files: list[str]
    source: str


@dataclass(frozen=True)
class Evaluation(Public):
    id: str
    tenant_id: str
    agent_id: str
    version: int
    suite_id: str | None
    suite_name: str | None
    suite_sha256: str | None
    status: str  # running | done | failed
    score: float | None
    passed: bool | None
    calls: int | None
    concurrency: int | None
    scenarios: list[dict[str, Any]]
    rubric: dict[str, Any]  # the judge's grades by scenario, apart from the score
    notes: str | None
    error: str | None
    started_by: str | None
    created_at: str
    finished_at: str | None


def evaluation_of(row: dict[str, Any]) -> Evaluation:
    return Evaluation(
        row["id"], row["tenant_id"], row["agent_id"], row["agent_version"], row["suite_id"], row["suite_name"],
        row["suite_sha256"], row["status"], row["score"], row["passed"], row["calls"], row["concurrency"],
        list(row["results"] or []), dict(row["rubric"] or {}), row["notes"], row["error"], row["started_by"],
        row["created_at"], row["finished_at"])


def check_assets(suite: Suite, assets: Mapping[str, bytes], where: str) -> None:
    """The WAV files the suite plays are all given, and within bounds."""
    missing = [p for p in suite.wav_paths if p not in assets]
    problems = [{"field": "wav", "message": f"{p}: the WAV file was not found"} for p in missing]
    if len(assets) > MAX_ASSETS:
        problems.append({"field": "wav", "message": f"at most {MAX_ASSETS} WAV files"})
    for path, data in assets.items():
        if len(data) > MAX_ASSET_BYTES:
            problems.append({"field": "wav", "message": f"{path}: larger than {MAX_ASSET_BYTES} bytes"})
    if sum(len(d) for d in assets.values()) > MAX_ASSETS_BYTES:
        problems.append({"field": "wav", "message": f"the WAV files together are larger than {MAX_ASSETS_BYTES} bytes"})
    if problems:
        raise SuiteInvalid(where, problems)


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "tenant_id", "name", "sha256", "scenarios", "created_at")} | {
        "wav_files": sorted(row.get("assets") or {})}


class SuiteService:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def add(self, tenant_id: str, source: str, assets: Mapping[str, bytes] | None = None, *,
                  where: str = "the suite") -> tuple[SuiteSummary, bool]:
        """Validate and store; (the suite, whether it was new)."""
        assets = dict(assets or {})
        suite = load_suite(source, where=where, assets=assets)
        check_assets(suite, assets, where)
        assets = {p: assets[p] for p in suite.wav_paths}  # only what it plays
        found = await self.store.eval_suites.find(tenant_id=tenant_id, sha256=suite.sha256)
        if found is not None:
            return SuiteSummary(**_summary(found)), False
        row = {"id": new_id("sui"), "tenant_id": tenant_id, "name": suite.name, "sha256": suite.sha256,
               "source": source, "assets": {p: base64.b64encode(d).decode() for p, d in assets.items()} or None,
               "scenarios": len(suite.scenarios), "created_at": now_iso()}
        try:
            await self.store.eval_suites.insert(row)
        except UniqueViolation:  # added at the same moment by someone else
            found = await self.store.eval_suites.find(tenant_id=tenant_id, sha256=suite.sha256)
            return SuiteSummary(**_summary(found or row)), False
        return SuiteSummary(**_summary(row)), True

    async def list(self, tenant_id: str, page: PageRequest) -> Page[SuiteSummary]:
        rows, total = await self.store.eval_suites.list(tenant_id=tenant_id, limit=page.limit, offset=page.offset,
                                                        descending=True)
        return Page([SuiteSummary(**_summary(r)) for r in rows], total, page.limit, page.offset)

    async def _row(self, tenant_id: str, suite_id: str) -> dict[str, Any]:
        row = await self.store.eval_suites.get(suite_id, tenant_id=tenant_id)
        if row is None:
            raise NotFound(f"suite {suite_id} not found", {"suite_id": suite_id})
        return row

    async def get(self, tenant_id: str, suite_id: str) -> StoredSuite:
        row = await self._row(tenant_id, suite_id)
        return StoredSuite(**_summary(row), source=row["source"])

    async def load(self, tenant_id: str, suite_id: str) -> tuple[Suite, dict[str, bytes]]:
        """A stored suite ready to run, with its WAV files."""
        row = await self._row(tenant_id, suite_id)
        assets = {p: base64.b64decode(d) for p, d in (row.get("assets") or {}).items()}
        return load_suite(row["source"], where=f"suite {suite_id}", assets=assets), assets

    async def id_of(self, tenant_id: str, sha256: str) -> str | None:
        """The stored suite with this content, if any (a file run counts for the gate when it is stored)."""
        found = await self.store.eval_suites.find(tenant_id=tenant_id, sha256=sha256)
        return found["id"] if found is not None else None

    # Evaluations

    async def evaluations(self, tenant_id: str, agent_id: str, page: PageRequest) -> Page[Evaluation]:
        await self._agent(tenant_id, agent_id)
        rows, total = await self.store.evaluations.list(tenant_id=tenant_id, equals={"agent_id": agent_id},
                                                        limit=page.limit, offset=page.offset, descending=True)
        return Page([evaluation_of(r) for r in rows], total, page.limit, page.offset)

    async def evaluation(self, tenant_id: str, agent_id: str, evaluation_id: str) -> Evaluation:
        row = await self.store.evaluations.get(evaluation_id, tenant_id=tenant_id)
        if row is None or row["agent_id"] != agent_id:
            raise NotFound(f"evaluation {evaluation_id} not found", {"evaluation_id": evaluation_id})
        return evaluation_of(row)

    async def _agent(self, tenant_id: str, agent_id: str) -> None:
        if await self.store.agents.get(agent_id, tenant_id=tenant_id) is None:
            raise NotFound(f"agent {agent_id} not found", {"agent_id": agent_id})
