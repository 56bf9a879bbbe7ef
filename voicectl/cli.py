"""The ``voicectl`` root command: global options and one sub-command group per noun.

Only typer and the command modules (which import nothing heavy at module level)
are loaded to build the command tree, so ``voicectl --help`` and completion are
fast; each command imports the runtime when it runs.
"""

from __future__ import annotations

from typing import Annotated

import typer

from voicectl import (
    agent,
    bookings,
    call,
    callbacks,
    calls,
    config_cmd,
    credential,
    db,
    demo,
    doctor,
    evals,
    events,
    goto,
    init,
    instances,
    key,
    livekit,
    number,
    secrets_cmd,
    serve,
    tenant,
    voice,
    webhook,
)
from voicectl.common import state

app = typer.Typer(
    name="voicectl",
    help="Self-hosted, multi-tenant voice AI runtime: provision tenants, agents, numbers and credentials; "
    "run the runtime with `voicectl serve`.",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help: typer's rich help imports rich + markdown-it (see common.new_app)
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"voicectl {version('voicectl')}")
        except PackageNotFoundError:
            typer.echo("voicectl (not installed)")
        raise typer.Exit()


@app.callback()
def root(
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="Config file (default: $VOICECTL_CONFIG, else ./config.yaml).",
                     show_default=False, metavar="PATH"),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", help="Show the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """Self-hosted, multi-tenant voice AI runtime."""
    state.config = config


app.command("init")(init.init)
app.add_typer(tenant.app, name="tenant")
app.add_typer(key.app, name="key")
app.add_typer(agent.app, name="agent")
app.add_typer(voice.app, name="voice")
app.add_typer(number.app, name="number")
app.add_typer(credential.app, name="credential")
app.add_typer(goto.app, name="goto")
app.add_typer(livekit.app, name="livekit")
app.add_typer(secrets_cmd.app, name="secrets")
app.add_typer(webhook.app, name="webhook")
app.add_typer(evals.app, name="eval")
app.command("call")(call.call)
app.add_typer(calls.app, name="calls")
app.add_typer(callbacks.app, name="callbacks")
app.add_typer(bookings.bookings_app, name="bookings")
app.add_typer(bookings.orders_app, name="orders")
app.add_typer(events.app, name="events")
app.add_typer(db.app, name="db")
app.add_typer(config_cmd.app, name="config")
app.command("serve")(serve.serve)
app.command("instances")(instances.instances)
app.command("demo")(demo.demo)
app.command("doctor")(doctor.doctor)


def main() -> None:
    app(prog_name="voicectl")
