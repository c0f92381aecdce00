"""The service database: SQLAlchemy 2 tables, engines, transactions and the Alembic upgrade.

SQLite (the embedded default, one node) and PostgreSQL (several nodes may share it) are both
supported. Writers that must not race (quota check + insert, idempotency key, run claim, schedule
slot) run in `Database.write(lock=...)`:
  - SQLite: every write transaction starts with `BEGIN IMMEDIATE`, so writers are serialized by
    the database itself (readers are not blocked: WAL). The `lock` name is then redundant.
  - PostgreSQL: the transaction takes `pg_advisory_xact_lock(<hash of lock>)`, which serializes
    exactly the writers that name the same lock, across processes and nodes.
Unique constraints (idempotency key, event sequence) are the last line of defence in both.

The schema is created and upgraded by Alembic (migrations/, run at startup by `upgrade`); the
models below must match the latest revision (tests/service/test_store.py compares them).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import (
    BigInteger, Boolean, DateTime, ForeignKey, Integer, MetaData, String, Text, TypeDecorator,
    UniqueConstraint, create_engine, event, select, text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_NAMING = {"ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_name)s",
           "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
           "pk": "pk_%(table_name)s"}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive text: read back as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value


class JSONText(TypeDecorator):
    """JSON as canonical text (sorted keys), identical on SQLite and PostgreSQL."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))

    def process_result_value(self, value, dialect):
        return None if value is None else json.loads(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    profile: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16), index=True)
    trigger: Mapped[str] = mapped_column(String(16))
    selectors: Mapped[Any] = mapped_column(JSONText, nullable=True)
    sign: Mapped[str | None] = mapped_column(String(16), nullable=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    items_completed: Mapped[int] = mapped_column(Integer, default=0)
    items_total: Mapped[int] = mapped_column(Integer, default=0)
    actions: Mapped[Any] = mapped_column(JSONText, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    errors: Mapped[Any] = mapped_column(JSONText, nullable=True)
    manifest_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    schedule_slot: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    event_seq: Mapped[int] = mapped_column(Integer, default=0)


class EventRow(Base):
    __tablename__ = "run_events"
    __table_args__ = (UniqueConstraint("run_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[Any] = mapped_column(JSONText)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class FileRow(Base):
    __tablename__ = "run_files"

    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("runs.id", ondelete="CASCADE"),
                                        primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    blake3: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    mode: Mapped[int] = mapped_column(Integer)


class IdempotencyRow(Base):
    __tablename__ = "idempotency_keys"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class ScheduleRow(Base):
    __tablename__ = "schedules"

    profile: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_slot: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


metadata = Base.metadata


def default_url(cache_dir: Path) -> str:
    """The embedded default: SQLite under the cache directory."""
    path = Path(cache_dir) / "service" / "export-center.sqlite3"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _lock_id(name: str) -> int:
    """A signed 64-bit advisory lock id for `name` (PostgreSQL)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class Database:
    """Engines and sessions of one database URL (`sqlite:///...`, `postgresql+psycopg://...`)."""

    def __init__(self, url: str):
        self.url = url
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            # SQLite connections are cheap; enough of them that 200 concurrent status polls on
            # the thread pool never wait for one.
            self.engine = create_engine(url, pool_size=20, max_overflow=40, pool_timeout=60,
                                        connect_args={"timeout": 60, "check_same_thread": False})
            _sqlite_transactions(self.engine)
        else:
            self.engine = create_engine(url, pool_size=10, max_overflow=30, pool_pre_ping=True,
                                        pool_timeout=60)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(stella_write=True),
                                   expire_on_commit=False)

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session (its transaction is rolled back at the end)."""
        with self._read() as session:
            try:
                yield session
            finally:
                session.expunge_all()  # detached, not expired: rows stay readable after the session
                session.rollback()

    @contextlib.contextmanager
    def write(self, lock: str | None = None) -> Iterator[Session]:
        """A write transaction, committed on a clean exit. `lock` names a critical section
        (e.g. "tenant:acme"): writers naming the same lock never overlap."""
        with self._write.begin() as session:
            if lock is not None and not self.sqlite:
                session.execute(select(text("pg_advisory_xact_lock(:k)")).params(k=_lock_id(lock)))
            yield session

    def ping(self) -> None:
        """Raise if the database cannot answer `SELECT 1`."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_transactions(engine: Engine) -> None:
    """pysqlite's own transaction handling is replaced by explicit BEGINs (the SQLAlchemy recipe),
    so write transactions can take the write lock up front (BEGIN IMMEDIATE): a deferred
    transaction that reads and then writes can fail with "database is locked" under concurrency
    instead of waiting its turn."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("stella_write")
                             else "BEGIN")


def upgrade(db: Database) -> None:
    """Bring the schema to the latest Alembic revision (idempotent; safe on every start). On
    PostgreSQL, concurrent starts of several nodes take turns on an advisory lock."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.write(lock="stella-service-migrations") as session:
        cfg.attributes["connection"] = session.connection()
        command.upgrade(cfg, "head")


def current_revision(db: Database) -> str | None:
    """The Alembic revision the database is at (None before the first upgrade)."""
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
