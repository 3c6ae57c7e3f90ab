"""Whom a stored notification concerns: what a user token may read of /v1/notifications
(services/notifier/visibility.py), on DSNs rendered by the notifier's own renderer."""

from __future__ import annotations

import pytest

from services.notifier.dsn import render_dsn_bytes
from services.notifier.notice_render import render_admin_notice
from services.notifier.visibility import concerns_only, user_may_read
from tests.unit.notifier.builders import event, recipient

BOB, CAROL = "bob@example.org", "carol@example.org"


def dsn(kind: str, *addresses: str) -> bytes:
    ev = event(kind, recipients=[recipient(a, kind) for a in addresses])
    return render_dsn_bytes(ev, None, reporting_mta="mx.test.example",
                            max_returned_body_bytes=0, include_output=True)


@pytest.mark.parametrize("kind", ["bounce", "delayed", "delivered"])
def test_a_dsn_about_the_users_own_recipients_only_is_readable(kind: str) -> None:
    assert user_may_read(kind, dsn(kind, BOB), BOB)
    # the recipient's spelling is the account's in any case of the domain or local part
    assert user_may_read(kind, dsn(kind, "Bob@Example.ORG"), BOB)
    assert user_may_read(kind, dsn(kind, BOB, "Bob@example.org"), BOB)


def test_another_accounts_dsn_is_not() -> None:
    assert not user_may_read("bounce", dsn("bounce", CAROL), BOB)


def test_a_dsn_that_also_reports_another_accounts_recipient_is_admin_only() -> None:
    both = dsn("bounce", BOB, CAROL)
    assert not user_may_read("bounce", both, BOB)
    assert not user_may_read("bounce", both, CAROL)


def test_notices_and_postmaster_copies_never_are() -> None:
    notice = render_admin_notice(
        event("admin_notice", recipients=[recipient(BOB, "admin_notice")], account=BOB),
        None, postmaster="postmaster@mx.test.example", reporting_mta="mx.test.example",
    ).as_bytes()
    for kind in ("admin_notice", "postmaster_copy"):
        assert not user_may_read(kind, notice, BOB)
        # whatever the bytes say: a notice's kind alone decides
        assert not user_may_read(kind, dsn("bounce", BOB), BOB)


def test_without_an_account_or_a_readable_report_nothing_is() -> None:
    assert not user_may_read("bounce", dsn("bounce", BOB), None)
    assert not user_may_read("bounce", dsn("bounce", BOB), "")
    assert not user_may_read("bounce", b"Subject: no report\r\n\r\nhello\r\n", BOB)
    assert not user_may_read("bounce", b"\xff\xfe garbage", BOB)


def test_the_rule_on_addresses() -> None:
    assert concerns_only("bounce", ["bob@example.org"], BOB)
    assert concerns_only("delayed", ["BOB@EXAMPLE.ORG", "bob@example.org"], BOB)
    assert not concerns_only("bounce", [], BOB)
    assert not concerns_only("bounce", ["bob@example.org", "carol@example.org"], BOB)
    assert not concerns_only("admin_notice", ["bob@example.org"], BOB)
    # an address no account can have (quoted local part, SMTPUTF8) concerns no user
    assert not concerns_only("bounce", ['"b ob"@example.org'], BOB)
    assert not concerns_only("bounce", ["bob@example.org", "bøb@example.org"], BOB)
