"""The job queue: procrastinate's own schema (jobs, events, workers, its functions).

Revision ID: 0002
"""

from __future__ import annotations

from alembic import op
from procrastinate.schema import SchemaManager

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Sent as one script through the driver, without parameters, so procrastinate's SQL
    # (functions, `%` signs and all) is used verbatim, inside the migration's transaction.
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    driver.execute(SchemaManager.get_schema())
