"""Fixtures for runner tests; the toy lab and helpers live in runner_testlib (a uniquely named module)."""

from runner_testlib import toy_study  # noqa: F401  (fixture)
