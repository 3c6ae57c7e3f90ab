"""The sealed cookies (services/console/session.py): round trip, and everything a
browser could send that this console did not seal opens to None (= signed out)."""

from __future__ import annotations

import base64

import pytest

from services.console.session import (
    FLASH_COOKIE,
    MAX_COOKIE_CHARS,
    SESSION_COOKIE,
    Boxes,
    CookieBox,
    SessionCookie,
)

TOKEN = "mxu_secret-token-value-1234567890"
COOKIE = SessionCookie(token=TOKEN, session="sess-1", csrf_secret="c" * 43, role="user",
                       name="bob", account="bob@example.org")


def test_round_trip() -> None:
    boxes = Boxes("console secret")
    value = boxes.session.seal(COOKIE.to_dict())
    assert boxes.open_session(value) == COOKIE


def test_sealed_value_hides_the_payload() -> None:
    value = Boxes("k").session.seal(COOKIE.to_dict())
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    for secret in (TOKEN, "bob@example.org", "sess-1"):
        assert secret not in value
        assert secret.encode() not in raw
    assert Boxes("k").session.seal(COOKIE.to_dict()) != value  # a fresh nonce each time


@pytest.mark.parametrize("position", [0, 5, 20, -1])
def test_tampered_value_is_refused(position: int) -> None:
    box = CookieBox("k", SESSION_COOKIE)
    value = box.seal(COOKIE.to_dict())
    raw = bytearray(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    raw[position] ^= 0x01
    tampered = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    assert box.open(tampered) is None


def test_foreign_secret_is_refused() -> None:
    value = CookieBox("one secret", SESSION_COOKIE).seal({"x": 1})
    assert CookieBox("another secret", SESSION_COOKIE).open(value) is None


def test_cookie_of_another_purpose_is_refused() -> None:
    boxes = Boxes("k")
    flash = boxes.flash.seal({"t": "x", "s": "y", "c": "z", "r": "admin", "n": "n"})
    assert boxes.open_session(flash) is None
    assert CookieBox("k", FLASH_COOKIE).open(flash) is not None


@pytest.mark.parametrize("value", [None, "", "not base64 !!", "AAAA", "A" * (MAX_COOKIE_CHARS + 1),
                                   "=" * 40, "\x00\x01"])
def test_junk_values_open_to_none(value: str | None) -> None:
    assert Boxes("k").open_session(value) is None


def test_expired_value_is_refused() -> None:
    box = CookieBox("k", FLASH_COOKIE)
    opened = box.open(box.seal({"f": []}, ttl_s=60))
    assert opened is not None and opened["f"] == []
    assert box.open(box.seal({"f": []}, ttl_s=-1)) is None


def test_a_sealed_document_of_the_wrong_shape_is_signed_out() -> None:
    boxes = Boxes("k")
    assert boxes.open_session(boxes.session.seal({"t": TOKEN})) is None
    assert boxes.open_session(boxes.session.seal({**COOKIE.to_dict(), "a": 5})) is None


def test_repr_never_shows_the_token() -> None:
    assert TOKEN not in repr(COOKIE)
    assert TOKEN not in str(COOKIE)


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        CookieBox("", SESSION_COOKIE)
