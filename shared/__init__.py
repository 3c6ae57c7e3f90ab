"""Contracts and plumbing shared by the mailexec services (never service logic)."""
