"""Secrets at rest: AES-GCM with a key from settings, never from the database."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .settings import Secret, decode_encryption_key

_VERSION = b"\x01"
KEY_CHECK_AAD = b"bff:key-check"
KEY_CHECK_PLAINTEXT = b"bff encryption key check v1"


class DecryptionError(Exception):
    """The ciphertext was not made with this key and associated data."""


class Vault:
    """Encrypts small JSON documents; the associated data binds each to its owner row."""

    def __init__(self, key: Secret) -> None:
        self._aead = AESGCM(decode_encryption_key(key))

    def __repr__(self) -> str:
        return "Vault(key=**********)"

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        if not blob or blob[:1] != _VERSION:
            raise DecryptionError("unknown ciphertext version")
        try:
            return self._aead.decrypt(blob[1:13], blob[13:], aad)
        except InvalidTag:
            raise DecryptionError("ciphertext does not match this key or owner") from None

    def encrypt_json(self, value: Mapping[str, Any], aad: bytes) -> bytes:
        return self.encrypt(json.dumps(value, separators=(",", ":")).encode(), aad)

    def decrypt_json(self, blob: bytes, aad: bytes) -> dict[str, Any]:
        return json.loads(self.decrypt(blob, aad))  # type: ignore[no-any-return]

    def key_check(self) -> bytes:
        return self.encrypt(KEY_CHECK_PLAINTEXT, KEY_CHECK_AAD)

    def matches(self, key_check: bytes) -> bool:
        try:
            return self.decrypt(key_check, KEY_CHECK_AAD) == KEY_CHECK_PLAINTEXT
        except DecryptionError:
            return False


def connection_aad(connection_id: int, purpose: str) -> bytes:
    return f"bff:connection:{connection_id}:{purpose}".encode()
