"""A fake Sinch SMS REST API: batches and their delivery reports, with a Bearer token.

GET /xms/v1/{service_plan_id}/batches (`start_date` at or after, `end_date` before, `page`,
`page_size`),
GET …/batches/{batch_id}/delivery_report (`type=summary` or `full`), and
GET …/batches/{batch_id}/delivery_report/{recipient_msisdn}, answering as Sinch does
(404 for a batch or recipient it does not know). `recipient_report()` builds the
`recipient_delivery_report_sms` callback Sinch posts for a recipient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from service.providers.fakes import Answer, FakeServer
from service.providers.fakes import json_answer as _json


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{moment.microsecond // 1000:03d}Z"


@dataclass
class Recipient:
    """One recipient's latest state in a batch."""

    msisdn: str  # digits, as Sinch lists them
    status: str = "Queued"
    code: int = 400
    at: datetime | None = None
    operator_status_at: datetime | None = None
    parts: int | None = None


@dataclass
class Batch:
    id: str
    created_at: datetime
    recipients: list[Recipient]
    sender: str = "Acme"
    client_reference: str | None = None
    body: str = "hello"
    extra: dict[str, Any] = field(default_factory=dict)

    def resource(self) -> dict[str, Any]:
        """The batch as GET /batches lists it."""
        return {"id": self.id, "to": [r.msisdn for r in self.recipients], "from": self.sender,
                "canceled": False, "body": self.body, "type": "mt_text",
                "created_at": _iso(self.created_at), "modified_at": _iso(self.created_at),
                "delivery_report": "per_recipient", "client_reference": self.client_reference,
                "flash_message": False} | self.extra


def recipient_report(batch: Batch, recipient: Recipient) -> dict[str, Any]:
    """The `recipient_delivery_report_sms` for a recipient as it stands."""
    report: dict[str, Any] = {
        "type": "recipient_delivery_report_sms", "batch_id": batch.id,
        "recipient": recipient.msisdn, "code": recipient.code, "status": recipient.status,
        "at": _iso(recipient.at or batch.created_at)}
    if recipient.operator_status_at is not None:
        report["operator_status_at"] = _iso(recipient.operator_status_at)
    if batch.client_reference:
        report["client_reference"] = batch.client_reference
    if recipient.parts is not None:
        report["number_of_message_parts"] = recipient.parts
    return report


def batch_report(batch: Batch, full: bool) -> dict[str, Any]:
    """The batch delivery report: counts per status code, and the recipients when full."""
    groups: dict[tuple[int, str], list[str]] = {}
    for r in batch.recipients:
        groups.setdefault((r.code, r.status), []).append(r.msisdn)
    statuses = []
    for (code, status), numbers in sorted(groups.items()):
        entry: dict[str, Any] = {"code": code, "count": len(numbers), "status": status}
        if full:
            entry["recipients"] = numbers
        statuses.append(entry)
    report = {"type": "delivery_report_sms", "batch_id": batch.id, "statuses": statuses,
              "total_message_count": len(batch.recipients)}
    if batch.client_reference:
        report["client_reference"] = batch.client_reference
    return report


class FakeSinch(FakeServer):
    def __init__(self, service_plan_id: str = "plan0001", api_token: str = "fake-sinch-token",
                 port: int = 0) -> None:
        super().__init__(port)
        self.service_plan_id, self.api_token = service_plan_id, api_token
        self.batches: dict[str, Batch] = {}

    def add(self, *batches: Batch) -> None:
        with self.lock:
            for batch in batches:
                self.batches[batch.id] = batch

    def answer(self, path: str, query: dict[str, list[str]], headers: Any) -> Answer:
        if headers.get("Authorization") != f"Bearer {self.api_token}":
            return _json(401, {"code": "unauthorized", "text": "Invalid credentials"})
        prefix = f"/xms/v1/{self.service_plan_id}/batches"
        if not path.startswith(prefix):
            return _json(404, {"code": "not_found", "text": "Not found"})
        rest = [unquote(p) for p in path.removeprefix(prefix).strip("/").split("/") if p]
        if not rest:
            return self._list(query)
        batch = self.batches.get(rest[0])
        if batch is None:
            return _json(404, {"code": "not_found", "text": f"Batch {rest[0]} not found"})
        if rest[1:] == ["delivery_report"]:
            full = query.get("type", ["summary"])[0] == "full"
            report = batch_report(batch, full)
            # a full report lists each recipient; a summary one count per status
            self.returning(len(batch.recipients) if full else len(report["statuses"]))
            return _json(200, report)
        if len(rest) == 3 and rest[1] == "delivery_report":
            found = next((r for r in batch.recipients if r.msisdn == rest[2].lstrip("+")), None)
            if found is None:
                return _json(404, {"code": "not_found", "text": "No delivery report found"})
            self.returning(1)
            return _json(200, recipient_report(batch, found))
        return _json(404, {"code": "not_found", "text": "Not found"})

    def _list(self, query: dict[str, list[str]]) -> Answer:
        page = int(query.get("page", ["0"])[0])
        size = min(int(query.get("page_size", ["30"])[0]), 100)
        start = query.get("start_date", [None])[0]
        end = query.get("end_date", [None])[0]
        found = sorted(self.batches.values(), key=lambda b: (b.created_at, b.id), reverse=True)
        if start:  # at or after
            since = datetime.fromisoformat(start.replace("Z", "+00:00"))
            found = [b for b in found if b.created_at >= since]
        if end:  # before
            until = datetime.fromisoformat(end.replace("Z", "+00:00"))
            found = [b for b in found if b.created_at < until]
        chunk = found[page * size:(page + 1) * size]
        self.returning(len(chunk))
        return _json(200, {"count": len(found), "page": page, "page_size": len(chunk),
                           "batches": [b.resource() for b in chunk]})
