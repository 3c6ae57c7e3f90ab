"""Development tooling that both ``bench/`` and ``tests/`` use; neither imports the other.

- :mod:`testing.private_postfix`: a private Postfix instance (the MTA benchmarks and the
  Postfix end-to-end tests).
- :mod:`testing.pgcluster`: a private, throwaway PostgreSQL cluster (the chaos run, the
  soak, the database-outage tests).
- :mod:`testing.procstats`: RSS of a process and RabbitMQ queue depths (both soaks).

Standard library only, so each side imports it without the other's dependencies. Like
``bench/`` and ``tests/`` it is never part of the product: the wheel and the image leave
it out (``pyproject.toml`` packages, ``.dockerignore``). ``python -m bench`` and pytest
both run from the repository root, where this package is importable.
"""
