"""The Export Center service on a real PostgreSQL server (Debian's `postgresql`, started by the
test on a temporary port): the store's concurrency guarantees (idempotency, quota, claims, schedule
slots taken once, retention) and crash safety (`kill -9` mid-run and mid-download, restart)."""
from __future__ import annotations

import os

import pytest

from tests.service import test_store as store_checks
from tests.service.conftest import make_server  # noqa: F401  (the fixture)
from tests.service.pg import Postgres, find_bin
from tests.service.test_crash import run_crash_scenario, run_download_crash_scenario

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def postgres():
    if not (find_bin("initdb") and find_bin("pg_ctl") and find_bin("psql")):
        msg = "PostgreSQL server binaries not found (apt-get install postgresql; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture
def pg_store(postgres):
    store = store_checks.new_store(postgres.create_database())
    yield store
    store.db.dispose()


def test_schema_and_models_agree_on_postgres(pg_store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from stella_build.service import db as dbm

    assert pg_store.db.engine.dialect.name == "postgresql"
    with pg_store.db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), dbm.metadata) == []


@pytest.mark.parametrize("check", ["check_idempotency_and_quota", "check_claim_recover", "check_schedules",
                                   "check_retention"])
def test_store_guarantees_on_postgres(pg_store, check):
    getattr(store_checks, check)(pg_store)


def test_kill9_mid_run_on_postgres(postgres, make_server, tmp_path):
    run_crash_scenario(make_server(slow=True, jobs=1, database=postgres.create_database()), tmp_path)


def test_kill9_mid_download_on_postgres(postgres, make_server, tmp_path):
    run_download_crash_scenario(make_server(database=postgres.create_database(), name="dlsrv"), tmp_path)
