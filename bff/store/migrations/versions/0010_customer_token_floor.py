"""A partner's customer-token floor: integrate and identity tokens carry the partner token
generation they were minted under, and work only while it is at least this number. A partner
``rotate``/``revoke`` raises it to the new generation (every customer token minted under the
old partner token ends); ``rotate-token {"keep_customer_tokens": true}`` leaves it. 0 for the
partners that exist: tokens minted before this carry no generation, read as 0, and keep working
until the partner's next rotate or revoke.

Revision ID: i26_customer_token_floor
"""

from __future__ import annotations

from alembic import op

revision = "i26_customer_token_floor"
down_revision = "p1314_throttles_unlogged"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE partners ADD COLUMN customer_token_floor INTEGER NOT NULL DEFAULT 0")


def downgrade() -> None:
    op.execute("ALTER TABLE partners DROP COLUMN customer_token_floor")
