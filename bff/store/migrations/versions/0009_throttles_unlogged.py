"""Throttle counters skip the write-ahead log: every warehouse read counts a hit, and a logged
commit (a WAL flush) cost more than the read's own lookups. After a database crash the counters
start again from zero, which only forgives a few seconds of limits.

Revision ID: p1314_throttles_unlogged
"""

from __future__ import annotations

from alembic import op

revision = "p1314_throttles_unlogged"
down_revision = "p1314_refresh_requests"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE throttles SET UNLOGGED")


def downgrade() -> None:
    op.execute("ALTER TABLE throttles SET LOGGED")
