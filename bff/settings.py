"""Settings: read once from ``BFF_*`` environment variables into an immutable object."""

from __future__ import annotations

import base64
import collections
import dataclasses
import math
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_IDENTITY_TOKEN_TTL = 12 * 3600
INTEGRATE_TOKEN_TTL = 1800
DEFAULT_SYNC_CONCURRENCY = 4
DEFAULT_SCRIPT_CONCURRENCY = 2  # scripts run on their own queue, beside the 4 sync/delivery slots
DEFAULT_SCRIPTS_PER_CUSTOMER = 1  # a customer's scripts running at once; the rest wait, queued
WORKER_QUEUES = ("sync", "webhooks", "scheduler", "scripts")
DEFAULT_LONG_WAIT_SECONDS = 30.0  # a provider asking to wait longer frees the worker (DESIGN §9)
DEFAULT_HEARTBEAT_SECONDS = 10.0
DEFAULT_STALLED_SECONDS = 30.0
DEFAULT_SQL_WATCH_SECONDS = 5.0  # how often workers look for customer SQL past its limit
DEFAULT_SQL_IDLE_SECONDS = 60.0  # a customer session idle in a transaction longer is ended
# Scripts (DESIGN §14): how they are isolated, and their limits.
SCRIPT_MODES = ("auto", "sandboxed", "unsandboxed", "off")
DEFAULT_SCRIPT_CPU_SECONDS = 60
DEFAULT_SCRIPT_MEMORY_MB = 512
DEFAULT_SCRIPT_MAX_PROCESSES = 64
DEFAULT_SCRIPT_MAX_OUTPUT_BYTES = 1024 * 1024
DEFAULT_SCRIPT_TIMEOUT_SECONDS = 900.0


class SettingsError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


class Secret:
    """A string that never shows itself in ``repr`` or ``str``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and secrets.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OAuthApp:
    """Client credentials of a real OAuth app registered with a provider."""

    client_id: str
    client_secret: Secret | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    data_dir: Path
    secret_keys: tuple[Secret, ...]
    encryption_key: Secret
    public_url: str = DEFAULT_PUBLIC_URL
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    identity_token_ttl: int = DEFAULT_IDENTITY_TOKEN_TTL
    sandbox_enabled: bool = False
    sandbox_env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    sync_concurrency: int = DEFAULT_SYNC_CONCURRENCY
    script_concurrency: int = DEFAULT_SCRIPT_CONCURRENCY
    scripts_per_customer: int = DEFAULT_SCRIPTS_PER_CUSTOMER
    worker_queues: tuple[str, ...] = WORKER_QUEUES
    oauth_apps: Mapping[str, OAuthApp] = dataclasses.field(default_factory=dict)
    log_level: str = "info"
    # PostgreSQL: None = the embedded server under <data_dir>/postgres.
    database_url: Secret | None = None
    # The servers customers' warehouse databases go on (BFF_WAREHOUSE_URLS, comma-separated admin
    # URLs); none = the control database's server (DESIGN §15).
    warehouse_urls: tuple[Secret, ...] = ()
    # Whether this process also runs queued jobs (`bff serve --no-worker` turns it off).
    run_worker: bool = True
    # A provider asking to wait longer than this frees the worker: the run re-defers itself.
    long_wait_seconds: float = DEFAULT_LONG_WAIT_SECONDS
    # Worker liveness: heartbeat interval, and how long without one makes a worker dead.
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    stalled_seconds: float = DEFAULT_STALLED_SECONDS
    # Customer SQL watchdog: its period, and how long a customer login may sit idle in a transaction.
    sql_watch_seconds: float = DEFAULT_SQL_WATCH_SECONDS
    sql_idle_seconds: float = DEFAULT_SQL_IDLE_SECONDS
    # The sandbox providers served by another process (`bff sandbox`) instead of mounted here.
    sandbox_external_url: str | None = None
    # SQL access for BI tools (per-customer read-only logins); off unless asked for.
    sql_access: bool = False
    # The host name given out with those logins (default: the host of the database URL).
    sql_access_host: str | None = None
    # The embedded server's TCP port while SQL access is on (scram passwords on every TCP login).
    sql_access_port: int = 5433
    hsts: bool = False
    # Scheduled syncs (DESIGN §10): off, nothing syncs unless asked (tests of other features turn it off).
    schedules_enabled: bool = True
    # Webhook URLs that resolve to private/loopback/link-local addresses (development; on in `bff demo`).
    webhook_allow_private: bool = False
    # Scripts: "auto" = in bubblewrap when it is installed, else not at all; "sandboxed" insists on
    # bubblewrap; "unsandboxed" runs them as plain child processes (development only); "off".
    scripts: str = "auto"
    script_cpu_seconds: int = DEFAULT_SCRIPT_CPU_SECONDS
    script_memory_mb: int = DEFAULT_SCRIPT_MEMORY_MB
    script_max_processes: int = DEFAULT_SCRIPT_MAX_PROCESSES
    script_max_output_bytes: int = DEFAULT_SCRIPT_MAX_OUTPUT_BYTES
    # Wall-clock time a run may take (waiting on the API included); CPU time is capped separately.
    script_timeout_seconds: float = DEFAULT_SCRIPT_TIMEOUT_SECONDS
    script_packages: tuple[str, ...] = ()  # more packages scripts may import (BFF_SCRIPT_PACKAGES)

    def __post_init__(self) -> None:
        if not self.secret_keys:
            raise SettingsError("BFF_SECRET_KEYS is empty: set at least one signing key.")
        for position, key in enumerate(self.secret_keys, start=1):
            check_secret_key(key.reveal(), position)
        decode_encryption_key(self.encryption_key)
        if self.max_body_bytes < 1024:
            raise SettingsError("BFF_MAX_BODY_BYTES must be at least 1024.")
        if self.sync_concurrency < 1:
            raise SettingsError("BFF_SYNC_CONCURRENCY must be at least 1.")
        if self.script_concurrency < 1:
            raise SettingsError("BFF_SCRIPT_CONCURRENCY must be at least 1.")
        if self.scripts_per_customer < 1:
            raise SettingsError("BFF_SCRIPTS_PER_CUSTOMER must be at least 1.")
        unknown = [queue for queue in self.worker_queues if queue not in WORKER_QUEUES]
        if unknown or not self.worker_queues:
            raise SettingsError(
                f"BFF_WORKER_QUEUES must name some of {', '.join(WORKER_QUEUES)}; got {', '.join(self.worker_queues)!r}."
            )
        if self.stalled_seconds <= self.heartbeat_seconds:
            raise SettingsError("BFF_WORKER_STALLED_SECONDS must be longer than BFF_WORKER_HEARTBEAT_SECONDS.")
        if self.sql_watch_seconds <= 0 or self.sql_idle_seconds <= 0:
            raise SettingsError("BFF_SQL_WATCH_SECONDS and BFF_SQL_IDLE_SECONDS must be positive.")
        if self.scripts not in SCRIPT_MODES:
            raise SettingsError(f"BFF_SCRIPTS must be one of {', '.join(SCRIPT_MODES)}, got {self.scripts!r}.")
        for name, value, least in (
            ("BFF_SCRIPT_CPU_SECONDS", self.script_cpu_seconds, 1),
            ("BFF_SCRIPT_MEMORY_MB", self.script_memory_mb, 64),
            ("BFF_SCRIPT_MAX_PROCESSES", self.script_max_processes, 1),
            ("BFF_SCRIPT_MAX_OUTPUT_BYTES", self.script_max_output_bytes, 1024),
        ):
            if value < least:
                raise SettingsError(f"{name} must be at least {least}, got {value}.")
        object.__setattr__(self, "public_url", self.public_url.rstrip("/"))
        object.__setattr__(self, "data_dir", Path(self.data_dir))

    @property
    def postgres_dir(self) -> Path:
        """Where the embedded PostgreSQL keeps its cluster when no BFF_DATABASE_URL is set."""
        return self.data_dir / "postgres"

    @property
    def oauth_redirect_uri(self) -> str:
        return f"{self.public_url}/oauth/callback"

    @property
    def sandbox_url(self) -> str:
        if self.sandbox_external_url:
            return self.sandbox_external_url.rstrip("/")
        return f"{self.public_url}/sandbox"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``BFF_*`` variables; keyword overrides (CLI flags) win."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if "BFF_DATA_DIR" in env:
            values["data_dir"] = Path(env["BFF_DATA_DIR"])
        if env.get("BFF_SECRET_KEYS"):
            values["secret_keys"] = parse_secret_keys(env["BFF_SECRET_KEYS"])
        if env.get("BFF_ENCRYPTION_KEY"):
            values["encryption_key"] = Secret(env["BFF_ENCRYPTION_KEY"].strip())
        if env.get("BFF_PUBLIC_URL"):
            values["public_url"] = env["BFF_PUBLIC_URL"]
        for name, field in (
            ("BFF_MAX_BODY_BYTES", "max_body_bytes"),
            ("BFF_IDENTITY_TOKEN_TTL", "identity_token_ttl"),
            ("BFF_SYNC_CONCURRENCY", "sync_concurrency"),
            ("BFF_SCRIPT_CONCURRENCY", "script_concurrency"),
            ("BFF_SCRIPTS_PER_CUSTOMER", "scripts_per_customer"),
            ("BFF_SCRIPT_CPU_SECONDS", "script_cpu_seconds"),
            ("BFF_SCRIPT_MEMORY_MB", "script_memory_mb"),
            ("BFF_SCRIPT_MAX_PROCESSES", "script_max_processes"),
            ("BFF_SCRIPT_MAX_OUTPUT_BYTES", "script_max_output_bytes"),
            ("BFF_SQL_ACCESS_PORT", "sql_access_port"),
        ):
            if env.get(name):
                values[field] = _parse_int(name, env[name])
        if env.get("BFF_WORKER_QUEUES"):
            values["worker_queues"] = parse_queues(env["BFF_WORKER_QUEUES"])
        if env.get("BFF_SANDBOX"):
            values["sandbox_enabled"] = _parse_bool("BFF_SANDBOX", env["BFF_SANDBOX"])
        if env.get("BFF_SQL_ACCESS"):
            values["sql_access"] = _parse_bool("BFF_SQL_ACCESS", env["BFF_SQL_ACCESS"])
        if env.get("BFF_SQL_ACCESS_HOST"):
            values["sql_access_host"] = env["BFF_SQL_ACCESS_HOST"].strip()
        if env.get("BFF_HSTS"):
            values["hsts"] = _parse_bool("BFF_HSTS", env["BFF_HSTS"])
        values["sandbox_env"] = {k: v for k, v in env.items() if k.startswith("BFF_SANDBOX_")}
        values["oauth_apps"] = parse_oauth_apps(env)
        if env.get("BFF_LOG_LEVEL"):
            values["log_level"] = env["BFF_LOG_LEVEL"]
        for name, field in (
            ("BFF_LONG_WAIT_SECONDS", "long_wait_seconds"),
            ("BFF_WORKER_HEARTBEAT_SECONDS", "heartbeat_seconds"),
            ("BFF_WORKER_STALLED_SECONDS", "stalled_seconds"),
            ("BFF_SQL_WATCH_SECONDS", "sql_watch_seconds"),
            ("BFF_SQL_IDLE_SECONDS", "sql_idle_seconds"),
            ("BFF_SCRIPT_TIMEOUT_SECONDS", "script_timeout_seconds"),
        ):
            if env.get(name):
                values[field] = _parse_float(name, env[name])
        for name, field in (
            ("BFF_SCHEDULES", "schedules_enabled"),
            ("BFF_WEBHOOK_ALLOW_PRIVATE", "webhook_allow_private"),
        ):
            if env.get(name):
                values[field] = _parse_bool(name, env[name])
        if env.get("BFF_SCRIPTS"):
            values["scripts"] = env["BFF_SCRIPTS"].strip().lower()
        if env.get("BFF_SCRIPT_PACKAGES"):
            values["script_packages"] = tuple(
                dict.fromkeys(part.strip() for part in env["BFF_SCRIPT_PACKAGES"].split(",") if part.strip())
            )
        if env.get("BFF_SANDBOX_URL"):
            values["sandbox_external_url"] = env["BFF_SANDBOX_URL"].strip()
        if env.get("BFF_DATABASE_URL"):
            values["database_url"] = Secret(env["BFF_DATABASE_URL"].strip())
        if env.get("BFF_WAREHOUSE_URLS"):
            values["warehouse_urls"] = tuple(
                Secret(part.strip()) for part in env["BFF_WAREHOUSE_URLS"].split(",") if part.strip()
            )
        values.update({k: v for k, v in overrides.items() if v is not None})
        missing = [
            var
            for var, field in (
                ("BFF_DATA_DIR", "data_dir"),
                ("BFF_SECRET_KEYS", "secret_keys"),
                ("BFF_ENCRYPTION_KEY", "encryption_key"),
            )
            if field not in values
        ]
        if missing:
            raise SettingsError(
                "Missing required settings: "
                + ", ".join(missing)
                + ". Generate keys with `bff keys` (or run `bff demo`, which keeps its own)."
            )
        return cls(**values)  # type: ignore[arg-type]


def parse_secret_keys(raw: str) -> tuple[Secret, ...]:
    """Comma-separated signing keys, oldest first: tokens are signed with the last one."""
    return tuple(Secret(part.strip()) for part in raw.split(",") if part.strip())


def parse_oauth_apps(env: Mapping[str, str]) -> dict[str, OAuthApp]:
    """``BFF_OAUTH_<CONNECTOR>_CLIENT_ID`` / ``_CLIENT_SECRET`` pairs, keyed by connector name."""
    apps: dict[str, OAuthApp] = {}
    for key, value in env.items():
        if key.startswith("BFF_OAUTH_") and key.endswith("_CLIENT_ID") and value:
            name = key[len("BFF_OAUTH_") : -len("_CLIENT_ID")].lower()
            secret = env.get(f"BFF_OAUTH_{name.upper()}_CLIENT_SECRET")
            apps[name] = OAuthApp(client_id=value, client_secret=Secret(secret) if secret else None)
    return apps


def generate_encryption_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def generate_secret_key() -> str:
    return secrets.token_urlsafe(32)


# A signing key must look like what `bff keys` prints: long, varied, not a repeated word.
MIN_SECRET_KEY_LENGTH = 16
MIN_SECRET_KEY_DISTINCT = 8
MIN_SECRET_KEY_BITS = 40.0
# 32 random bytes have ~30 distinct values; fewer than 16 means a made-up key.
MIN_ENCRYPTION_KEY_DISTINCT = 16
# Bits with patterns priced in (see pattern_bits): a random 16-character key keeps ~90, `bff keys`
# ~250 (never under 180 in 50,000 tries), 32 random bytes ~250 (never under 200); a keyboard walk,
# a counting sequence or a repeated word keeps under 50, bytes 0..31 about 40.
MIN_SECRET_KEY_PATTERN_BITS = 56.0
MIN_ENCRYPTION_KEY_PATTERN_BITS = 128.0
_ENCRYPTION_KEY = re.compile(r"^[A-Za-z0-9_-]{43}=?$")
_WEAK_KEY_ADVICE = "Generate one with `bff keys`."


def _estimated_bits(value: str) -> float:
    """Shannon entropy of the characters, times the length: a floor for made-up keys, not a proof of randomness."""
    counts = collections.Counter(value)
    return -sum(count * math.log2(count / len(value)) for count in counts.values())


# US keyboard rows (the shifted row maps onto the same keys) with each row's offset in key widths.
_KEYBOARD_ROWS = (("`1234567890-=", 0.0), ("qwertyuiop[]\\", 1.5), ("asdfghjkl;'", 1.75), ("zxcvbnm,./", 2.25))
_SHIFTED = dict(zip('~!@#$%^&*()_+{}|:"<>?', "`1234567890-=[]\\;',./", strict=True))
_KEY_POSITION = {
    char: (row, offset + column)
    for row, (keys, offset) in enumerate(_KEYBOARD_ROWS)
    for column, char in enumerate(keys)
}
# Typing on along the keyboard's rows: the end of one row's letters or digits, then the start of the next.
_ROW_WRAPS = frozenset({("0", "q"), ("p", "a"), ("l", "z"), ("q", "0"), ("a", "p"), ("z", "l")})


def _key(symbol: int) -> tuple[int, float] | None:
    char = chr(symbol).lower() if symbol < 128 else ""
    return _KEY_POSITION.get(_SHIFTED.get(char, char))


def _keyboard_step(first: int, second: int) -> tuple[int, float] | None:
    """(rows, columns) from one key to a neighbouring key (a row wrap counts as one step right), else None."""
    a, b = _key(first), _key(second)
    if a is None or b is None:
        return None
    if (chr(first).lower(), chr(second).lower()) in _ROW_WRAPS:
        return (0, 1.0) if b[0] > a[0] else (0, -1.0)
    rows, columns = b[0] - a[0], b[1] - a[1]
    if (rows == 0 and abs(columns) == 1) or (abs(rows) == 1 and abs(columns) <= 0.75):
        return rows, columns
    return None


# What a symbol that follows a pattern costs a guesser, in bits: going on with one (the same step
# again, or straight on along the keyboard), or starting one (±1, or a key next to the last).
_GOING_ON_BITS = 1.0
_STARTING_BITS = math.log2(6)  # about as many keys as surround one


def pattern_bits(symbols: Sequence[int], bits_per_symbol: float) -> float:
    """A key's strength with the patterns people (and counting loops) make priced as a guesser
    would: a symbol costs ``bits_per_symbol``, but much less when it repeats a step (``aaaa``,
    ``1234``, bytes 0..31), walks on along the keyboard (``qwerty``, ``1qaz``; a row's end goes on
    at the next row's start) or ends a four-symbol chunk seen earlier (``passwordpassword``).
    A cheap cousin of zxcvbn, without its dictionaries; a random key keeps nearly all its bits."""
    total = 0.0
    walk: tuple[int, float] | None = None
    for i, symbol in enumerate(symbols):
        cost = bits_per_symbol
        if i >= 1:
            step = symbol - symbols[i - 1]
            key_step = _keyboard_step(symbols[i - 1], symbol)
            straight = (
                key_step is not None
                and walk is not None
                and key_step[0] == walk[0]
                and abs(key_step[1] - walk[1]) <= 0.5
            )
            if (i >= 2 and step == symbols[i - 1] - symbols[i - 2]) or straight or _seen_before(symbols, i - 3, 4):
                cost = _GOING_ON_BITS
            elif abs(step) <= 1 or key_step is not None:
                cost = _STARTING_BITS
            walk = key_step
        total += min(cost, bits_per_symbol)
    return total


def _seen_before(symbols: Sequence[int], start: int, length: int) -> bool:
    """Whether the ``length`` symbols from ``start`` (if it is not negative) occurred earlier."""
    if start < 1:
        return False
    chunk = list(symbols[start : start + length])
    return any(list(symbols[earlier : earlier + length]) == chunk for earlier in range(start))


def _alphabet_bits(value: str) -> float:
    """log2 of the alphabet a key of this make-up is drawn from (lower, upper, digits, other ASCII, beyond)."""
    size = (
        26 * any(c.islower() and c.isascii() for c in value)
        + 26 * any(c.isupper() and c.isascii() for c in value)
        + 10 * any(c.isdigit() and c.isascii() for c in value)
        + 33 * any(c.isascii() and not c.isalnum() for c in value)
        + 100 * any(not c.isascii() for c in value)
    )
    return math.log2(max(size, 2))


def _is_repetition(value: str) -> bool:
    return any(
        len(value) % size == 0 and value == value[:size] * (len(value) // size)
        for size in range(1, len(value) // 2 + 1)
    )


def check_secret_key(value: str, position: int = 1) -> None:
    """Refuse signing keys a person typed: short, few distinct characters, or one word repeated."""
    which = f"Key {position} in BFF_SECRET_KEYS"
    if len(value) < MIN_SECRET_KEY_LENGTH:
        raise SettingsError(f"{which} is shorter than {MIN_SECRET_KEY_LENGTH} characters. {_WEAK_KEY_ADVICE}")
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise SettingsError(f"{which} contains spaces or control characters. {_WEAK_KEY_ADVICE}")
    if (
        len(set(value)) < MIN_SECRET_KEY_DISTINCT
        or _is_repetition(value)
        or _estimated_bits(value) < MIN_SECRET_KEY_BITS
        or pattern_bits([ord(c) for c in value], _alphabet_bits(value)) < MIN_SECRET_KEY_PATTERN_BITS
    ):
        raise SettingsError(f"{which} is too predictable (low entropy). {_WEAK_KEY_ADVICE}")


def decode_encryption_key(key: Secret) -> bytes:
    """32 bytes in canonical urlsafe base64 (what `bff keys` prints); anything else is refused, never repaired."""
    text = key.reveal()
    advice = "BFF_ENCRYPTION_KEY must be 32 bytes, urlsafe-base64 encoded (44 characters, as `bff keys` prints)."
    if not _ENCRYPTION_KEY.match(text):
        raise SettingsError(advice)
    raw = base64.urlsafe_b64decode(text.rstrip("=") + "=")
    if len(raw) != 32 or base64.urlsafe_b64encode(raw).decode().rstrip("=") != text.rstrip("="):
        raise SettingsError(advice)
    if len(set(raw)) < MIN_ENCRYPTION_KEY_DISTINCT or pattern_bits(raw, 8.0) < MIN_ENCRYPTION_KEY_PATTERN_BITS:
        raise SettingsError(f"BFF_ENCRYPTION_KEY is too predictable (low entropy). {_WEAK_KEY_ADVICE}")
    return raw


def _parse_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}.") from None


def _parse_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}.") from None
    if not value > 0:
        raise SettingsError(f"{name} must be more than 0, got {raw!r}.")
    return value


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}.")


def parse_queues(text: str) -> tuple[str, ...]:
    """``sync,webhooks`` → the queues a worker takes jobs from (checked by Settings)."""
    return tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))


def normalise_origin(raw: str) -> str:
    """A browser origin as the partner registers it (``https://app.example.com``), lower-cased host."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in {"http", "https"} or not parts.netloc or parts.path not in {"", "/"} or parts.query:
        raise SettingsError(
            f"{raw!r} is not an origin; pass it like https://app.example.com (scheme and host, no path)."
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"
