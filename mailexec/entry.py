"""The `mailexec` console script: `submit` runs before the admin CLI's stack is imported.

An MTA starts `mailexec submit` once per message, so its start-up cost is the delivery
rate: through typer, rich, pydantic and httpx it took ≈ 0.4 s CPU and ≈ 50 MB before sending
a byte. Here only argv[1] is looked at; `submit` goes to :mod:`mailexec.submit` (standard
library only), everything else to the typer app in :mod:`mailexec.cli`. Keep this module
and ``mailexec/__init__.py`` free of other imports (tests/cli/test_submit_cost.py).
"""

import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "submit":
        from mailexec.submit import main as submit

        raise SystemExit(submit(sys.argv[2:]))
    from mailexec.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
