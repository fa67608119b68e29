"""Throttles shared by every process: one counter per key and fixed time window.

Revision ID: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """CREATE TABLE throttles (
            key TEXT NOT NULL,
            window_start BIGINT NOT NULL,
            hits INTEGER NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (key, window_start)
        )"""
    )
    op.execute("CREATE INDEX throttles_expires ON throttles(expires_at)")
