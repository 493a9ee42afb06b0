"""Sealing of restricted-tier results: the whole result in one AES-256-GCM blob.

The associated data binds a blob to its table, class and stream, so a sealed
payload moved to another row does not open.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag

from edgeward.security.keystore import seal, unseal
from edgeward.store.rows import ResultRow


def _associated(data_class: str, stream: str) -> bytes:
    return f"results/{data_class}/{stream}".encode()


def seal_result(key: bytes, row: ResultRow) -> bytes:
    payload = {
        "label": row.label,
        "score": row.score,
        "anomaly": row.anomaly,
        "outputs": np.frombuffer(row.outputs, dtype="<f8").tolist(),
        "raw_output": row.raw_output.hex(),
    }
    return seal(key, _associated(row.data_class, row.stream), json.dumps(payload).encode())


def unseal_result(
    key: bytes | None, data_class: str, stream: str, blob: bytes
) -> dict[str, Any] | None:
    """Return the sealed fields, or None when the key is gone or does not match."""
    if key is None:
        return None
    try:
        data: dict[str, Any] = json.loads(unseal(key, _associated(data_class, stream), blob))
    except InvalidTag:
        return None
    return data
