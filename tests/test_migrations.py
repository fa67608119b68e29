"""The migration chain: files numbered by their place in it, an empty database upgraded one step
at a time to the head, and new migrations numbered in sequence."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import psycopg
from alembic.script import ScriptDirectory
from psycopg import sql

from bff.store.migrate import MIGRATIONS, alembic_config, current_revision, migrate, new_revision
from bff.testing import TestDatabases


def chain() -> list[tuple[str, Path]]:
    """(revision id, file) from the first migration to the head."""
    script = ScriptDirectory.from_config(alembic_config())
    return [(r.revision, Path(r.path)) for r in reversed(list(script.walk_revisions()))]


def test_files_are_numbered_by_their_place_in_the_chain() -> None:
    files = [path.name for _, path in chain()]
    assert [int(name[:4]) for name in files] == list(range(1, len(files) + 1)), files
    assert all(re.fullmatch(r"\d{4}_[a-z0-9_]+\.py", name) for name in files), files
    on_disk = sorted(p.name for p in (MIGRATIONS / "versions").glob("*.py") if p.name != "__init__.py")
    assert on_disk == files  # no file outside the chain


def test_an_empty_database_upgrades_step_by_step_to_the_head(test_databases: TestDatabases) -> None:
    name = f"mig_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(test_databases.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = test_databases.admin_url.replace("/postgres?", f"/{name}?")
    try:
        assert current_revision(url) is None
        for revision, _ in chain():
            migrate(url, revision)
            assert current_revision(url) == revision
    finally:
        test_databases.drop(url)


def test_a_new_migration_is_numbered_after_the_head(tmp_path: Path) -> None:
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    head = chain()[-1][0]
    made = new_revision("Add a thing", location=copy)
    assert made.name == f"{len(chain()) + 1:04d}_add_a_thing.py"
    text = made.read_text()
    assert f"revision = '{len(chain()) + 1:04d}'" in text and f"down_revision = {head!r}" in text
