"""Operator and MTA commands of the `mailexec` console script (added by :func:`register`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from mailexec.commands import (
        accounts,
        audit,
        importdir,
        messages,
        notifications,
        programs,
        settings,
        tokens,
    )

    app.add_typer(programs.app, name="programs")
    app.add_typer(accounts.app, name="accounts")
    app.add_typer(tokens.app, name="tokens")
    app.add_typer(settings.app, name="settings")
    app.add_typer(messages.app, name="messages")
    app.command("suspend")(settings.suspend)
    app.command("resume")(settings.resume)
    app.command("status")(settings.status)
    app.command("import-trusted-dir")(importdir.import_trusted_dir)
    app.command("audit")(audit.audit)
    app.command("notifications")(notifications.notifications)
    # every argument (--help too) goes to the light implementation, which parses them itself
    app.command(
        "submit",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )(submit)


def submit(ctx: typer.Context) -> None:
    """Submit the message on stdin to ingest (for MTAs); exit status per sysexits."""
    # The console script runs mailexec.submit before typer is imported (mailexec.entry);
    # this listing is for `mailexec --help` and for callers of the typer app.
    from mailexec.submit import main

    raise typer.Exit(main(list(ctx.args)))
