from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FakeClock, make_settings

from bff.errors import ApiError
from bff.settings import Secret
from bff.tokens import Claims, TokenAuthority, parse_authorization


def authority(
    tmp_path: Path, keys: tuple[str, ...] = ("key-one-0123456789abcdef",), clock: FakeClock | None = None
) -> TokenAuthority:
    settings = make_settings(tmp_path, secret_keys=tuple(Secret(k) for k in keys), identity_token_ttl=3600)
    return TokenAuthority(settings, clock=clock or FakeClock())


def code_of(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as info:
        call()
    assert info.value.status == 401
    return info.value.code


def test_each_kind_verifies_as_itself(tmp_path: Path) -> None:
    tokens = authority(tmp_path)
    partner = tokens.mint_partner_token(partner_id=7, generation=2).token
    integrate = tokens.mint_integrate_token(partner_id=7, sub_account_id=3, generation=1, partner_generation=1).token
    identity = tokens.mint_identity_token(partner_id=7, sub_account_id=3, generation=1, partner_generation=1).token
    forever = tokens.mint_identity_token(
        partner_id=7, sub_account_id=3, generation=1, partner_generation=1, expire=False
    ).token
    assert tokens.verify(partner, accept=("partner",)).generation == 2
    assert tokens.verify(integrate, accept=("integrate",)).sub_account_id == 3
    assert tokens.verify(identity, accept=("identity",)).expires_at is not None
    claims = tokens.verify(forever, accept=("identity",))
    assert claims.kind == "identity" and claims.expires_at is None


def test_kinds_are_not_interchangeable(tmp_path: Path) -> None:
    tokens = authority(tmp_path)
    partner = tokens.mint_partner_token(partner_id=1, generation=1).token
    integrate = tokens.mint_integrate_token(partner_id=1, sub_account_id=1, generation=1, partner_generation=1).token
    identity = tokens.mint_identity_token(partner_id=1, sub_account_id=1, generation=1, partner_generation=1).token
    assert code_of(lambda: tokens.verify(integrate, accept=("partner",))) == "token_wrong_kind"
    assert code_of(lambda: tokens.verify(identity, accept=("partner",))) == "token_wrong_kind"
    assert code_of(lambda: tokens.verify(partner, accept=("integrate", "identity"))) == "token_wrong_kind"
    with pytest.raises(ApiError) as info:
        tokens.verify(partner, accept=("integrate",))
    assert info.value.detail == "A partner token cannot be used here; this endpoint takes an integrate token."
    with pytest.raises(ApiError) as info:
        tokens.verify(integrate, accept=("partner",))
    assert info.value.detail == "An integrate token cannot be used here; this endpoint takes a partner token."


def test_tampered_and_garbage_tokens_are_invalid(tmp_path: Path) -> None:
    tokens = authority(tmp_path)
    token = tokens.mint_integrate_token(partner_id=1, sub_account_id=1, generation=1, partner_generation=1).token
    payload, stamp, signature = token.split(".")
    # Re-sign nothing: swap the payload for another sub-account's, keep the signature.
    other = tokens.mint_integrate_token(partner_id=1, sub_account_id=2, generation=1, partner_generation=1).token.split(
        "."
    )[0]
    for bad in (
        f"{other}.{stamp}.{signature}",
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        "nope",
        "a.b.c",
        "",
    ):
        assert code_of(lambda bad=bad: tokens.verify(bad, accept=("integrate",))) == "token_invalid"


def test_integrate_token_expires_after_30_minutes(tmp_path: Path) -> None:
    clock = FakeClock()
    tokens = authority(tmp_path, clock=clock)
    token = tokens.mint_integrate_token(partner_id=1, sub_account_id=1, generation=1, partner_generation=1)
    assert token.expires_in == 1800 and token.expires_at == int(clock.now) + 1800
    clock.advance(1799)
    tokens.verify(token.token, accept=("integrate",))
    clock.advance(2)
    assert code_of(lambda: tokens.verify(token.token, accept=("integrate",))) == "token_expired"


def test_token_dated_in_the_future_is_expired(tmp_path: Path) -> None:
    clock = FakeClock()
    future = authority(tmp_path, clock=FakeClock(clock.now + 3600))
    token = future.mint_integrate_token(partner_id=1, sub_account_id=1, generation=1, partner_generation=1).token
    assert code_of(lambda: authority(tmp_path, clock=clock).verify(token, accept=("integrate",))) == "token_expired"


def test_identity_tokens_expire_unless_minted_forever(tmp_path: Path) -> None:
    clock = FakeClock()
    tokens = authority(tmp_path, clock=clock)
    expiring = tokens.mint_identity_token(partner_id=1, sub_account_id=1, generation=1, partner_generation=1).token
    forever = tokens.mint_identity_token(
        partner_id=1, sub_account_id=1, generation=1, partner_generation=1, expire=False
    ).token
    assert tokens.verify(expiring, accept=("identity",)).kind == "identity"  # checked once, remembered
    clock.advance(3601)
    assert code_of(lambda: tokens.verify(expiring, accept=("identity",))) == "token_expired"
    assert tokens.verify(forever, accept=("identity",)).kind == "identity"


def test_a_remembered_check_still_enforces_kind_age_and_every_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    tokens = authority(tmp_path, clock=clock)
    token = tokens.mint_integrate_token(partner_id=1, sub_account_id=1, generation=1, partner_generation=1).token
    for _ in range(2):  # the second call is answered from memory: same answers
        assert tokens.verify(token, accept=("integrate",)).sub_account_id == 1
        assert code_of(lambda: tokens.verify(token, accept=("partner",))) == "token_wrong_kind"
    assert (
        code_of(lambda: tokens.verify(token[:-1] + ("A" if token[-1] != "A" else "B"), accept=("integrate",)))
        == "token_invalid"
    )
    clock.advance(-5)  # a clock stepping back makes a remembered token "from the future"
    assert code_of(lambda: tokens.verify(token, accept=("integrate",))) == "token_expired"

    monkeypatch.setattr("bff.tokens.CHECKED_TOKENS_KEPT", 3)
    many = [tokens.mint_partner_token(partner_id=i, generation=1).token for i in range(10)]
    for other in many:
        tokens.verify(other, accept=("partner",))
        assert len(tokens._checked) <= 3  # bounded memory
    assert tokens.verify(many[0], accept=("partner",)).partner_id == 0  # forgotten ones are checked again


def test_key_rotation(tmp_path: Path) -> None:
    old = authority(tmp_path, keys=("old-key-0123456789abcdef",))
    token = old.mint_integrate_token(partner_id=1, sub_account_id=1, generation=1, partner_generation=1).token
    rotated = authority(tmp_path, keys=("old-key-0123456789abcdef", "new-key-0123456789abcdef"))
    assert rotated.verify(token, accept=("integrate",)).partner_id == 1
    new_token = rotated.mint_integrate_token(partner_id=1, sub_account_id=1, generation=1, partner_generation=1).token
    assert code_of(lambda: old.verify(new_token, accept=("integrate",))) == "token_invalid"  # signed with the last key
    dropped = authority(tmp_path, keys=("new-key-0123456789abcdef",))
    assert code_of(lambda: dropped.verify(token, accept=("integrate",))) == "token_invalid"
    assert dropped.verify(new_token, accept=("integrate",)).partner_id == 1


def test_minted_tokens_are_byte_for_byte_what_itsdangerous_dumps(tmp_path: Path) -> None:
    """Minting skips itsdangerous's Serializer.dumps; its tokens must be exactly that call's, and
    verify through the (unchanged) itsdangerous loads as what they claim to be."""
    from itsdangerous import TimestampSigner, URLSafeTimedSerializer, base64_encode

    keys = ("old-key-0123456789abcdef", "new-key-0123456789abcdef")
    clock = FakeClock(1_800_000_000.75)
    tokens = authority(tmp_path, keys=keys, clock=clock)

    class AtTheClock(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock())

    class NeverZlib(URLSafeTimedSerializer):
        # As bff always minted: itsdangerous would zlib a payload where that is shorter.
        def dump_payload(self, obj: object) -> bytes:
            return base64_encode(json.dumps(obj, separators=(",", ":")).encode())

    def dumps(salt: str, payload: dict[str, object]) -> str:
        return NeverZlib(list(keys), salt=salt, signer=AtTheClock).dumps(payload)

    for step in (0, 0.2, 1, 86_400 * 400):  # the same second again, the next one, a year on
        clock.advance(step)
        now = int(clock())
        partner = tokens.mint_partner_token(partner_id=7, generation=4).token
        assert partner == dumps("bff.token.partner.v1", {"kind": "partner", "pid": 7, "gen": 4})
        assert tokens.verify(partner, accept=("partner",)) == Claims("partner", 7, 4)
        ids = {"pid": 7, "sid": 123_456_789_012, "gen": 3, "pgen": 2}
        integrate = tokens.mint_integrate_token(
            partner_id=7, sub_account_id=123_456_789_012, generation=3, partner_generation=2
        )
        assert integrate.token == dumps("bff.token.integrate.v1", {"kind": "integrate", **ids})
        assert integrate.expires_at == now + 1800
        assert tokens.verify(integrate.token, accept=("integrate",)) == Claims(
            "integrate", 7, 3, 123_456_789_012, 2, now + 1800
        )
        identity = tokens.mint_identity_token(
            partner_id=7, sub_account_id=123_456_789_012, generation=3, partner_generation=2, script_run_id=99
        ).token
        assert identity == dumps("bff.token.identity.v1", {"kind": "identity", **ids, "run": 99})
        assert tokens.verify(identity, accept=("identity",)) == Claims(
            "identity", 7, 3, 123_456_789_012, 2, now + 3600, 99
        )
        forever = tokens.mint_identity_token(
            partner_id=7, sub_account_id=123_456_789_012, generation=3, partner_generation=2, expire=False
        ).token
        assert forever == dumps("bff.token.identity-noexpire.v1", {"kind": "identity", **ids})
        assert tokens.verify(forever, accept=("identity",)) == Claims("identity", 7, 3, 123_456_789_012, 2)
        binding = tokens.sign_oauth_binding("abc")
        assert binding == dumps("bff.oauth.binding.v1", {"kind": "oauth_binding", "flow": "abc"})
        assert tokens.oauth_binding_matches(binding, "abc", max_age=60)
    # Signed with the last key only: an authority without it refuses them.
    assert code_of(lambda: authority(tmp_path, keys=keys[:1], clock=clock).verify(partner, accept=("partner",))) == (
        "token_invalid"
    )


def test_authorization_header_schemes() -> None:
    assert parse_authorization("JWT abc") == "abc"
    assert parse_authorization("Bearer abc") == "abc"
    assert parse_authorization("bearer   abc ") == "abc"
    for bad in (None, "", "Basic abc", "Bearer", "Token abc"):
        with pytest.raises(ApiError) as info:
            parse_authorization(bad)
        assert info.value.status == 401
