"""Exceptions raised by edgeward.

Every error the daemon or the CLI reports is one of these. Third-party
errors (PyYAML, sqlcipher3, the TFLite runtimes, paho) are converted where
they first appear, with ``raise ... from`` so the cause stays attached.

    EdgewardError
    ├── ConfigError            invalid configuration; fix the file and retry
    │   └── ModelError         a model file is missing, unreadable or rejected
    ├── KeyFileError           the master key file is missing, malformed or too open
    ├── StoreError             the encrypted database failed
    │   ├── WrongKeyError      the key does not open this database; nothing was changed
    │   └── SchemaError        the database schema is newer than this program
    ├── ConsentError           a consent request names an unknown subject, purpose or class
    ├── InferenceError         a window could not be run through its model
    │   └── ShapeMismatchError the window does not fit the model's input tensor
    └── ApiError               the local API returned an error or could not be reached

Retrying helps only for ApiError (the daemon may be starting) and for some
StoreError cases (a locked database); the others need a changed input.
"""

from __future__ import annotations


class EdgewardError(Exception):
    """Base class of every error edgeward raises on purpose."""


class ConfigError(EdgewardError):
    """The configuration is invalid. The message names the key path and, when known, line:column."""


class ModelError(ConfigError):
    """A model file is missing, unreadable, or rejected by the TFLite runtime."""


class KeyFileError(EdgewardError):
    """The master key file is missing, malformed, or readable by other users."""


class StoreError(EdgewardError):
    """The encrypted database could not be opened, read or written."""


class WrongKeyError(StoreError):
    """The key does not decrypt the database. The file was left unchanged."""


class SchemaError(StoreError):
    """The database was written by a newer edgeward and cannot be opened safely."""


class ConsentError(EdgewardError):
    """A consent request names an unknown subject, purpose or data class."""


class InferenceError(EdgewardError):
    """A window could not be run through its model."""


class ShapeMismatchError(InferenceError):
    """The window's shape does not fit the model's input tensor."""


class ApiError(EdgewardError):
    """The local API returned an error or could not be reached."""
