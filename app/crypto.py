"""Encryption at rest for processor credentials (Fernet, key derived from the secret key)."""

import base64
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_INFO = b"portal processor credentials v1"


class CredentialsError(Exception):
    """Stored credentials cannot be decrypted (wrong key, or tampered with)."""


class CredentialBox:
    """Seals and opens credential dictionaries; never logs or returns their content otherwise."""

    def __init__(self, secret_key: str) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
            secret_key.encode()
        )
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, credentials: dict[str, Any]) -> bytes:
        return self._fernet.encrypt(json.dumps(credentials, sort_keys=True).encode())

    def open(self, sealed: bytes) -> dict[str, Any]:
        try:
            value = json.loads(self._fernet.decrypt(sealed))
        except InvalidToken as exc:
            raise CredentialsError("processor credentials cannot be decrypted") from exc
        if not isinstance(value, dict):
            raise CredentialsError("processor credentials are not an object")
        return value

    def __repr__(self) -> str:
        return "CredentialBox(<sealed>)"
