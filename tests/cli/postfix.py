"""The private Postfix of the end-to-end test (testing/private_postfix.py sets up the instance).

Domains: ``prog.test`` goes to the ``mailexec`` pipe(8) service (``transport_maps``), and
``sender.test`` is delivered by virtual(8) into mailbox files under ``vmail/``; all other
outbound mail is refused (``default_transport = error``). The LMTP test replaces the
transport map and the relay and mailbox domains, and adds main.cf lines of its own.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from testing.private_postfix import PrivatePostfix


class PostfixInstance(PrivatePostfix):
    def __init__(
        self,
        port: int,
        pipe_service: str,
        mailboxes: list[str],
        hostname: str,
        *,
        transport: str = "prog.test mailexec:\n",
        relay_domains: str = "prog.test",
        mailbox_domains: str = "sender.test",
        main_cf: Iterable[str] = (),
    ) -> None:
        base = Path(tempfile.mkdtemp(prefix="mailexec-postfix-", dir="/tmp"))
        config, self.vmail = base / "etc", base / "vmail"
        super().__init__(
            port,
            hostname=hostname,
            base=base,
            services=pipe_service,
            main_cf=[
                "mydomain = test.example",
                "local_recipient_maps =",
                f"relay_domains = {relay_domains}",
                f"transport_maps = texthash:{config}/transport",
                f"virtual_mailbox_domains = {mailbox_domains}",
                f"virtual_mailbox_base = {self.vmail}",
                f"virtual_mailbox_maps = texthash:{config}/vmailbox",
                "virtual_uid_maps = static:65534",
                "virtual_gid_maps = static:65534",
                "virtual_minimum_uid = 100",
                "default_transport = error:outbound mail is disabled in this test instance",
                "relayhost =",
                "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
                "queue_run_delay = 1s",
                "minimal_backoff_time = 2s",
                "maximal_backoff_time = 4s",
                "delay_warning_time = 0",
                "mailexec_destination_concurrency_limit = 4",
                *main_cf,
            ],
        )
        self.vmail.mkdir(mode=0o755)
        os.chown(self.vmail, 65534, 65534)
        (config / "transport").write_text(transport)
        (config / "vmailbox").write_text("".join(f"{m} {m.split('@')[0]}\n" for m in mailboxes))

    def mailbox(self, name: str) -> str:
        try:
            return (self.vmail / name).read_text(errors="replace")
        except OSError:
            return ""
