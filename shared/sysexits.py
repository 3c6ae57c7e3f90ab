"""The exit statuses of sysexits.h: the one definition every mailexec process uses.

Who reads them: ``mailexec submit`` and the operator CLI (the status an MTA or a
shell sees), every ``mailexec serve X`` (``shared.service``: why a service stopped, so
``mailexec up`` and an init system can tell a bad configuration from a crash), and
``shared.status``, which maps a *program's* exit status to a DSN status code as Postfix's
``src/global/sys_exits.c`` does.

Standard library only, and not even that: ``mailexec submit`` imports it before
anything else and its start-up is budgeted (tests/cli/test_submit_cost.py), so this module
imports nothing and holds plain ints.
"""

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67
EX_NOHOST = 68
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_OSFILE = 72
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_PROTOCOL = 76
EX_NOPERM = 77
EX_CONFIG = 78

# code -> (name, sysexits.h's meaning)
EXITS = {
    EX_USAGE: ("EX_USAGE", "command line usage error"),
    EX_DATAERR: ("EX_DATAERR", "data format error"),
    EX_NOINPUT: ("EX_NOINPUT", "cannot open input"),
    EX_NOUSER: ("EX_NOUSER", "user unknown"),
    EX_NOHOST: ("EX_NOHOST", "host name unknown"),
    EX_UNAVAILABLE: ("EX_UNAVAILABLE", "service unavailable"),
    EX_SOFTWARE: ("EX_SOFTWARE", "internal software error"),
    EX_OSERR: ("EX_OSERR", "system resource problem"),
    EX_OSFILE: ("EX_OSFILE", "critical OS file missing"),
    EX_CANTCREAT: ("EX_CANTCREAT", "can't create user output file"),
    EX_IOERR: ("EX_IOERR", "input/output error"),
    EX_TEMPFAIL: ("EX_TEMPFAIL", "temporary failure"),
    EX_PROTOCOL: ("EX_PROTOCOL", "remote error in protocol"),
    EX_NOPERM: ("EX_NOPERM", "permission denied"),
    EX_CONFIG: ("EX_CONFIG", "local configuration error"),
}


def describe(code: int) -> str:
    """``"78 EX_CONFIG (local configuration error)"``; other codes as the bare number."""
    known = EXITS.get(code)
    return f"{code} {known[0]} ({known[1]})" if known else str(code)
