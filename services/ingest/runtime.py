"""The long-lived parts of one ingest process: DB pool, broker, batcher, relay, retention
purge, body ring turns, and the LMTP listeners with their RCPT-time account check.

Why a separate object: the lifespan starts it, the routes reach it through
``deps.RuntimeDep``, and tests of the batching can build one without HTTP.
Ingest must start and stay up while PostgreSQL or RabbitMQ is down (readyz says 503
meanwhile), so the broker connection is made by a background task that keeps trying;
once connected, aio-pika's robust connection reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from urllib.parse import urlsplit

from shared.amqp import Broker, redact
from shared.bodybudget import BodyBudget
from shared.errors import Unavailable
from shared.service import StartupError
from shared.settings import Settings
from shared.sysexits import EX_OSERR

from . import metrics
from .bodyring import BodyRing
from .lmtp import LMTPServer
from .publish_outbox import Outbox, Relay
from .queue_control import QueueControl
from .recipients import AccountCheck
from .repo import Database
from .retention import Purger

log = logging.getLogger("mailexec.ingest")

BROKER_RECONNECT_S = 1


def _robust_url(url: str) -> str:
    """Ask aio-pika to reconnect every second (default 5 s) so a broker blip is short."""
    if "reconnect_interval" in (urlsplit(url).query or ""):
        return url
    return url + ("&" if "?" in url else "?") + f"reconnect_interval={BROKER_RECONNECT_S}"


class Runtime:
    def __init__(self, settings: Settings, lmtp_socket: socket.socket | None = None) -> None:
        """``lmtp_socket``: the LMTP Unix socket, when a supervisor bound it for its workers."""
        self.settings = settings
        # bodies received (HTTP and LMTP) and not yet stored, in bytes (shared/bodybudget.py)
        self.body_budget = BodyBudget(settings.ingest_body_memory_bytes,
                                      metrics.BODY_BYTES, metrics.BODY_BYTES_PEAK)
        self.db = Database(settings.database_url, body_slot_s=settings.body_slot_s)
        self.broker = Broker(_robust_url(settings.amqp_url))
        self.outbox = Outbox(self.db, self.broker, inline_limit=settings.inline_body_bytes)
        self.queue = QueueControl(self.db, self.broker, inline_limit=settings.inline_body_bytes)
        self.relay = Relay(self.db, self.broker, inline_limit=settings.inline_body_bytes,
                           event_relay=self.queue.relay_events)
        self.retention = Purger(self.db, settings)
        self.body_ring = BodyRing(self.db, settings.body_slot_s)
        self._connector: asyncio.Task[None] | None = None
        self.accounts = AccountCheck(settings.policy_url, settings.service_token)
        self.lmtp: LMTPServer | None = None
        if settings.lmtp_port or settings.lmtp_socket or lmtp_socket is not None:
            self.lmtp = LMTPServer(settings, self.outbox, self.accounts, self.body_budget,
                                   lmtp_socket)

    async def start(self) -> None:
        try:
            await self.db.start()
            self._connector = asyncio.create_task(self._connect_broker(), name="ingest-broker")
            self.outbox.start()
            self.relay.start()
            self.retention.start()
            self.body_ring.start()
            if self.lmtp is not None:
                try:
                    await self.lmtp.start()
                except OSError as exc:  # the port or the socket's path is taken
                    raise StartupError(
                        f"cannot listen for LMTP: {exc}; stop the other process or change "
                        "MAILEXEC_LMTP_PORT / MAILEXEC_LMTP_SOCKET", EX_OSERR) from exc
        except BaseException:
            # undo what did start (pool, batcher, relay, broker connector) before the refusal
            await self.stop()
            raise

    async def _connect_broker(self) -> None:
        warned = False
        while True:
            try:
                await self.broker.connect(timeout=2)
                await self.broker.on_policy_changed("ingest", self.accounts.invalidate)
                log.info("broker connected", extra={"amqp": redact(self.settings.amqp_url)})
                return
            except Exception as exc:  # Unavailable, or a channel/declare error
                with contextlib.suppress(Exception):
                    await self.broker.close()
                if not warned:
                    log.warning("broker unavailable; retrying in the background",
                                extra={"error": str(exc) if isinstance(exc, Unavailable)
                                       else repr(exc)})
                    warned = True
                await asyncio.sleep(BROKER_RECONNECT_S)

    async def ready(self) -> dict[str, bool]:
        return {"database": await self.db.ping(), "broker": self.broker.ready}

    async def stop(self) -> None:
        if self.lmtp is not None:
            await self.lmtp.stop()  # first: messages between their dot and replies finish
        await self.accounts.close()
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        await self.relay.stop()
        await self.retention.stop()
        await self.body_ring.stop()
        await self.outbox.stop()
        with contextlib.suppress(Exception):
            await self.broker.close()
        await self.db.close()
