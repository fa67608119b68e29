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
are a list; itsdangerous signs with the last and verifies with all of them.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import re
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

            def get_signature(self, value: str | bytes) -> bytes:
                # The default algorithm, HMAC-SHA1, as OpenSSL's one-shot call: the same bytes
                # as itsdangerous's hmac.new(…, digestmod=<function>), at a fraction of the cost.
                return base64_encode(hmac.digest(self.derive_key(), want_bytes(value), "sha1"))

        class _Serializer(URLSafeTimedSerializer):
            # Signers hold only keys and salt: build each once, not per call.
            _signers: dict[object, TimestampSigner]

            def make_signer(self, salt: str | bytes | None = None) -> TimestampSigner:
                cache = self.__dict__.setdefault("_signers", {})
                signer: TimestampSigner | None = cache.get(salt)
                if signer is None:
                    signer = cache[salt] = cast(TimestampSigner, super().make_signer(salt))
                return signer

            def dump_payload(self, obj: object) -> bytes:
                # Payloads are a few ids: zlib never makes them shorter, skip trying.
                return base64_encode(json.dumps(obj, separators=(",", ":")).encode())

        self._variants = [
            (
                _Serializer(keys, salt=salt, signer=_ClockedSigner),
                kind,
                (INTEGRATE_TOKEN_TTL if kind == "integrate" else self._identity_ttl) if expiring else None,
            )
            for salt, kind, expiring in _VARIANTS
        ]
        self._mint = {(kind, max_age is not None): serializer for serializer, kind, max_age in self._variants}
        # The OAuth browser binding: a first-party cookie naming the one flow it may complete.
        self._oauth_binding = _Serializer(keys, salt="bff.oauth.binding.v1", signer=_ClockedSigner)
        self._checked: dict[str, tuple[Claims, int, int | None]] = {}

    def now(self) -> int:
        return int(self._clock())

    # -- minting ---------------------------------------------------------------

    def mint_partner_token(self, *, partner_id: int, generation: int) -> MintedToken:
        payload = {"kind": "partner", "pid": partner_id, "gen": generation}
        return MintedToken(self._mint["partner", False].dumps(payload), None, None)

    def mint_integrate_token(
        self, *, partner_id: int, sub_account_id: int, generation: int, partner_generation: int
    ) -> MintedToken:
        payload = {
            "kind": "integrate",
            "pid": partner_id,
            "sid": sub_account_id,
            "gen": generation,
            "pgen": partner_generation,
        }
        return MintedToken(
            self._mint["integrate", True].dumps(payload),
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
        payload: dict[str, object] = {
            "kind": "identity",
            "pid": partner_id,
            "sid": sub_account_id,
            "gen": generation,
            "pgen": partner_generation,
        }
        if script_run_id is not None:
            payload["run"] = script_run_id
        token = self._mint["identity", expire].dumps(payload)
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
        return self._oauth_binding.dumps({"kind": "oauth_binding", "flow": state_hash})

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
