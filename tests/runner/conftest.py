"""Fixtures for runner tests; the toy lab and helpers live in runner_testlib (a uniquely named module).

The runner imports no lab: like the CLI, the tests register the bundled labs themselves.
"""

from pg_server import pg_server, pg_url  # noqa: F401  (fixtures)
from runner_testlib import toy_study  # noqa: F401  (fixture)

from sharplab.labs import load_all

load_all()
