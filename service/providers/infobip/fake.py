"""A fake Infobip, speaking its v3 API and the older v1 one.

GET /sms/3/reports and /sms/1/reports hand out each queued report once, in the shape of
their version; GET /sms/3/logs answers from `logs` without consuming, filtered by lists of
message or bulk ids and by the time sent, a page at a time with `useCursor`; GET
/sms/1/logs by one messageId. Reports and logs may be given in either shape.
"""

from __future__ import annotations

import base64
from collections import deque
from datetime import datetime
from typing import Any

from service.providers.fakes import Answer, FakeServer
from service.providers.fakes import json_answer as _json

LIMIT = 1000  # the most reports or logs one request returns
V1_NAMES = {"sender": "from", "messageCount": "smsCount"}
_UNAUTHORIZED = {"requestError": {"serviceException": {
    "messageId": "UNAUTHORIZED", "text": "Invalid login details"}}}


def as_v3(report: dict[str, Any]) -> dict[str, Any]:
    """A report in the v3 shape: sender, messageCount, platform."""
    out = {next((v3 for v3, v1 in V1_NAMES.items() if v1 == k), k): v for k, v in report.items()
           if k not in ("entityId", "applicationId")}
    platform = {k: report[k] for k in ("entityId", "applicationId") if k in report}
    if platform:
        out["platform"] = platform | out.get("platform", {})
    return out


def as_v1(report: dict[str, Any]) -> dict[str, Any]:
    """A report in the v1 shape: from, smsCount, entityId and applicationId on top."""
    out = {V1_NAMES.get(k, k): v for k, v in report.items()
           if k not in ("platform", "campaignReferenceId")}
    return out | dict(report.get("platform") or {})


def as_v3_log(report: dict[str, Any]) -> dict[str, Any]:
    """A log entry: a v3 report with destination for to, its text as content, no
    callbackData."""
    log = {("destination" if k == "to" else k): v for k, v in as_v3(report).items()
           if k not in ("callbackData", "text")}
    if "text" in report:
        log["content"] = {"text": report["text"]}
    return log


def _time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")


class FakeInfobip(FakeServer):
    def __init__(self, api_key: str = "fake-key", port: int = 0) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.queued: deque[dict[str, Any]] = deque()
        self.handed_out: set[str] = set()  # messageIds of the one-time reports served
        self.logs: dict[str, dict[str, Any]] = {}  # messageId -> latest state, not consumed

    def queue(self, *reports: dict[str, Any]) -> None:
        with self.lock:
            self.queued.extend(reports)

    def answer(self, path: str, query: dict[str, list[str]], headers: Any) -> Answer:
        if headers.get("Authorization") != f"App {self.api_key}":
            return _json(401, _UNAUTHORIZED)
        limit = int(query.get("limit", ["50"])[0])
        if limit > LIMIT:
            return _json(400, {"requestError": {"serviceException": {
                "messageId": "BAD_REQUEST", "text": f"limit: must be at most {LIMIT}"}}})
        if path in ("/sms/3/reports", "/sms/1/reports"):
            shape = as_v3 if path.startswith("/sms/3") else as_v1
            taken = [self.queued.popleft() for _ in range(min(limit, len(self.queued)))]
            self.returning(len(taken))


            self.handed_out.update(str(r.get("messageId")) for r in taken)
            return _json(200, {"results": [shape(r) for r in taken]})
        if path == "/sms/3/logs":
            return self._logs(query, limit)
        if path == "/sms/1/logs":
            wanted = query.get("messageId", [""])[0]
            found = [as_v1(self.logs[wanted])] if wanted in self.logs else []
            self.returning(len(found))
            return _json(200, {"results": found})
        return _json(404, {"requestError": {"serviceException": {"messageId": "NOT_FOUND"}}})

    def _logs(self, query: dict[str, list[str]], limit: int) -> Answer:
        def listed(name: str) -> set[str] | None:  # repeated, or comma-separated, or both
            values = [v for given in query.get(name, []) for v in given.split(",") if v]
            return set(values) if name in query else None

        message_ids, bulk_ids = listed("messageId"), listed("bulkId")
        since = _time(query["sentSince"][0]) if "sentSince" in query else None
        until = _time(query["sentUntil"][0]) if "sentUntil" in query else None
        found = []
        for log in self.logs.values():
            sent = _time(log["sentAt"]) if log.get("sentAt") else None
            if (message_ids is None or log["messageId"] in message_ids) and \
                    (bulk_ids is None or log.get("bulkId") in bulk_ids) and \
                    (since is None or (sent is not None and sent >= since)) and \
                    (until is None or (sent is not None and sent < until)):
                found.append(log)
        start = int(base64.b64decode(query["cursor"][0])) if "cursor" in query else 0
        page = found[start:start + limit]
        self.returning(len(page))
        body: dict[str, Any] = {"results": [as_v3_log(log) for log in page]}
        if query.get("useCursor") == ["true"]:
            more = start + limit < len(found)
            body["cursor"] = {"limit": limit, "nextCursor": base64.b64encode(
                str(start + limit).encode()).decode() if more else None}
        return _json(200, body)
