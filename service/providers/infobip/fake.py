"""A fake Infobip: hands out each queued report once from GET /sms/1/reports, and answers
GET /sms/1/logs?messageId= from `logs` without consuming."""

from __future__ import annotations

from collections import deque
from typing import Any

from service.providers.fakes import Answer, FakeServer
from service.providers.fakes import json_answer as _json


class FakeInfobip(FakeServer):
    def __init__(self, api_key: str = "fake-key", port: int = 0) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.queued: deque[dict[str, Any]] = deque()
        self.logs: dict[str, dict[str, Any]] = {}  # messageId -> latest state, not consumed

    def queue(self, *reports: dict[str, Any]) -> None:
        with self.lock:
            self.queued.extend(reports)

    def answer(self, path: str, query: dict[str, list[str]], headers: Any) -> Answer:
        if headers.get("Authorization") != f"App {self.api_key}":
            return _json(401, {"requestError": {"serviceException": {"messageId": "UNAUTHORIZED"}}})
        if path == "/sms/1/logs":
            wanted = query.get("messageId", [""])[0]
            return _json(200, {"results": [self.logs[wanted]] if wanted in self.logs else []})
        if path != "/sms/1/reports":
            return _json(404, {})
        limit = min(int(query.get("limit", ["50"])[0]), 1000)
        taken = [self.queued.popleft() for _ in range(min(limit, len(self.queued)))]
        return _json(200, {"results": taken})
