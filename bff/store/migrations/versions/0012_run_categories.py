"""A run may cover some partitions (divisions) only: ``runs.categories``, the partition values
``POST /api/server/{id}/sync {"categories": [...]}`` (the documents' ``run_pipeline(categories=…)``)
asked for; NULL reads every partition the connection chose.

Revision ID: i23_run_categories
"""

from __future__ import annotations

from alembic import op

revision = "i23_run_categories"
down_revision = "i22_typed_columns"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE runs ADD COLUMN categories JSONB")


def downgrade() -> None:
    op.execute("ALTER TABLE runs DROP COLUMN categories")
