"""Knobs of the sandbox providers (see docs/sandbox-api.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True, kw_only=True)
class SandboxOptions:
    """Behaviour switches of one sandbox instance; everything is off by default.

    ``rate_limit_every``/``fail_every`` are 0 (off) or N: every Nth data-API call
    answers 429/500. ``fail_match`` restricts the 500s to paths containing it, ``rate_limit_match``
    the 429s (``BFF_SANDBOX_429_MATCH``: one provider rate-limited, the others not).
    ``latency_ms`` delays every data-API answer. ``coop`` adds
    ``Cross-Origin-Opener-Policy: same-origin`` to the authorize page.
    ``redirect_uris``, when non-empty, is the exact allow-list for authorize.
    ``scale`` multiplies every fixture's size (``BFF_SANDBOX_SCALE=40``: 50,000 contacts,
    40 × 200 transactions…), deterministically; benchmarks use it, 1 is what tests expect.

    The ``/_control/*`` endpoints reset and revoke things for everybody, so in a deployment
    they need ``admin_key`` (``Authorization: Bearer <key>``). ``controls_open`` lets anyone
    call them: what `bff demo` turns on (``BFF_SANDBOX_CONTROLS=open``), and what
    ``create_sandbox_app()`` without options uses (tests); off by default.
    """

    rate_limit_every: int = 0
    retry_after: int = 1
    fail_every: int = 0
    fail_match: str | None = None
    rate_limit_match: str | None = None
    latency_ms: int = 0
    coop: bool = False
    redirect_uris: tuple[str, ...] = ()
    access_token_ttl: int = 3600
    scale: int = 1
    admin_key: str | None = None
    controls_open: bool = False

    def __post_init__(self) -> None:
        for name in ("rate_limit_every", "retry_after", "fail_every", "latency_ms"):
            _check_int(name, getattr(self, name), minimum=0)
        _check_int("access_token_ttl", self.access_token_ttl, minimum=1)
        _check_int("scale", self.scale, minimum=1)
        if not isinstance(self.coop, bool):
            raise ValueError(f"coop must be a bool, got {self.coop!r}")
        if self.fail_match is not None and not isinstance(self.fail_match, str):
            raise ValueError(f"fail_match must be a string or None, got {self.fail_match!r}")
        if self.fail_match == "":
            # An empty needle would match every path; that is what None already means.
            object.__setattr__(self, "fail_match", None)
        if isinstance(self.redirect_uris, str) or not all(isinstance(uri, str) for uri in self.redirect_uris):
            raise ValueError("redirect_uris must be a sequence of strings")
        object.__setattr__(self, "redirect_uris", tuple(self.redirect_uris))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SandboxOptions:
        """Build options from ``BFF_SANDBOX_*`` variables; unset or empty means default.

        Besides the documented variables, ``BFF_SANDBOX_REDIRECT_URIS`` (whitespace or
        comma separated) and ``BFF_SANDBOX_ACCESS_TOKEN_TTL`` are read. A malformed
        value raises ``ValueError`` naming the variable.
        """
        values: dict[str, object] = {}
        for field_name, variable in _INT_VARIABLES.items():
            raw = environ.get(variable, "").strip()
            if raw:
                minimum = 1 if field_name in ("access_token_ttl", "scale") else 0
                values[field_name] = _parse_int(variable, raw, minimum)
        raw_coop = environ.get("BFF_SANDBOX_COOP", "").strip().lower()
        if raw_coop not in _TRUE | _FALSE:
            raise ValueError(f"BFF_SANDBOX_COOP must be one of 1/0/true/false/yes/no/on/off, got {raw_coop!r}")
        values["coop"] = raw_coop in _TRUE
        fail_match = environ.get("BFF_SANDBOX_FAIL_MATCH", "")
        values["fail_match"] = fail_match or None
        values["rate_limit_match"] = environ.get("BFF_SANDBOX_429_MATCH", "") or None
        values["admin_key"] = environ.get("BFF_SANDBOX_ADMIN_KEY", "").strip() or None
        raw_controls = environ.get("BFF_SANDBOX_CONTROLS", "").strip().lower()
        if raw_controls not in {"", "open", "key"}:
            raise ValueError(f"BFF_SANDBOX_CONTROLS must be open or key, got {raw_controls!r}")
        values["controls_open"] = raw_controls == "open"
        raw_uris = environ.get("BFF_SANDBOX_REDIRECT_URIS", "")
        values["redirect_uris"] = tuple(raw_uris.replace(",", " ").split())
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"invalid sandbox setting: {exc}") from None


_INT_VARIABLES = {
    "rate_limit_every": "BFF_SANDBOX_429_EVERY",
    "retry_after": "BFF_SANDBOX_RETRY_AFTER",
    "fail_every": "BFF_SANDBOX_FAIL_EVERY",
    "latency_ms": "BFF_SANDBOX_LATENCY_MS",
    "access_token_ttl": "BFF_SANDBOX_ACCESS_TOKEN_TTL",
    "scale": "BFF_SANDBOX_SCALE",
}
assert set(_INT_VARIABLES) <= {f.name for f in fields(SandboxOptions)}


def _parse_int(variable: str, raw: str, minimum: int) -> int:
    try:
        value = int(raw, 10)
    except ValueError:
        raise ValueError(f"{variable} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{variable} must be >= {minimum}, got {value}")
    return value


def _check_int(name: str, value: object, *, minimum: int) -> None:
    # bool is an int subclass; True as a counter is almost certainly a mistake.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
