"""API routes for the consent ledger and the audit log."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from edgeward.agent.api import BadRequest, Handler, Request, allow_parameters
from edgeward.errors import ConsentError
from edgeward.store.audit import VerifyResult
from edgeward.store.ledger import ConsentLedger

CONSENT_FIELDS = {
    "action",
    "subject",
    "purpose",
    "data_classes",
    "expires_at",
    "method",
    "policy_sha256",
}


def consent_routes(
    ledger: ConsentLedger,
    verify: Callable[[], VerifyResult],
    lock: threading.Lock,
    check: Callable[[], list[str]] = list,
) -> dict[str, dict[str, Handler]]:
    """Build the handlers of /v1/consents, /v1/consents/history and /v1/audit/verify."""

    def list_in_force(request: Request) -> dict[str, Any]:
        allow_parameters(request.query, set())
        return {"consents": [record.to_json() for record in ledger.in_force()]}

    def history(request: Request) -> dict[str, Any]:
        allow_parameters(request.query, {"subject"})
        try:
            records = ledger.history(request.query.get("subject") or None)
        except ConsentError as error:
            raise BadRequest(str(error)) from None
        return {"history": [record.to_json() for record in records]}

    def record(request: Request) -> dict[str, Any]:
        allow_parameters(request.query, set())
        body = _json_body(request.body)
        try:
            committed, erased, withdrawn = ledger.record(
                action=_choice(body, "action", ("grant", "revoke")),
                subject=_text(body, "subject"),
                purpose=_text(body, "purpose"),
                data_classes=_text_list(body, "data_classes"),
                actor=_actor(request),
                method=_text(body, "method", default="api"),
                expires_at=_number_or_none(body, "expires_at"),
                policy_sha256=_sha256_or_none(body, "policy_sha256"),
            )
        except ConsentError as error:
            raise BadRequest(str(error)) from None
        return {
            "consent": committed.to_json(),
            "erased_rows": erased,
            "withdrawn_messages": withdrawn,
        }

    def audit_verify(request: Request) -> dict[str, Any]:
        allow_parameters(request.query, set())
        with lock:
            result = verify()
        return {
            "ok": result.ok,
            "rows": result.rows,
            "broken_id": result.broken_id,
            "reason": result.reason,
        }

    def erase(request: Request) -> dict[str, Any]:
        allow_parameters(request.query, set())
        body = _json_body(request.body, {"subject", "data_classes"})
        try:
            erased, destroyed = ledger.erase(
                _text(body, "subject"), _text_list(body, "data_classes"), _actor(request)
            )
        except ConsentError as error:
            raise BadRequest(str(error)) from None
        return {"erased_rows": erased, "destroyed_keys": destroyed}

    def store_check(request: Request) -> dict[str, Any]:
        allow_parameters(request.query, set())
        with lock:
            problems = check()
        return {"ok": not problems, "problems": problems}

    return {
        "/v1/store/check": {"GET": store_check},
        "/v1/erase": {"POST": erase},
        "/v1/consents": {"GET": list_in_force, "POST": record},
        "/v1/consents/history": {"GET": history},
        "/v1/audit/verify": {"GET": audit_verify},
    }


def _actor(request: Request) -> str:
    return f"uid:{request.uid}" if request.uid is not None else "uid:unknown"


def _json_body(body: bytes, fields: set[str] = CONSENT_FIELDS) -> dict[str, Any]:
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadRequest(f"the body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object with 'action', 'subject' and 'purpose'")
    unknown = sorted(set(data) - fields)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(fields))}")
    return data


def _text(body: dict[str, Any], key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"field {key!r} must be a non-empty string")
    return value


def _choice(body: dict[str, Any], key: str, choices: tuple[str, ...]) -> Any:
    value = body.get(key)
    if value not in choices:
        raise BadRequest(f"field {key!r} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _text_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"field {key!r} must be a list of strings")
    return value


def _number_or_none(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"field {key!r} must be epoch seconds or null, got {value!r}")
    return float(value)


def _sha256_or_none(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or len(value) != 64
        or any(c not in "0123456789abcdef" for c in value)
    ):
        raise BadRequest(f"field {key!r} must be 64 lowercase hex digits (a SHA-256)")
    return value
