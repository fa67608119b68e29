from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FakeClock, make_settings

from bff.errors import ApiError
from bff.settings import Secret
from bff.tokens import TokenAuthority, parse_authorization


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


def test_authorization_header_schemes() -> None:
    assert parse_authorization("JWT abc") == "abc"
    assert parse_authorization("Bearer abc") == "abc"
    assert parse_authorization("bearer   abc ") == "abc"
    for bad in (None, "", "Basic abc", "Bearer", "Token abc"):
        with pytest.raises(ApiError) as info:
            parse_authorization(bad)
        assert info.value.status == 401
