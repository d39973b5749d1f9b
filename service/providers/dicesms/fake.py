"""A fake DiceSMS: serves its messages from /api/batch-ids, /api/sms-report/{batch_id}/
and the paginated /api/sms-report/ with absolute `next` links."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import unquote

from service.providers.fakes import Answer, FakeServer
from service.providers.fakes import json_answer as _json


class DiceMessage:
    """One message as DiceSMS keeps it."""

    def __init__(self, phone: int, sent_at: str, batch_id: str, status: str = "SENT",
                 delivered_at: str | None = None, text: str = "hello") -> None:
        self.phone, self.sent_at, self.batch_id = phone, sent_at, batch_id
        self.status, self.delivered_at, self.text = status, delivered_at, text

    def report(self) -> dict[str, Any]:
        return {"message": self.text, "recipients": [{"client_name": None,
                                                     "client_phone": self.phone}],
                "sent_at": self.sent_at, "delivered_at": self.delivered_at,
                "status": self.status}


class FakeDiceSms(FakeServer):
    def __init__(self, token: str = "fake-token", page_size: int = 5,
                 next_base: str | None = None, port: int = 0) -> None:
        super().__init__(port)
        self.token = token
        self.page_size = page_size
        self.next_base = next_base  # where `next` links point; our own URL by default
        self.messages: list[DiceMessage] = []
        self.snapshot: dict[str, int] | None = None  # None: answer 403, as for non-staff

    def answer(self, path: str, query: dict[str, list[str]], headers: Any) -> Answer:
        if headers.get("Authorization") != f"Token {self.token}":
            return _json(401, {"detail": "Invalid token."})
        if path == "/api/batch-ids":
            rows = [{"sent_at": m.sent_at, "delivered_at": m.delivered_at, "status": m.status,
                     "batch_id": m.batch_id} for m in self.messages]
            self.returning(len(rows))
            return _json(200, rows) if rows else _json(404, {"error": "No batch ID found."})
        if path == "/api/sms-report/":
            return self._page(int(query.get("page", ["1"])[0]))
        if path.startswith("/api/sms-report/"):
            batch_id = unquote(path.removeprefix("/api/sms-report/").rstrip("/"))
            items = [m.report() for m in self._indexed()[1].get(batch_id, [])]
            self.returning(len(items))
            return _json(200, items) if items else _json(404, {"error": "SMS message not found."})
        if path == "/api/metrics/snapshot/":
            if self.snapshot is None:
                return _json(403, {"detail": "You do not have permission to perform this action."})
            return _json(200, self.snapshot)
        return _json(404, {"detail": "Not found."})

    def _indexed(self) -> tuple[list[DiceMessage], dict[str, list[DiceMessage]]]:
        """The messages newest first, and by batch; made again when messages are added."""
        key = (id(self.messages), len(self.messages))
        if getattr(self, "_index_key", None) != key:
            self._index_key = key
            self._newest_first = sorted(self.messages, reverse=True,
                                        key=lambda m: datetime.fromisoformat(m.sent_at))
            self._by_batch: dict[str, list[DiceMessage]] = {}
            for m in self.messages:
                self._by_batch.setdefault(m.batch_id, []).append(m)
        return self._newest_first, self._by_batch

    def _page(self, page: int) -> Answer:
        newest_first = self._indexed()[0]
        start = (page - 1) * self.page_size
        items = [m.report() for m in newest_first[start:start + self.page_size]]
        self.returning(len(items))
        more = start + self.page_size < len(newest_first)
        base = self.next_base or self.url
        return _json(200, {"count": len(newest_first),
                           "next": f"{base}/api/sms-report/?page={page + 1}" if more else None,
                           "previous": None, "results": items})
