"""Typed warehouse columns: ``_synced_at``/``_deleted_at`` from epoch seconds (``double
precision``) to ``timestamptz``, and ``datetime`` fields from ``text`` to ``timestamptz``
(a value that does not parse as a time becomes NULL). Query tables reading a table are kept:
see :func:`bff.warehouse.retype_statement`. Other field type changes a newer connector
definition brings (an amount from ``number`` to ``decimal``) happen when the table is next
opened by a sync.

Revision ID: i22_typed_columns
"""

from __future__ import annotations

from typing import Any

from alembic import op
from psycopg import sql
from sqlalchemy import text

from bff.warehouse import SQL_TYPES, cast_using, retype_statement

revision = "i22_typed_columns"
down_revision = "i26_customer_token_floor"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    tables = bind.execute(
        text(
            "SELECT s.warehouse_schema AS schema, t.physical, t.id FROM warehouse_tables t"
            " JOIN sub_accounts s ON s.id = t.sub_account_id WHERE s.warehouse_schema IS NOT NULL ORDER BY t.id"
        )
    ).fetchall()
    raw: Any = bind.connection.driver_connection  # psycopg: the DO block is sent as it is
    for schema, physical, table_id in tables:
        columns: dict[str, str] = dict(
            bind.execute(
                text(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                    " WHERE attrelid = to_regclass(:name) AND attnum > 0 AND NOT attisdropped"
                ),
                {"name": sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(physical)).as_string(None)},
            ).fetchall()
        )
        if not columns:
            continue  # the index lists a table that is gone
        changes: list[tuple[str, str, sql.Composable]] = [
            (meta, "timestamptz", sql.SQL("to_timestamp({})").format(sql.Identifier(meta)))
            for meta in ("_synced_at", "_deleted_at")
            if columns.get(meta) == "double precision"
        ]
        fields = bind.execute(
            text("SELECT name, type FROM warehouse_fields WHERE table_id = :id"), {"id": table_id}
        ).fetchall()
        for name, kind in fields:
            wanted = SQL_TYPES.get(kind)
            if wanted is not None and columns.get(name) == "text" and wanted != "text":
                changes.append((name, wanted, cast_using(name, wanted)))
        if changes:
            raw.execute(retype_statement(schema, physical, changes))


def downgrade() -> None:  # pragma: no cover - typed columns are not turned back into text
    raise NotImplementedError("typed warehouse columns cannot be downgraded")
