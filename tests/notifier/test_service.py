"""The notifier end to end in one process: events published to the real ``events``
exchange, the real database, a real SMTP server (aiosmtpd) receiving what it sends."""

from __future__ import annotations

import asyncio
import uuid
from email.message import EmailMessage

import orjson
from flufl.bounce import scan_message

from tests.notifier.conftest import (
    POSTMASTER,
    REPORTING_MTA,
    Publish,
    SmtpSink,
    StartNotifier,
    delivery_status_blocks,
    make_event,
    notifications,
    program_failed_notice,
    queue_depth,
    recipient,
    store_message,
    wait_for,
)


async def test_bounce_is_a_complete_rfc3464_dsn(
    notifier: StartNotifier, sink: SmtpSink, publish: Publish
) -> None:
    await notifier(sink.url)
    mid = uuid.uuid4()
    await store_message(mid, sender="alice@example.net", envid="ENV-42", ret="FULL")
    event = make_event("bounce", mid, [recipient("bob@example.org")], ret="FULL", envid="ENV-42")
    await publish(event)

    await wait_for(lambda: sink.received, what="the DSN")
    await asyncio.sleep(0.3)
    assert len(sink.received) == 1
    got = sink.received[0]
    assert got.mail_from == "<>"  # aiosmtpd records MAIL FROM:<> as "<>"
    assert got.rcpt_tos == ["alice@example.net"]
    msg = got.message
    assert msg["From"].addresses[0].addr_spec == f"MAILER-DAEMON@{REPORTING_MTA}"
    assert msg["To"] == "alice@example.net"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-ID"].startswith("<") and msg["Date"]
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"

    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]
    human = parts[0].get_content()
    assert "bob@example.org" in human and "mymail" in human and "cannot open spool" in human

    per_message, *per_rcpt = delivery_status_blocks(msg)
    assert per_message["Reporting-MTA"] == f"dns; {REPORTING_MTA}"
    assert per_message["Original-Envelope-Id"] == "ENV-42"
    assert per_message["Arrival-Date"]
    assert len(per_rcpt) == 1
    block = per_rcpt[0]
    assert block["Final-Recipient"] == "rfc822; bob@example.org"
    assert block["Action"] == "failed"
    assert block["Status"] == "5.3.0"
    assert "mymail" in block["Diagnostic-Code"] and "status 1" in block["Diagnostic-Code"]
    assert block["Last-Attempt-Date"]
    assert block["Will-Retry-Until"] is None and block["Remote-MTA"] is None
    assert block["Original-Recipient"] is None

    payload = parts[2].get_payload()
    assert isinstance(payload, list)
    returned = payload[0]
    assert isinstance(returned, EmailMessage)
    assert returned["Subject"] == "quarterly numbers"
    assert "BODY-MARKER-LINE" in returned.get_content()

    assert scan_message(msg) == {b"bob@example.org"}

    rows = await notifications(mid)
    assert len(rows) == 1
    row = rows[0]
    assert (row["kind"], row["rcpt"], row["state"], row["attempts"]) == (
        "bounce",
        "alice@example.net",
        "sent",
        1,
    )
    assert row["event_ids"] == [str(event.event_id)]
    assert row["sent_at"] is not None


async def test_three_recipients_failing_together_get_one_dsn(
    notifier: StartNotifier, sink: SmtpSink, publish: Publish
) -> None:
    await notifier(sink.url)
    mid = uuid.uuid4()
    await store_message(mid, sender="alice@example.net")
    rcpts = ["bob@example.org", "carol@example.org", "dave@example.org"]
    events = [make_event("bounce", mid, [recipient(a)]) for a in rcpts]
    for ev in events:
        await publish(ev)

    await wait_for(lambda: sink.received, what="the DSN")
    await asyncio.sleep(0.6)  # longer than the window: a second DSN would have come
    assert len(sink.received) == 1
    msg = sink.received[0].message
    _, *blocks = delivery_status_blocks(msg)
    assert sorted(b["Final-Recipient"] for b in blocks) == [f"rfc822; {a}" for a in rcpts]
    assert scan_message(msg) == {a.encode() for a in rcpts}
    rows = await notifications(mid)
    assert len(rows) == 1 and sorted(rows[0]["event_ids"]) == sorted(str(e.event_id) for e in events)


async def test_notify_rules_and_null_sender(
    notifier: StartNotifier, sink: SmtpSink, publish: Publish
) -> None:
    await notifier(sink.url)
    silent = [
        make_event("bounce", uuid.uuid4(), [recipient("bob@example.org")], sender=""),
        make_event("bounce", uuid.uuid4(), [recipient("bob@example.org")], notify=["NEVER"]),
        make_event("bounce", uuid.uuid4(), [recipient("bob@example.org")], notify=["DELAY"]),
        make_event("delivered", uuid.uuid4(), [recipient("bob@example.org", "delivered")]),
        make_event("delayed", uuid.uuid4(), [recipient("bob@example.org", "delayed")], notify=["FAILURE"]),
        make_event(
            "delivered",
            uuid.uuid4(),
            [recipient("bob@example.org", "delivered")],
            sender="",
            notify=["SUCCESS"],
        ),
    ]
    for ev in silent:
        await publish(ev)
    control = make_event(
        "bounce",
        uuid.uuid4(),
        [recipient("bob@example.org")],
        sender="control@example.net",
        notify=["FAILURE"],
    )
    await publish(control)

    await wait_for(lambda: sink.received, what="the control DSN")
    await asyncio.sleep(0.5)
    assert [r.rcpt_tos for r in sink.received] == [["control@example.net"]]
    rows = await notifications()
    assert [r["message_id"] for r in rows] == [control.message_id]


async def test_success_and_delay_reports(notifier: StartNotifier, sink: SmtpSink, publish: Publish) -> None:
    await notifier(sink.url)
    delivered_mid, delayed_mid = uuid.uuid4(), uuid.uuid4()
    await store_message(delivered_mid, sender="alice@example.net", notify=("SUCCESS",))
    await store_message(delayed_mid, sender="erin@example.net")
    await publish(
        make_event(
            "delivered", delivered_mid, [recipient("bob@example.org", "delivered")], notify=["SUCCESS"]
        )
    )
    await publish(
        make_event(
            "delayed", delayed_mid, [recipient("bob@example.org", "delayed")], sender="erin@example.net"
        )
    )

    await wait_for(lambda: len(sink.received) >= 2, what="both reports")
    success = sink.to("alice@example.net")[0].message
    _, block = delivery_status_blocks(success)
    assert (block["Action"], block["Status"]) == ("delivered", "2.0.0")
    assert block["Will-Retry-Until"] is None
    assert [p.get_content_type() for p in success.iter_parts()][-1] == "text/rfc822-headers"
    assert scan_message(success) == set()

    delay = sink.to("erin@example.net")[0].message
    _, block = delivery_status_blocks(delay)
    assert (block["Action"], block["Status"]) == ("delayed", "4.3.0")
    assert block["Will-Retry-Until"]
    assert scan_message(delay) == set()

    # A second delay warning for the same recipient within the warning interval: nothing.
    # A new recipient of the same message still gets its warning.
    await publish(
        make_event(
            "delayed", delayed_mid, [recipient("bob@example.org", "delayed")], sender="erin@example.net"
        )
    )
    await publish(
        make_event(
            "delayed", delayed_mid, [recipient("frank@example.org", "delayed")], sender="erin@example.net"
        )
    )
    await wait_for(lambda: len(sink.received) >= 3, what="the second warning")
    await asyncio.sleep(0.5)
    warnings = sink.to("erin@example.net")
    assert len(warnings) == 2
    _, block = delivery_status_blocks(warnings[1].message)
    assert block["Final-Recipient"] == "rfc822; frank@example.org"


async def test_ret_hdrs_returns_only_headers(
    notifier: StartNotifier, sink: SmtpSink, publish: Publish
) -> None:
    await notifier(sink.url)
    mid = uuid.uuid4()
    await store_message(mid, sender="alice@example.net", ret="HDRS")
    await publish(make_event("bounce", mid, [recipient("bob@example.org")], ret="HDRS"))
    await wait_for(lambda: sink.received, what="the DSN")
    msg = sink.received[0].message
    parts = list(msg.iter_parts())
    assert parts[-1].get_content_type() == "text/rfc822-headers"
    returned = parts[-1].get_content()
    assert "Subject: quarterly numbers" in returned
    assert b"BODY-MARKER-LINE" not in sink.received[0].data
    assert delivery_status_blocks(msg)[0]["Original-Envelope-Id"] is None  # no ENVID given
    assert scan_message(msg) == {b"bob@example.org"}


async def test_redelivered_event_produces_nothing_twice(
    notifier: StartNotifier, sink: SmtpSink, publish: Publish
) -> None:
    await notifier(sink.url, dsn_aggregate_window_s=0.05)
    mid = uuid.uuid4()
    await store_message(mid, sender="alice@example.net")
    event = make_event("bounce", mid, [recipient("bob@example.org")])
    await publish(event)
    await wait_for(lambda: sink.received, what="the DSN")
    await publish(event)  # the executor (or the broker) delivers it again
    await asyncio.sleep(0.6)
    assert len(sink.received) == 1
    assert len(await notifications(mid)) == 1


async def test_malformed_events_are_dead_lettered_and_consumer_survives(
    notifier: StartNotifier, sink: SmtpSink, publish: Publish, broker
) -> None:
    await notifier(sink.url)
    good = make_event("bounce", uuid.uuid4(), [recipient("bob@example.org")])
    body = orjson.loads(good.to_json())
    injected = dict(body, event_id=str(uuid.uuid4()))
    injected["recipients"] = [
        dict(body["recipients"][0], address="bob@example.org\r\nBcc: victim@example.com")
    ]
    bad_sender = dict(body, event_id=str(uuid.uuid4()))
    bad_sender["envelope"] = dict(body["envelope"], sender="alice@example.net\nBcc: victim@example.com")
    missing = {k: v for k, v in body.items() if k != "recipients"}
    for raw in (
        b"{not json",
        orjson.dumps(missing),
        orjson.dumps(injected),
        orjson.dumps(bad_sender),
        orjson.dumps(dict(body, v=2)),
    ):
        await publish(raw)
    await publish(good)

    await wait_for(lambda: sink.received, what="the good event's DSN")
    # Quorum queues dead-letter asynchronously; it can take a few seconds to show.
    await wait_for(lambda: _depth_is(broker, "notifier.dead", 5), timeout=20, what="5 dead-lettered events")
    assert len(sink.received) == 1
    assert b"victim@example.com" not in sink.received[0].data


async def _depth_is(broker, name: str, n: int) -> bool:
    return await queue_depth(broker, name) == n


async def test_crlf_in_diagnostic_does_not_inject_headers(
    notifier: StartNotifier, sink: SmtpSink, publish: Publish
) -> None:
    await notifier(sink.url)
    mid = uuid.uuid4()
    await store_message(mid, sender="alice@example.net")
    evil = recipient(
        "bob@example.org",
        diagnostic="exit 1\r\nBcc: victim@example.com\r\nSubject: pwned",
        output_excerpt="line one\r\nBcc: victim@example.com\n\nX-Injected: yes\r\n",
        program="mymail\r\nX-Program-Injected: yes",
    )
    await publish(make_event("bounce", mid, [evil]))
    await wait_for(lambda: sink.received, what="the DSN")
    got = sink.received[0]
    msg = got.message
    assert msg["Bcc"] is None and msg["X-Injected"] is None and msg["X-Program-Injected"] is None
    assert msg["Subject"] != "pwned"
    for block in delivery_status_blocks(msg):
        assert block["Bcc"] is None and block["X-Injected"] is None and block["Subject"] is None
    for line in got.data.split(b"\r\n"):
        assert not line.startswith((b"Bcc:", b"X-Injected:", b"X-Program-Injected:"))
    assert scan_message(msg) == {b"bob@example.org"}


async def test_admin_notices_go_to_postmaster_rate_limited(
    notifier: StartNotifier, sink: SmtpSink, publish: Publish
) -> None:
    await notifier(sink.url, postmaster_notice_interval_s=1)
    mid = uuid.uuid4()
    await store_message(mid, sender="alice@example.net")

    def notice_event():
        return make_event(
            "admin_notice",
            mid,
            [recipient("bob@example.org", "admin_notice")],
            notice=program_failed_notice(),
        )

    for _ in range(3):
        await publish(notice_event())
    other = make_event(
        "admin_notice",
        mid,
        [recipient("carol@example.org", "admin_notice")],
        notice=program_failed_notice("carol@example.org"),
    )
    await publish(other)
    await wait_for(lambda: len(sink.received) >= 2, what="two notices")
    await asyncio.sleep(0.3)
    assert len(sink.received) == 2  # bob's 2nd and 3rd were held back; carol is another key
    first = sink.received[0]
    assert first.mail_from == "<>" and first.rcpt_tos == [POSTMASTER]
    notice = first.message
    assert notice["X-Mailexec-Notice"] == "program_failed"
    text = next(notice.iter_parts()).get_content()
    assert "cannot open spool" in text and str(mid) in text and "mymail" in text

    await asyncio.sleep(1.0)  # the interval passes; the next notice reports the held-back ones
    await publish(notice_event())
    await wait_for(lambda: len(sink.received) >= 3, what="the next notice")
    later = sink.received[2].message
    assert later["X-Mailexec-Suppressed"] == "2"
    assert "(+2 suppressed)" in later["Subject"]
    assert "2 more notice(s)" in next(later.iter_parts()).get_content()
    kinds = [r["kind"] for r in await notifications()]
    assert kinds == ["admin_notice"] * 3
