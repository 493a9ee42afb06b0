"""Data keys for the restricted tier, kept outside the database so they can be destroyed.

Each scope (a data class, or a data class and a subject) has its own random
256-bit key, stored wrapped with AES-256-GCM under a key-encryption key that
is derived from the master key. The wrapped keys live in a small file next
to the database, not in it: destroying a scope's key rewrites that file
without it, so the scope's sealed rows cannot be read again from the live
database, its WAL, or a copy of the database taken earlier (crypto-shredding).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgeward.errors import KeyFileError
from edgeward.security.keys import KEY_BYTES, derive_key

log = logging.getLogger(__name__)

WRAP_KEY_INFO = b"edgeward/keywrap/v1"
NONCE_BYTES = 12


class KeyStore:
    """Create, unwrap and destroy per-scope data keys in a JSON file of wrapped keys."""

    def __init__(self, path: Path, master_key: bytes) -> None:
        self.path = path
        wrap_key = derive_key(master_key, WRAP_KEY_INFO)
        self._wrap = AESGCM(wrap_key)
        self._fingerprint = fingerprint(wrap_key)
        self._lock = threading.Lock()
        self._wrapped = self._load()
        self._cache: dict[str, bytes] = {}

    def rewrap(self, new_master_key: bytes) -> None:
        """Wrap every data key under a new master key and save the store under it."""
        with self._lock:
            keys = {scope: self._unwrap(scope, wrapped) for scope, wrapped in self._wrapped.items()}
            wrap_key = derive_key(new_master_key, WRAP_KEY_INFO)
            self._wrap = AESGCM(wrap_key)
            self._fingerprint = fingerprint(wrap_key)
            self._cache = dict(keys)
            self._wrapped = {}
            for scope, key in keys.items():
                nonce = secrets.token_bytes(NONCE_BYTES)
                self._wrapped[scope] = (
                    nonce + self._wrap.encrypt(nonce, key, scope.encode())
                ).hex()
            self._save()

    def key_for(self, scope: str) -> bytes:
        """Return the scope's data key, creating and saving one when it has none."""
        with self._lock:
            key = self._cache.get(scope)
            if key is not None:
                return key
            wrapped = self._wrapped.get(scope)
            if wrapped is None:
                key = secrets.token_bytes(KEY_BYTES)
                nonce = secrets.token_bytes(NONCE_BYTES)
                self._wrapped[scope] = (
                    nonce + self._wrap.encrypt(nonce, key, scope.encode())
                ).hex()
                self._save()
            else:
                key = self._unwrap(scope, wrapped)
            self._cache[scope] = key
            return key

    def existing_key(self, scope: str) -> bytes | None:
        """Return the scope's data key, or None when it was never made or was destroyed."""
        with self._lock:
            if scope not in self._wrapped:
                return None
        return self.key_for(scope)

    def destroy(self, scopes: list[str]) -> list[str]:
        """Destroy the keys of these scopes; return the scopes that had one."""
        with self._lock:
            destroyed = [scope for scope in scopes if scope in self._wrapped]
            for scope in destroyed:
                del self._wrapped[scope]
                self._cache.pop(scope, None)
            if destroyed:
                self._save()
        for scope in destroyed:
            log.info("destroyed the data key of %s", scope)
        return destroyed

    def _unwrap(self, scope: str, wrapped_hex: str) -> bytes:
        blob = bytes.fromhex(wrapped_hex)
        try:
            return self._wrap.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], scope.encode())
        except InvalidTag:
            raise KeyFileError(
                f"data key store {self.path}: the key of {scope!r} does not unwrap with this master key; "
                "the store belongs to another master key"
            ) from None

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            raise KeyFileError(f"data key store {self.path} could not be read: {error}") from error
        if not isinstance(data, dict) or not isinstance(data.get("keys"), dict):
            raise KeyFileError(
                f"data key store {self.path} is not a key store; restore it from a backup"
            )
        if data.get("wrapped_by") != self._fingerprint:
            raise KeyFileError(
                f"data key store {self.path} is wrapped by another master key; "
                "use the master key it was made with"
            )
        return {str(k): str(v) for k, v in data["keys"].items()}

    def _save(self) -> None:
        # Write a new file and rename it over the old one, so a crash leaves
        # the old or the new store, never a torn one.
        temporary = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(
                {"wrapped_by": self._fingerprint, "keys": self._wrapped}, file, sort_keys=True
            )
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def fingerprint(wrap_key: bytes) -> str:
    """Return a short public name for a wrapping key, to tell which master key wrapped a store."""
    return hashlib.sha256(b"edgeward/keystore-fingerprint/" + wrap_key).hexdigest()[:16]


def store_fingerprint(path: Path) -> str | None:
    """Return the fingerprint a key store file was written under, or None when there is no file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise KeyFileError(f"data key store {path} could not be read: {error}") from error
    return str(data.get("wrapped_by")) if isinstance(data, dict) else None


def master_fingerprint(master_key: bytes) -> str:
    return fingerprint(derive_key(master_key, WRAP_KEY_INFO))


def seal(key: bytes, associated: bytes, plaintext: bytes) -> bytes:
    """Encrypt with AES-256-GCM; the result is nonce + ciphertext + tag."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def unseal(key: bytes, associated: bytes, blob: bytes) -> bytes:
    """Decrypt what seal() made; raises cryptography's InvalidTag when key or data do not match."""
    return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated)


def scope_name(data_class: str, subject: str) -> str:
    return f"{data_class}/{subject}"
