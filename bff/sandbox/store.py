"""What a sandbox keeps across restarts: its OAuth grants and tokens, and every change to its records.

One SQLite file (``<data dir>/sandbox.sqlite3`` for `bff demo`, `bff serve` with the sandbox on,
and `bff sandbox`); a sandbox built without a path keeps the same things in memory (tests).
The fixtures are deterministic, so records are kept as a journal of the changes made to them
(append, remove, pop_front), replayed when a table is first read: a restart shows the same
records, nothing is built before it is used. Tokens are kept as SHA-256 hashes, never as sent.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FILE_NAME = "sandbox.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY, client_id TEXT NOT NULL, scope TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY, kind TEXT NOT NULL, grant_id TEXT NOT NULL REFERENCES grants (id), expires_at REAL
);
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY, tbl TEXT NOT NULL, op TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS changes_by_table ON changes (tbl, seq);
"""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SandboxStore:
    """The sandbox's durable state (in memory when ``path`` is None)."""

    def __init__(self, path: Path | None, *, scale: int) -> None:
        self.durable = path is not None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # The sandbox's routes run on one event loop; a test may build the app on another thread.
        self._db = sqlite3.connect(":memory:" if path is None else path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            if path is not None:
                path.chmod(0o600)
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_SCHEMA)
        kept = self.get("scale")
        if kept is not None and kept != scale:
            # The journal replays onto the fixtures of one scale: another scale starts its records afresh.
            print(
                f"bff: the sandbox's records in {path} were written at BFF_SANDBOX_SCALE={kept}; "
                f"starting them afresh at {scale} (its sign-ins are kept).",
                file=sys.stderr,
            )
            with self._lock:
                self._db.execute("DELETE FROM changes")
                self._db.execute("DELETE FROM meta WHERE key LIKE 'next.%' OR key = 'deleted_contacts'")
        self.set("scale", scale)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- small values ---------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    def take_number(self, key: str, first: int) -> int:
        """The next number of a sequence (record ids): ``first``, then one more each call."""
        with self._lock:
            row = self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = value + 1"
                " RETURNING value",
                (f"next.{key}", json.dumps(first)),
            ).fetchone()
        return int(row[0])

    # -- records ---------------------------------------------------------------------

    def record_change(self, table: str, op: str, body: Any) -> None:
        if self.durable:
            with self._lock:
                self._db.execute("INSERT INTO changes (tbl, op, body) VALUES (?, ?, ?)", (table, op, json.dumps(body)))

    def changes(self, table: str) -> Iterator[tuple[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT op, body FROM changes WHERE tbl = ? ORDER BY seq", (table,)).fetchall()
        for op, body in rows:
            yield op, json.loads(body)

    # -- OAuth grants and tokens ----------------------------------------------------------

    def save_grant(self, grant_id: str, client_id: str, scope: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO grants (id, client_id, scope) VALUES (?, ?, ?)", (grant_id, client_id, scope)
            )

    def revoke_grant(self, grant_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE grants SET revoked = 1 WHERE id = ?", (grant_id,))

    def save_token(self, kind: str, hashed: str, grant_id: str, expires_at: float | None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO tokens (hash, kind, grant_id, expires_at) VALUES (?, ?, ?, ?)",
                (hashed, kind, grant_id, expires_at),
            )

    def drop_tokens(self, hashes: list[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM tokens WHERE hash = ?", [(h,) for h in hashes])

    def grants(self) -> list[tuple[str, str, str, bool]]:
        with self._lock:
            rows = self._db.execute("SELECT id, client_id, scope, revoked FROM grants").fetchall()
        return [(str(i), str(c), str(s), bool(r)) for i, c, s, r in rows]

    def tokens(self) -> list[tuple[str, str, str, float | None]]:
        with self._lock:
            return list(self._db.execute("SELECT hash, kind, grant_id, expires_at FROM tokens").fetchall())
