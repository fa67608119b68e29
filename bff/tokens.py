"""The token authority: the only module that signs and verifies tokens.

Three kinds, each with its own salt and a ``kind`` field in the payload:

* ``partner``   — a partner's back-end; never expires, revoked by bumping the
  partner's generation.
* ``integrate`` — the browser, 30 minutes (``max_age`` always passed).
* ``identity``  — expiring (``identity_token_ttl``, 12 h by default) or, minted
  with ``expire=False``, valid until the sub-account's generation is bumped.

Integrate and identity tokens also carry the partner generation they were minted
under (``pgen``): a partner rotate or revoke ends them too (see ``bff/auth.py``).

Payloads carry ids only: itsdangerous signs, it does not encrypt. Signing keys
are a list; tokens are signed with the last and verified with all of them. Verifying
is itsdangerous's ``loads``; minting (:class:`_Minter`) writes the very bytes its
``dumps`` would, without its generic machinery (tests/test_tokens.py compares them).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import re
import struct
import time
from collections.abc import Callable, Sequence
from typing import Literal, cast

from itsdangerous import (
    BadData,
    BadSignature,
    SignatureExpired,
    TimestampSigner,
    URLSafeTimedSerializer,
    base64_decode,
    base64_encode,
    want_bytes,
)

from .errors import ApiError
from .settings import INTEGRATE_TOKEN_TTL, Settings

TokenKind = Literal["partner", "integrate", "identity"]
KINDS: tuple[TokenKind, ...] = ("partner", "integrate", "identity")
# One serializer per (kind, expiring?) with its own salt. The salt fixes the
# max_age, so each verify is a single itsdangerous ``loads`` with ``max_age``.
_VARIANTS: tuple[tuple[str, TokenKind, bool], ...] = (
    ("bff.token.integrate.v1", "integrate", True),
    ("bff.token.identity.v1", "identity", True),
    ("bff.token.identity-noexpire.v1", "identity", False),
    ("bff.token.partner.v1", "partner", False),
)


# The only form a token is accepted in: exactly what ``dumps`` produced. base64 decoding
# forgives padding and non-zero spare bits, so several strings would otherwise verify.
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
MAX_TOKEN_LENGTH = 1024

# Signatures already checked, remembered by token (a partner's back-end sends the same
# partner token on every call). Cleared when full; ~300 bytes an entry.
CHECKED_TOKENS_KEPT = 10_000


@dataclasses.dataclass(frozen=True)
class Claims:
    kind: TokenKind
    partner_id: int
    generation: int
    sub_account_id: int | None = None
    # Sub-account tokens: the partner's token generation when minted (0 when minted before it was carried).
    partner_generation: int = 0
    expires_at: int | None = None
    # Set on a script run's identity token: it works only while that run is running.
    script_run_id: int | None = None


@dataclasses.dataclass(frozen=True)
class MintedToken:
    token: str
    expires_at: int | None
    expires_in: int | None


# json.dumps(obj, separators=(",", ":")) builds this encoder on every call; the same output from one.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":")).encode
_TIMESTAMP = struct.Struct(">Q").pack


class _Minter:
    """``URLSafeTimedSerializer.dumps`` for one salt and the last key, byte for byte: the compact JSON
    payload in unpadded urlsafe base64 (never zlib: a few ids never compress), ``.``, the timestamp
    (big-endian, leading zero bytes dropped) in the same base64, ``.``, the HMAC-SHA1 of all that
    under the key itsdangerous derives for (key, salt), in the same base64. Without itsdangerous's
    per-call signer lookups, key derivation and JSON encoder construction; the HMAC state is keyed
    once and copied per token."""

    __slots__ = ("_clock", "_mac", "_stamped")

    def __init__(self, derived_key: bytes, clock: Callable[[], float]) -> None:
        self._mac = hmac.new(derived_key, digestmod=hashlib.sha1)
        self._clock = clock
        self._stamped = (-1, b"")  # the last second minted in and its encoding (one tuple: thread-safe)

    def dumps(self, obj: object) -> str:
        return self.sign(_COMPACT_JSON(obj))

    def sign(self, payload: str) -> str:
        """The token of a JSON ``payload`` (as ``dumps`` writes it), stamped with the clock's second."""
        second = int(self._clock())
        stamped = self._stamped
        if stamped[0] != second:
            stamped = self._stamped = (second, _b64(_TIMESTAMP(second).lstrip(b"\x00")))
        value = _b64(payload.encode()) + b"." + stamped[1]
        mac = self._mac.copy()
        mac.update(value)
        return (value + b"." + _b64(mac.digest())).decode("ascii")


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def token_error(status: int, code: str, detail: str) -> ApiError:
    return ApiError(status, code, detail, headers={"WWW-Authenticate": 'Bearer realm="bff"'})


class TokenAuthority:
    """Mints and verifies every token kind. Build one per app from the settings."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._identity_ttl = settings.identity_token_ttl
        keys = [key.reveal() for key in settings.secret_keys]

        derived: dict[tuple[bytes, bytes], bytes] = {}

        class _ClockedSigner(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(clock())

            def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
                # itsdangerous derives the HMAC key on every call; it depends only
                # on (key, salt), so derive each pair once.
                key = self.secret_keys[-1] if secret_key is None else want_bytes(secret_key)
                cached = derived.get((key, self.salt))
                if cached is None:
                    cached = derived[key, self.salt] = super().derive_key(key)
                return cached

        class _Serializer(URLSafeTimedSerializer):
            # Signers hold only keys and salt: build each once, not per call.
            _signers: dict[object, TimestampSigner]

            def make_signer(self, salt: str | bytes | None = None) -> TimestampSigner:
                cache = self.__dict__.setdefault("_signers", {})
                signer: TimestampSigner | None = cache.get(salt)
                if signer is None:
                    signer = cache[salt] = cast(TimestampSigner, super().make_signer(salt))
                return signer

        def minter(serializer: _Serializer) -> _Minter:
            # The HMAC key itsdangerous signs with: derived from the last key and the salt.
            return _Minter(serializer.make_signer().derive_key(), clock)

        self._variants = [
            (
                _Serializer(keys, salt=salt, signer=_ClockedSigner),
                kind,
                (INTEGRATE_TOKEN_TTL if kind == "integrate" else self._identity_ttl) if expiring else None,
            )
            for salt, kind, expiring in _VARIANTS
        ]
        self._mint = {(kind, max_age is not None): minter(serializer) for serializer, kind, max_age in self._variants}
        # The OAuth browser binding: a first-party cookie naming the one flow it may complete.
        self._oauth_binding = _Serializer(keys, salt="bff.oauth.binding.v1", signer=_ClockedSigner)
        self._mint_oauth_binding = minter(self._oauth_binding)
        self._checked: dict[str, tuple[Claims, int, int | None]] = {}

    def now(self) -> int:
        return int(self._clock())

    # -- minting ---------------------------------------------------------------

    # Payloads are written as the compact JSON json.dumps(dict, separators=(",", ":")) gives for these
    # int ids, keys in this order (tests/test_tokens.py compares): a JSON encoder costs more than the HMAC.

    def mint_partner_token(self, *, partner_id: int, generation: int) -> MintedToken:
        payload = f'{{"kind":"partner","pid":{partner_id:d},"gen":{generation:d}}}'
        return MintedToken(self._mint["partner", False].sign(payload), None, None)

    def mint_integrate_token(
        self, *, partner_id: int, sub_account_id: int, generation: int, partner_generation: int
    ) -> MintedToken:
        payload = (
            f'{{"kind":"integrate","pid":{partner_id:d},"sid":{sub_account_id:d},'
            f'"gen":{generation:d},"pgen":{partner_generation:d}}}'
        )
        return MintedToken(
            self._mint["integrate", True].sign(payload),
            self.now() + INTEGRATE_TOKEN_TTL,
            INTEGRATE_TOKEN_TTL,
        )

    def mint_identity_token(
        self,
        *,
        partner_id: int,
        sub_account_id: int,
        generation: int,
        partner_generation: int,
        expire: bool = True,
        script_run_id: int | None = None,
    ) -> MintedToken:
        run = f',"run":{script_run_id:d}' if script_run_id is not None else ""
        payload = (
            f'{{"kind":"identity","pid":{partner_id:d},"sid":{sub_account_id:d},'
            f'"gen":{generation:d},"pgen":{partner_generation:d}{run}}}'
        )
        token = self._mint["identity", expire].sign(payload)
        if not expire:
            return MintedToken(token, None, None)
        return MintedToken(token, self.now() + self._identity_ttl, self._identity_ttl)

    # -- verifying -------------------------------------------------------------

    def verify(self, token: str, *, accept: tuple[TokenKind, ...]) -> Claims:
        """Verify a token of any kind, then insist it is one of ``accept``.

        Each kind has its own salt, so at most one serializer accepts the
        signature; that tells us the kind even when it is the wrong one here.
        A signature, once checked, is remembered (keyed by the whole token, so a
        changed byte is a miss); its age is checked against ``max_age`` on every call.
        """
        checked = self._checked.get(token)
        if checked is None:
            checked = self._check_signature(token)
            if len(self._checked) >= CHECKED_TOKENS_KEPT:
                self._checked.clear()
            self._checked[token] = checked
        claims, issued, max_age = checked
        age = self.now() - issued
        if age < 0:
            # Every kind: a token dated in the future was minted with a wrong clock or a stolen key.
            raise token_error(401, "token_expired", "This token is dated in the future; mint a new one.")
        if max_age is not None and age > max_age:
            raise token_error(401, "token_expired", "This token has expired; mint a new one.")
        if claims.kind not in accept:
            wanted = " or ".join(accept)
            raise token_error(
                401,
                "token_wrong_kind",
                f"{_article(claims.kind).capitalize()} {claims.kind} token cannot be used here;"
                f" this endpoint takes {_article(wanted)} {wanted} token.",
            )
        return claims

    # -- OAuth browser binding ---------------------------------------------------

    def sign_oauth_binding(self, state_hash: str) -> str:
        """The value of the cookie that lets this browser, and no other, finish the flow ``state_hash``."""
        return self._mint_oauth_binding.dumps({"kind": "oauth_binding", "flow": state_hash})

    def oauth_binding_matches(self, value: str, state_hash: str, *, max_age: int) -> bool:
        try:
            payload = self._oauth_binding.loads(value, max_age=max_age)
        except BadSignature:  # SignatureExpired is one too
            return False
        return (
            isinstance(payload, dict) and payload.get("kind") == "oauth_binding" and payload.get("flow") == state_hash
        )

    def partner_of(self, authorization: str) -> int | None:
        """The partner of the token in an ``Authorization`` header if it verifies (any kind), else ``None``."""
        try:
            return self.verify(parse_authorization(authorization), accept=KINDS).partner_id
        except ApiError:
            return None

    def _check_signature(self, token: str) -> tuple[Claims, int, int | None]:
        """The signature check itself: (claims, issued at, max_age), or token_invalid / token_expired."""
        if not _is_canonical(token):
            raise token_error(401, "token_invalid", "The token is not valid (bad signature or malformed).")
        for serializer, kind, max_age in self._candidates(token):
            try:
                payload, issued = serializer.loads(token, max_age=max_age, return_timestamp=True)
            except SignatureExpired:
                raise token_error(401, "token_expired", "This token has expired; mint a new one.") from None
            except BadSignature:
                continue
            if not isinstance(payload, dict) or payload.get("kind") != kind:
                break
            try:
                sid = payload.get("sid")
                run = payload.get("run")
                partner_generation = int(payload.get("pgen", 0)) if kind != "partner" else 0
                issued_at = int(issued.timestamp())
                claims = Claims(
                    kind=kind,
                    partner_id=int(payload["pid"]),
                    generation=int(payload["gen"]),
                    sub_account_id=int(sid) if sid is not None else None,
                    partner_generation=partner_generation,
                    expires_at=issued_at + max_age if max_age is not None else None,
                    script_run_id=int(run) if run is not None else None,
                )
            except (KeyError, TypeError, ValueError):
                break
            return claims, issued_at, max_age
        raise token_error(401, "token_invalid", "The token is not valid (bad signature or malformed).")

    def _candidates(self, token: str) -> Sequence[tuple[URLSafeTimedSerializer, TokenKind, int | None]]:
        # Try the serializer of the kind the (still unverified) payload claims
        # first: one HMAC instead of up to four. A lie only costs the fallbacks.
        try:
            claimed = json.loads(base64_decode(token.split(".", 1)[0])).get("kind")
        except Exception:
            return self._variants
        return sorted(self._variants, key=lambda variant: variant[1] != claimed)


def _article(word: str) -> str:
    return "an" if word[:1] in ("a", "e", "i", "o", "u") else "a"


def _is_canonical(token: str) -> bool:
    """Three unpadded urlsafe-base64 parts, each exactly as itsdangerous would encode its bytes."""
    if len(token) > MAX_TOKEN_LENGTH or not _TOKEN_SHAPE.match(token):
        return False
    try:
        return all(base64_encode(base64_decode(part)).decode() == part for part in token.split("."))
    except BadData:  # undecodable base64
        return False


def parse_authorization(header: str | None) -> str:
    """Accept ``JWT <token>`` (as the source documents write it) and ``Bearer <token>``."""
    if not header:
        raise token_error(401, "token_missing", "Send a token as `Authorization: Bearer <token>` (or `JWT <token>`).")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() not in {"jwt", "bearer"} or not token.strip():
        raise token_error(401, "token_invalid", "The Authorization header must be `Bearer <token>` or `JWT <token>`.")
    return token.strip()
