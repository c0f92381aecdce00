"""The run store, schedules and retention on a real database, without HTTP (fast, deterministic
clocks). `store_db` is SQLite here; tests/interop/test_service_postgres.py runs the same checks
on PostgreSQL through `check_*` functions below."""
from __future__ import annotations

import concurrent.futures
import datetime as dt

import pytest

from stella_build.service import db as dbm
from stella_build.service.config import ServiceConfig
from stella_build.service.errors import ApiError
from stella_build.service.metrics import Metrics
from stella_build.service.schedules import Housekeeper, latest_slot
from stella_build.service.store import QuotaExceeded, Store

T0 = dt.datetime(2026, 1, 1, 0, 0, tzinfo=dt.timezone.utc)


def new_store(url: str) -> Store:
    database = dbm.Database(url)
    dbm.upgrade(database)
    return Store(database)


@pytest.fixture
def store(tmp_path):
    s = new_store(f"sqlite:///{tmp_path}/t.sqlite3")
    yield s
    s.db.dispose()


def _submit(store, tenant="acme", profile="//p:a", key=None, quota=10, body="x"):
    return store.submit(tenant=tenant, profile=profile, kind="json:raw", selectors=None, sign=None,
                        trigger="api", request_hash=body, quota=quota, idempotency_key=key)


def test_migrations_match_the_models(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), dbm.metadata) == []
    assert dbm.current_revision(store.db) == "0001_initial"
    dbm.upgrade(store.db)  # idempotent


def check_idempotency_and_quota(store) -> None:
    def post(_):
        return _submit(store, key="k1", quota=100)

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(post, range(20)))
    assert len({run.id for run, _ in results}) == 1
    assert sorted(replayed for _, replayed in results) == [False] + [True] * 19
    with pytest.raises(ApiError) as err:
        _submit(store, key="k1", body="other")
    assert err.value.code == "ERR_EXPORT_IDEMPOTENCY_MISMATCH"
    # quota: concurrent submits of one tenant never exceed it
    def fill(i):
        try:
            return _submit(store, tenant="q", profile=f"//p:{i}", quota=3)[0].id
        except QuotaExceeded:
            return None

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        made = [r for r in pool.map(fill, range(10)) if r]
    assert len(made) == 3


def test_idempotency_and_quota_under_concurrency(store):
    check_idempotency_and_quota(store)


def check_claim_recover(store) -> None:
    a, _ = _submit(store, profile="//p:same")
    b, _ = _submit(store, profile="//p:same")
    c, _ = _submit(store, profile="//p:other")
    assert store.claim("n1", 30).id == a.id
    assert store.claim("n1", 30).id == c.id      # b waits: its profile is running
    assert store.claim("n1", 30) is None
    # the owner restarts: its running runs are requeued (attempt 1 < 2) ...
    out = store.recover("n1", max_attempts=2, own_only=True)
    assert sorted((r.id, o) for r, o in out) == sorted([(a.id, "requeued"), (c.id, "requeued")])
    assert store.claim("n1", 30).id == a.id
    # ... and failed once attempts are used up, with the reason
    out = store.recover("n1", max_attempts=2, own_only=True)
    assert [(r.id, o) for r, o in out] == [(a.id, "failed")]
    run, _ = store.get(a.id, "acme")
    assert (run.status, run.error_code, run.exit_code) == ("failed", "worker-lost", 1)
    # another node's expired lease is taken over; a live one is not
    claimed = store.claim("n2", 0.0)
    assert store.recover("n1", max_attempts=5, own_only=False)[0][0].id == claimed.id
    live = store.claim("n2", 60)
    assert store.recover("n1", max_attempts=5, own_only=False) == []
    assert store.renew(live.id, "n2", 60) == (True, False)
    assert store.renew(live.id, "n1", 60) == (False, False)
    assert b.id in {live.id, claimed.id} or store.status_of(b.id) == "queued"


def test_claim_order_profile_exclusivity_and_recovery(store):
    check_claim_recover(store)


def test_finish_records_files_events_and_only_for_the_owner(store):
    run, _ = _submit(store)
    store.claim("n1", 30)
    files = [{"path": "b.json", "sha256": "b" * 64, "blake3": "c" * 64, "size": 3, "mode": 0o644},
             {"path": "a.tar.gz", "sha256": "a" * 64, "blake3": "d" * 64, "size": 5, "mode": 0o644}]
    assert store.finish(run.id, "n2", status="succeeded", files=files, exit_code=0, errors=[], actions={},
                        manifest_sha256=None) is None
    done = store.finish(run.id, "n1", status="succeeded", files=files, exit_code=0, errors=[],
                        actions={"total": 2}, manifest_sha256="b" * 64)
    assert done.status == "succeeded" and done.total_bytes == 8
    events = store.events_after(run.id, 0)
    assert [e.type for e in events] == ["queued", "started", "artifact_ready", "artifact_ready", "succeeded"]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert [e.data["path"] for e in events if e.type == "artifact_ready"] == ["a.tar.gz", "b.json"]
    _, rows = store.get(run.id, "acme")
    assert [f.path for f in rows] == ["a.tar.gz", "b.json"]
    with pytest.raises(ApiError) as err:
        store.get(run.id, "globex")
    assert err.value.status == 404


class _Cfg:
    def __init__(self, schedule: str):
        self.config = ServiceConfig.model_validate(
            {"profiles": {"//p:a": {"schedule": schedule, "schedule_tenant": "ops"}}})


def check_schedules(store) -> None:
    config = ServiceConfig.model_validate({"profiles": {"//p:a": {"schedule": "0 */6 * * *", "schedule_tenant": "ops"}}})
    hk = Housekeeper(store, config, lambda label: "json:raw", Metrics())
    assert hk.schedule_tick(T0 + dt.timedelta(hours=1)) == [("//p:a", "first-seen", None)]
    assert hk.schedule_tick(T0 + dt.timedelta(hours=2))[0][1] == "already-done"
    # 6:00 is due: one run
    (_, outcome, run_id), = hk.schedule_tick(T0 + dt.timedelta(hours=6, minutes=1))
    assert outcome == "due" and run_id
    run, _ = store.get(run_id, "ops")
    assert run.trigger == "schedule" and run.schedule_slot == T0 + dt.timedelta(hours=6)
    # 12:00 while that run is still queued: skipped, never two at once
    assert hk.schedule_tick(T0 + dt.timedelta(hours=12, seconds=5))[0][1] == "busy"
    store.cancel(run_id, "ops")
    # down from 12:00 to 3 days later (12 slots missed): ONE run, for the latest slot
    (_, outcome, run_id2), = hk.schedule_tick(T0 + dt.timedelta(days=3, hours=1))
    assert outcome == "due"
    assert hk.schedule_tick(T0 + dt.timedelta(days=3, hours=2))[0][1] == "already-done"
    run2, _ = store.get(run_id2, "ops")
    assert run2.schedule_slot == T0 + dt.timedelta(days=3)
    rows, _ = store.list("ops", limit=50)
    assert len([r for r in rows if r.trigger == "schedule"]) == 2
    # two nodes ticking the same slot at once: one run
    store.cancel(run_id2, "ops")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: hk.schedule_tick(T0 + dt.timedelta(days=3, hours=6, minutes=1))[0][1],
                                 range(8)))
    assert sorted(outcomes) == ["already-done"] * 7 + ["due"]


def test_schedules_missed_slots_run_once_never_two_at_once(store):
    check_schedules(store)


def test_latest_slot_with_seconds_field():
    assert latest_slot("* * * * * */10", T0 + dt.timedelta(seconds=25)) == T0 + dt.timedelta(seconds=20)
    assert latest_slot("0 */6 * * *", T0 + dt.timedelta(hours=6)) == T0 + dt.timedelta(hours=6)


def check_retention(store) -> None:
    config = ServiceConfig.model_validate({"service": {"retention_days": 30},
                                          "profiles": {"//p:short": {"retention_days": 1}}})
    old_long, _ = _submit(store, profile="//p:long", key="old-long")
    old_short, _ = _submit(store, profile="//p:short")
    fresh_short, _ = _submit(store, profile="//p:short")
    active, _ = _submit(store, profile="//p:short")
    for run in (old_long, old_short, fresh_short):
        store.cancel(run.id, "acme")
    with store.db.write() as s:
        for run_id, age in ((old_long.id, 10), (old_short.id, 2), (fresh_short.id, 0.5)):
            row = s.get(dbm.RunRow, run_id)
            row.finished_at = dbm.utcnow() - dt.timedelta(days=age)
    hk = Housekeeper(store, config, lambda label: "json:raw", Metrics())
    assert hk.prune() == 1
    assert store.status_of(old_short.id) is None and store.events_after(old_short.id, 0) == []
    assert {store.status_of(r.id) for r in (old_long, fresh_short)} == {"cancelled"}
    assert store.status_of(active.id) == "queued"  # never prunes an active run
    # the idempotency key of a pruned run goes with it; a kept run's key still replays
    assert _submit(store, profile="//p:long", key="old-long")[1] is True


def test_retention_per_profile(store):
    check_retention(store)


def test_cursor_pagination(store):
    made = [_submit(store, profile=f"//p:{i}")[0].id for i in range(7)]
    seen, cursor = [], None
    while True:
        rows, cursor = store.list("acme", limit=3, cursor=cursor)
        seen += [r.id for r in rows]
        if not cursor:
            break
    assert seen == list(reversed(made))
    with pytest.raises(ApiError) as err:
        store.list("acme", cursor="!!!")
    assert err.value.code == "ERR_EXPORT_VALIDATION"
