"""The CSRF value of forms (services/console/csrf.py)."""

from __future__ import annotations

from services.console.csrf import form_value, matches, new_secret


def test_the_form_value_of_a_secret_matches() -> None:
    secret = new_secret()
    assert matches(secret, form_value(secret))


def test_value_of_one_secret_fails_another() -> None:
    assert not matches(new_secret(), form_value(new_secret()))


def test_missing_or_empty_values_fail() -> None:
    secret = new_secret()
    for submitted in (None, "", 5, [form_value(secret)], form_value(secret)[:-1],
                      form_value(secret) + "x"):
        assert not matches(secret, submitted)
    assert not matches(None, form_value(secret))
    assert not matches("", form_value(""))


def test_the_value_is_not_the_secret() -> None:
    secret = new_secret()
    assert form_value(secret) != secret
    assert secret not in form_value(secret)
