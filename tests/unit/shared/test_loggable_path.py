"""A console session id in a URL path never reaches a log line (shared.httpapp)."""

from __future__ import annotations

from shared.httpapp import loggable_path


def test_session_ids_are_redacted_and_other_paths_kept() -> None:
    assert loggable_path("/v1/sessions/abcDEF-123_x") == "/v1/sessions/…"
    assert loggable_path("/v1/sessions/abc/more") == "/v1/sessions/…/more"
    assert loggable_path("/v1/sessions") == "/v1/sessions"
    assert loggable_path("/v1/accounts/bob@example.org") == "/v1/accounts/bob@example.org"
    assert loggable_path("/x/v1/sessions/abc") == "/x/v1/sessions/abc"
