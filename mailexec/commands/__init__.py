"""Operator and MTA commands of the `mailexec` console script (added by :func:`register`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from mailexec.commands import accounts, importdir, messages, programs, settings, submit

    app.add_typer(programs.app, name="programs")
    app.add_typer(accounts.app, name="accounts")
    app.add_typer(accounts.tokens_app, name="tokens")
    app.add_typer(settings.app, name="settings")
    app.add_typer(messages.app, name="messages")
    app.command("suspend")(settings.suspend)
    app.command("resume")(settings.resume)
    app.command("status")(settings.status)
    app.command("import-trusted-dir")(importdir.import_trusted_dir)
    app.command("submit", cls=submit.SubmitCommand)(submit.submit)
