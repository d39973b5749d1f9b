"""Builders for Infobip-compatible report bodies used across tests."""

from __future__ import annotations

import json
from typing import Any

from service import ingest
from service.ingest import Envelope
from service.providers import infobip

GROUPS = {1: "PENDING", 2: "UNDELIVERABLE", 3: "DELIVERED", 4: "EXPIRED", 5: "REJECTED"}


def report(message_id: str, group_id: int = 3, status_id: int = 5,
           done_at: str = "2026-11-01T10:00:05.000+0000", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "bulkId": "bulk-1",
        "messageId": message_id,
        "to": "41793026727",
        "sentAt": "2026-11-01T10:00:00.000+0000",
        "doneAt": done_at,
        "smsCount": 1,
        "price": {"pricePerMessage": 0.01, "currency": "EUR"},
        "status": {"groupId": group_id, "groupName": GROUPS.get(group_id, "NEW_GROUP"),
                   "id": status_id, "name": f"STATUS_{status_id}", "description": "d"},
        "error": {"groupId": 0, "groupName": "Ok", "id": 0, "name": "NO_ERROR",
                  "description": "No Error", "permanent": False},
    }
    body.update(extra)
    return body


def body(*reports: dict[str, Any]) -> bytes:
    return json.dumps({"results": list(reports)}).encode()


def pushed(source: str | infobip.InfobipSource, raw: bytes) -> Envelope:
    """`raw` decoded as a push to an Infobip source (or one named `source`, without rates)."""
    if isinstance(source, str):
        source = infobip.InfobipSource(source, "http://127.0.0.1:1")
    name = source.name
    return ingest.decode(source, "push", raw, "application/json",
                         lambda b: infobip.decode_reports(name, b))
