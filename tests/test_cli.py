from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bff.cli import main
from bff.settings import SettingsError, generate_encryption_key, generate_secret_key, normalise_origin
from bff.testing import free_port

# Fixed per run, so two invocations share them; weak keys (e.g. STRONG_SIGNING_KEY) are refused since issue 16.
STRONG_SIGNING_KEY = generate_secret_key()
STRONG_ENCRYPTION_KEY = generate_encryption_key()
OTHER_ENCRYPTION_KEY = generate_encryption_key()


def run_bff(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BFF_")}
    return subprocess.run(
        [sys.executable, "-m", "bff.cli", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=timeout,
    )


def test_help_lists_the_commands() -> None:
    result = run_bff("--help")
    assert result.returncode == 0
    for command in ("serve", "demo", "partner", "keys"):
        assert command in result.stdout


def test_serve_refuses_to_start_without_keys(data_dir_outside_pytest: Path) -> None:
    result = run_bff("serve", "--data-dir", str(data_dir_outside_pytest))
    assert result.returncode == 2
    assert "BFF_SECRET_KEYS" in result.stderr and "BFF_ENCRYPTION_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_rejects_a_malformed_encryption_key(data_dir_outside_pytest: Path) -> None:
    result = run_bff(
        "serve",
        "--data-dir",
        str(data_dir_outside_pytest),
        env={"BFF_SECRET_KEYS": STRONG_SIGNING_KEY, "BFF_ENCRYPTION_KEY": "short"},
    )
    assert result.returncode == 2 and "32 bytes" in result.stderr and "Traceback" not in result.stderr


def test_keys_prints_usable_keys(data_dir_outside_pytest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys"]) == 0
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    from bff.settings import Settings

    Settings.from_env({"BFF_DATA_DIR": str(data_dir_outside_pytest), **lines})  # validates both keys


def test_partner_create_prints_json_and_the_token_works(data_dir_outside_pytest: Path) -> None:
    env = {"BFF_SECRET_KEYS": STRONG_SIGNING_KEY, "BFF_ENCRYPTION_KEY": STRONG_ENCRYPTION_KEY}
    result = run_bff(
        "partner",
        "create",
        "--name",
        "Acme",
        "--origin",
        "https://app.acme.test",
        "--origin",
        "http://localhost:8001",
        "--data-dir",
        str(data_dir_outside_pytest),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["name"] == "Acme" and isinstance(info["id"], int) and info["token"]
    assert info["origins"] == ["http://localhost:8001", "https://app.acme.test"]
    from bff.settings import Settings
    from bff.tokens import TokenAuthority

    settings = Settings.from_env({"BFF_DATA_DIR": str(data_dir_outside_pytest), **env})
    assert TokenAuthority(settings).verify(info["token"], accept=("partner",)).partner_id == info["id"]


def test_partner_create_uses_the_demo_keys(data_dir_outside_pytest: Path) -> None:
    from bff.cli import demo_keys

    demo_keys(data_dir_outside_pytest, create=True)
    result = run_bff(
        "partner",
        "create",
        "--name",
        "Late",
        "--origin",
        "http://localhost:8001",
        "--data-dir",
        str(data_dir_outside_pytest),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "Late"


def test_partner_create_without_any_keys_explains(data_dir_outside_pytest: Path) -> None:
    result = run_bff(
        "partner",
        "create",
        "--name",
        "x",
        "--origin",
        "http://localhost:8001",
        "--data-dir",
        str(data_dir_outside_pytest),
    )
    assert result.returncode == 2 and "BFF_SECRET_KEYS" in result.stderr


def test_a_data_directory_that_does_not_exist_is_named_not_the_missing_keys(data_dir_outside_pytest: Path) -> None:
    typo = data_dir_outside_pytest / "bff-dtaa"
    for command in (["partner", "list"], ["partner", "revoke", "1"], ["partner", "webhook", "show", "--partner", "1"]):
        line = one_line_error(run_bff(*command, "--data-dir", str(typo)))
        assert line.startswith(f"bff: error: no such data directory: {typo}."), line
        assert not typo.exists()


def test_a_different_encryption_key_refuses_to_open_the_data(data_dir_outside_pytest: Path) -> None:
    first = run_bff(
        "partner",
        "create",
        "--name",
        "a",
        "--origin",
        "http://localhost:8001",
        "--data-dir",
        str(data_dir_outside_pytest),
        env={"BFF_SECRET_KEYS": STRONG_SIGNING_KEY, "BFF_ENCRYPTION_KEY": STRONG_ENCRYPTION_KEY},
    )
    assert first.returncode == 0
    second = run_bff(
        "partner",
        "create",
        "--name",
        "b",
        "--origin",
        "http://localhost:8001",
        "--data-dir",
        str(data_dir_outside_pytest),
        env={"BFF_SECRET_KEYS": STRONG_SIGNING_KEY, "BFF_ENCRYPTION_KEY": OTHER_ENCRYPTION_KEY},
    )
    assert second.returncode == 2 and "BFF_ENCRYPTION_KEY does not match" in second.stderr
    assert "Traceback" not in second.stderr


@pytest.mark.parametrize("raw", ["localhost:8001", "https://a.test/path", "ftp://a.test", "https://a.test?x=1"])
def test_origins_must_be_origins(raw: str) -> None:
    with pytest.raises(SettingsError):
        normalise_origin(raw)
    assert normalise_origin("https://App.Test/") == "https://app.test"


KEYS = {"BFF_SECRET_KEYS": STRONG_SIGNING_KEY, "BFF_ENCRYPTION_KEY": STRONG_ENCRYPTION_KEY}
OTHER_KEY = {"BFF_SECRET_KEYS": STRONG_SIGNING_KEY, "BFF_ENCRYPTION_KEY": OTHER_ENCRYPTION_KEY}


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bff: error: "), result.stderr
    return lines[0]


def test_version() -> None:
    from bff.cli import package_version

    result = run_bff("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"bff {package_version()}"
    assert package_version()[0].isdigit()


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        (["demo", "--bff-prot", "9000"], "usage: bff demo "),
        (["serve", "--prot", "1"], "usage: bff serve "),
        (
            ["partner", "create", "--name", "W", "--origin", "http://a.test", "--colour", "red"],
            "usage: bff partner create ",
        ),
        (["keys", "--force"], "usage: bff keys"),
    ],
)
def test_a_wrong_flag_shows_the_subcommands_usage(args: list[str], usage: str) -> None:
    result = run_bff(*args)
    assert result.returncode == 2
    assert result.stderr.startswith(usage) and "unrecognized arguments" in result.stderr, result.stderr
    assert "COMMAND" not in result.stderr  # not the top-level usage


def test_partner_create_requires_an_origin(data_dir_outside_pytest: Path) -> None:
    result = run_bff("partner", "create", "--name", "W", "--data-dir", str(data_dir_outside_pytest), env=KEYS)
    assert result.returncode == 2 and "usage: bff partner create" in result.stderr
    assert "required: --origin" in result.stderr
    assert not any(data_dir_outside_pytest.iterdir())  # refused before anything was stored


def test_serve_with_the_wrong_encryption_key_says_so_in_one_line(data_dir_outside_pytest: Path) -> None:
    assert (
        run_bff(
            "partner",
            "create",
            "--name",
            "a",
            "--origin",
            "http://a.test",
            "--data-dir",
            str(data_dir_outside_pytest),
            env=KEYS,
        ).returncode
        == 0
    )
    line = one_line_error(run_bff("serve", "--data-dir", str(data_dir_outside_pytest), "--port", "1", env=OTHER_KEY))
    assert "BFF_ENCRYPTION_KEY does not match" in line


def test_demo_with_the_wrong_encryption_key_says_so_in_one_line(data_dir_outside_pytest: Path) -> None:
    assert (
        run_bff(
            "partner",
            "create",
            "--name",
            "a",
            "--origin",
            "http://a.test",
            "--data-dir",
            str(data_dir_outside_pytest),
            env=KEYS,
        ).returncode
        == 0
    )
    line = one_line_error(
        run_bff(
            "demo", "--data-dir", str(data_dir_outside_pytest), "--bff-port", "1", "--site-port", "2", env=OTHER_KEY
        )
    )
    assert "BFF_ENCRYPTION_KEY does not match" in line


def test_an_unusable_data_directory_says_so_in_one_line(data_dir_outside_pytest: Path) -> None:
    blocker = data_dir_outside_pytest / "a-file"
    blocker.write_text("")
    line = one_line_error(run_bff("serve", "--data-dir", str(blocker / "data"), env=KEYS))
    assert str(blocker) in line and "--data-dir" in line
    line = one_line_error(
        run_bff("partner", "create", "--name", "a", "--origin", "http://a.test", "--data-dir", str(blocker), env=KEYS)
    )
    assert "--data-dir" in line


def test_serve_on_a_port_in_use_says_so_in_one_line(data_dir_outside_pytest: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(
            run_bff("serve", "--data-dir", str(data_dir_outside_pytest), "--port", str(port), env=KEYS)
        )
    assert f"port {port}" in line and "--port" in line


def test_bad_settings_say_so_in_one_line(data_dir_outside_pytest: Path) -> None:
    line = one_line_error(
        run_bff("serve", "--data-dir", str(data_dir_outside_pytest), env={**KEYS, "BFF_ENCRYPTION_KEY": "short"})
    )
    assert "32 bytes" in line


@pytest.mark.parametrize(
    "command",
    [["serve"], ["worker"], ["db", "upgrade"], ["partner", "create", "--name", "X", "--origin", "https://x.test"]],
)
def test_an_unreachable_database_is_one_line_naming_the_host(data_dir_outside_pytest: Path, command: list[str]) -> None:
    env = {
        "BFF_SECRET_KEYS": STRONG_SIGNING_KEY,
        "BFF_ENCRYPTION_KEY": STRONG_ENCRYPTION_KEY,
        "BFF_DATABASE_URL": "postgresql://bff:secret-password@db.invalid:5433/bff",
    }
    result = run_bff(*command, "--data-dir", str(data_dir_outside_pytest), env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bff: error: cannot connect to PostgreSQL at db.invalid:5433/bff"), (
        result.stderr
    )
    assert "secret-password" not in result.stderr and "Traceback" not in result.stderr


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    from bff.store.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def test_db_upgrade_migrates_the_embedded_database_and_is_idempotent() -> None:
    # Outside pytest's owner-only temp root: the embedded server runs as its own user.
    root = Path(tempfile.mkdtemp(prefix="bff-test-upgrade-"))
    env = {"BFF_SECRET_KEYS": STRONG_SIGNING_KEY, "BFF_ENCRYPTION_KEY": STRONG_ENCRYPTION_KEY}
    try:
        # Without BFF_DATABASE_URL: the embedded server in <data-dir>/postgres, migrated to head.
        for _ in range(2):
            result = run_bff("db", "upgrade", "--data-dir", str(root), env=env, timeout=120)
            assert result.returncode == 0, result.stderr
            assert f"database is at revision {head_revision()}" in result.stdout
        assert (root / "postgres" / "PG_VERSION").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_bad_connector_definition_stops_serve_in_one_line(data_dir_outside_pytest: Path) -> None:
    connectors = data_dir_outside_pytest / "connectors"
    connectors.mkdir()
    (connectors / "broken.json").write_text('{"name": "broken", "surprise": 1}')
    env = {**KEYS, "BFF_CONNECTORS_DIR": str(connectors)}
    line = one_line_error(
        run_bff("serve", "--data-dir", str(data_dir_outside_pytest / "data"), "--port", str(free_port()), env=env)
    )
    assert "broken.json" in line


def test_partner_webhook_set_show_rotate_and_deliveries(data_dir_outside_pytest: Path, database_url: str) -> None:
    env = {
        "BFF_SECRET_KEYS": STRONG_SIGNING_KEY,
        "BFF_ENCRYPTION_KEY": STRONG_ENCRYPTION_KEY,
        "BFF_DATABASE_URL": database_url,
    }
    where = ("--data-dir", str(data_dir_outside_pytest))
    created = run_bff("partner", "create", "--name", "Acme", "--origin", "https://app.acme.test", *where, env=env)
    assert created.returncode == 0, created.stderr
    partner = ("--partner", "Acme")
    first = run_bff(
        "partner",
        "webhook",
        "set",
        *partner,
        "--url",
        "https://hooks.acme.test/in",
        "--event",
        "sync.finished",
        *where,
        env=env,
    )
    assert first.returncode == 0, first.stderr
    shown = json.loads(first.stdout)
    assert shown["url"] == "https://hooks.acme.test/in" and shown["events"] == ["sync.finished"]
    assert shown["secret"].startswith("whsec_")
    again = json.loads(
        run_bff("partner", "webhook", "set", *partner, "--url", "https://hooks.acme.test/v2", *where, env=env).stdout
    )
    assert "secret" not in again and len(again["events"]) == 5
    show = json.loads(run_bff("partner", "webhook", "show", *partner, *where, env=env).stdout)
    assert show == {"url": "https://hooks.acme.test/v2", "events": again["events"]}
    rotated = json.loads(run_bff("partner", "webhook", "rotate-secret", *partner, *where, env=env).stdout)
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != shown["secret"]
    assert json.loads(run_bff("partner", "webhook", "deliveries", *partner, *where, env=env).stdout) == []
    bad = run_bff("partner", "webhook", "set", *partner, "--url", "ftp://x", *where, env=env)
    assert bad.returncode == 2 and "--url" in bad.stderr and "Traceback" not in bad.stderr
    nobody = run_bff("partner", "webhook", "show", "--partner", "Nobody", *where, env=env)
    assert nobody.returncode == 2 and "no partner" in nobody.stderr


def test_serve_refuses_bff_scripts_sandboxed_without_bubblewrap_in_one_line(data_dir_outside_pytest: Path) -> None:
    no_bwrap = data_dir_outside_pytest / "bin"
    no_bwrap.mkdir()
    env = {**KEYS, "BFF_SCRIPTS": "sandboxed", "PATH": str(no_bwrap)}
    line = one_line_error(
        run_bff("serve", "--data-dir", str(data_dir_outside_pytest / "data"), "--port", str(free_port()), env=env)
    )
    assert "BFF_SCRIPTS=sandboxed, but bubblewrap (`bwrap`) is not installed" in line


def test_a_wrong_bff_scripts_value_is_one_line(data_dir_outside_pytest: Path) -> None:
    env = {**KEYS, "BFF_SCRIPTS": "yes please"}
    line = one_line_error(
        run_bff("serve", "--data-dir", str(data_dir_outside_pytest / "data"), "--port", str(free_port()), env=env)
    )
    assert "BFF_SCRIPTS must be one of auto, sandboxed, unsandboxed, off" in line


def test_serve_stopped_by_sigterm_stops_the_embedded_postgresql_it_started(data_dir_outside_pytest: Path) -> None:
    """uvicorn raises SIGTERM again after its graceful shutdown; `bff serve` must still run its exit
    handlers, or the embedded PostgreSQL it started would be left running."""
    import psutil

    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BFF_")}
    env = {**clean, **KEYS, "BFF_DATA_DIR": str(data_dir_outside_pytest), "BFF_LOG_LEVEL": "warning"}
    serve = subprocess.Popen(
        [sys.executable, "-m", "bff.cli", "serve", "--no-worker", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    postmaster: psutil.Process | None = None
    try:
        deadline = time.monotonic() + 60
        while not _accepts(port):
            assert serve.poll() is None and time.monotonic() < deadline, serve.stderr and serve.stderr.read()
            time.sleep(0.1)
        pid_file = data_dir_outside_pytest / "postgres" / "postmaster.pid"
        postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
        assert postmaster.is_running()
        serve.terminate()
        status = serve.wait(timeout=60)
        with contextlib.suppress(psutil.TimeoutExpired):
            postmaster.wait(timeout=30)
        assert not postmaster.is_running(), "bff serve left its embedded PostgreSQL running"
        assert not pid_file.exists()
        assert status == 128 + 15
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        if postmaster is not None and postmaster.is_running():
            postmaster.terminate()


def _accepts(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_serve_and_worker_tune_the_garbage_collector_for_requests_in_flight() -> None:
    """Start-up objects frozen out of collections; young collections every 10,000 allocations, not
    CPython's 700 (which walked the objects of the requests in flight every dozen token mints)."""
    probe = (
        "import gc; from bff.cli import GC_YOUNG_THRESHOLD, _freeze_startup_objects;"
        "before = gc.get_threshold(); _freeze_startup_objects();"
        "print(before[0], *gc.get_threshold(), gc.get_freeze_count() > 1000, GC_YOUNG_THRESHOLD)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["700", "10000", "10", "10", "True", "10000"]
