"""Alembic migrations of the service database (run by `stella_build.service.db.upgrade`)."""
