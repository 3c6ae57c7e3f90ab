"""The admin pages' form rules (services/console/admin_forms.py): no service needed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup

from services.console import admin_forms as forms
from shared.contract import PolicySettings

TEMPLATES = Path(__file__).resolve().parents[3] / "services" / "console" / "templates"
DEFAULTS: dict[str, Any] = PolicySettings().model_dump(mode="json")


def submit(**changes: str) -> dict[str, str]:
    """The settings form as shown for the defaults, with ``changes`` typed in (dots in
    input names spelt ``__``); a value None unticks a checkbox."""
    values = forms.settings_form_values(DEFAULTS)
    for name, value in changes.items():
        values[name.replace("__", ".")] = value
    return {k: v for k, v in values.items() if not (v == "" and _is_checkbox(k))}


def _is_checkbox(name: str) -> bool:
    return any(f.name == name and f.kind == "checkbox" for f in forms.SETTING_FIELDS)


# --- the settings form follows the contract ---------------------------------------------


def test_every_setting_of_the_contract_is_on_the_form_with_words() -> None:
    names = [f.name for f in forms.SETTING_FIELDS]
    assert names == list(PolicySettings.model_fields)
    missing = [n for n in names if n not in forms.SETTING_TEXT]
    assert not missing, f"give these settings a label and hint in SETTING_TEXT: {missing}"
    assert all(f.kind != "json" for f in forms.SETTING_FIELDS), (
        "a setting is edited as raw JSON: give its type a proper control in _field_for")


def render_settings(values: dict[str, str], errors: dict[str, str]) -> str:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
    env.globals["static_url"] = lambda path: f"/static/{path}"
    env.globals["csrf_input"] = lambda: Markup('<input type="hidden" name="csrf" value="x">')
    return env.get_template("admin/settings.html").render(
        fields=forms.SETTING_FIELDS, values=values, errors=errors,
        error_summary=list(errors.items()), person=None, nav=[], flashes=[])


def test_the_rendered_form_has_a_labelled_control_for_every_setting() -> None:
    html = render_settings(forms.settings_form_values(DEFAULTS), {})
    for f in forms.SETTING_FIELDS:
        for name in f.inputs:
            control = re.search(rf'<(input|select|textarea)[^>]*\bname="{re.escape(name)}"[^>]*>',
                                html)
            assert control, f"no control for {name}"
            cid = re.search(r'\bid="([^"]+)"', control.group(0))
            assert cid and f'<label for="{cid.group(1)}"' in html, f"no label for {name}"


def test_an_error_is_shown_next_to_its_field_and_tied_to_it() -> None:
    changes, errors = forms.parse_settings_form(submit(program_timeout_s="-1"), DEFAULTS)
    assert not changes and set(errors) == {"program_timeout_s"}
    html = render_settings(submit(program_timeout_s="-1"), errors)
    control = re.search(r'<input[^>]*name="program_timeout_s"[^>]*>', html)
    assert control
    assert 'aria-invalid="true"' in control.group(0)
    assert 'aria-describedby="f-program-timeout-s-hint f-program-timeout-s-error"' in control.group(0)
    assert re.search(r'id="f-program-timeout-s-error"[^>]*>[^<]*greater than or equal to 1', html)
    assert 'href="#f-program-timeout-s"' in html  # the summary links to the field


# --- parsing and validation -------------------------------------------------------------


def test_the_unchanged_form_changes_nothing() -> None:
    assert forms.parse_settings_form(submit(), DEFAULTS) == ({}, {})


def test_only_the_changed_settings_are_patched() -> None:
    form = submit(mode="insecure", program_timeout_s=" 90 ", tempfail_exit_codes="75, 71 , 99",
                  valid_shells="/bin/sh\r\n\r\n/bin/bash\n", postmaster="PostMaster@Example.ORG",
                  safe_user__uid="64000", safe_user__gid="64001", dsn_include_output="")
    changes, errors = forms.parse_settings_form(form, DEFAULTS)
    assert errors == {}
    assert changes == {
        "mode": "insecure", "program_timeout_s": 90, "tempfail_exit_codes": [75, 71, 99],
        "valid_shells": ["/bin/sh", "/bin/bash"], "postmaster": "postmaster@example.org",
        "safe_user": {"uid": 64000, "gid": 64001}, "dsn_include_output": False,
    }


def test_a_form_opened_before_another_change_does_not_undo_it() -> None:
    form = submit(program_timeout_s="90")  # shown: the defaults, not suspended
    form[forms.SHOWN_FIELD] = forms.shown_value(DEFAULTS)
    meanwhile = {**DEFAULTS, "suspended": True, "max_output_bytes": 1000}
    changes, errors = forms.parse_settings_form(form, meanwhile)
    assert errors == {}
    assert changes == {"program_timeout_s": 90}
    # the edit is checked against the settings as they are now
    form = submit(delay_warning_after_s="2000")
    form[forms.SHOWN_FIELD] = forms.shown_value(DEFAULTS)
    _, errors = forms.parse_settings_form(form, {**DEFAULTS, "max_queue_lifetime_s": 1000})
    assert set(errors) == {"delay_warning_after_s"}


def test_a_ticked_box_and_emptied_optional_fields() -> None:
    current = {**DEFAULTS, "safe_user": {"uid": 5, "gid": 6}, "postmaster": "pm@example.org"}
    form = forms.settings_form_values(current)
    form.update({"suspended": "on", "safe_user.uid": "", "safe_user.gid": "", "postmaster": " "})
    changes, errors = forms.parse_settings_form(form, current)
    assert errors == {}
    assert changes == {"suspended": True, "safe_user": None, "postmaster": None}


@pytest.mark.parametrize(("changes", "field", "words"), [
    ({"program_timeout_s": "-1"}, "program_timeout_s", "greater than or equal to 1"),
    ({"program_timeout_s": "ten"}, "program_timeout_s", "whole number"),
    ({"max_output_bytes": "0"}, "max_output_bytes", "greater than or equal to 1"),
    ({"tempfail_exit_codes": "71, x"}, "tempfail_exit_codes", "'x' is not a whole number"),
    ({"tempfail_exit_codes": "71, 300"}, "tempfail_exit_codes", "less than or equal to 255"),
    ({"tempfail_exit_codes": "71, 71"}, "tempfail_exit_codes", "each exit code once"),
    ({"valid_shells": "/bin/sh\nbin/bash"}, "valid_shells", "absolute path"),
    ({"mode": "lax"}, "mode", "secure, insecure"),
    ({"safe_user__uid": "5"}, "safe_user.gid", "fill in every part"),
    ({"safe_user__uid": "0", "safe_user__gid": "5"}, "safe_user.uid", "greater than 0"),
    ({"postmaster": "not an address"}, "postmaster", ""),
    ({"max_queue_lifetime_s": "100"}, "max_queue_lifetime_s", "must be greater than"),
    ({"delay_warning_after_s": "999999"}, "delay_warning_after_s", "must be greater than"),
])
def test_each_error_is_at_its_field(changes: dict[str, str], field: str, words: str) -> None:
    patch, errors = forms.parse_settings_form(submit(**changes), DEFAULTS)
    assert patch == {}
    assert field in errors, errors
    assert words in errors[field]


def test_policys_own_error_message_is_placed_at_the_fields_it_names() -> None:
    message = ("program_timeout_s: Input should be less than or equal to 86400; "
               "safe_user.uid: Input should be greater than 0; something else went wrong")
    assert forms.attach_setting_errors(message) == {
        "program_timeout_s": "Input should be less than or equal to 86400",
        "safe_user.uid": "Input should be greater than 0",
        forms.FORM_ERROR: "something else went wrong",
    }
    lifetime = ("max_queue_lifetime_s (10) must be greater than delay_warning_after_s (14400)")
    assert set(forms.attach_setting_errors(lifetime)) == {"max_queue_lifetime_s"}
    assert set(forms.attach_setting_errors(lifetime, ["delay_warning_after_s"])) == {
        "delay_warning_after_s"}


# --- programs ---------------------------------------------------------------------------


def test_program_upload_form() -> None:
    upload, errors = forms.parse_program_upload(
        {"name": "", "allow_interpreter": "on", "description": " Sorts mail\r\n", "network": ""},
        "dir/mymail", 10)
    assert errors == {}
    assert upload.name == "mymail" and upload.allow_interpreter
    assert upload.meta == {"description": "Sorts mail"}  # network unchanged when not chosen

    upload, errors = forms.parse_program_upload({"name": "x", "network": "egress"}, "x", 3)
    assert errors == {} and upload.meta == {"network": "egress"} and not upload.allow_interpreter


@pytest.mark.parametrize(("form", "filename", "size", "field"), [
    ({"name": "bad name"}, "f", 3, "name"),
    ({"name": "SUSPEND-PROGRAM-DELIVERIES"}, "f", 3, "name"),
    ({"name": ".hidden"}, "f", 3, "name"),
    ({"name": "ok"}, None, None, "file"),
    ({"name": "ok"}, "ok", 0, "file"),
    ({"name": "ok", "network": "internet"}, "ok", 3, "network"),
    ({"name": "ok", "description": "x" * 2001}, "ok", 3, "description"),
    ({"name": "ok", "description": "bell\x07"}, "ok", 3, "description"),
])
def test_program_upload_errors(form: dict[str, str], filename: str | None, size: int | None,
                               field: str) -> None:
    _, errors = forms.parse_program_upload(form, filename, size)
    assert field in errors, errors


def test_program_meta_form() -> None:
    assert forms.parse_program_meta({"description": "", "network": "none"}) == (
        {"description": None, "network": "none"}, {})
    _, errors = forms.parse_program_meta({"network": "all"})
    assert "network" in errors


def test_too_large_message_names_the_limit() -> None:
    assert "67108864 bytes (64.0 MiB" in forms.too_large_message(64 * 1024 * 1024)


# --- accounts ---------------------------------------------------------------------------

ACCOUNT_FORM = {"address": "Bob@Example.org", "owner_name": "bob", "uid": "64101",
                "gid": "64102", "home": "/home/bob", "shell": "/bin/sh",
                "program_delivery": "on", "programs": "mymail\r\n\n /usr/local/bin/x \n",
                "mailbox_delivery": ""}


def test_account_form_to_the_put_body() -> None:
    key, body, errors = forms.parse_account_form(ACCOUNT_FORM)
    assert errors == {}
    assert key == "bob@example.org"
    assert body == {
        "owner": {"name": "bob", "uid": 64101, "gid": 64102, "home": "/home/bob",
                  "shell": "/bin/sh"},
        "program_delivery": {"enabled": True, "programs": ["mymail", "/usr/local/bin/x"]},
        "mailbox_delivery": False,
    }


def test_account_round_trip() -> None:
    key, body, _ = forms.parse_account_form(ACCOUNT_FORM)
    shown = forms.account_form_values({"address": key, **body})
    assert forms.parse_account_form(shown)[1] == body


@pytest.mark.parametrize(("changes", "field"), [
    ({"address": ""}, "address"),
    ({"address": "no-at-sign"}, "address"),
    ({"address": "a/b@example.org"}, "address"),
    ({"owner_name": ""}, "owner_name"),
    ({"owner_name": "a:b"}, "owner_name"),
    ({"uid": ""}, "uid"),
    ({"uid": "-1"}, "uid"),
    ({"gid": "1.5"}, "gid"),
    ({"gid": str(2**32)}, "gid"),
    ({"home": "home/bob"}, "home"),
    ({"shell": ""}, "shell"),
    ({"programs": "my mail"}, "programs"),
    ({"programs": "/usr/bin/"}, "programs"),
    ({"programs": "\n".join(f"p{i}" for i in range(65))}, "programs"),
])
def test_account_errors(changes: dict[str, str], field: str) -> None:
    _, _, errors = forms.parse_account_form({**ACCOUNT_FORM, **changes})
    assert field in errors, errors


def test_token_label() -> None:
    assert forms.parse_token_label({"label": " laptop "}) == ("laptop", {})
    assert forms.parse_token_label({}) == (None, {})
    assert "label" in forms.parse_token_label({"label": "x" * 201})[1]
    assert "label" in forms.parse_token_label({"label": "a\nb"})[1]


# --- tracking filters -------------------------------------------------------------------


def test_message_query() -> None:
    q, errors = forms.parse_message_query(
        {"id": "", "sender": "<Alice@Example.net>", "recipient": "Bob@Example.ORG",
         "state": "bounced"})
    assert errors == {}
    assert q.params() == {"sender": "Alice@example.net", "recipient": "bob@example.org",
                          "state": "bounced"}
    q, errors = forms.parse_message_query({"id": " 0B6C5B1E-9F7A-4C1E-8A55-2D0F3B6C9E11 "})
    assert errors == {} and q.message_id == "0b6c5b1e-9f7a-4c1e-8a55-2d0f3b6c9e11"
    q, errors = forms.parse_message_query({"sender": "<>"})
    assert errors == {} and q.params() == {"sender": ""}
    _, errors = forms.parse_message_query({"id": "nope", "recipient": "x", "state": "lost"})
    assert set(errors) == {"id", "recipient", "state"}


def test_audit_and_notification_queries() -> None:
    assert forms.parse_audit_query({"kind": "program", "target": " mymail "}) == (
        {"kind": "program", "target": "mymail"}, {})
    assert set(forms.parse_audit_query({"kind": "everything"})[1]) == {"kind"}
    assert forms.parse_notification_query({"state": "sent", "message_id": ""}) == (
        {"state": "sent"}, {})
    assert set(forms.parse_notification_query({"message_id": "12"})[1]) == {"message_id"}


def test_cursor_is_passed_only_when_it_looks_like_one() -> None:
    assert forms.cursor_param({"cursor": "eyJhZnRlciI6ICJ4In0"}) == "eyJhZnRlciI6ICJ4In0"
    assert forms.cursor_param({"cursor": "a&b=c"}) is None
    assert forms.cursor_param({"cursor": "x" * 600}) is None
    assert forms.cursor_param({}) is None


# --- pages that show what programs printed ----------------------------------------------


def render(template: str, **context: Any) -> str:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
    env.globals["static_url"] = lambda path: f"/static/{path}"
    env.globals["csrf_input"] = lambda: Markup('<input type="hidden" name="csrf" value="x">')
    base = {"person": None, "nav": [], "flashes": [], "errors": {}, "error_summary": []}
    return env.get_template(template).render(**{**base, **context})


HOSTILE = "<script>alert(1)</script> & done"
RUN = {"program": "sorter", "position": 0, "attempt": 1, "exit_status": 75, "signal": None,
       "timed_out": False, "output_excerpt": HOSTILE, "duration_ms": 12,
       "started_at": "2026-01-01T00:00:00+00:00"}


def test_dashboard_shows_counts_and_failures_with_escaped_output() -> None:
    ingest = {
        "recipients": {"queued": 3, "running": 1, "suspended": 0, "deferred": 2, "on_hold": 0},
        "last_hour": {"received": 40, "delivered": 35, "bounced": 4},
        "oldest_waiting_s": 5400, "queues": {"deliveries": 3, "deliveries.held": 0},
        "queues_error": None,
        "latest_failures": [{"message_id": "m1", "recipient": "bob@example.org",
                             "state": "deferred", "at": "2026-01-01T00:00:00+00:00",
                             "status": "4.3.0", "programs": [RUN]}],
    }
    status = {"program_delivery": "suspended", "mode": "secure", "suspended": True,
              "programs": 2, "accounts": 7}
    html = render("admin/dashboard.html", status=status, ingest=ingest, ingest_error=None)
    assert "<title>Dashboard · mailexec console</title>" in html
    assert html.count("<h1") == 1
    assert "Resume program delivery" in html and 'action="/admin/resume"' in html
    assert '<pre class="output" tabindex="0">&lt;script&gt;alert(1)&lt;/script&gt; &amp; done</pre>' in html
    assert "<script>alert" not in html
    assert "exit status 75" in html and "90 min" in html
    for figure in ("<td>40</td>", "<td>35</td>", "<td>4</td>", "deliveries.held"):
        assert figure in html


def test_dashboard_without_ingest_status_still_shows_policys() -> None:
    status = {"program_delivery": "disabled", "mode": "insecure", "suspended": False,
              "programs": 0, "accounts": 0}
    html = render("admin/dashboard.html", status=status, ingest=None,
                  ingest_error="ingest is not answering")
    assert "disabled" in html and "insecure" in html and "Suspend program delivery" in html
    assert "ingest is not answering" in html


def test_message_page_shows_each_run_escaped() -> None:
    message = {"id": "m1", "envelope": {"from": "", "to": ["bob@example.org"], "envid": None,
                                        "ret": None, "notify": ["FAILURE"]},
               "size": 10, "received_at": "2026-01-01T00:00:00+00:00", "body_held": True,
               "recipients": [{"address": "bob@example.org", "account": "bob@example.org",
                               "state": "deferred", "attempts": 1, "status": "4.3.0",
                               "diagnostic": HOSTILE, "final_at": None,
                               "updated_at": "2026-01-01T00:00:00+00:00", "programs": [RUN]}]}
    notes = [{"id": "n1", "kind": "delayed", "rcpt": "x@example.net", "state": "sent",
              "created_at": "2026-01-01T00:00:00+00:00", "sent_at": None}]
    html = render("admin/message.html", message=message, notifications=notes,
                  notifications_error=None)
    assert "&lt;&gt; (null sender)" in html
    assert "<script>" not in html
    assert '<pre class="output" tabindex="0">&lt;script&gt;' in html
    assert 'href="/admin/notifications/n1"' in html
