"""Refreshes asked for by writes (``?refresh=true``, DESIGN §12): which tables of a connection
wait for the one coalesced sync. Kept in the database so every web process and worker sees them.

Revision ID: p1314_refresh_requests
"""

from __future__ import annotations

from alembic import op

revision = "p1314_refresh_requests"
down_revision = "i15_scripts"
branch_labels = None
depends_on = None

STATEMENTS = (
    """CREATE TABLE refresh_requests (
        connection_id BIGINT NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
        -- a stream name, or '*' for every stream of the connection
        stream TEXT NOT NULL,
        requested_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (connection_id, stream)
    )""",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE refresh_requests")
