"""Query tables (saved queries, each a view in the customer's schema), and an index on
``_synced_at`` of every synced table (``updated_since`` filters and newest-first reads).

Revision ID: i14_query_tables
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "i14_query_tables"
down_revision = "0004"
branch_labels = None
depends_on = None

STATEMENTS = (
    """CREATE TABLE query_tables (
        -- Same id space as warehouse_tables: the rows API reads both by id.
        id BIGINT PRIMARY KEY,
        sub_account_id BIGINT NOT NULL REFERENCES sub_accounts(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        query TEXT NOT NULL,
        view_name TEXT NOT NULL,
        -- [{id, name, type}]: ids drawn from warehouse_fields' sequence, kept across edits by name
        fields JSONB NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        UNIQUE (sub_account_id, name)
    )""",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)
    bind = op.get_bind()
    rows = bind.execute(
        text(
            "SELECT s.warehouse_schema AS schema, t.physical FROM warehouse_tables t"
            " JOIN sub_accounts s ON s.id = t.sub_account_id WHERE s.warehouse_schema IS NOT NULL"
        )
    ).fetchall()
    for schema, physical in rows:
        quote = bind.dialect.identifier_preparer.quote
        op.execute(
            f"CREATE INDEX IF NOT EXISTS {quote(physical[:45] + '__synced')} ON {quote(schema)}.{quote(physical)} (_synced_at)"
        )


def downgrade() -> None:
    bind = op.get_bind()
    for schema, view in bind.execute(
        text(
            "SELECT s.warehouse_schema, q.view_name FROM query_tables q JOIN sub_accounts s ON s.id = q.sub_account_id"
        )
    ).fetchall():
        quote = bind.dialect.identifier_preparer.quote
        op.execute(f"DROP VIEW IF EXISTS {quote(schema)}.{quote(view)}")
    op.execute("DROP TABLE query_tables")
