"""A database per customer (DESIGN §15): where each sub-account's database is (``warehouse_placements``:
server and database name, ``ready`` once its roles and bookkeeping schema are made), the schema of each
connection inside it (``warehouse_schemas``: named after the connection, unique per customer), and the
schema of each synced table (``warehouse_tables.schema_name``).

Tables indexed before this (``schema_name`` NULL) lived in a schema of the shared database; the BFF
moves them into the customer's own database when it starts (it needs the warehouse servers and the
customers' roles, which a migration does not have): see :mod:`bff.warehouse_upgrade`.

Revision ID: i22_customer_databases
"""

from __future__ import annotations

from alembic import op

revision = "i22_customer_databases"
down_revision = "i23_connection_tables"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- No foreign key: deleting a sub-account drops its database first, then this row.
        CREATE TABLE warehouse_placements (
            sub_account_id BIGINT PRIMARY KEY,
            server TEXT NOT NULL,
            database TEXT NOT NULL UNIQUE,
            ready BOOLEAN NOT NULL DEFAULT FALSE,
            created_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX warehouse_placements_server ON warehouse_placements (server);
        CREATE TABLE warehouse_schemas (
            connection_id BIGINT PRIMARY KEY,
            sub_account_id BIGINT NOT NULL,
            name TEXT NOT NULL,
            UNIQUE (sub_account_id, name)
        );
        ALTER TABLE warehouse_tables ADD COLUMN schema_name TEXT;
        -- Tables are named after streams now: unique per connection (already), not per customer.
        ALTER TABLE warehouse_tables DROP CONSTRAINT warehouse_tables_sub_account_id_physical_key;
        """
    )


def downgrade() -> None:  # pragma: no cover - customer databases are not folded back into one
    raise NotImplementedError("customer databases cannot be downgraded")
