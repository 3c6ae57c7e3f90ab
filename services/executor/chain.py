"""SPEC §3 for one claimed job: the policy checks, program resolution and the chain run.

What it does
    In this order (the guide's algorithm, SPEC §3.1–§3.8): unknown account → 5.1.1;
    program delivery not enabled (or no programs) → 5.3.0; suspended → held (a
    ``delayed`` warning after ``delay_warning_after_s``, 4.4.7 after
    ``max_queue_lifetime_s``); disabled (secure mode, nothing registered) → 5.3.0 +
    admin notice; mail loop (``Delivered-To: <recipient>`` already present) → 5.4.6;
    login shell not in ``valid_shells`` → fail; uid 0 → ``safe_user`` or fail;
    resolve every remaining program (secure: basename only, registered bytes with
    the registry's SHA-256 via ``ProgramStore``; insecure: absolute path via
    ``open_insecure``) before running any; then run the chain from
    ``job.next_program``, one sandboxed process each, stopping at the first failure.

What it guarantees
    - Nothing runs as uid 0 or gid 0, below ``min_uid`` or as a service's uid (checked
      here, in ``Sandbox.run`` and in the spawner): such an account bounces 5.3.5 with
      an admin notice. The safe user replaces a root owner, never the other way round.
    - An entry whose basename can never be a program name (``shared.programs``)
      bounces 5.3.0 with an admin notice, like a missing program, in both modes.
    - Nothing runs unless every program of the remaining chain resolved.
    - stdin is ``Return-Path: <sender>`` and ``Delivered-To: <recipient>`` in the
      message's own line-ending convention, then the message bytes (shared, not
      copied per job).
    - Outages (policy unreachable, sandbox unable to spawn) give a ``retry`` verdict:
      never a bounce. EAGAIN, ENOMEM, EMFILE, ENFILE, ETXTBSY at exec (e.g. the uid's
      process limit reached by its other deliveries) defer 4.3.0 like a tempfail exit.

What it does not do
    Record anything or publish anything (``worker.py`` does, after this returns).

Settings
    Policy: mode, suspended, safe_user, valid_shells, program_timeout_s,
    max_output_bytes, tempfail_exit_codes, dsn_include_output, delay_warning_after_s,
    max_queue_lifetime_s. Process: the ``rlimit_*`` fields, ``tz`` (in the sandbox).
"""

from __future__ import annotations

import re
import signal as signals
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime

from services.executor.errors import IdentityRefused, LaunchFailed, ProgramUnresolved
from services.executor.metrics import PROGRAM_RUN_SECONDS, SANDBOX_FAILURES
from services.executor.programs import ExecHandle, ProgramStore, open_insecure
from services.executor.repo import Claim, RunRow
from services.executor.sandbox import RunLimits, RunResult, Sandbox
from services.executor.verdict import DIAGNOSTICS, Verdict, failed
from shared.contract import Account, PolicySettings
from shared.policy_client import PolicyClient, PolicyUnavailable
from shared.programs import PROGRAM_NAME_RULE, entry_basename, is_program_name
from shared.schemas import Job
from shared.settings import Settings
from shared.status import FailureKind, Outcome, describe_exit, failure_status, status_for

DIAGNOSTIC_OUTPUT_LINES = 3
DIAGNOSTIC_OUTPUT_CHARS = 400
STORED_OUTPUT_CHARS = 4096
_HEADER_SCAN_LIMIT = 1 << 20

BodyOpener = Callable[[], AbstractAsyncContextManager[bytes]]


@dataclass
class Deps:
    policy: PolicyClient
    store: ProgramStore
    sandbox: Sandbox
    settings: Settings


@dataclass
class Resolved:
    entry: str
    argv0: str
    handle: ExecHandle
    network: str = "none"


async def decide_and_run(job: Job, claim: Claim, open_body: BodyOpener, deps: Deps) -> Verdict:
    """The verdict for ``job``; PolicyUnavailable/LaunchFailed become ``retry`` verdicts."""
    try:
        return await _decide_and_run(job, claim, open_body, deps)
    except PolicyUnavailable as exc:
        return Verdict(kind="retry", diagnostic=f"policy service unavailable: {exc}",
                       next_program=job.next_program)
    except LaunchFailed as exc:  # the spawner could not be asked (insecure-mode open)
        SANDBOX_FAILURES.inc()
        return Verdict(kind="retry", diagnostic=f"sandbox unavailable: {exc}",
                       next_program=job.next_program)


async def _decide_and_run(job: Job, claim: Claim, open_body: BodyOpener, deps: Deps) -> Verdict:
    policy = deps.policy
    ps = await policy.settings()
    account = admit(job, claim, await policy.account(job.recipient), ps)
    if isinstance(account, Verdict):
        return account
    if ps.mode != "insecure":
        status = await policy.status()
        if status.program_delivery == "disabled":
            return disabled(account)
    async with open_body() as body:
        loop = mail_loop(body, job.recipient)
        if loop is not None:
            return loop
        identity = run_identity(account, ps, deps.sandbox)
        if isinstance(identity, Verdict):
            return identity
        resolved = await resolve_chain(account, job.next_program, ps, deps, identity)
        if isinstance(resolved, Verdict):
            return resolved
        try:
            return await run_chain(job, account, identity, resolved, body, ps, deps)
        finally:
            for r in resolved:
                r.handle.close()


def admit(job: Job, claim: Claim, account: Account | None, ps: PolicySettings) -> Account | Verdict:
    """SPEC §3 rules 1–2: the account to deliver to, or why not: unknown (5.1.1), program
    delivery not configured (5.3.0), suspended (held)."""
    if account is None:
        diag = DIAGNOSTICS[FailureKind.UNKNOWN_ACCOUNT].format(recipient=job.recipient)
        return failed(FailureKind.UNKNOWN_ACCOUNT, diag)
    if not account.program_delivery_enabled or not account.programs:
        return failed(FailureKind.NOT_CONFIGURED,
                      DIAGNOSTICS[FailureKind.NOT_CONFIGURED].format(recipient=job.recipient),
                      account=account.address)
    if ps.suspended:
        return held(job, claim, ps)
    return account


def disabled(account: Account) -> Verdict:
    """SPEC §3 rule 3: secure mode with nothing registered bounces, and tells the postmaster."""
    return failed(FailureKind.DISABLED, DIAGNOSTICS[FailureKind.DISABLED], account=account.address,
                  notice_detail="secure mode and no trusted program is registered")


def mail_loop(body: bytes, recipient: str) -> Verdict | None:
    """SPEC §3 rule 7: ``Delivered-To: <recipient>`` already in the header is a loop (5.4.6)."""
    if has_delivered_to(body, recipient):
        return failed(FailureKind.MAIL_LOOP,
                      DIAGNOSTICS[FailureKind.MAIL_LOOP].format(recipient=recipient))
    return None


def held(job: Job, claim: Claim, ps: PolicySettings) -> Verdict:
    """Suspended: hold, warn once after delay_warning_after_s, expire after the lifetime."""
    age = (datetime.now(UTC) - job.arrival).total_seconds()
    if age >= ps.max_queue_lifetime_s:
        why = "program delivery was suspended"
        return failed(FailureKind.SUSPENDED_EXPIRED,
                      DIAGNOSTICS[FailureKind.SUSPENDED_EXPIRED].format(age=_age(age), why=why))
    warn = (age >= ps.delay_warning_after_s and claim.delay_notified_at is None
            and "DELAY" in job.notify)
    return Verdict(kind="suspended", status=status_for(Outcome.DEFERRED),
                   diagnostic="program delivery is suspended; the message waits in the queue",
                   next_program=job.next_program, delay_warning=warn,
                   will_retry_until_s=ps.max_queue_lifetime_s)


def run_identity(account: Account, ps: PolicySettings, sandbox: Sandbox | None = None
                 ) -> tuple[int, int] | Verdict:
    """(uid, gid) to run as, or the failure: bad shell, root without a safe user, a uid
    the sandbox never runs programs as (below min_uid, a service's)."""
    if account.shell not in ps.valid_shells:
        diag = DIAGNOSTICS[FailureKind.BAD_SHELL].format(shell=account.shell or "(none)")
        return failed(FailureKind.BAD_SHELL, diag, account=account.address,
                      notice_detail=f"shell {account.shell!r} not in valid_shells")
    uid, gid = account.uid, account.gid
    if uid == 0:
        if ps.safe_user is None:
            return failed(FailureKind.ROOT_WITHOUT_SAFE_USER,
                          DIAGNOSTICS[FailureKind.ROOT_WITHOUT_SAFE_USER].format(who="root (uid 0)"),
                          account=account.address, notice_detail="set safe_user in the policy settings")
        uid, gid = ps.safe_user.uid, ps.safe_user.gid
    if uid == 0 or gid == 0:
        who = "root" if uid == 0 else f"uid {uid} with gid 0"
        return failed(FailureKind.ROOT_WITHOUT_SAFE_USER,
                      DIAGNOSTICS[FailureKind.ROOT_WITHOUT_SAFE_USER].format(who=who),
                      account=account.address, notice_detail="programs never run with uid 0 or gid 0")
    refused = sandbox.refuses(uid, gid) if sandbox is not None else None
    if refused:
        return _identity_refused(account, uid, refused)
    return uid, gid


def _identity_refused(account: Account, uid: int, why: str) -> Verdict:
    return failed(FailureKind.ROOT_WITHOUT_SAFE_USER,
                  f"program delivery never runs programs as uid {uid}: {why}",
                  account=account.address,
                  notice_detail=f"account owner uid {uid} refused: {why} (MAILEXEC_MIN_UID, "
                                "service uids)")


async def resolve_chain(
    account: Account, start: int, ps: PolicySettings, deps: Deps,
    identity: tuple[int, int] = (0, 0),
) -> list[Resolved] | Verdict:
    out: list[Resolved] = []
    for position in range(start, len(account.programs)):
        entry = account.programs[position]
        try:
            out.append(await resolve_one(entry, ps, deps, *identity))
        except ProgramUnresolved as exc:
            for r in out:
                r.handle.close()
            return unresolved(account, entry, position, str(exc))
        except BaseException:
            for r in out:
                r.handle.close()
            raise
    return out


async def resolve_one(entry: str, ps: PolicySettings, deps: Deps, uid: int = 0,
                      gid: int = 0) -> Resolved:
    name = entry_basename(entry)
    if not is_program_name(name):  # never asked of policy: it can't be registered
        raise ProgramUnresolved(f"{entry!r} can never name a program (the basename must match "
                                f"{PROGRAM_NAME_RULE} and not be a flag-file name)")
    if ps.mode == "insecure":
        return Resolved(entry, entry, await open_insecure(
            entry, lambda path: deps.sandbox.open_as(path, uid, gid)))
    meta = await deps.policy.program(name)
    if meta is None:
        raise ProgramUnresolved(f"{name!r} is not a registered trusted program")
    handle = await deps.store.open_trusted(name, meta.sha256, lambda: deps.policy.program_content(name))
    return Resolved(entry, name, handle, meta.network)


async def run_chain(
    job: Job,
    account: Account,
    identity: tuple[int, int],
    chain: list[Resolved],
    body: bytes,
    ps: PolicySettings,
    deps: Deps,
) -> Verdict:
    uid, gid = identity
    prefix = stdin_prefix(job.sender, job.recipient, body)
    limits = RunLimits.from_settings(deps.settings, timeout_s=ps.program_timeout_s,
                                     max_output_bytes=ps.max_output_bytes)
    runs: list[RunRow] = []
    for offset, r in enumerate(chain):
        position = job.next_program + offset
        started_at = datetime.now(UTC)
        try:
            res = await deps.sandbox.run(r.handle.fd, r.argv0, uid, gid, account.home or "/tmp",
                                         prefix, body, limits, network=r.network)
        except IdentityRefused as exc:
            return _identity_refused(account, uid, str(exc))
        except LaunchFailed as exc:
            SANDBOX_FAILURES.inc()
            return Verdict(kind="retry", diagnostic=f"cannot start program {r.entry}: {exc}",
                           next_program=position, runs=runs, program=r.entry)
        PROGRAM_RUN_SECONDS.observe(res.duration_s)
        output = decode_output(res.output)
        runs.append(RunRow(
            attempt=job.attempt, program=r.entry, position=position, exit_status=res.exit_status,
            signal=res.signal, timed_out=res.timed_out, output_excerpt=output[:STORED_OUTPUT_CHARS],
            duration_ms=int(res.duration_s * 1000), started_at=started_at,
        ))
        if res.launch is not None:
            SANDBOX_FAILURES.inc()
        verdict = run_outcome(job, account, r.entry, position, res, output, runs, ps)
        if verdict is not None:
            return verdict
    return delivered(account, [r.entry for r in chain], runs)


def run_outcome(
    job: Job, account: Account, entry: str, position: int, res: RunResult, output: str,
    runs: list[RunRow], ps: PolicySettings,
) -> Verdict | None:
    """What one run means: None to go on with the chain, else the verdict that ends it.

    A launch failure at exec is an unresolved program (5.3.0), a temporary one a
    deferral (4.3.0), one before exec an outage (``retry``); any other failure is the
    program's (``program_failure``)."""
    if res.ok:
        return None
    if res.launch is not None:
        if res.launch.temporary:
            return exec_deferred(job, account, entry, position, res.launch.text, runs, ps)
        if not res.launch.at_exec:
            return Verdict(kind="retry", diagnostic=f"program {entry}: {res.launch.text}",
                           next_program=position, runs=runs, program=entry)
        return unresolved(account, entry, position, res.launch.text, runs)
    return program_failure(job, account, entry, position, res, output, runs, ps)


def delivered(account: Account, entries: list[str], runs: list[RunRow]) -> Verdict:
    """SPEC §3 rule 8: every program succeeded."""
    return Verdict(kind="delivered", status=status_for(Outcome.DELIVERED),
                   diagnostic="delivered to " + ", ".join(entries), runs=runs,
                   next_program=len(account.programs), account=account.address)


def unresolved(account: Account, entry: str, position: int, why: str,
               runs: list[RunRow] | None = None) -> Verdict:
    """SPEC §3 rule 5: a program that cannot be resolved (or exec'd) bounces 5.3.0 with a
    notice to the postmaster."""
    diag = DIAGNOSTICS[FailureKind.UNRESOLVED_PROGRAM].format(program=entry, why=why)
    return failed(FailureKind.UNRESOLVED_PROGRAM, diag, account=account.address, program=entry,
                  position=position, runs=runs if runs is not None else [], notice_detail=why)


def exec_deferred(job: Job, account: Account, entry: str, position: int, why: str,
                  runs: list[RunRow], ps: PolicySettings) -> Verdict:
    """A temporary failure to exec (process limit, memory, fd tables): 4.3.0, retried."""
    diag = f"program {entry} could not start for now: {why}"
    v = Verdict(kind="bounced", status=status_for(FailureKind.TEMPFAIL), diagnostic=diag,
                failure=FailureKind.TEMPFAIL, next_program=position, program=entry,
                position=position, runs=runs, account=account.address)
    return defer_or_expire(v, job, ps)


def program_failure(
    job: Job, account: Account, entry: str, position: int, res: RunResult, output: str,
    runs: list[RunRow], ps: PolicySettings,
) -> Verdict:
    if res.timed_out:
        kind, what = FailureKind.PROGRAM_TIMEOUT, f"timed out after {ps.program_timeout_s:g} s"
    elif res.signal is not None:
        kind, what = FailureKind.PROGRAM_SIGNAL, f"was killed by signal {res.signal} ({_signame(res.signal)})"
    elif res.exit_status:
        kind = FailureKind.PROGRAM_EXIT
        what = f"exited with status {res.exit_status} ({describe_exit(res.exit_status)})"
    else:
        kind, what = FailureKind.PROGRAM_OUTPUT, "exited with status 0 but wrote output"
    outcome, status = failure_status(kind, exit_status=res.exit_status, output=res.output,
                                     tempfail_exit_codes=tuple(ps.tempfail_exit_codes))
    excerpt = first_lines(output)
    diag = f"program {entry} {what}"
    dsn_diag = f"{diag}: {excerpt}" if excerpt and ps.dsn_include_output else diag
    v = Verdict(kind="bounced", status=status, diagnostic=dsn_diag, failure=kind,
                next_program=position, program=entry, position=position,
                exit_status=res.exit_status, signal=res.signal, timed_out=res.timed_out,
                output=output, dsn_output=output if ps.dsn_include_output else "", runs=runs,
                account=account.address, notice_detail=f"{diag}: {excerpt}" if excerpt else diag)
    if outcome is Outcome.DEFERRED:
        return defer_or_expire(v, job, ps)
    return v


def defer_or_expire(v: Verdict, job: Job, ps: PolicySettings) -> Verdict:
    """A temporary failure ``v`` (diagnostic set): deferred until the queue lifetime, then
    bounced as expired (the status table's SUSPENDED_EXPIRED) with that diagnostic as the reason."""
    age = (datetime.now(UTC) - job.arrival).total_seconds()
    if age >= ps.max_queue_lifetime_s:
        v.kind, v.failure = "bounced", FailureKind.SUSPENDED_EXPIRED
        v.status = status_for(FailureKind.SUSPENDED_EXPIRED)
        v.diagnostic = DIAGNOSTICS[FailureKind.SUSPENDED_EXPIRED].format(age=_age(age), why=v.diagnostic)
        return v
    v.kind, v.failure, v.will_retry_until_s = "deferred", FailureKind.TEMPFAIL, ps.max_queue_lifetime_s
    return v


# --- small pure helpers --------------------------------------------------------------------


def stdin_prefix(sender: str, recipient: str, body: bytes) -> bytes:
    """``Return-Path`` and ``Delivered-To`` in the message's own line-ending convention."""
    nl = b"\n"
    first = body.find(b"\n", 0, _HEADER_SCAN_LIMIT)
    if first > 0 and body[first - 1 : first] == b"\r":
        nl = b"\r\n"
    return b"Return-Path: <" + sender.encode() + b">" + nl + b"Delivered-To: " + recipient.encode() + nl


_DELIVERED_TO = re.compile(rb"^delivered-to:[ \t]*(.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)


def has_delivered_to(body: bytes, recipient: str) -> bool:
    """Whether the header section already has ``Delivered-To: <recipient>`` (a mail loop)."""
    head = body[:_HEADER_SCAN_LIMIT]
    end = len(head)
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = head.find(sep)
        if i != -1:
            end = min(end, i)
    head = head[:end].replace(b"\r\n", b"\n")
    head = re.sub(rb"\n[ \t]+", b" ", head)  # unfold
    want = recipient.lower().encode("utf-8", "replace")
    for match in _DELIVERED_TO.finditer(head):
        value = match.group(1).strip().strip(b"<>").strip().lower()
        if value == want:
            return True
    return False


def decode_output(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").replace("\x00", "\\0")


def first_lines(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()][:DIAGNOSTIC_OUTPUT_LINES]
    text = "; ".join(lines)
    return text if len(text) <= DIAGNOSTIC_OUTPUT_CHARS else text[: DIAGNOSTIC_OUTPUT_CHARS - 3] + "..."


def _signame(num: int) -> str:
    try:
        return signals.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"

