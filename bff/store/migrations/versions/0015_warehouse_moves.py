"""Moving a customer's database to another server, and customers on a server of their own (DESIGN §15).

``warehouse_placements.moving_to`` names the server a customer's database is being moved to while
``bff warehouse move`` runs (NULL otherwise): the BFF's writes to that customer wait meanwhile.
``warehouse_placements.own_url`` is the encrypted URL of a PostgreSQL server a partner gave this one
customer (NULL: a server of ``BFF_WAREHOUSE_URLS``).

Revision ID: i22_warehouse_moves
"""

from __future__ import annotations

from alembic import op

revision = "i22_warehouse_moves"
down_revision = "i22_customer_databases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE warehouse_placements ADD COLUMN moving_to TEXT;
        ALTER TABLE warehouse_placements ADD COLUMN own_url TEXT;
        """
    )


def downgrade() -> None:  # pragma: no cover
    op.execute("ALTER TABLE warehouse_placements DROP COLUMN moving_to, DROP COLUMN own_url")
