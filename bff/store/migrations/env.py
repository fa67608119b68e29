"""Alembic environment: run by :func:`bff.store.migrate` with an open connection."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, transaction_per_migration=False)
with context.begin_transaction():
    # Several processes may start at once on one database: one migrates, the others wait.
    connection.execute(text("SELECT pg_advisory_xact_lock(727274001)"))
    context.run_migrations()
