"""voicectl eval run|list|show|schema and eval suite add|list|show: synthetic-call evaluations.

``eval run`` places the suite's calls from here, like ``voicectl call``, against the runtime at
``--url`` (default: the config's host and port), each pinned to the version under test; it needs
the same config (database and secrets) as the runtime. Exit codes: 0 every scenario passed, 1 one
failed, 2 the suite is invalid (or bad options), 3 no such tenant, agent, version or suite, 8 the
runtime could not be reached, or a call was still refused as busy after 5 minutes of retries
(and none failed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from voicectl.common import (
    EXIT_RUNTIME_UNREACHABLE,
    EXIT_USAGE,
    JsonOpt,
    LimitOpt,
    OffsetOpt,
    TenantOpt,
    errors,
    fail,
    load_settings,
    new_app,
    page,
    print_details,
    print_json,
    print_page,
    print_table,
    run,
    run_async,
    say,
    when,
)

EXIT_FAILED = 1

app = new_app("Evaluations: scenario suites run as synthetic calls against an agent version.")
suite_app = new_app("Stored scenario suites (the promotion gate names one).")
app.add_typer(suite_app, name="suite")

AgentOpt = Annotated[str, typer.Option("--agent", "-a", help="Agent id or name.", show_default=False)]


def _read_suite(path: Path) -> tuple[str, dict[str, bytes]]:
    """The suite file's text and the WAV files it plays (paths relative to the file)."""
    from runtime.evals.suite import SuiteInvalid, load_suite

    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        fail(f"{path} is not UTF-8 text", EXIT_USAGE)
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE)
    try:
        suite = load_suite(source, where=str(path))
    except SuiteInvalid as exc:
        fail(exc.message, EXIT_USAGE)
    assets: dict[str, bytes] = {}
    for name in suite.wav_paths:
        wav = path.parent / name
        try:
            assets[name] = wav.read_bytes()
        except OSError as exc:
            fail(f"{path}: the WAV file {name} cannot be read ({exc.strerror or exc})", EXIT_USAGE)
    return source, assets


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of a suite file (for editors and linters)."""
    from runtime.evals.schema import SUITE_SCHEMA

    print_json(SUITE_SCHEMA)


@suite_app.command("add")
def suite_add(
    file: Annotated[Path, typer.Argument(help="The suite file (YAML).", show_default=False, dir_okay=False)],
    tenant: TenantOpt,
    as_json: JsonOpt = False,
) -> None:
    """Validate and store a suite; prints its id and sha256 (adding the same content again finds it)."""
    source, assets = _read_suite(file)

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.evals.suites import SuiteService
        from voicectl.common import resolve_tenant

        tenant_id = await resolve_tenant(plane, tenant)
        suite, created = await SuiteService(plane.store).add(tenant_id, source, assets, where=str(file))
        return {**suite.to_dict(), "created": created}

    data = run(go)
    if as_json:
        print_json(data)
        return
    say(f"{'stored' if data['created'] else 'already stored'}: suite {data['name']} {data['id']} "
        f"({data['scenarios']} scenarios)")
    say(f"sha256 {data['sha256']}")


@suite_app.command("list")
def suite_list(tenant: TenantOpt, limit: LimitOpt = 50, offset: OffsetOpt = 0, as_json: JsonOpt = False) -> None:
    """List the tenant's stored suites, newest first."""

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.evals.suites import SuiteService
        from voicectl.common import resolve_tenant

        return (await SuiteService(plane.store).list(await resolve_tenant(plane, tenant), page(limit, offset))).to_dict()

    result = run(go)
    print_page(result, as_json, ["id", "name", "scenarios", "sha256", "created"],
               [[s["id"], s["name"], s["scenarios"], s["sha256"][:16], when(s["created_at"])] for s in result["items"]],
               title="suites", total=result["total"], offset=offset,
               empty="none yet (voicectl eval suite add --tenant T FILE)")


@suite_app.command("show")
def suite_show(suite_id: Annotated[str, typer.Argument(help="The suite id.", show_default=False)],
               tenant: TenantOpt, as_json: JsonOpt = False) -> None:
    """Show a stored suite and its YAML."""

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.evals.suites import SuiteService
        from voicectl.common import resolve_tenant

        return (await SuiteService(plane.store).get(await resolve_tenant(plane, tenant), suite_id)).to_dict()

    data = run(go)
    if as_json:
        print_json(data)
        return
    print_details({k: v for k, v in data.items() if k != "source"})
    say(data["source"])


def _base(url: str | None, settings: Any) -> str:
    from voicectl.call import _connect_host

    base = (url or f"http://{_connect_host(settings.server.host)}:{settings.server.port}").rstrip("/")
    if not base.startswith(("http://", "https://")):
        fail(f"--url must be an http(s) URL, not {base!r}", EXIT_USAGE)
    return base


async def _reachable(base: str) -> bool:
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
                http.get(base + "/healthz") as resp:
            return resp.status < 500
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


async def _evaluate(settings: Any, base: str, tenant: str, agent: str, version: int | None, suite_ref: str | None,
                    file: Path | None, calls: int, concurrency: int, as_json: bool) -> dict[str, Any]:
    from runtime.control.plane import ControlPlane
    from runtime.evals.runner import Runner, RuntimeUnreachable, plan
    from runtime.evals.suite import load_suite
    from runtime.evals.suites import SuiteService
    from runtime.providers.chains import ProviderChains
    from voicectl.agent import cli_user

    plane = await ControlPlane.open(settings)
    chains = ProviderChains(settings)
    try:
        tenant_id = (await plane.tenants.resolve(tenant)).id
        found = await plane.agents.resolve(tenant_id, agent)
        suites = SuiteService(plane.store)
        if suite_ref is not None:
            suite, assets = await suites.load(tenant_id, suite_ref)
        else:
            assert file is not None
            source, assets = _read_suite(file)
            suite = load_suite(source, where=str(file), assets=assets)
        run_plan = await plan(plane.store, settings, tenant_id=tenant_id, agent_id=found.id, version=version,
                              suite=suite, suite_id=suite_ref, assets=assets, calls=calls, concurrency=concurrency,
                              started_by=cli_user())
        if not await _reachable(base):
            fail(f"the runtime at {base} could not be reached; is `voicectl serve` running there (or --url)?",
                 EXIT_RUNTIME_UNREACHABLE)
        runner = Runner(plane.store, plane.credentials, chains, plane.events, base_url=base,
                        public_url=settings.server.public_url)
        row = await runner.start(run_plan)
        with _Progress(run_plan.total, f"{suite.name} on {found.name} v{run_plan.version}", quiet=as_json) as bar:
            try:
                final = await runner.run(row, run_plan, on_result=bar.advance)
            except RuntimeUnreachable as exc:
                fail(str(exc), EXIT_RUNTIME_UNREACHABLE)
        return final
    finally:
        await chains.aclose()
        await plane.close()


class _Progress:
    """A rich progress bar on stderr (none with --json or when stderr is not a terminal's)."""

    def __init__(self, total: int, title: str, *, quiet: bool) -> None:
        self.total, self.title, self.quiet = total, title, quiet
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if not self.quiet:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.fields[last]}"),
                                      console=Console(stderr=True), transient=False)
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=self.total, last="")
        return self

    def advance(self, result: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, last=f"{result['name']}: {result['status']}")

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _report(row: dict[str, Any]) -> dict[str, Any]:
    """The one JSON object `eval run --json` prints."""
    return {
        "evaluation_id": row["id"], "agent_id": row["agent_id"], "version": row["agent_version"],
        "suite_id": row["suite_id"], "suite_sha256": row["suite_sha256"], "status": row["status"],
        "score": row["score"], "passed": bool(row["passed"]),
        "scenarios": [{k: r.get(k) for k in ("name", "run", "status", "passed", "failed_expectation", "excerpt",
                                             "first_audio_ms", "call_id")} for r in row["results"] or []],
        "rubric": row["rubric"] or {}, "error": row["error"],
    }


def _exit_code(row: dict[str, Any]) -> int:
    results = row["results"] or []
    if row["status"] != "done" or any(r["status"] in ("failed", "error") for r in results):
        return EXIT_FAILED
    if any(r["status"] == "busy" for r in results):
        return EXIT_RUNTIME_UNREACHABLE
    return 0


@app.command("run")
def run_(
    suite_file: Annotated[Path | None, typer.Argument(help="A suite file (YAML); or --suite ID.", show_default=False,
                                                      dir_okay=False)] = None,
    tenant: TenantOpt = "",
    agent: AgentOpt = "",
    version: Annotated[int | None, typer.Option("--version", help="The version under test (default: the active "
                                                "one).", min=1)] = None,
    suite: Annotated[str | None, typer.Option("--suite", help="A stored suite's id.", show_default=False)] = None,
    url: Annotated[str | None, typer.Option("--url", help="The runtime's base URL (default: "
                                            "http://server.host:server.port from the config).")] = None,
    calls: Annotated[int, typer.Option("--calls", help="Calls per scenario.", min=1)] = 1,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Calls at once (one refused as busy waits for a free slot, up to 5 min).", min=1)] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Run a suite against an agent version with synthetic calls over the Twilio protocol."""
    if (suite is None) == (suite_file is None):
        fail("give a suite file or --suite ID (one of them)", EXIT_USAGE)
    if not tenant or not agent:
        fail("--tenant and --agent are required", EXIT_USAGE)
    with errors():
        settings = load_settings()
        base = _base(url, settings)
        row = run_async(_evaluate(settings, base, tenant, agent, version, suite, suite_file, calls, concurrency,
                                  as_json))
    report = _report(row)
    if as_json:
        print_json(report)
    else:
        _print_result(report)
    raise typer.Exit(_exit_code(row))


def _print_result(report: dict[str, Any]) -> None:
    print_table(["scenario", "status", "first audio ms", "failed expectation", "agent said"],
                [[s["name"] + (f" #{s['run']}" if s.get("run", 1) > 1 else ""), s["status"], s["first_audio_ms"],
                  s["failed_expectation"], s["excerpt"] if not s["passed"] else ""] for s in report["scenarios"]],
                title=f"evaluation {report['evaluation_id']}")
    for name, grade in report["rubric"].items():
        if grade.get("status") == "graded":
            say(f"judge, {name}: {grade['score']}/5: {grade['reason']}")
        else:
            say(f"judge, {name}: {grade.get('reason')}")
    if report["error"]:
        say(f"error: {report['error']}", err=True)
    score = report["score"]
    say(f"score {score if score is not None else '-'}; {'passed' if report['passed'] else 'not passed'} "
        f"(version {report['version']}, suite sha256 {report['suite_sha256'][:16]})")


@app.command("list")
def list_(tenant: TenantOpt, agent: AgentOpt, limit: LimitOpt = 50, offset: OffsetOpt = 0,
          as_json: JsonOpt = False) -> None:
    """List an agent's evaluations, newest first."""

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.evals.suites import SuiteService
        from voicectl.common import resolve_tenant

        tenant_id = await resolve_tenant(plane, tenant)
        found = await plane.agents.resolve(tenant_id, agent)
        return (await SuiteService(plane.store).evaluations(tenant_id, found.id, page(limit, offset))).to_dict()

    result = run(go)
    print_page(result, as_json, ["id", "version", "suite", "status", "score", "passed", "created"],
               [[e["id"], e["version"], e["suite_id"] or e["suite_name"], e["status"], e["score"], e["passed"],
                 when(e["created_at"])] for e in result["items"]],
               title="evaluations", total=result["total"], offset=offset,
               empty="none yet (voicectl eval run --tenant T --agent A SUITE.yaml)")


@app.command("show")
def show(evaluation_id: Annotated[str, typer.Argument(help="The evaluation id.", show_default=False)],
         tenant: TenantOpt, agent: AgentOpt, as_json: JsonOpt = False) -> None:
    """Show one evaluation with its per-scenario results."""

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.evals.suites import SuiteService
        from voicectl.common import resolve_tenant

        tenant_id = await resolve_tenant(plane, tenant)
        found = await plane.agents.resolve(tenant_id, agent)
        return (await SuiteService(plane.store).evaluation(tenant_id, found.id, evaluation_id)).to_dict()

    data = run(go)
    if as_json:
        print_json(data)
        return
    print_details({k: v for k, v in data.items() if k not in ("scenarios", "rubric")})
    print_table(["scenario", "status", "first audio ms", "failed expectation"],
                [[s["name"], s["status"], s["first_audio_ms"], s["failed_expectation"]] for s in data["scenarios"]])
