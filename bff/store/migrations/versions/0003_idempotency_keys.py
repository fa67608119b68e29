"""Idempotency keys of writeback requests: the first answer per (connection, key), kept 24 hours.

Revision ID: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STATEMENTS = (
    """CREATE TABLE idempotency_keys (
        connection_id BIGINT NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
        idem_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        -- NULL while the first request is still running
        status INTEGER,
        response JSONB,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (connection_id, idem_key)
    )""",
    "CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at)",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)
