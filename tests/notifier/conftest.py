"""Notifier fixtures: a real SMTP server (aiosmtpd) in the test's event loop, events
published to the real ``events`` exchange as the executor publishes them, and an
in-process notifier runtime pointed at both."""

from __future__ import annotations

import asyncio
import email
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import httpx
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from services.notifier.runtime import Runtime
from shared import topology
from shared.amqp import Broker
from shared.schemas import Event, EventEnvelope, EventRecipient, Notice
from shared.settings import Settings, get_settings
from shared.status import NoticeReason
from testing.mailrows import store_body
from tests.conftest import db_conn, free_port

REPORTING_MTA = "mx.test.example"
POSTMASTER = f"postmaster@{REPORTING_MTA}"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    auth: Any = None
    tls: bool = False

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=default_policy)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class SinkHandler:
    """What the test SMTP server does: records accepted mail; can refuse or hold it."""

    received: list[Received] = field(default_factory=list)
    data_replies: list[str] = field(default_factory=list)  # next DATA answers, then 250
    refuse_rcpt: dict[str, str] = field(default_factory=dict)  # address -> "550 ..." reply
    permits: asyncio.Semaphore | None = None  # when set, each DATA waits for a permit
    waiting: int = 0
    transactions: int = 0

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() in self.refuse_rcpt:
            return self.refuse_rcpt[address.lower()]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.transactions += 1
        if self.data_replies:
            return self.data_replies.pop(0)
        if self.permits is not None:
            # A client that dies while we wait makes aiosmtpd cancel this handler: the
            # message is then not counted, as a relay that never answered 250.
            self.waiting += 1
            try:
                await self.permits.acquire()
            finally:
                self.waiting -= 1
        assert isinstance(envelope.original_content, bytes)
        self.received.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=envelope.original_content,
                auth=session.auth_data,
                tls=session.ssl is not None,
            )
        )
        return "250 2.0.0 OK queued"


class SmtpSink:
    def __init__(self, port: int | None = None, **smtp_kwargs: Any) -> None:
        self.port = port or free_port()
        self.handler = SinkHandler()
        self.smtp_kwargs = smtp_kwargs
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    async def start(self, ssl: Any = None) -> SmtpSink:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(self.handler, hostname="sink.test", loop=loop, **self.smtp_kwargs),
            "127.0.0.1",
            self.port,
            ssl=ssl,
        )
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    def to(self, rcpt: str) -> list[Received]:
        return [r for r in self.received if rcpt in r.rcpt_tos]


def accept_any_login(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = getattr(data, "login", None) == b"dsn" and getattr(data, "password", None) == b"s3cret"
    return AuthResult(success=ok, handled=False, auth_data=data)


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    s = await SmtpSink().start()
    yield s
    await s.stop()


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


# --- events, as the executor builds them --------------------------------------------------

ORIGINAL = (
    b"From: Alice <alice@example.net>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Message-ID: <orig-1@example.net>\r\n"
    b"Date: Wed, 25 Nov 2026 20:00:00 +0000\r\n"
    b"\r\n"
    b"Hello Bob,\r\nthe numbers are attached.\r\nBODY-MARKER-LINE\r\n"
)


async def store_message(
    message_id: uuid.UUID,
    *,
    sender: str,
    body: bytes = ORIGINAL,
    envid: str | None = None,
    ret: str | None = None,
    notify: tuple[str, ...] = ("FAILURE", "DELAY"),
) -> None:
    """The mail.messages row ingest would have written (RET=FULL returns its body)."""
    conn = await db_conn()
    try:
        await conn.execute(
            "INSERT INTO mail.messages (id, sender, envid, ret, notify, size) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            message_id,
            sender,
            envid,
            ret,
            list(notify),
            len(body),
        )
        await store_body(conn, message_id, body)
    finally:
        await conn.close()


def recipient(address: str, kind: str = "bounce", **kw: Any) -> EventRecipient:
    now = datetime.now(UTC)
    defaults: dict[str, Any] = {
        "bounce": {
            "action": "failed",
            "status": "5.3.0",
            "program": "mymail",
            "exit_status": 1,
            "diagnostic": "program mymail exited with status 1: cannot open spool",
            "output_excerpt": "cannot open spool\n",
        },
        "delayed": {
            "action": "delayed",
            "status": "4.3.0",
            "program": "mymail",
            "exit_status": 75,
            "diagnostic": "program mymail exited with status 75 (tempfail)",
            "will_retry_until": now + timedelta(days=5),
        },
        "delivered": {
            "action": "delivered",
            "status": "2.0.0",
            "program": "mymail",
            "exit_status": 0,
            "diagnostic": "delivered to program mymail",
        },
        "admin_notice": {
            "action": "failed",
            "status": "5.3.0",
            "program": "mymail",
            "exit_status": 1,
            "diagnostic": "program mymail exited with status 1",
            "output_excerpt": "cannot open spool\n",
        },
    }[kind]
    data = {"address": address, "last_attempt": now, **defaults, **kw}
    return EventRecipient(**data)


def make_event(
    kind: str,
    message_id: uuid.UUID | None,
    recipients: list[EventRecipient],
    *,
    sender: str = "alice@example.net",
    notify: list[str] | None = None,
    ret: str | None = None,
    envid: str | None = None,
    notice: Notice | None = None,
) -> Event:
    envelope = EventEnvelope(
        sender=sender,
        envid=envid,
        ret=ret,  # type: ignore[arg-type]
        notify=notify or ["FAILURE", "DELAY"],  # type: ignore[arg-type]
        arrival_date=datetime.now(UTC) - timedelta(minutes=5),
    )
    return Event(
        kind=kind,  # type: ignore[arg-type]
        event_id=uuid.uuid4(),
        message_id=message_id,
        occurred_at=datetime.now(UTC),
        envelope=envelope,
        recipients=recipients,
        notice=notice,
    )


def program_failed_notice(account: str = "bob@example.org") -> Notice:
    return Notice(reason=NoticeReason.PROGRAM_FAILED, account=account, detail="mymail exited 1")


@pytest.fixture
async def broker(mx_env: dict[str, str]) -> AsyncIterator[Broker]:
    b = Broker(mx_env["MAILEXEC_AMQP_URL"])
    await b.connect()
    assert b.channel is not None
    for name in (topology.NOTIFIER_QUEUE, topology.NOTIFIER_DEAD):
        queue = await b.channel.get_queue(name)
        await queue.purge()
    yield b
    await b.close()


Publish = Callable[..., Awaitable[None]]


@pytest.fixture
def publish(broker: Broker) -> Publish:
    async def go(event: Event | bytes, routing_key: str | None = None) -> None:
        if isinstance(event, Event):
            await broker.publish(
                topology.EVENTS_EXCHANGE,
                routing_key or event.kind,
                event.to_json(),
                message_id=str(event.event_id),
            )
        else:
            await broker.publish(topology.EVENTS_EXCHANGE, routing_key or "bounce", event)

    return go


async def queue_depth(broker: Broker, name: str) -> int:
    # A fresh channel: a robust channel answers a repeated passive declare from its cache.
    assert broker.connection is not None
    channel = await broker.connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await channel.close()


def notifier_settings(smtp_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "smtp_url": smtp_url,
        "policy_url": f"http://127.0.0.1:{free_port()}",  # no policy: defaults apply
        "dsn_aggregate_window_s": 0.3,
        "notifier_retry_base_s": 0.2,
        "notifier_retry_max_s": 0.5,
        "notifier_smtp_timeout_s": 5.0,
    }
    values.update(overrides)
    return get_settings().model_copy(update=values)


StartNotifier = Callable[..., Awaitable[Runtime]]


@pytest.fixture
async def notifier(clean_db: None, broker: Broker) -> AsyncIterator[StartNotifier]:
    """Factory: ``await notifier(smtp_url, **settings)`` runs a notifier in this loop."""
    runtimes: list[Runtime] = []

    async def start(smtp_url: str, **overrides: Any) -> Runtime:
        runtime = Runtime(notifier_settings(smtp_url, **overrides))
        await runtime.start()
        runtimes.append(runtime)

        async def all_ready() -> bool:
            return all((await runtime.ready()).values())

        await wait_for(all_ready, what="notifier consuming")
        return runtime

    yield start
    for runtime in runtimes:
        await runtime.stop()


async def notifications(message_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    conn = await db_conn()
    try:
        if message_id is None:
            rows = await conn.fetch("SELECT * FROM notifier.notifications ORDER BY created_at")
        else:
            rows = await conn.fetch(
                "SELECT * FROM notifier.notifications WHERE message_id = $1 ORDER BY created_at",
                message_id,
            )
        return [dict(r) for r in rows]
    finally:
        await conn.close()


async def wait_sent(sink: SmtpSink, rcpt: str, message_id: uuid.UUID, kind: str, what: str) -> None:
    """Until the sink has a message for ``rcpt`` and the notifier recorded ``message_id``'s
    ``kind`` notification as sent: the sink has it once its DATA is answered, and the
    notifier records "sent" just after that reply, so reading the record as soon as the
    sink has the message races the notifier."""

    async def sent() -> bool:
        return bool(sink.to(rcpt)) and any(
            r["kind"] == kind and r["state"] == "sent" for r in await notifications(message_id))

    await wait_for(sent, what=what)


def delivery_status_blocks(msg: EmailMessage) -> list[Any]:
    """The message/delivery-status part's field blocks: [per-message, per-recipient...]."""
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            payload = part.get_payload()
            assert isinstance(payload, list)
            return payload
    raise AssertionError("no message/delivery-status part")


async def ready(proc: Any, timeout: float = 30.0) -> None:
    """Like ServiceProcess.wait_ready, without blocking this loop (the SMTP sink lives here)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() < deadline:
            assert proc.proc.poll() is None, f"notifier exited:\n{proc.log_tail()}"
            try:
                r = await client.get(proc.url + "/readyz")
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"notifier not ready:\n{proc.log_tail()}")
