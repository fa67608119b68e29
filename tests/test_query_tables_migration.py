"""The i14_query_tables migration: upgrading a database that already has synced tables."""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql

from bff import testing
from bff.store.migrate import current_revision, migrate


def test_upgrade_from_0004_indexes_existing_tables_and_adds_query_tables(test_databases: testing.TestDatabases) -> None:
    name = f"mig_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(test_databases.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = test_databases.admin_url.replace("/postgres?", f"/{name}?")
    try:
        migrate(url, "0004")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO partners (name, created_at) VALUES ('p', 0)")
            conn.execute(
                "INSERT INTO sub_accounts (partner_id, external_id, created_at, warehouse_schema)"
                " SELECT id, 'a', 0, 'wh_old' FROM partners"
            )
            conn.execute(
                "INSERT INTO connections (sub_account_id, connector, name, health_status, created_at, updated_at)"
                " SELECT id, 'sandbox_crm', 'CRM', 'OK', 0, 0 FROM sub_accounts"
            )
            conn.execute("CREATE SCHEMA wh_old")
            conn.execute("CREATE TABLE wh_old.c1_deals (id text, _synced_at double precision NOT NULL)")
            conn.execute(
                "INSERT INTO warehouse_tables (id, sub_account_id, connection_id, stream, physical, primary_key, created_at)"
                " SELECT 1000001, s.id, c.id, 'deals', 'c1_deals', '[\"id\"]', 0 FROM sub_accounts s, connections c"
            )
        migrate(url, "i14_query_tables")
        assert current_revision(url) == "i14_query_tables"
        with psycopg.connect(url, autocommit=True) as conn:
            indexes = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'wh_old'").fetchall()
            assert [row[0] for row in indexes] == [
                "CREATE INDEX c1_deals__synced ON wh_old.c1_deals USING btree (_synced_at)"
            ]
            assert conn.execute("SELECT COUNT(*) FROM query_tables").fetchone() == (0,)
        migrate(url)  # idempotent
    finally:
        test_databases.drop(url)
