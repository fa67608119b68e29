"""Apply the Alembic migrations (``bff db upgrade``; also on start unless ``--no-migrate``).

Migration files are named by their place in the chain (``0005_query_tables.py``); the revision
ids inside are what the databases know (some older ones are words, ``i14_query_tables``) and
never change. :func:`new_revision` writes the next one as ``NNNN_<slug>.py`` with the revision
id ``NNNN`` (the ``file_template``), after the current head.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).with_name("migrations")


def sqlalchemy_url(url: str) -> str:
    """SQLAlchemy's spelling of a libpq URL, with psycopg 3 as the driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


FILE_TEMPLATE = "%%(rev)s_%%(slug)s"


def alembic_config(location: Path = MIGRATIONS) -> Config:
    config = Config()
    config.set_main_option("script_location", str(location))
    config.set_main_option("file_template", FILE_TEMPLATE)
    return config


def new_revision(message: str, *, location: Path = MIGRATIONS) -> Path:
    """Write an empty migration after the head: ``NNNN_<slug>.py``, NNNN its place in the chain."""
    from alembic.script import ScriptDirectory

    config = alembic_config(location)
    number = len(list(ScriptDirectory.from_config(config).walk_revisions())) + 1
    script = command.revision(config, message, rev_id=f"{number:04d}")
    assert script is not None and not isinstance(script, list)
    return Path(script.path)


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision``. Safe to run from several processes at once."""
    engine = create_engine(sqlalchemy_url(url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            connection.commit()
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(sqlalchemy_url(url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
