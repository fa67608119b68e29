from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bff.cli import main, normalise_origin
from bff.settings import SettingsError, generate_encryption_key, generate_secret_key

# Fixed per run, so two invocations share them; weak keys (e.g. "k" * 32) are refused since issue 16.
STRONG_SIGNING_KEY = generate_secret_key()
STRONG_ENCRYPTION_KEY = generate_encryption_key()
OTHER_ENCRYPTION_KEY = generate_encryption_key()


def run_bff(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BFF_")}
    return subprocess.run(
        [sys.executable, "-m", "bff.cli", *args], capture_output=True, text=True, env={**clean, **(env or {})}, timeout=timeout
    )


def test_help_lists_the_commands() -> None:
    result = run_bff("--help")
    assert result.returncode == 0
    for command in ("serve", "demo", "partner", "keys"):
        assert command in result.stdout


def test_serve_refuses_to_start_without_keys(tmp_path: Path) -> None:
    result = run_bff("serve", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "BFF_SECRET_KEYS" in result.stderr and "BFF_ENCRYPTION_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_rejects_a_malformed_encryption_key(tmp_path: Path) -> None:
    result = run_bff(
        "serve", "--data-dir", str(tmp_path), env={"BFF_SECRET_KEYS": STRONG_SIGNING_KEY, "BFF_ENCRYPTION_KEY": "short"}
    )
    assert result.returncode == 2 and "32 bytes" in result.stderr and "Traceback" not in result.stderr


def test_keys_prints_usable_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys"]) == 0
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    from bff.settings import Settings

    Settings.from_env({"BFF_DATA_DIR": str(tmp_path), **lines})  # validates both keys


def test_partner_create_prints_json_and_the_token_works(tmp_path: Path) -> None:
    env = {"BFF_SECRET_KEYS": STRONG_SIGNING_KEY, "BFF_ENCRYPTION_KEY": STRONG_ENCRYPTION_KEY}
    result = run_bff(
        "partner", "create", "--name", "Acme", "--origin", "https://app.acme.test", "--origin", "http://localhost:8001",
        "--data-dir", str(tmp_path), env=env,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["name"] == "Acme" and isinstance(info["id"], int) and info["token"]
    assert info["origins"] == ["http://localhost:8001", "https://app.acme.test"]
    from bff.settings import Settings
    from bff.tokens import TokenAuthority

    settings = Settings.from_env({"BFF_DATA_DIR": str(tmp_path), **env})
    assert TokenAuthority(settings).verify(info["token"], accept=("partner",)).partner_id == info["id"]


def test_partner_create_uses_the_demo_keys(tmp_path: Path) -> None:
    from bff.cli import demo_keys

    demo_keys(tmp_path, create=True)
    result = run_bff("partner", "create", "--name", "Late", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "Late"


def test_partner_create_without_any_keys_explains(tmp_path: Path) -> None:
    result = run_bff("partner", "create", "--name", "x", "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "BFF_SECRET_KEYS" in result.stderr


def test_a_different_encryption_key_refuses_to_open_the_data(tmp_path: Path) -> None:
    first = run_bff(
        "partner", "create", "--name", "a", "--data-dir", str(tmp_path),
        env={"BFF_SECRET_KEYS": STRONG_SIGNING_KEY, "BFF_ENCRYPTION_KEY": STRONG_ENCRYPTION_KEY},
    )
    assert first.returncode == 0
    second = run_bff(
        "partner", "create", "--name", "b", "--data-dir", str(tmp_path),
        env={"BFF_SECRET_KEYS": STRONG_SIGNING_KEY, "BFF_ENCRYPTION_KEY": OTHER_ENCRYPTION_KEY},
    )
    assert second.returncode == 2 and "BFF_ENCRYPTION_KEY does not match" in second.stderr
    assert "Traceback" not in second.stderr


@pytest.mark.parametrize("raw", ["localhost:8001", "https://a.test/path", "ftp://a.test", "https://a.test?x=1"])
def test_origins_must_be_origins(raw: str) -> None:
    with pytest.raises(SettingsError):
        normalise_origin(raw)
    assert normalise_origin("https://App.Test/") == "https://app.test"
