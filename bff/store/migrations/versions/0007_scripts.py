"""Scheduled scripts per sub-account and their runs (DESIGN §14).

Revision ID: i15_scripts
"""

from __future__ import annotations

from alembic import op

revision = "i15_scripts"
down_revision = "i12_schedules_webhooks"
branch_labels = None
depends_on = None

STATEMENTS = (
    """CREATE TABLE scripts (
        id BIGSERIAL PRIMARY KEY,
        sub_account_id BIGINT NOT NULL REFERENCES sub_accounts(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        raw_code TEXT NOT NULL,
        -- seconds between runs; NULL = run by hand only
        schedule INTEGER,
        -- when the scheduler's tick runs it next (NULL when manual)
        next_run_at DOUBLE PRECISION,
        -- pq.get_state()/set_state(): JSON, at most 1 MB
        state JSONB,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX scripts_sub_account ON scripts(sub_account_id, id)",
    "CREATE INDEX scripts_next_run ON scripts(next_run_at) WHERE next_run_at IS NOT NULL",
    """CREATE TABLE script_runs (
        id BIGSERIAL PRIMARY KEY,
        -- deleting a script deletes its runs; a worker running one sees the row go and stops it
        script_id BIGINT NOT NULL REFERENCES scripts(id) ON DELETE CASCADE,
        sub_account_id BIGINT NOT NULL REFERENCES sub_accounts(id) ON DELETE CASCADE,
        status TEXT NOT NULL,
        trigger TEXT NOT NULL,
        job_id BIGINT,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        exit_code INTEGER,
        output TEXT NOT NULL DEFAULT '',
        error TEXT
    )""",
    "CREATE INDEX script_runs_script ON script_runs(script_id, id)",
    # Never two runs of one script at once, whichever process asks.
    "CREATE UNIQUE INDEX script_runs_one_active ON script_runs(script_id) WHERE status IN ('queued', 'running')",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS script_runs")
    op.execute("DROP TABLE IF EXISTS scripts")
