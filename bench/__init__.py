"""`python -m bench`: mailexec vs Postfix pipe(8) vs the raw spawn limit (see README.md)."""
