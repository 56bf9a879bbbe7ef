"""voicectl agent create|list|show|update|versions|promote|delete and agent rollout start|status|stop.

Creating an agent makes version 1 and activates it; every later change of its
settings makes a draft version that ``promote`` activates (past the evaluation gate,
when the tenant or the agent has one), or ``rollout`` gives a share of new calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from voicectl.common import (
    EXIT_USAGE,
    JsonOpt,
    LimitOpt,
    MaybeTenantOpt,
    OffsetOpt,
    TenantOpt,
    fail,
    new_app,
    owning_tenant,
    page,
    print_details,
    print_json,
    print_page,
    provider_option,
    resolve_tenant,
    resolve_voice_profile,
    run,
    say,
    when,
)

app = new_app("Agents and their versions (changes make drafts; promote activates).")

AgentArg = Annotated[str, typer.Argument(help="Agent id, or its name with --tenant.", show_default=False)]
PromptOpt = Annotated[str | None, typer.Option("--prompt", help="System prompt.", show_default=False, metavar="TEXT")]
PromptFileOpt = Annotated[
    Path | None, typer.Option("--prompt-file", help="Read the system prompt from a file.", show_default=False)
]
GreetingOpt = Annotated[str | None, typer.Option("--greeting", help="First thing the agent says.")]
VoicemailOpt = Annotated[str | None, typer.Option(
    "--voicemail-message", help="What an outbound call with machine_detection voicemail leaves after the beep.")]
LanguageOpt = Annotated[str | None, typer.Option("--language", help="Language code, e.g. en or de-DE.")]
LlmOpt = Annotated[str | None, provider_option("llm", "--llm", "LLM provider")]
LlmModelOpt = Annotated[str | None, typer.Option("--llm-model", help="LLM model name.")]
SttOpt = Annotated[str | None, provider_option("stt", "--stt", "STT provider")]
SttModelOpt = Annotated[str | None, typer.Option("--stt-model", help="STT model name.")]
TtsOpt = Annotated[str | None, provider_option("tts", "--tts", "TTS provider")]
TtsModelOpt = Annotated[str | None, typer.Option("--tts-model", help="TTS model name.")]
VoiceOpt = Annotated[str | None, typer.Option("--voice-profile", help="Voice profile id or name.")]
ToolOpt = Annotated[
    list[str] | None,
    typer.Option("--tool", metavar="TOOL", help="Built-in tool the agent may call (repeatable; replaces the list).",
                 show_default=False),
]
EscalationOpt = Annotated[
    str | None, typer.Option("--escalation", help="Transfer target: E.164 number or sip: URI.")
]
MaxDurationOpt = Annotated[int | None, typer.Option("--max-duration", help="Longest call in seconds.")]
KnowledgeOpt = Annotated[
    Path | None, typer.Option("--knowledge-file", help="Knowledge text the agent may use.", show_default=False)
]
FileOpt = Annotated[
    Path | None,
    typer.Option("--file", "-f", help="YAML/JSON file with any version settings (hours, http_tools, turn, ...); "
                 "options given on the command line win.", show_default=False),
]


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        fail(f"cannot read {what} file {path}: {exc.strerror or exc}", EXIT_USAGE)


def _read_settings_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(_read_text(path, "settings")) or {}
    except yaml.YAMLError as exc:
        fail(f"{path}: not valid YAML/JSON: {exc}", EXIT_USAGE)
    if not isinstance(data, dict):
        fail(f"{path}: expected a mapping of agent settings", EXIT_USAGE)
    return data


def _provider(current: dict[str, Any] | None, provider: str | None, model: str | None) -> dict[str, Any] | None:
    if provider is None and model is None:
        return None
    merged = dict(current or {})
    if provider is not None:
        merged["provider"] = provider
    if model is not None:
        merged["model"] = model
    return merged


class _Options:
    """The settings options of create and update, gathered into schema fields."""

    def __init__(self, **values: Any) -> None:
        self.v = values

    def prompt(self) -> str | None:
        if self.v["prompt"] is not None and self.v["prompt_file"] is not None:
            fail("give --prompt or --prompt-file, not both", EXIT_USAGE)
        if self.v["prompt_file"] is not None:
            return _read_text(self.v["prompt_file"], "prompt")
        return self.v["prompt"]

    def fields(self, current: dict[str, Any]) -> dict[str, Any]:
        """Schema fields for the options given; ``current`` is the latest config (for provider merges)."""
        v = self.v
        out: dict[str, Any] = {}
        prompt = self.prompt()
        if prompt is not None:
            out["system_prompt"] = prompt
        simple = {"greeting": "greeting", "voicemail": "voicemail_message", "language": "language",
                  "escalation": "escalation_target", "max_duration": "max_duration_s"}
        for option, field in simple.items():
            if v[option] is not None:
                out[field] = v[option]
        for kind in ("llm", "stt", "tts"):
            choice = _provider(current.get(kind), v[kind], v[f"{kind}_model"])
            if choice is not None:
                out[kind] = choice
        if v["tools"]:
            out["tools"] = list(v["tools"])
        if v["knowledge_file"] is not None:
            out["knowledge"] = _read_text(v["knowledge_file"], "knowledge")
        return out


async def _agent(plane: Any, tenant: str | None, ref: str) -> tuple[str, Any]:
    tenant_id = await owning_tenant(plane, tenant, "agents", ref, "agent", named=True)
    return tenant_id, await plane.agents.resolve(tenant_id, ref)


def _show(data: dict[str, Any], as_json: bool, verb: str | None = None) -> None:
    if as_json:
        print_json(data)
        return
    if verb:
        say(f"{verb} agent {data['name']} ({data['id']})")
    summary = {k: data[k] for k in ("id", "name", "tenant_id", "active_version", "latest_version",
                                     "created_at", "updated_at")}
    print_details(summary)
    if data["latest_version"] != data["active_version"]:
        say(f"draft version {data['latest_version']} is waiting: voicectl agent promote {data['id']}")
    config = data.get("config") or {}
    if config:
        shown = dict(config)
        prompt = shown.get("system_prompt") or ""
        shown["system_prompt"] = prompt if len(prompt) <= 200 else prompt[:200] + "…"
        knowledge = shown.get("knowledge") or ""
        shown["knowledge"] = f"{len(knowledge)} characters" if len(knowledge) > 80 else (knowledge or None)
        for kind in ("llm", "stt", "tts"):
            choice = {k: v for k, v in (shown.get(kind) or {}).items() if v not in (None, [], {})}
            choice.setdefault("provider", "default")
            shown[kind] = " ".join(f"{k}={v}" for k, v in choice.items())
        print_details(shown, title=f"active version {data['active_version']}")
    for warning in data.get("warnings") or ():  # parts of a stored version that calls leave out
        say(f"warning: {warning}")


@app.command("create")
def create(
    tenant: TenantOpt,
    name: Annotated[str, typer.Option("--name", help="Agent name, unique in the tenant.", show_default=False)],
    prompt: PromptOpt = None,
    prompt_file: PromptFileOpt = None,
    greeting: GreetingOpt = None,
    voicemail_message: VoicemailOpt = None,
    language: LanguageOpt = None,
    llm: LlmOpt = None,
    llm_model: LlmModelOpt = None,
    stt: SttOpt = None,
    stt_model: SttModelOpt = None,
    tts: TtsOpt = None,
    tts_model: TtsModelOpt = None,
    voice_profile: VoiceOpt = None,
    tool: ToolOpt = None,
    escalation: EscalationOpt = None,
    max_duration: MaxDurationOpt = None,
    knowledge_file: KnowledgeOpt = None,
    file: FileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an agent; version 1 is active at once."""
    options = _Options(prompt=prompt, prompt_file=prompt_file, greeting=greeting, voicemail=voicemail_message,
                       language=language, llm=llm,
                       llm_model=llm_model, stt=stt, stt_model=stt_model, tts=tts, tts_model=tts_model,
                       tools=tool, escalation=escalation, max_duration=max_duration, knowledge_file=knowledge_file)
    base = _read_settings_file(file)
    fields = options.fields(base)
    if "system_prompt" not in fields and not base.get("system_prompt"):
        fail("an agent needs a system prompt: --prompt TEXT or --prompt-file PATH", EXIT_USAGE)

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.schemas import AgentCreate

        tenant_id = await resolve_tenant(plane, tenant)
        values = {**base, **fields, "name": name}
        if voice_profile is not None:
            values["voice_profile_id"] = (await resolve_voice_profile(plane, tenant_id, voice_profile)).id
        return (await plane.agents.create(tenant_id, AgentCreate(**values))).to_dict()

    _show(run(go), as_json, "created")


@app.command("list")
def list_(tenant: TenantOpt, limit: LimitOpt = 50, offset: OffsetOpt = 0, as_json: JsonOpt = False) -> None:
    """List a tenant's agents."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id = await resolve_tenant(plane, tenant)
        return (await plane.agents.list(tenant_id, page(limit, offset))).to_dict()

    result = run(go)
    print_page(
        result, as_json,
        ["id", "name", "active version", "latest version", "created", "updated"],
        [[a["id"], a["name"], a["active_version"], a["latest_version"], when(a["created_at"]), when(a["updated_at"])]
         for a in result["items"]],
        title="agents", total=result["total"], offset=offset,
    )


@app.command("show")
def show(agent: AgentArg, tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """Show an agent and the settings of its active version."""

    async def go(plane: Any) -> dict[str, Any]:
        return (await _agent(plane, tenant, agent))[1].to_dict()

    _show(run(go), as_json)


@app.command("update")
def update(
    agent: AgentArg,
    tenant: MaybeTenantOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Rename (no new version).")] = None,
    note: Annotated[str | None, typer.Option("--note", help="What changed, kept with the new version.")] = None,
    prompt: PromptOpt = None,
    prompt_file: PromptFileOpt = None,
    greeting: GreetingOpt = None,
    voicemail_message: VoicemailOpt = None,
    language: LanguageOpt = None,
    llm: LlmOpt = None,
    llm_model: LlmModelOpt = None,
    stt: SttOpt = None,
    stt_model: SttModelOpt = None,
    tts: TtsOpt = None,
    tts_model: TtsModelOpt = None,
    voice_profile: VoiceOpt = None,
    tool: ToolOpt = None,
    escalation: EscalationOpt = None,
    max_duration: MaxDurationOpt = None,
    knowledge_file: KnowledgeOpt = None,
    file: FileOpt = None,
    eval_suite: Annotated[str | None, typer.Option(
        "--eval-suite", help="This agent's promotion gate: the suite id a version's latest evaluation must be on "
                             "(overrides the tenant's).", show_default=False)] = None,
    min_eval_score: Annotated[float | None, typer.Option(
        "--min-eval-score", help="This agent's gate threshold, 0-1 (overrides the tenant's).", min=0.0, max=1.0,
        show_default=False)] = None,
    tenant_gate: Annotated[bool, typer.Option(
        "--tenant-gate", help="Drop this agent's own gate settings: the tenant's apply.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Change an agent: new settings become a draft version (activate it with promote)."""
    if tenant_gate and (eval_suite is not None or min_eval_score is not None):
        fail("give --tenant-gate or --eval-suite/--min-eval-score, not both", EXIT_USAGE)
    options = _Options(prompt=prompt, prompt_file=prompt_file, greeting=greeting, voicemail=voicemail_message,
                       language=language, llm=llm,
                       llm_model=llm_model, stt=stt, stt_model=stt_model, tts=tts, tts_model=tts_model,
                       tools=tool, escalation=escalation, max_duration=max_duration, knowledge_file=knowledge_file)
    base = _read_settings_file(file)

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.schemas import AgentUpdate

        tenant_id, found = await _agent(plane, tenant, agent)
        latest = await plane.agents.version(tenant_id, found.id, found.latest_version)
        values = {**base, **options.fields(latest.config)}
        if voice_profile is not None:
            values["voice_profile_id"] = (await resolve_voice_profile(plane, tenant_id, voice_profile)).id
        if name is not None:
            values["name"] = name
        if note is not None:
            values["note"] = note
        if eval_suite is not None:
            values["rollout_required_suite_id"] = eval_suite
        if min_eval_score is not None:
            values["rollout_min_eval_score"] = min_eval_score
        if tenant_gate:
            values["rollout_required_suite_id"] = values["rollout_min_eval_score"] = None
        if not values:
            from runtime.control.errors import BadRequest

            raise BadRequest("nothing to change: give at least one option (see voicectl agent update --help)")
        return (await plane.agents.update(tenant_id, found.id, AgentUpdate(**values))).to_dict()

    data = run(go)
    if as_json:
        print_json(data)
        return
    _show(data, False, "updated")


@app.command("versions")
def versions(
    agent: AgentArg, tenant: MaybeTenantOpt = None, limit: LimitOpt = 50, offset: OffsetOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """List an agent's versions (active, draft, retired)."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id, found = await _agent(plane, tenant, agent)
        return (await plane.agents.versions(tenant_id, found.id, page(limit, offset))).to_dict()

    result = run(go)
    print_page(
        result, as_json,
        ["version", "status", "note", "llm", "created", "promoted"],
        [[v["version"], v["status"], v["note"], (v["config"].get("llm") or {}).get("provider") or "default",
          when(v["created_at"]), when(v["promoted_at"])] for v in result["items"]],
        title="versions", total=result["total"], offset=offset,
    )


def cli_user() -> str:
    """Who made a change from the CLI, as recorded: "cli <OS user>"."""
    import getpass

    try:
        return f"cli {getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@app.command("promote")
def promote(
    agent: AgentArg,
    version: Annotated[int | None, typer.Option("--version", help="Version to activate (default: the latest).",
                                                min=1)] = None,
    tenant: MaybeTenantOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Promote past the evaluation gate (needs --reason; "
                                        "recorded and sent in agent.promoted).")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (kept with the version).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a version active; new calls use it at once. With the evaluation gate on, the version's
    latest evaluation on the required suite must reach the threshold (exit 4 otherwise)."""
    if force and not (reason and reason.strip()):
        fail("--force needs --reason TEXT (it is recorded with the promotion)", EXIT_USAGE)

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id, found = await _agent(plane, tenant, agent)
        return (await plane.agents.promote(tenant_id, found.id, version, by=cli_user(), force=force,
                                           reason=reason)).to_dict()

    data = run(go)
    if as_json:
        print_json(data)
    else:
        say(f"agent {data['name']} ({data['id']}): version {data['active_version']} is active")


@app.command("delete")
def delete(agent: AgentArg, tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """Delete an agent with its versions (refused while numbers route to it)."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id, found = await _agent(plane, tenant, agent)
        await plane.agents.delete(tenant_id, found.id)
        return {"id": found.id, "name": found.name, "deleted": True}

    data = run(go)
    if as_json:
        print_json(data)
    else:
        say(f"deleted agent {data['name']} ({data['id']})")


# Percentage rollout

rollout_app = new_app("Roll a version out to a share of new calls, with stop conditions.")
app.add_typer(rollout_app, name="rollout")


def _print_rollout(data: dict[str, Any], as_json: bool, headline: str | None = None) -> None:
    if as_json:
        print_json(data)
        return
    if headline:
        say(headline)
    say(f"rollout {data['id']}: version {data['candidate_version']} on {data['percent']}% of new calls beside "
        f"version {data['base_version']}; {data['status']}"
        + (f" ({data['end_reason']})" if data.get("end_reason") else ""))
    from voicectl.common import print_table

    arms = data["arms"]
    rows = []
    for label, key in (("calls", "calls"), ("failures", "failures"), ("failure rate", "failure_rate"),
                       ("transfers", "transfers"), ("transfer rate", "transfer_rate"),
                       ("p95 first audio ms", "p95_first_audio_ms")):
        rows.append([label, arms["base"][key], arms["candidate"][key]])
    print_table(["", f"base (v{data['base_version']})", f"candidate (v{data['candidate_version']})"], rows)
    stop = data["stop_conditions"]
    say("stop conditions: " + ", ".join(f"{k}={v}" for k, v in stop.items() if v is not None)
        + (f"; auto-promote after {data['auto_promote_after']} calls" if data.get("auto_promote_after") else ""))
    if data.get("breach"):
        say(f"tripped: {', '.join(data['breach'].get('tripped', []))}")


@rollout_app.command("start")
def rollout_start(
    agent: AgentArg,
    version: Annotated[int, typer.Option("--version", help="The candidate version.", min=2, show_default=False)],
    percent: Annotated[int, typer.Option("--percent", help="Share of new calls it answers (1-100).", min=1, max=100,
                                         show_default=False)],
    tenant: MaybeTenantOpt = None,
    max_failure_rate: Annotated[float | None, typer.Option(
        "--max-failure-rate", help="Revert above this share of failed calls (default 0.2).", min=0.0, max=1.0)] = None,
    max_transfer_rate: Annotated[float | None, typer.Option(
        "--max-transfer-rate", help="Revert above this share of transferred calls.", min=0.0, max=1.0)] = None,
    max_p95_first_audio_ms: Annotated[int | None, typer.Option(
        "--max-p95-first-audio-ms", help="Revert above this p95 first-audio latency.", min=50)] = None,
    min_calls: Annotated[int | None, typer.Option(
        "--min-calls", help="Candidate calls before judging (default 20).", min=1)] = None,
    auto_promote_after: Annotated[int | None, typer.Option(
        "--auto-promote-after", help="Promote the candidate after this many of its calls without a breach.",
        min=1)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a rollout: VERSION answers PERCENT % of new calls (sticky per caller number)."""
    stop = {k: v for k, v in {"max_failure_rate": max_failure_rate, "max_transfer_rate": max_transfer_rate,
                              "max_p95_first_audio_ms": max_p95_first_audio_ms, "min_calls": min_calls}.items()
            if v is not None}

    async def go(plane: Any) -> dict[str, Any]:
        from runtime.control.rollouts import RolloutStart

        tenant_id, found = await _agent(plane, tenant, agent)
        data = RolloutStart(version=version, percent=percent, stop=stop, auto_promote_after=auto_promote_after)
        return await plane.rollouts.start(tenant_id, found.id, data, by=cli_user())

    _print_rollout(run(go), as_json, "started")


@rollout_app.command("status")
def rollout_status(agent: AgentArg, tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """The running (else the latest) rollout, both arms side by side."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id, found = await _agent(plane, tenant, agent)
        return await plane.rollouts.status(tenant_id, found.id)

    _print_rollout(run(go), as_json)


@rollout_app.command("stop")
def rollout_stop(agent: AgentArg, tenant: MaybeTenantOpt = None, as_json: JsonOpt = False) -> None:
    """Stop the running rollout: every new call gets the promoted version."""

    async def go(plane: Any) -> dict[str, Any]:
        tenant_id, found = await _agent(plane, tenant, agent)
        return await plane.rollouts.stop(tenant_id, found.id, by=cli_user())

    _print_rollout(run(go), as_json, "stopped")
