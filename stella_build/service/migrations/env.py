"""Alembic environment: migrations run on the connection `db.upgrade` passes in (never from an
alembic.ini URL), so the service and its tests migrate exactly the database they use."""
from __future__ import annotations

from alembic import context

from stella_build.service.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through stella_build.service.db.upgrade(), which passes the connection")
# render_as_batch: SQLite cannot ALTER most things; batch mode recreates tables for later revisions.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
