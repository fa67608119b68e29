"""SQL access on the embedded server (issue 22 item 4): it listens on TCP where every login needs
its password (scram); a wrong password, or ``-U postgres`` without one, never logs in."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import auth, make_settings, running_bff

from bff.db import pg_tool
from bff.testing import free_port


def _psql(port: int, user: str, password: str | None, database: str = "postgres") -> subprocess.CompletedProcess[str]:
    psql = pg_tool("psql")
    assert psql is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run(
        [psql, "-w", "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", database, "-Atc", "SELECT current_user"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


async def test_sql_access_on_the_embedded_server_checks_every_tcp_password(data_dir_outside_pytest: Path) -> None:
    port = free_port()
    settings = make_settings(
        data_dir_outside_pytest, database_url=None, sql_access=True, sql_access_port=port, sandbox_enabled=True
    )
    async with running_bff(settings) as bff:
        _, partner_token = await bff.partner("scram")
        minted = await bff.integrate(partner_token, "scram-customer")
        answer = await bff.client.post(
            f"/api/partner/sub-account/{minted['account_id']}/database-credentials", headers=auth(partner_token)
        )
        assert answer.status_code == 200, answer.text
        login: dict[str, Any] = answer.json()
        assert (login["host"], login["port"]) == ("127.0.0.1", port)
        # The right password logs in over TCP, with psql and with psycopg ...
        ok = _psql(port, login["user"], login["password"], login["database"])
        assert ok.returncode == 0 and ok.stdout.strip() == login["user"], ok.stderr
        with psycopg.connect(
            host="127.0.0.1", port=port, user=login["user"], password=login["password"], dbname=login["database"]
        ) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (login["user"],)
        # ... a wrong one never does, nor the superuser without a password (or with any).
        wrong = _psql(port, login["user"], login["password"] + "x", login["database"])
        assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr, wrong.stderr
        for password in (None, "", "postgres"):
            refused = _psql(port, "postgres", password)
            assert refused.returncode != 0, refused.stdout
            assert "password" in refused.stderr, refused.stderr
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(host="127.0.0.1", port=port, user="postgres", password="postgres", dbname="postgres")
        # The BFF itself still works on its socket (it just answered), and a restart keeps the port.
    async with running_bff(settings) as bff:
        assert (await bff.client.get("/api/partner", headers=auth(partner_token))).status_code == 200
    assert _psql(port, login["user"], login["password"], login["database"]).returncode == 0
