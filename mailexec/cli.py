"""The `mailexec` console script: processes (migrate, serve, up) and operator commands."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from mailexec import supervisor
from shared.sysexits import EX_CONFIG, EX_UNAVAILABLE, EX_USAGE

app = typer.Typer(
    name="mailexec",
    help="Program delivery for mail: run the services, administer programs and accounts.",
    no_args_is_help=True,
    # --install-completion / --show-completion (bash, zsh, fish, PowerShell), from typer
    add_completion=True,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"mailexec {version('mailexec')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("mailexec (not installed: no package metadata)")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="print the version and exit", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Program delivery for mail: run the services, administer programs and accounts."""


@app.command()
def migrate(
    revision: Annotated[
        str, typer.Argument(help="Alembic revision: head to upgrade, e.g. base with --downgrade")
    ] = "head",
    downgrade: Annotated[
        bool, typer.Option("--downgrade", help="Downgrade to REVISION instead (e.g. base)")
    ] = False,
    login_roles: Annotated[
        bool,
        typer.Option(
            "--login-roles",
            help="Then let each service role (mailexec_policy, _ingest, _executor, _notifier) log in"
            " with the password of MAILEXEC_<SERVICE>_DATABASE_PASSWORD[_FILE]; needs the admin URL",
        ),
    ] = False,
) -> None:
    """Create the database if missing and apply the migrations (alembic upgrade head)."""
    from mailexec import migrate as m

    passwords: dict[str, str] = {}
    if login_roles:
        if downgrade:
            typer.echo("--login-roles does not go with --downgrade", err=True)
            raise typer.Exit(EX_USAGE)
        try:  # every password first: a missing one changes nothing, not even the schema
            passwords = m.service_passwords()
        except m.LoginRolesError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(EX_CONFIG) from None
    if downgrade:
        m.downgrade(revision=revision if revision != "head" else "base")
        typer.echo(f"downgraded to {revision if revision != 'head' else 'base'}")
        return
    import asyncio

    from shared.settings import get_settings

    url = get_settings().database_url
    if asyncio.run(m.ensure_database(url)):
        typer.echo("created database")
    m.upgrade(url, revision)
    typer.echo(f"database at {revision}")
    if login_roles:
        try:
            roles = asyncio.run(m.set_login_roles(url, passwords))
        except m.LoginRolesError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(EX_CONFIG) from None
        typer.echo(f"login with their passwords: {', '.join(roles)}")


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help="ingest | policy | executor | notifier | console")],
    self_check: Annotated[
        bool, typer.Option("--self-check", help="executor: test the sandbox and exit")
    ] = False,
) -> None:
    """Run one service in the foreground; configuration comes from MAILEXEC_* variables."""
    if service not in supervisor.SERVICES:
        typer.echo(
            f"unknown service {service!r}; choose one of {', '.join(supervisor.SERVICES)}",
            err=True,
        )
        raise typer.Exit(EX_USAGE)
    try:
        main_mod = importlib.import_module(f"services.{service}.main")
    except ModuleNotFoundError:
        typer.echo(f"service {service} is not available in this build", err=True)
        raise typer.Exit(EX_UNAVAILABLE) from None
    if self_check:
        if not hasattr(main_mod, "self_check"):
            typer.echo(f"{service} has no self-check", err=True)
            raise typer.Exit(EX_USAGE)
        raise typer.Exit(main_mod.self_check())
    rc = main_mod.run()
    raise typer.Exit(rc or 0)


@app.command()
def up(
    services: Annotated[
        list[str] | None, typer.Argument(help="services to run (default: all)")
    ] = None,
) -> None:
    """Run all services on this machine under one supervisor; Ctrl-C stops them."""
    raise typer.Exit(supervisor.run(services))


def _register_commands() -> None:
    """Operator command groups live in mailexec.commands.* and add themselves to `app`."""
    try:
        commands = importlib.import_module("mailexec.commands")
    except ModuleNotFoundError:
        return
    commands.register(app)
    importlib.import_module("mailexec.commands.queue").register(app)


_register_commands()


def main() -> None:
    from shared.secretfile import SecretFileError

    try:
        app(prog_name="mailexec")
    except SecretFileError as exc:  # a MAILEXEC_*_FILE secret: say which, not a traceback
        typer.echo(f"mailexec: {exc}", err=True)
        raise SystemExit(EX_CONFIG) from None


if __name__ == "__main__":
    main()
