"""The policy contract (shared/contract.py): defined once, served by policy with it, parsed
by the executor and the notifier with it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

import services.policy.models as policy_models
from services.executor.sandbox.namespaces import NETWORKS
from shared import contract
from shared.contract import Account, PolicySettings, ProgramMeta, Status
from shared.programs import FLAG_NAMES, NETWORK_NAMES

ROOT = Path(__file__).resolve().parents[3]
STAMP = "2026-01-01T00:00:00Z"
ACCOUNT: dict[str, Any] = {
    "address": "bob@example.org",
    "owner": {"name": "bob", "uid": 64101, "gid": 64102, "home": "/home/bob", "shell": "/bin/sh"},
    "program_delivery": {"enabled": True, "programs": ["mymail", "/usr/local/bin/x"]},
    "mailbox_delivery": False,
    "created_at": STAMP,
    "updated_at": STAMP,
}
PROGRAM: dict[str, Any] = {
    "name": "mymail", "sha256": "ab" * 32, "size": 12, "interpreter": False,
    "registered_by": "admin", "registered_at": STAMP, "updated_at": STAMP,
    "description": None, "network": "none",
}


def parse(model: type[contract.Contract], doc: dict[str, object]) -> contract.Contract:
    return model.model_validate_json(orjson.dumps(doc))


def test_policy_serves_the_shared_models() -> None:
    for name in ("PolicySettings", "SafeUser", "Status", "ProgramMeta", "Owner",
                 "ProgramDelivery", "Account"):
        assert getattr(policy_models, name) is getattr(contract, name), name


def test_settings_defaults_are_specs() -> None:
    assert PolicySettings().model_dump() == {
        "mode": "secure", "suspended": False, "safe_user": None,
        "valid_shells": ["/bin/sh", "/bin/csh", "/bin/ksh", "/usr/bin/sh", "/usr/bin/csh",
                         "/usr/bin/ksh"],
        "program_timeout_s": 60, "max_output_bytes": 65536, "tempfail_exit_codes": [71, 75],
        "dsn_include_output": True, "delay_warning_after_s": 14400,
        "max_queue_lifetime_s": 432000, "postmaster": None, "record_retention_days": 30,
    }
    assert parse(PolicySettings, {}) == PolicySettings()


def test_a_served_document_round_trips() -> None:
    settings = PolicySettings(mode="insecure", safe_user={"uid": 5, "gid": 6},  # type: ignore[arg-type]
                              postmaster="Root@Example.ORG")
    assert settings.postmaster == "root@example.org"  # the account-key normalisation
    assert parse(PolicySettings, settings.model_dump(mode="json")) == settings
    account = parse(Account, ACCOUNT)
    assert parse(Account, account.model_dump(mode="json")) == account


def test_unknown_fields_are_ignored_by_readers_refused_in_requests() -> None:
    """A newer policy may add fields (a rolling upgrade); its request bodies stay exact."""
    newer = {**ACCOUNT, "quota": 5, "owner": {**ACCOUNT["owner"], "gecos": "x"}}
    assert parse(Account, newer) == parse(Account, ACCOUNT)
    assert parse(Status, {"program_delivery": "enabled", "mode": "secure", "suspended": False,
                          "programs": 1, "accounts": 2, "queues": {}})
    with pytest.raises(ValidationError, match="extra"):
        policy_models.AccountIn.model_validate({"owner": {**ACCOUNT["owner"], "gecos": "x"}})
    with pytest.raises(ValidationError, match="extra"):
        policy_models.SettingsPatch.model_validate({"safe_user": {"uid": 1, "gid": 1, "x": 1}})


@pytest.mark.parametrize(
    ("model", "doc"),
    [
        (PolicySettings, {"program_timeout_s": "60"}),
        (PolicySettings, {"suspended": 1}),
        (PolicySettings, {"mode": "permissive"}),
        (PolicySettings, {"delay_warning_after_s": 100, "max_queue_lifetime_s": 100}),
        (PolicySettings, {"postmaster": "bö@example.org"}),
        (PolicySettings, {"valid_shells": ["sh"]}),
        (Account, {**ACCOUNT, "owner": {**ACCOUNT["owner"], "uid": "64101"}}),
        (Account, {k: v for k, v in ACCOUNT.items() if k != "owner"}),
        (ProgramMeta, {**PROGRAM, "network": "host"}),  # never guess wider access
        (ProgramMeta, {**PROGRAM, "network": None}),
    ],
)
def test_what_a_reader_refuses(model: type[contract.Contract], doc: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        parse(model, doc)


def test_models_are_frozen() -> None:
    """One parsed answer is shared by every delivery hitting the cache."""
    with pytest.raises(ValidationError):
        PolicySettings().suspended = True  # type: ignore[misc]


def test_the_executors_view_of_an_account() -> None:
    account = parse(Account, ACCOUNT)
    assert isinstance(account, Account)
    assert (account.uid, account.gid, account.home, account.shell) == (
        64101, 64102, "/home/bob", "/bin/sh")
    assert account.program_delivery_enabled
    assert account.programs == ["mymail", "/usr/local/bin/x"]


def test_program_networks_are_the_sandboxs() -> None:
    assert set(NETWORK_NAMES) == set(NETWORKS)
    for network in NETWORK_NAMES:
        assert parse(ProgramMeta, {**PROGRAM, "network": network})


def test_each_piece_of_the_contract_is_defined_once() -> None:
    """No service re-declares the contract (issue 14: copies drift apart)."""
    patterns = {
        r"^class (PolicySettings|Account|SafeUser|ProgramMeta|Owner|ProgramDelivery|Status)\(":
            "shared/contract.py",
        r"^DEFAULT_SHELLS\s*=": "shared/contract.py",
        r"^(FLAG_NAMES|NETWORK_NAMES)\s*[:=]": "shared/programs.py",
        r"^class PolicyUnavailable\(": "shared/policy_client.py",
        r"^def normalize_account\(": "shared/addresses.py",
        r"INSECURE-PROGRAM-DELIVERIES\"": "shared/programs.py",
    }
    sources = [p for d in ("services", "shared", "mailexec") for p in (ROOT / d).rglob("*.py")]
    for pattern, home in patterns.items():
        where = {str(p.relative_to(ROOT)) for p in sources
                 if re.search(pattern, p.read_text(), re.MULTILINE)}
        assert where == {home}, (pattern, where)
    assert FLAG_NAMES == {"INSECURE-PROGRAM-DELIVERIES", "SUSPEND-PROGRAM-DELIVERIES"}
