"""The real `mailexec serve notifier` process: killed with SIGKILL while sending, then
restarted — the rest is sent, nothing twice."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from tests.notifier.conftest import (
    Publish,
    SmtpSink,
    make_event,
    notifications,
    program_failed_notice,
    ready,
    recipient,
    store_message,
    wait_for,
)


async def test_kill_9_mid_send_then_restart_sends_the_rest_once(
    clean_db: None, services: Any, sink: SmtpSink, publish: Publish, broker: Any
) -> None:
    sink.handler.permits = asyncio.Semaphore(0)  # every DATA waits for the test's go
    env = {
        "MAILEXEC_SMTP_URL": sink.url,
        "MAILEXEC_DSN_AGGREGATE_WINDOW_S": "0.1",
        "MAILEXEC_NOTIFIER_RETRY_BASE_S": "0.2",
        "MAILEXEC_NOTIFIER_RETRY_MAX_S": "0.5",
        "MAILEXEC_LOG_LEVEL": "info",
    }
    first = services("notifier", extra_env=env, wait=False)
    await ready(first)

    senders = [f"sender{n}@example.net" for n in range(6)]
    for sender in senders:
        mid = uuid.uuid4()
        await store_message(mid, sender=sender)
        await publish(make_event("bounce", mid, [recipient("bob@example.org")], sender=sender))

    # Let two through and wait until the notifier has recorded them as sent...
    sink.handler.permits.release()
    sink.handler.permits.release()

    async def two_recorded() -> bool:
        rows = await notifications()
        return sum(r["state"] == "sent" for r in rows) == 2

    await wait_for(two_recorded, timeout=15, what="two DSNs recorded as sent")
    # ... while others are in the middle of their SMTP transaction.
    await wait_for(lambda: sink.handler.waiting >= 1, what="a send in progress")
    first.kill()  # SIGKILL: no shutdown code runs
    await wait_for(lambda: sink.handler.waiting == 0, what="the relay noticing the dead client")
    assert len(sink.received) == 2

    rows = await notifications()
    assert sum(r["state"] == "sent" for r in rows) == 2

    # Restart; the relay accepts everything from now on.
    sink.handler.permits = None
    second = services("notifier", wait=False)
    await ready(second)
    await wait_for(lambda: len(sink.received) >= 6, timeout=20, what="the remaining DSNs")
    await asyncio.sleep(1.0)

    got = sorted(rcpt for r in sink.received for rcpt in r.rcpt_tos)
    assert got == sorted(senders)  # every sender exactly once
    rows = await notifications()
    assert len(rows) == 6 and all(r["state"] == "sent" for r in rows)

    async with httpx.AsyncClient() as client:
        metrics = (await client.get(second.url + "/metrics")).text
    assert "mailexec_dsns_total" in metrics


async def test_settings_come_from_the_policy_service(
    notifier: Any,
    services: Any,
    sink: SmtpSink,
    publish: Publish,
    admin_headers: dict[str, str],
) -> None:
    policy = services("policy", wait=False)
    await ready(policy)
    async with httpx.AsyncClient() as client:
        r = await client.patch(
            policy.url + "/v1/settings",
            json={"dsn_include_output": False, "postmaster": "ops@example.org"},
            headers=admin_headers,
        )
        assert r.status_code == 200, r.text
    await notifier(sink.url, policy_url=policy.url)

    mid = uuid.uuid4()
    await store_message(mid, sender="alice@example.net")
    secret = recipient("bob@example.org", output_excerpt="SECRET-OUTPUT-LINE\n")
    await publish(make_event("bounce", mid, [secret]))
    await publish(
        make_event(
            "admin_notice",
            mid,
            [recipient("bob@example.org", "admin_notice", output_excerpt="SECRET-OUTPUT-LINE\n")],
            notice=program_failed_notice(),
        )
    )
    await wait_for(lambda: len(sink.received) >= 2, what="DSN and notice")
    dsn = sink.to("alice@example.net")[0]
    assert b"SECRET-OUTPUT-LINE" not in dsn.data  # dsn_include_output: false
    notice = sink.to("ops@example.org")[0]  # the configured postmaster
    assert b"SECRET-OUTPUT-LINE" in notice.data  # the postmaster always sees the output
