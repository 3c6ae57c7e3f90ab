"""Authentication and authorisation under attack, against real service processes.

- Token comparison behaves timing-safely *as seen from outside*: wrong tokens that share
  the valid token's length, its prefix, all but its last character, or differ only in
  case or padding all get 401 (bootstrap tokens and issued user tokens, every service).
- Tokens never reach a log: services run at debug level, every kind of token is used
  (valid, wrong, issued, revoked), and the log files are searched for the token text.
- Repeated bad tokens are rate-limited: 429 before the 32nd bad token from one address.
- A user token can never reach another account, on EVERY endpoint of every service: the
  endpoints are enumerated from each service's OpenAPI schema (a new endpoint is covered
  without touching this file), path parameters are aimed at the victim, and afterwards
  the victim's account, token and messages are unchanged and no response leaked them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, MTA_TOKEN, SERVICE_TOKEN, ServiceProcess
from tests.executor.helpers import Pipeline
from tests.security.conftest import ADMIN, MTA, issue_user_token, service_url

HTTP_SERVICES = ("policy", "ingest", "notifier")
# One authenticated endpoint per service to knock on.
PROBE = {"policy": ("GET", "/v1/settings"), "ingest": ("GET", "/v1/messages"),
         "notifier": ("GET", "/v1/notifications")}


def _variants(token: str) -> list[str]:
    """Wrong tokens an attacker measuring response times would try."""
    last = token[-1]
    flip = "A" if last != "A" else "B"
    return [
        token[:-1] + flip,                       # same length, same prefix but the last char
        token[0] + ("A" if token[1] != "A" else "B") + token[2:],  # differs early
        "Z" * len(token),                        # same length, nothing in common
        token[: len(token) // 2],                # prefix
        token + "x",                             # valid token plus one char
        token.swapcase(),                        # case
        token[:-1],                              # one char short
        token + " extra",                        # a second word after the token
    ]


@pytest.fixture(scope="module")
def fresh(mx_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[dict[str, ServiceProcess]]:
    """Services of their own at debug log level: bad-token counters start at zero here,
    and the package's shared services are never rate-limited by these tests."""
    p = Pipeline(mx_env, tmp_path_factory.mktemp("auth-logs"))
    p.env["MAILEXEC_LOG_LEVEL"] = "debug"
    p.env["MAILEXEC_SMTP_URL"] = "smtp://127.0.0.1:9"
    try:
        for name in HTTP_SERVICES:
            p.start(name)
        yield p.procs
    finally:
        p.stop_all()


_issued: dict[str, str] = {}


async def test_wrong_tokens_of_equal_length_or_prefix_get_401(
    fresh: dict[str, ServiceProcess]
) -> None:
    user = await issue_user_token(fresh["policy"].url, "timing@example.org")
    _issued["user"] = user
    bad: list[str] = []
    async with httpx.AsyncClient(timeout=10) as c:
        for name, proc in fresh.items():
            method, path = PROBE[name]
            for token in (ADMIN_TOKEN, user):
                for wrong in _variants(token):
                    r = await c.request(method, proc.url + path,
                                        headers={"Authorization": f"Bearer {wrong}"})
                    if r.status_code != 401:
                        bad.append(f"{name} {wrong!r}: {r.status_code} {r.text[:200]}")
                    else:
                        assert r.json()["error"]["code"] == "invalid_token"
                        assert r.headers.get("www-authenticate") == "Bearer"
            # The real ones still work (nothing above locked them out).
            r = await c.request(method, proc.url + path, headers=ADMIN)
            assert r.status_code == 200, (name, r.text)
    assert not bad, "\n".join(bad)


async def test_tokens_used_everywhere(fresh: dict[str, ServiceProcess]) -> None:
    """Before the rate-limit test locks these services: every kind of token, sent in
    every place a careless logger might print (query string, an extra header)."""
    user = _issued.get("user") or await issue_user_token(fresh["policy"].url, "timing@example.org")
    async with httpx.AsyncClient(timeout=10) as c:
        pol = fresh["policy"].url
        # A token issued and revoked, and one sent in odd places (query string, other header).
        r = await c.post(pol + "/v1/accounts/timing@example.org/tokens", headers=ADMIN,
                         json={"label": "to-revoke"})
        revoked = r.json()["token"]
        r = await c.delete(pol + f"/v1/tokens/{r.json()['id']}", headers=ADMIN)
        assert r.status_code == 204
        for name, proc in fresh.items():
            method, path = PROBE[name]
            for tok in (ADMIN_TOKEN, MTA_TOKEN, SERVICE_TOKEN, user, revoked):
                await c.request(method, proc.url + path + f"?token={tok}",
                                headers={"Authorization": f"Bearer {tok}", "X-Api-Key": tok})
            await c.get(proc.url + "/metrics")
    _issued["revoked"] = revoked
    _issued["user"] = user


async def test_repeated_bad_tokens_are_rate_limited(fresh: dict[str, ServiceProcess]) -> None:
    async with httpx.AsyncClient(timeout=10) as c:
        for name, proc in fresh.items():
            method, path = PROBE[name]
            codes = []
            for i in range(40):
                r = await c.request(method, proc.url + path,
                                    headers={"Authorization": f"Bearer guess-{i:04d}"})
                codes.append(r.status_code)
                if r.status_code == 429:
                    assert r.json()["error"]["code"] == "auth_rate_limited"
                    break
            assert codes[-1] == 429, f"{name}: no 429 after {len(codes)} bad tokens: {codes}"
            assert len(codes) <= 32, f"{name}: 429 only after {len(codes)} bad tokens"
            assert set(codes[:-1]) == {401}, codes
            # Still limited on the next try, and a missing token is limited as well.
            r = await c.request(method, proc.url + path)
            assert r.status_code == 429, (name, r.status_code)


async def test_rate_limited_address_still_accepts_a_valid_token(
    fresh: dict[str, ServiceProcess]
) -> None:
    """Behind a shared proxy/ingress every client has the same address: one client guessing
    tokens should not lock the MTA (and so all mail) out for a minute."""
    async with httpx.AsyncClient(timeout=10) as c:
        for name, proc in fresh.items():
            method, path = PROBE[name]
            r = await c.request(method, proc.url + path, headers=ADMIN)
            assert r.status_code == 200, (name, r.status_code)


async def test_tokens_never_logged(fresh: dict[str, ServiceProcess]) -> None:
    user, revoked = _issued["user"], _issued["revoked"]
    for proc in fresh.values():
        proc.stop()
    secrets = {"admin": ADMIN_TOKEN, "mta": MTA_TOKEN, "service": SERVICE_TOKEN, "user": user,
               "revoked": revoked}
    leaks = []
    for name, proc in fresh.items():
        text = proc.log_path.read_text(errors="replace")
        assert text.strip(), f"{name} wrote no log at debug level: the test would prove nothing"
        for label, tok in secrets.items():
            # the secret part: user tokens are "mxu_<random>", bootstrap ones test-*-<hex>
            for needle in {tok, tok.split("_", 1)[-1], tok[-16:]}:
                if needle in text:
                    leaks.append(f"{name} log contains the {label} token")
    assert not leaks, leaks


# --- one account's token against every endpoint -------------------------------------------

VICTIM = "victim@example.org"
ATTACKER = "attacker@example.org"
PROGRAM_BODY = {"enabled": True, "programs": ["evil"]}
ACCOUNT_BODY = {"owner": {"name": "evil", "uid": 4242, "gid": 4242, "home": "/tmp",
                          "shell": "/bin/sh"},
                "program_delivery": {"enabled": True, "programs": ["evil"]},
                "mailbox_delivery": False}


def _address_variants() -> list[str]:
    return [VICTIM, VICTIM.upper(), f"<{VICTIM}>", "%76ictim@example.org",
            f"{ATTACKER}%2F..%2F{VICTIM}", f" {VICTIM}"]


def _fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{([^}:]+)(?::[^}]*)?\}", lambda m: values.get(m.group(1), "x"), path)


def _empty_listing(r: httpx.Response) -> bool:
    """A listing answered with nothing in it (a user asking for the DSNs of a message
    that is not its own gets none): no resource of the victim's was reached."""
    try:
        body = r.json()
    except ValueError:
        return False
    return isinstance(body, dict) and any(body.get(k) == [] for k in ("items", "messages"))


async def test_user_token_cannot_reach_another_account_on_any_endpoint(stack: Pipeline) -> None:
    pol = stack.policy_url
    ing = service_url(stack, "ingest")
    victim_token = await issue_user_token(pol, VICTIM, uid=64201)
    attacker_token = await issue_user_token(pol, ATTACKER, uid=64202)
    attacker = {"Authorization": f"Bearer {attacker_token}"}
    async with httpx.AsyncClient(timeout=15) as c:
        r = await c.put(pol + "/v1/programs/victimprog", headers={**ADMIN, "Content-Type":
                        "application/octet-stream"}, content=b"\x7fELF-not-really")
        assert r.status_code in (200, 201), r.text

        async def submit(to: list[str]) -> str:
            r = await c.post(ing + "/v1/messages", params=[("from", "x@example.net")]
                             + [("to", t) for t in to], content=b"Subject: secret\n\nhi\n",
                             headers={**MTA, "Content-Type": "message/rfc822"})
            assert r.status_code == 202, r.text
            return str(r.json()["id"])

        mid_victim = await submit([VICTIM])
        mid_both = await submit([VICTIM, ATTACKER])
        tokens = (await c.get(pol + f"/v1/accounts/{VICTIM}/tokens", headers=ADMIN)).json()
        victim_token_id = tokens["items"][0]["id"]
        before = (await c.get(pol + f"/v1/accounts/{VICTIM}", headers=ADMIN)).json()

        secrets = [VICTIM, mid_victim, victim_token, victim_token_id]
        problems: list[str] = []
        tried = 0
        for name in ("policy", "ingest", "notifier"):
            base = service_url(stack, name)
            schema = (await c.get(base + "/openapi.json")).json()
            for path, item in schema["paths"].items():
                for method, op in item.items():
                    if method not in ("get", "put", "post", "patch", "delete"):
                        continue
                    params = {p["name"]: p for p in op.get("parameters", [])}
                    path_params = [p for p in params.values() if p["in"] == "path"]
                    query = {}
                    for qname, p in params.items():
                        if p["in"] != "query":
                            continue
                        if "message" in qname or qname == "id":
                            query[qname] = mid_victim
                        elif any(k in qname for k in ("address", "recipient", "account", "to")):
                            query[qname] = VICTIM
                    targets_victim = bool(path_params) or bool(query)
                    address_values = _address_variants() if any(
                        "address" in p["name"] for p in path_params) else [VICTIM]
                    for addr in address_values:
                        values = {"address": addr, "name": "victimprog", "message_id": mid_victim,
                                  "id": mid_victim, "token_id": victim_token_id,
                                  "notification_id": mid_victim}
                        url = base + _fill(path, values)
                        body: Any = ACCOUNT_BODY if re.fullmatch(r"/v1/accounts/\{[^}]+\}", path) \
                            else PROGRAM_BODY
                        kwargs: dict[str, Any] = {"params": query, "headers": attacker}
                        if method in ("put", "post", "patch"):
                            if "/programs/" in path and "accounts" not in path:
                                kwargs["content"] = b"\x7fELF-evil"
                                kwargs["headers"] = {**attacker,
                                                     "Content-Type": "application/octet-stream"}
                            else:
                                kwargs["json"] = body
                        r = await c.request(method.upper(), url, **kwargs)
                        tried += 1
                        label = f"{name}: {method.upper()} {url} {query or ''} -> {r.status_code}"
                        if r.status_code >= 500:
                            problems.append(label + " (server error)")
                        account_scoped = targets_victim and "programs/{name" not in path \
                            and path not in ("/v1/programs",)
                        if account_scoped and 200 <= r.status_code < 300 \
                                and not _empty_listing(r):
                            problems.append(label + " (a user reached the victim's resource)")
                        low = r.text.lower()
                        # An error message may echo what the attacker asked for; anything
                        # of the victim's the attacker did not send is a leak.
                        sent = (unquote(url) + repr(query)).lower()
                        for s in secrets:
                            if s.lower() in low and s.lower() not in sent:
                                problems.append(label + f" (response mentions {s[:20]}...)")
        # The shared message: the attacker sees itself only.
        r = await c.get(ing + f"/v1/messages/{mid_both}", headers=attacker)
        assert r.status_code == 200, r.text
        assert [x["address"] for x in r.json()["recipients"]] == [ATTACKER]
        assert VICTIM not in r.text
        # Nothing of the victim changed, and its token still works.
        after = (await c.get(pol + f"/v1/accounts/{VICTIM}", headers=ADMIN)).json()
        assert after == before
        r = await c.get(pol + f"/v1/accounts/{VICTIM}/programs",
                        headers={"Authorization": f"Bearer {victim_token}"})
        assert r.status_code == 200 and r.json()["programs"] == ["cat"], r.text
        r = await c.get(ing + f"/v1/messages/{mid_victim}",
                        headers={"Authorization": f"Bearer {victim_token}"})
        assert r.status_code == 200, r.text
    print(f"\ncross-account: {tried} requests over every endpoint of policy, ingest, notifier")
    assert tried > 20
    assert not problems, "\n".join(problems)
