"""Sending reliably: relay down, 4xx, 5xx (postmaster notice, never a loop), and the
admin API that shows the outbox."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from flufl.bounce import scan_message

from services.notifier.app import create_app
from tests.notifier.conftest import (
    POSTMASTER,
    Publish,
    SmtpSink,
    StartNotifier,
    make_event,
    notifications,
    recipient,
    store_message,
    wait_for,
    wait_sent,
)


async def _bounce(publish: Publish, sender: str = "alice@example.net") -> uuid.UUID:
    mid = uuid.uuid4()
    await store_message(mid, sender=sender)
    await publish(make_event("bounce", mid, [recipient("bob@example.org")], sender=sender))
    return mid


async def test_relay_down_then_up_delivers_once_after_backoff(
    notifier: StartNotifier, publish: Publish
) -> None:
    sink = SmtpSink()  # not listening yet
    await notifier(sink.url)
    mid = await _bounce(publish)

    async def retried_twice() -> bool:
        rows = await notifications(mid)
        return bool(rows) and rows[0]["attempts"] >= 2

    await wait_for(retried_twice, what="two failed attempts")
    row = (await notifications(mid))[0]
    assert row["state"] == "pending" and "relay unavailable" in row["last_error"]
    assert row["next_attempt_at"] > row["created_at"]

    await sink.start()
    try:
        await wait_for(lambda: sink.received, what="delivery once the relay is up")
        await asyncio.sleep(1.0)  # longer than the max backoff: a duplicate would show
        assert len(sink.received) == 1
        assert scan_message(sink.received[0].message) == {b"bob@example.org"}
        row = (await notifications(mid))[0]
        assert row["state"] == "sent" and row["last_error"] is None and row["attempts"] >= 3
    finally:
        await sink.stop()


async def test_4xx_is_retried_then_sent(notifier: StartNotifier, sink: SmtpSink, publish: Publish) -> None:
    sink.handler.data_replies = ["451 4.3.0 try again later"]
    await notifier(sink.url)
    mid = await _bounce(publish)
    await wait_for(lambda: sink.received, what="delivery after the 451")
    await asyncio.sleep(0.8)
    assert len(sink.received) == 1 and sink.handler.transactions == 2
    row = (await notifications(mid))[0]
    assert (row["state"], row["attempts"]) == ("sent", 2)


async def test_5xx_fails_and_tells_the_postmaster_without_looping(
    notifier: StartNotifier, sink: SmtpSink, publish: Publish
) -> None:
    sink.handler.refuse_rcpt["alice@example.net"] = "550 5.1.1 <alice@example.net>: no such user"
    await notifier(sink.url)
    mid = await _bounce(publish)

    await wait_sent(sink, POSTMASTER, mid, "postmaster_copy", what="the postmaster notice, recorded sent")
    rows = await notifications(mid)
    assert [(r["kind"], r["state"]) for r in rows] == [("bounce", "failed"), ("postmaster_copy", "sent")]
    assert "550 5.1.1" in rows[0]["last_error"] and rows[0]["attempts"] == 1
    notice = sink.to(POSTMASTER)[0]
    assert notice.mail_from == "<>"
    msg = notice.message
    assert msg["X-Mailexec-Notice"] == "undeliverable_dsn"
    assert "550 5.1.1" in next(msg.iter_parts()).get_content()

    # The postmaster refusing too: recorded as failed, and nothing else is generated.
    sink.handler.refuse_rcpt[POSTMASTER] = "550 5.1.1 no postmaster here"
    mid2 = await _bounce(publish)

    async def both_failed() -> bool:
        rows = await notifications(mid2)
        return len(rows) == 2 and all(r["state"] == "failed" for r in rows)

    await wait_for(both_failed, what="DSN and notice both failed")
    await asyncio.sleep(0.5)
    assert len(await notifications(mid2)) == 2


async def test_notifications_api_is_admin_only(
    notifier: StartNotifier,
    sink: SmtpSink,
    publish: Publish,
    admin_headers: dict[str, str],
    mta_headers: dict[str, str],
    service_headers: dict[str, str],
) -> None:
    await notifier(sink.url)
    mids = [await _bounce(publish, sender=f"s{n}@example.net") for n in range(3)]
    await wait_for(lambda: len(sink.received) == 3, what="three DSNs")

    app = create_app(run_background=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://notifier") as client:
        assert (await client.get("/v1/notifications")).status_code == 401
        assert (await client.get("/v1/notifications", headers=mta_headers)).status_code == 403
        assert (await client.get("/v1/notifications", headers=service_headers)).status_code == 403
        r = await client.get("/v1/notifications", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"

        r = await client.get("/v1/notifications", params={"message_id": str(mids[1])}, headers=admin_headers)
        assert r.status_code == 200
        (item,) = r.json()["items"]
        assert item["message_id"] == str(mids[1]) and item["kind"] == "bounce"
        assert item["rcpt"] == "s1@example.net" and item["state"] == "sent" and item["attempts"] == 1
        assert item["sent_at"] and item["created_at"] and "content" not in item

        page1 = (await client.get("/v1/notifications", params={"limit": 2}, headers=admin_headers)).json()
        assert len(page1["items"]) == 2 and page1["next_cursor"]
        page2 = (
            await client.get(
                "/v1/notifications",
                params={"limit": 2, "cursor": page1["next_cursor"]},
                headers=admin_headers,
            )
        ).json()
        assert len(page2["items"]) == 1 and page2["next_cursor"] is None
        ids = {i["id"] for i in page1["items"] + page2["items"]}
        assert len(ids) == 3

        pending = await client.get("/v1/notifications", params={"state": "pending"}, headers=admin_headers)
        assert pending.json()["items"] == []
        bad = await client.get("/v1/notifications", params={"state": "bogus"}, headers=admin_headers)
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
        bad = await client.get("/v1/notifications", params={"cursor": "%%%"}, headers=admin_headers)
        assert bad.status_code == 400

        detail = await client.get(f"/v1/notifications/{item['id']}", headers=admin_headers)
        assert detail.status_code == 200
        body = detail.json()
        assert "multipart/report" in body["content"] and "bob@example.org" in body["content"]
        assert len(body["event_ids"]) == 1
        assert (await client.get(f"/v1/notifications/{item['id']}", headers=mta_headers)).status_code == 403
        missing = await client.get(f"/v1/notifications/{uuid.uuid4()}", headers=admin_headers)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "notification_not_found"

        assert (await client.get("/healthz")).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'mailexec_dsns_total{kind="bounce",state="sent"}' in metrics
        assert "mailexec_notifier_outbox_pending" in metrics and "mailexec_smtp_send_seconds" in metrics
