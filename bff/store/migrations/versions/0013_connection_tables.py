"""A connection's table selection (the connect form's "Advanced"): ``connections.selected_tables``,
the streams it syncs and schedules (``PATCH /api/server/{id} {"tables": [...]}``); NULL: every one.

Revision ID: i23_connection_tables
"""

from __future__ import annotations

from alembic import op

revision = "i23_connection_tables"
down_revision = "i23_run_categories"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE connections ADD COLUMN selected_tables JSONB")


def downgrade() -> None:
    op.execute("ALTER TABLE connections DROP COLUMN selected_tables")
