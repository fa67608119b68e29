"""The control schema: partners, sub-accounts, connections, OAuth flows, runs, logs, and the
index of every customer's warehouse tables (the tables themselves live in per-customer schemas).

Revision ID: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATEMENTS = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE partners (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL,
        token_generation INTEGER NOT NULL DEFAULT 1,
        created_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE partner_origins (
        partner_id BIGINT NOT NULL REFERENCES partners(id) ON DELETE CASCADE,
        origin TEXT NOT NULL,
        PRIMARY KEY (partner_id, origin)
    )""",
    "CREATE INDEX partner_origins_origin ON partner_origins(origin)",
    """CREATE TABLE sub_accounts (
        id BIGSERIAL PRIMARY KEY,
        partner_id BIGINT NOT NULL REFERENCES partners(id) ON DELETE CASCADE,
        external_id TEXT NOT NULL,
        first_name TEXT NOT NULL DEFAULT '',
        last_name TEXT NOT NULL DEFAULT '',
        email TEXT NOT NULL DEFAULT '',
        language TEXT NOT NULL DEFAULT 'en',
        company_name TEXT NOT NULL DEFAULT '',
        token_generation INTEGER NOT NULL DEFAULT 1,
        created_at DOUBLE PRECISION NOT NULL,
        -- the customer's warehouse: a schema of its own and a NOLOGIN role that reads only it
        warehouse_schema TEXT UNIQUE,
        UNIQUE (partner_id, external_id)
    )""",
    """CREATE TABLE connections (
        id BIGSERIAL PRIMARY KEY,
        sub_account_id BIGINT NOT NULL REFERENCES sub_accounts(id) ON DELETE CASCADE,
        connector TEXT NOT NULL,
        name TEXT NOT NULL,
        health_status TEXT NOT NULL,
        detail TEXT,
        config JSONB NOT NULL DEFAULT '{}'::jsonb,
        secrets BYTEA,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX connections_sub_account ON connections(sub_account_id)",
    """CREATE TABLE oauth_flows (
        state_hash TEXT PRIMARY KEY,
        connection_id BIGINT NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
        sub_account_id BIGINT NOT NULL,
        purpose TEXT NOT NULL,
        verifier BYTEA,
        created_at DOUBLE PRECISION NOT NULL,
        used_at DOUBLE PRECISION
    )""",
    """CREATE TABLE runs (
        id BIGSERIAL PRIMARY KEY,
        connection_id BIGINT NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
        sub_account_id BIGINT NOT NULL,
        status TEXT NOT NULL,
        task_id TEXT NOT NULL,
        tables JSONB,
        records JSONB NOT NULL DEFAULT '{}'::jsonb,
        error TEXT,
        pid INTEGER,
        job_id BIGINT,
        attempts INTEGER NOT NULL DEFAULT 0,
        resume_at DOUBLE PRECISION,
        -- streams finished so far and why others failed: a resumed run skips what is done
        progress JSONB NOT NULL DEFAULT '{}'::jsonb,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION
    )""",
    "CREATE INDEX runs_connection ON runs(connection_id, id)",
    # One active run per connection, enforced by the database itself (procrastinate's
    # queueing lock is the second guard).
    "CREATE UNIQUE INDEX runs_one_active ON runs(connection_id) WHERE status IN ('queued', 'running', 'waiting')",
    """CREATE TABLE logs (
        id BIGSERIAL PRIMARY KEY,
        connection_id BIGINT NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
        run_id BIGINT,
        ts DOUBLE PRECISION NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL
    )""",
    "CREATE INDEX logs_connection ON logs(connection_id, id)",
    # Ids are random, not sequential: they do not reveal how many tables other customers have.
    """CREATE TABLE warehouse_tables (
        id BIGINT PRIMARY KEY,
        sub_account_id BIGINT NOT NULL REFERENCES sub_accounts(id) ON DELETE CASCADE,
        connection_id BIGINT NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
        stream TEXT NOT NULL,
        physical TEXT NOT NULL,
        primary_key JSONB NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        UNIQUE (connection_id, stream),
        UNIQUE (sub_account_id, physical)
    )""",
    """CREATE TABLE warehouse_fields (
        id BIGSERIAL PRIMARY KEY,
        table_id BIGINT NOT NULL REFERENCES warehouse_tables(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        position INTEGER NOT NULL,
        UNIQUE (table_id, name)
    )""",
    # The incremental cursor of each stream, written in the same transaction as its page.
    """CREATE TABLE warehouse_state (
        connection_id BIGINT NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
        stream TEXT NOT NULL,
        state JSONB NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (connection_id, stream)
    )""",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)
