"""The admin pages' forms as pure functions: form fields in, API bodies and field errors out.

Every function here takes the submitted form (a mapping of field name → text) and returns
what to send to the API and, per form field, what is wrong with it, in words a person can
act on. Nothing here calls a service; the pages (``pages/admin*.py``) do that, so these
rules are unit-tested without one (``tests/unit/console/test_admin_forms.py``).

The settings form is derived from :class:`shared.contract.PolicySettings`: one control per
field of the model, its kind read from the field's type, validated with the model itself.
A setting added to the contract appears on the form without a change here (with its name
as its label until :data:`SETTING_TEXT` gives it words; a unit test insists on those).
"""

from __future__ import annotations

import json
import re
import types
import typing
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from shared.addresses import AddressError, normalize_account, parse_mailbox
from shared.contract import Owner, PolicySettings, ProgramDelivery
from shared.programs import FLAG_NAMES, NETWORK_NAMES, PROGRAM_NAME_RULE, is_program_name
from shared.states import STATES

FORM_ERROR = "__form__"  # errors about the form as a whole (shown in the summary only)
MAX_DESCRIPTION_CHARS = 2000  # policy's ProgramPatch limit, checked here to say so early
_DESCRIPTION_BAD = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_LABEL_BAD = re.compile(r"[\x00-\x1f\x7f]")

Errors = dict[str, str]
Kind = Literal["select", "checkbox", "number", "lines", "numbers", "text", "model", "json"]


def _message(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def error_field(loc: tuple[Any, ...], prefix: str = "") -> str:
    """The form field a pydantic error location points at (``('safe_user', 'uid')`` →
    ``safe_user.uid``; list positions belong to the list's field)."""
    parts = [str(p) for p in loc if not isinstance(p, int)]
    return prefix + ".".join(parts) if parts else FORM_ERROR


def _add(errors: Errors, name: str, message: str) -> None:
    errors[name] = f"{errors[name]}; {message}" if name in errors else message


# --- settings ----------------------------------------------------------------------------

# Words for each setting: (label, hint). The unit tests require an entry for every field
# of PolicySettings, so a new setting gets a human label, not only its JSON name.
SETTING_TEXT: dict[str, tuple[str, str]] = {
    "mode": ("Mode",
             "secure: only trusted programs run; insecure: accounts may name any absolute path"),
    "suspended": ("Program delivery suspended",
                  "messages are held, not bounced, until delivery is resumed"),
    "safe_user": ("Safe user",
                  "the uid and gid programs of accounts owned by root (uid 0) run as; "
                  "leave both empty for none (such deliveries then fail)"),
    "valid_shells": ("Valid shells",
                     "one absolute path per line; an account whose shell is not listed "
                     "cannot run programs"),
    "program_timeout_s": ("Program timeout (seconds)",
                          "a run still going after this long is killed"),
    "max_output_bytes": ("Captured output (bytes)",
                         "how much of a program's output is kept for the records and DSNs"),
    "tempfail_exit_codes": ("Temporary-failure exit codes",
                            "comma-separated; a program exiting with one of these is "
                            "retried later instead of bounced"),
    "dsn_include_output": ("Include program output in DSNs",
                           "whether bounce messages quote what the program printed"),
    "delay_warning_after_s": ("Delay warning after (seconds)",
                              "when a sender is told that delivery is delayed"),
    "max_queue_lifetime_s": ("Maximum queue lifetime (seconds)",
                             "a message not delivered by then bounces; must be greater "
                             "than the delay warning"),
    "postmaster": ("Postmaster address",
                   "where admin notices go; empty for none"),
    "record_retention_days": ("Record retention (days)",
                              "how long envelopes, outcomes and notifications are kept"),
}


@dataclass(frozen=True)
class SettingField:
    """One control of the settings form, derived from a PolicySettings field."""

    name: str
    label: str
    hint: str
    kind: Kind
    optional: bool = False  # None is a value (empty input = none)
    choices: tuple[str, ...] = ()
    parts: tuple[SettingField, ...] = ()  # a nested model's fields (kind "model")

    @property
    def inputs(self) -> tuple[str, ...]:
        """The form's input names of this setting."""
        if self.kind == "model":
            return tuple(f"{self.name}.{p.name}" for p in self.parts)
        return (self.name,)


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _base(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _field_for(name: str, annotation: Any, label: str, hint: str) -> SettingField:
    annotation, optional = _strip_optional(_base(annotation))
    annotation = _base(annotation)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return SettingField(name, label, hint, "checkbox", optional)
    if annotation is int:
        return SettingField(name, label, hint, "number", optional)
    if annotation is str:
        return SettingField(name, label, hint, "text", optional)
    if origin is Literal:
        choices = tuple(str(a) for a in typing.get_args(annotation))
        return SettingField(name, label, hint, "select", optional, choices)
    if origin is list:
        (item,) = typing.get_args(annotation)
        item = _base(item)
        if item is str:
            return SettingField(name, label, hint, "lines", optional)
        if item is int:
            return SettingField(name, label, hint, "numbers", optional)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        parts = tuple(
            _field_for(sub, info.annotation, sub, "") for sub, info in annotation.model_fields.items()
        )
        if all(p.kind in ("number", "text") for p in parts):
            return SettingField(name, label, hint, "model", optional, parts=parts)
    # A type no control fits yet: edited as JSON, so no setting is ever left off the form.
    return SettingField(name, label, hint, "json", optional)


def setting_fields() -> tuple[SettingField, ...]:
    """One SettingField per field of PolicySettings, in the model's order."""
    fields = []
    for name, info in PolicySettings.model_fields.items():
        label, hint = SETTING_TEXT.get(name, (name.replace("_", " ").capitalize(), ""))
        fields.append(_field_for(name, info.annotation, label, hint))
    return tuple(fields)


SETTING_FIELDS = setting_fields()


def _scalar_text(value: Any) -> str:
    return "" if value is None else str(value)


def settings_form_values(settings: Mapping[str, Any]) -> dict[str, str]:
    """The form's input values showing ``settings`` (the API's JSON document)."""
    values: dict[str, str] = {}
    for f in SETTING_FIELDS:
        value = settings.get(f.name)
        if f.kind == "checkbox":
            values[f.name] = "on" if value else ""
        elif f.kind == "lines":
            values[f.name] = "\n".join(str(v) for v in value or [])
        elif f.kind == "numbers":
            values[f.name] = ", ".join(str(v) for v in value or [])
        elif f.kind == "model":
            for part in f.parts:
                sub = value.get(part.name) if isinstance(value, Mapping) else None
                values[f"{f.name}.{part.name}"] = _scalar_text(sub)
        elif f.kind == "json":
            values[f.name] = "" if value is None else json.dumps(value)
        else:
            values[f.name] = _scalar_text(value)
    return values


class _Invalid(ValueError):
    pass


def _int(text: str) -> int:
    text = text.strip()
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise _Invalid("enter a whole number")
    return int(text)


def _parse_setting(f: SettingField, form: Mapping[str, str], errors: Errors) -> Any:
    raw = form.get(f.name, "")
    try:
        if f.kind == "checkbox":
            return f.name in form and raw != ""
        if f.kind == "select":
            if raw not in f.choices:
                raise _Invalid("choose one of " + ", ".join(f.choices))
            return raw
        if f.kind == "number":
            if f.optional and not raw.strip():
                return None
            return _int(raw)
        if f.kind == "lines":
            return [line.strip() for line in raw.splitlines() if line.strip()]
        if f.kind == "numbers":
            items = [p.strip() for p in re.split(r"[,\s]+", raw) if p.strip()]
            out = []
            for item in items:
                try:
                    out.append(_int(item))
                except _Invalid:
                    raise _Invalid(f"{item!r} is not a whole number; separate codes with commas") from None
            return out
        if f.kind == "text":
            text = raw.strip()
            return None if (f.optional and not text) else text
        if f.kind == "model":
            texts = {p.name: form.get(f"{f.name}.{p.name}", "").strip() for p in f.parts}
            if f.optional and not any(texts.values()):
                return None
            sub: dict[str, Any] = {}
            for part in f.parts:
                text = texts[part.name]
                if not text:
                    _add(errors, f"{f.name}.{part.name}",
                         "fill in every part, or leave all of them empty" if f.optional
                         else "required")
                elif part.kind == "number":
                    try:
                        sub[part.name] = _int(text)
                    except _Invalid as exc:
                        _add(errors, f"{f.name}.{part.name}", str(exc))
                else:
                    sub[part.name] = text
            return sub
        # json
        if f.optional and not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise _Invalid("enter a JSON value") from None
    except _Invalid as exc:
        _add(errors, f.inputs[0], str(exc))
        return None


def _mentioned_fields(message: str) -> list[str]:
    """The settings ``message`` names, in the order it names them."""
    found = []
    for f in SETTING_FIELDS:
        match = re.search(rf"\b{re.escape(f.name)}\b", message)
        if match:
            found.append((match.start(), f.name))
    return [name for _, name in sorted(found)]


def _place(message: str, changed: Collection[str] = ()) -> str:
    """The input a form-wide rule's message belongs at: the setting it names that was
    changed (the one the person just typed), else the first it names."""
    named = _mentioned_fields(message)
    chosen = next((n for n in named if n in changed), named[0] if named else None)
    return _input_for(chosen) if chosen else FORM_ERROR


def _input_for(name: str) -> str:
    """The input an error about setting ``name`` (maybe ``safe_user.uid``) is shown at."""
    top = name.split(".", 1)[0]
    for f in SETTING_FIELDS:
        if f.name == top:
            return name if name in f.inputs else f.inputs[0]
    return FORM_ERROR


def attach_setting_errors(message: str, changed: Collection[str] = ()) -> Errors:
    """An API error message about settings (policy's ``loc: msg; loc: msg``) per input;
    ``changed``: the settings the refused PATCH changed."""
    errors: Errors = {}
    for part in (p.strip() for p in message.split(";")):
        if not part:
            continue
        loc, sep, msg = part.partition(": ")
        if sep and _input_for(loc) != FORM_ERROR:
            _add(errors, _input_for(loc), msg)
        else:
            _add(errors, _place(part, changed), part)
    return errors


SHOWN_FIELD = "shown"  # hidden input: the settings as the form showed them


def shown_value(settings: Mapping[str, Any]) -> str:
    """The hidden ``shown`` input's value: the settings document the form displays."""
    return json.dumps(dict(settings), sort_keys=True, separators=(",", ":"))


def _shown(form: Mapping[str, str], current: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        shown = json.loads(form.get(SHOWN_FIELD, ""))
    except ValueError:
        return current
    return shown if isinstance(shown, dict) else current


def _parsed(form: Mapping[str, str]) -> tuple[dict[str, Any], Errors]:
    errors: Errors = {}
    values: dict[str, Any] = {}
    for f in SETTING_FIELDS:
        before = dict(errors)
        value = _parse_setting(f, form, errors)
        if errors == before:
            values[f.name] = value
    return values, errors


def parse_settings_form(
    form: Mapping[str, str], current: Mapping[str, Any]
) -> tuple[dict[str, Any], Errors]:
    """The PATCH body and the errors, per input.

    Only what the person edited is sent: a setting whose input still holds what the form
    showed (the hidden ``shown`` document) is left alone, so a form opened before someone
    else suspended delivery does not resume it. ``current`` is the API's settings now; the
    edits are validated on top of it with PolicySettings, the model policy validates
    with, before anything is sent."""
    submitted, errors = _parsed(form)
    if errors:
        return {}, errors
    as_shown, _ = _parsed(settings_form_values(_shown(form, current)))
    edited = {k: v for k, v in submitted.items() if k not in as_shown or as_shown[k] != v}
    try:
        validated = PolicySettings.model_validate({**current, **edited})
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            msg = _message(err)
            if loc:
                _add(errors, _input_for(error_field(loc)), msg)
            else:
                _add(errors, _place(msg, edited), msg)
        return {}, errors
    after = validated.model_dump(mode="json")
    changes = {k: after[k] for k in edited if after.get(k) != current.get(k)}
    return changes, {}


# --- trusted programs --------------------------------------------------------------------


def _checked(form: Mapping[str, str], name: str) -> bool:
    return form.get(name, "") not in ("", "off", "false", "0")


def _description(form: Mapping[str, str], errors: Errors) -> str | None:
    text = form.get("description", "").replace("\r\n", "\n").strip()
    if len(text) > MAX_DESCRIPTION_CHARS:
        _add(errors, "description", f"at most {MAX_DESCRIPTION_CHARS} characters "
             f"(this one has {len(text)})")
    elif _DESCRIPTION_BAD.search(text):
        _add(errors, "description", "remove the control characters (only tabs and line "
             "breaks are allowed)")
    return text or None


def _network(form: Mapping[str, str], errors: Errors) -> str:
    network = form.get("network", "none") or "none"
    if network not in NETWORK_NAMES:
        _add(errors, "network", "choose one of " + ", ".join(NETWORK_NAMES))
    return network


def program_name_problem(name: str) -> str | None:
    if not name:
        return "enter the program's name"
    if name in FLAG_NAMES:
        return f"{name} is a flag file's name, not a program's"
    if not is_program_name(name):
        return (f"a name is a letter or digit, then up to 63 letters, digits or . _ + - "
                f"({PROGRAM_NAME_RULE})")
    return None


@dataclass
class ProgramUpload:
    name: str
    allow_interpreter: bool
    meta: dict[str, Any] = field(default_factory=dict)  # the PATCH body after the upload


def parse_program_upload(
    form: Mapping[str, str], filename: str | None, size: int | None
) -> tuple[ProgramUpload, Errors]:
    """The upload form: name (defaults to the file's name), the interpreter waiver,
    description and network. ``size`` is the uploaded file's size, None when no file."""
    errors: Errors = {}
    name = form.get("name", "").strip() or (filename or "").rsplit("/", 1)[-1].strip()
    problem = program_name_problem(name)
    if problem:
        _add(errors, "name", problem)
    if size is None:
        _add(errors, "file", "choose the program's file")
    elif size == 0:
        _add(errors, "file", "the file is empty")
    upload = ProgramUpload(name, _checked(form, "allow_interpreter"))
    # Replacing a program's bytes keeps its metadata: only what is filled in is set.
    description = _description(form, errors)
    if description is not None:
        upload.meta["description"] = description
    if form.get("network", ""):
        upload.meta["network"] = _network(form, errors)
    return upload, errors


def parse_program_meta(form: Mapping[str, str]) -> tuple[dict[str, Any], Errors]:
    """The edit form of a program's description and network → the PATCH body."""
    errors: Errors = {}
    body = {"description": _description(form, errors), "network": _network(form, errors)}
    return body, errors


def too_large_message(limit: int) -> str:
    return (f"the file is larger than the limit for a trusted program, {limit} bytes "
            f"({human_size(limit)}; MAILEXEC_MAX_PROGRAM_BYTES)")


def human_size(n: int) -> str:
    step = 1024.0
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < step or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= step
    return f"{n} bytes"  # pragma: no cover


# --- accounts ----------------------------------------------------------------------------

ACCOUNT_INPUTS = ("address", "owner_name", "uid", "gid", "home", "shell", "program_delivery",
                  "programs", "mailbox_delivery")
_OWNER_INPUT = {"name": "owner_name", "uid": "uid", "gid": "gid", "home": "home",
                "shell": "shell"}


def address_problem(text: str) -> str | None:
    if not text.strip():
        return "enter the account's address"
    try:
        normalize_account(text.strip())
    except AddressError as exc:
        return str(exc)
    return None


def account_form_values(account: Mapping[str, Any]) -> dict[str, str]:
    """The form's values showing an account (the API's JSON document)."""
    owner = account.get("owner") or {}
    delivery = account.get("program_delivery") or {}
    return {
        "address": str(account.get("address", "")),
        "owner_name": str(owner.get("name", "")),
        "uid": _scalar_text(owner.get("uid")),
        "gid": _scalar_text(owner.get("gid")),
        "home": str(owner.get("home", "")),
        "shell": str(owner.get("shell", "")),
        "program_delivery": "on" if delivery.get("enabled") else "",
        "programs": "\n".join(delivery.get("programs") or []),
        "mailbox_delivery": "on" if account.get("mailbox_delivery") else "",
    }


def parse_account_form(form: Mapping[str, str]) -> tuple[str, dict[str, Any], Errors]:
    """The account form → (account key, PUT body, errors per input)."""
    errors: Errors = {}
    address = form.get("address", "").strip()
    key = ""
    problem = address_problem(address)
    if problem:
        _add(errors, "address", problem)
    else:
        key = normalize_account(address)
    owner: dict[str, Any] = {"name": form.get("owner_name", "").strip(),
                             "home": form.get("home", "").strip(),
                             "shell": form.get("shell", "").strip()}
    for part in ("uid", "gid"):
        text = form.get(part, "").strip()
        if not text:
            _add(errors, part, "required")
            continue
        try:
            owner[part] = _int(text)
        except _Invalid as exc:
            _add(errors, part, str(exc))
    if not owner["name"]:
        _add(errors, "owner_name", "enter the owner's user name")
    if "uid" in owner and "gid" in owner and "owner_name" not in errors:
        try:
            Owner.model_validate(owner)
        except ValidationError as exc:
            for err in exc.errors():
                loc = tuple(err.get("loc", ()))
                name = _OWNER_INPUT.get(str(loc[0]), FORM_ERROR) if loc else FORM_ERROR
                _add(errors, name, _message(err))
    programs = [line.strip() for line in form.get("programs", "").splitlines() if line.strip()]
    delivery = {"enabled": _checked(form, "program_delivery"), "programs": programs}
    try:
        ProgramDelivery.model_validate(delivery)
    except ValidationError as exc:
        for err in exc.errors():
            _add(errors, "programs", _message(err))
    for entry in programs:
        base = entry.rsplit("/", 1)[-1]
        if not is_program_name(base):
            _add(errors, "programs", f"{entry!r} can never be delivered to: {base!r} is not a "
                 "program name (one program per line, a name or an absolute path)")
    body = {"owner": owner, "program_delivery": delivery,
            "mailbox_delivery": _checked(form, "mailbox_delivery")}
    return key, body, errors


def parse_token_label(form: Mapping[str, str]) -> tuple[str | None, Errors]:
    label = form.get("label", "").strip()
    if len(label) > 200:
        return None, {"label": "at most 200 characters"}
    if _LABEL_BAD.search(label):
        return None, {"label": "remove the control characters"}
    return label or None, {}


# --- message tracking, audit, notifications ---------------------------------------------

# What ingest's GET /v1/messages?state= accepts: a recipient's states.
MESSAGE_STATES = STATES
AUDIT_KINDS = ("program", "settings", "account", "token")
NOTIFICATION_STATES = ("pending", "sent", "failed")


@dataclass
class MessageQuery:
    message_id: str | None = None
    sender: str | None = None
    recipient: str | None = None
    state: str | None = None

    def params(self) -> dict[str, str]:
        out = {"sender": self.sender, "recipient": self.recipient, "state": self.state}
        return {k: v for k, v in out.items() if v is not None}


def parse_message_query(query: Mapping[str, str]) -> tuple[MessageQuery, Errors]:
    """The tracking form (message id, sender or recipient, state) → what to look up."""
    errors: Errors = {}
    q = MessageQuery()
    mid = query.get("id", "").strip()
    if mid:
        try:
            q.message_id = str(uuid.UUID(mid))
        except ValueError:
            _add(errors, "id", "a message id looks like 0b6c5b1e-9f7a-4c1e-8a55-2d0f3b6c9e11")
    sender = query.get("sender", "").strip()
    if sender:
        if sender == "<>":
            q.sender = ""
        else:
            try:
                q.sender = parse_mailbox(sender.strip("<>"), allow_empty=False)
            except AddressError as exc:
                _add(errors, "sender", str(exc))
    recipient = query.get("recipient", "").strip()
    if recipient:
        problem = address_problem(recipient)
        if problem:
            _add(errors, "recipient", problem)
        else:
            q.recipient = normalize_account(recipient)
    state = query.get("state", "").strip()
    if state:
        if state not in MESSAGE_STATES:
            _add(errors, "state", "choose one of " + ", ".join(MESSAGE_STATES))
        else:
            q.state = state
    return q, errors


def parse_audit_query(query: Mapping[str, str]) -> tuple[dict[str, str], Errors]:
    errors: Errors = {}
    params: dict[str, str] = {}
    kind = query.get("kind", "").strip()
    if kind:
        if kind in AUDIT_KINDS:
            params["kind"] = kind
        else:
            _add(errors, "kind", "choose one of " + ", ".join(AUDIT_KINDS))
    target = query.get("target", "").strip()
    if target:
        if _LABEL_BAD.search(target) or len(target) > 320:
            _add(errors, "target", "a program name, an account address or a token id")
        else:
            params["target"] = target
    return params, errors


def parse_notification_query(query: Mapping[str, str]) -> tuple[dict[str, str], Errors]:
    errors: Errors = {}
    params: dict[str, str] = {}
    mid = query.get("message_id", "").strip()
    if mid:
        try:
            params["message_id"] = str(uuid.UUID(mid))
        except ValueError:
            _add(errors, "message_id", "a message id looks like "
                 "0b6c5b1e-9f7a-4c1e-8a55-2d0f3b6c9e11")
    state = query.get("state", "").strip()
    if state:
        if state in NOTIFICATION_STATES:
            params["state"] = state
        else:
            _add(errors, "state", "choose one of " + ", ".join(NOTIFICATION_STATES))
    return params, errors


def cursor_param(query: Mapping[str, str]) -> str | None:
    """The ``cursor`` of a paginated page, passed to the API unchanged (it checks it)."""
    cursor = query.get("cursor", "").strip()
    if not cursor or len(cursor) > 512 or not re.fullmatch(r"[A-Za-z0-9_=-]+", cursor):
        return None
    return cursor
