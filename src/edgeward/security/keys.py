"""The master key and the keys derived from it.

The master key is 32 random bytes, kept in a key file as 64 hex digits (or as
the 32 raw bytes). Each use gets its own key derived with HKDF-SHA256, so the
database key can be rotated or replaced without touching other uses.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgeward.errors import KeyFileError

log = logging.getLogger(__name__)

KEY_BYTES = 32
# Owner read/write and group read at most: 0600, 0640, 0400 and 0440 pass.
ALLOWED_KEY_MODE = 0o640
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
DATABASE_KEY_INFO = b"edgeward/sqlcipher/v1"


def load_master_key(path: Path, create: bool = False) -> bytes:
    """Read the master key file; create it (mode 0600) first when `create` is set and it is missing."""
    if create and not path.exists():
        _create_key_file(path)

    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyFileError(
            f"key file {path} not found; create it with "
            f"'umask 077; head -c 32 /dev/urandom | xxd -p -c 64 > {path}' or set database.key_file"
        ) from None
    except OSError as error:
        raise KeyFileError(f"key file {path} could not be read: {error.strerror}") from error

    mode = stat.S_IMODE(info.st_mode)
    if mode & ~ALLOWED_KEY_MODE:
        raise KeyFileError(
            f"key file {path} has mode {mode:04o}, which lets other users read or change it; "
            f"run 'chmod 600 {path}' (0640 is allowed for a group of readers)"
        )

    try:
        data = path.read_bytes()
    except OSError as error:
        raise KeyFileError(f"key file {path} could not be read: {error.strerror}") from error
    return _parse_key(data, path)


def master_key_path(key_file: Path, credential: str | None) -> Path:
    """Return where the master key is: a systemd credential when one is named and passed, else the key file.

    systemd's LoadCredential= and LoadCredentialEncrypted= put the credential in
    $CREDENTIALS_DIRECTORY/<name>, readable only by the service.
    """
    if credential is None:
        return key_file
    directory = os.environ.get(CREDENTIALS_ENV)
    if directory is None and key_file.exists():
        # A command run outside the service (by root, say) reads the key file itself.
        return key_file
    if directory is None:
        raise KeyFileError(
            f"database.key_credential is {credential!r} but ${CREDENTIALS_ENV} is not set; "
            f"run under systemd with LoadCredential={credential}:<key file>, or unset key_credential"
        )
    return Path(directory) / credential


def derive_key(master_key: bytes, info: bytes) -> bytes:
    """Derive a 256-bit key for one use (named by `info`) from the master key."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info)
    return hkdf.derive(master_key)


def _parse_key(data: bytes, path: Path) -> bytes:
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(text) == 2 * KEY_BYTES:
        raise KeyFileError(
            f"key file {path} has 64 characters but they are not all hex digits (0-9, a-f); "
            "make a new key with 'head -c 32 /dev/urandom | xxd -p -c 64'"
        )
    raise KeyFileError(
        f"key file {path} must contain 64 hex digits or 32 raw bytes, found {len(data)} bytes; "
        "make a new key with 'head -c 32 /dev/urandom | xxd -p -c 64'"
    )


def _create_key_file(path: Path) -> None:
    # Written to a temporary file and linked into place, so another process
    # starting at the same time sees no key file or a whole one, never an empty one.
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_hex(KEY_BYTES) + "\n")
        file.flush()
        os.fsync(file.fileno())
    try:
        os.link(temporary, path)
    except FileExistsError:
        return
    finally:
        temporary.unlink()
    log.info("created a new master key in %s (mode 0600)", path)
