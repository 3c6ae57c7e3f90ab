"""Every MAILEXEC_* setting is documented in the README with its default (SPEC §2)."""

from __future__ import annotations

import re

from shared.settings import Settings
from tests.conftest import ROOT


def test_every_setting_has_a_readme_row() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(MAILEXEC_[A-Z0-9_]+)` \| ([^|]+) \|", readme, re.M))
    missing = [f"MAILEXEC_{name.upper()}" for name in Settings.model_fields
               if f"MAILEXEC_{name.upper()}" not in rows]
    assert not missing, f"undocumented settings: {missing}"


def test_documented_defaults_match_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(MAILEXEC_[A-Z0-9_]+)` \| `([^`]*)` \|", readme, re.M))
    for name, field in Settings.model_fields.items():
        documented = rows.get(f"MAILEXEC_{name.upper()}")
        if documented is None or field.default_factory is not None:
            continue
        default = field.default
        if isinstance(default, bool):
            assert documented == str(default).lower(), name
        elif isinstance(default, float) and default.is_integer():
            assert documented in (str(default), str(int(default))), name
        else:
            assert documented == str(default), name
