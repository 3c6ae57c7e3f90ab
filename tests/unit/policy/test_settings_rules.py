"""The policy settings' rules: which values an admin can set, which are refused, and the
rules between fields. The PATCH route validates the merged document with these models
(its transaction and audit row are tested against PostgreSQL in tests/policy)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.policy.models import PolicySettings, SettingsPatch


def patched(**changes: Any) -> PolicySettings:
    """The defaults with ``changes`` applied, as a PATCH body is (unset fields kept)."""
    patch = SettingsPatch.model_validate(changes).model_dump(mode="json", exclude_unset=True)
    return PolicySettings.model_validate({**PolicySettings().model_dump(mode="json"), **patch})


@pytest.mark.parametrize(("field", "accepted", "refused"), [
    ("program_timeout_s", [1, 86400], [0, 86401, -5]),
    ("max_output_bytes", [1, 16 * 1024 * 1024], [0, 16 * 1024 * 1024 + 1]),
    ("delay_warning_after_s", [1, 431999], [0]),
    ("max_queue_lifetime_s", [14401, 10**9], [0, 14400, 100]),  # must exceed the warning delay
    ("tempfail_exit_codes", [[], [1], [75, 71], list(range(1, 256))], [[0], [256], [75, 75]]),
    ("mode", ["secure", "insecure"], ["permissive", ""]),
    ("valid_shells", [["/bin/sh"], ["/usr/local/bin/fish"]], [["sh"], ["bin/sh"]]),
    ("safe_user", [{"uid": 1, "gid": 1}, {"uid": 64999, "gid": 100}],
     [{"uid": 0, "gid": 100}, {"uid": 100, "gid": 0}]),  # never root, never gid 0
])
def test_each_setting_accepts_its_range_and_refuses_the_rest(
    field: str, accepted: list[Any], refused: list[Any]
) -> None:
    for value in accepted:
        got = patched(**{field: value}).model_dump(mode="json")[field]
        assert got == value, (field, value, got)
    for value in refused:
        with pytest.raises(ValidationError):
            patched(**{field: value})


def test_the_queue_lifetime_must_exceed_the_warning_delay_whichever_is_changed() -> None:
    with pytest.raises(ValidationError, match="must be greater than delay_warning_after_s"):
        patched(delay_warning_after_s=432000)
    ok = patched(delay_warning_after_s=432000, max_queue_lifetime_s=432001)
    assert (ok.delay_warning_after_s, ok.max_queue_lifetime_s) == (432000, 432001)


def test_null_resets_a_nullable_setting_and_omitting_it_keeps_it() -> None:
    base = patched(safe_user={"uid": 5, "gid": 6}, postmaster="postmaster@example.org")
    keep = SettingsPatch.model_validate({"suspended": True}).model_dump(mode="json", exclude_unset=True)
    after = PolicySettings.model_validate({**base.model_dump(mode="json"), **keep})
    assert after.safe_user is not None and after.postmaster == "postmaster@example.org"
    reset = SettingsPatch.model_validate({"safe_user": None, "postmaster": None}).model_dump(
        mode="json", exclude_unset=True)
    after = PolicySettings.model_validate({**base.model_dump(mode="json"), **reset})
    assert after.safe_user is None and after.postmaster is None


def test_the_postmaster_is_an_account_key() -> None:
    assert patched(postmaster="PostMaster@Example.ORG").postmaster == "postmaster@example.org"


@pytest.mark.parametrize("body", [
    {"tempfail_codes": [75]},          # a misspelt field is refused, not ignored
    {"suspended": "yes"},              # no coercion of strings
    {"program_timeout_s": "60"},
    {"safe_user": {"uid": 1}},
])
def test_a_patch_is_exact(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SettingsPatch.model_validate(body)
