"""Schedules (per connection and per table), full-sync runs, and partner webhooks with their
delivery log (DESIGN §10, §11).

Revision ID: i12_schedules_webhooks
"""

from __future__ import annotations

from alembic import op

revision = "i12_schedules_webhooks"
down_revision = "i14_query_tables"
branch_labels = None
depends_on = None

STATEMENTS = (
    # NULL = on demand only; the default is every 6 hours.
    "ALTER TABLE connections ADD COLUMN sync_frequency INTEGER DEFAULT 21600",
    "ALTER TABLE connections ADD COLUMN table_frequencies JSONB NOT NULL DEFAULT '{}'::jsonb",
    # When each table is due next ({table: epoch seconds}); next_sync_at is the earliest of them,
    # kept as a column so the scheduler's tick finds due connections with an index.
    "ALTER TABLE connections ADD COLUMN table_due JSONB NOT NULL DEFAULT '{}'::jsonb",
    "ALTER TABLE connections ADD COLUMN next_sync_at DOUBLE PRECISION",
    "CREATE INDEX connections_next_sync ON connections(next_sync_at) WHERE next_sync_at IS NOT NULL",
    "ALTER TABLE runs ADD COLUMN full_sync BOOLEAN NOT NULL DEFAULT false",
    "ALTER TABLE runs ADD COLUMN trigger TEXT NOT NULL DEFAULT 'api'",
    """CREATE TABLE webhooks (
        partner_id BIGINT PRIMARY KEY REFERENCES partners(id) ON DELETE CASCADE,
        url TEXT NOT NULL,
        events JSONB NOT NULL,
        -- the whsec_ secret, AES-GCM encrypted with the settings' key (never stored in clear)
        secret BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE webhook_deliveries (
        id BIGSERIAL PRIMARY KEY,
        partner_id BIGINT NOT NULL REFERENCES partners(id) ON DELETE CASCADE,
        -- the webhook-id header: the same on every attempt and on redelivery
        message_id TEXT NOT NULL UNIQUE,
        event_type TEXT NOT NULL,
        payload JSONB NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL,
        delivered_at DOUBLE PRECISION
    )""",
    "CREATE INDEX webhook_deliveries_partner ON webhook_deliveries(partner_id, id)",
    """CREATE TABLE webhook_attempts (
        id BIGSERIAL PRIMARY KEY,
        delivery_id BIGINT NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
        attempt INTEGER NOT NULL,
        url TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        duration_ms INTEGER NOT NULL,
        status_code INTEGER,
        error TEXT
    )""",
    "CREATE INDEX webhook_attempts_delivery ON webhook_attempts(delivery_id, id)",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)
