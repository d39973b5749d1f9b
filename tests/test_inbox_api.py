"""GET /v1/inbox and GET /v1/inbox/{id}: kept bodies listed, filtered, paged and read back."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service.tables import inbox
from tests.conftest import ADMIN_TOKEN, READ_TOKEN
from tests.reports import body, report

Client = AsyncTestClient  # type: ignore[type-arg]
BASIC = {"Authorization": "Basic " + base64.b64encode(b"hook:hook-password").decode()}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

GOOD = body(report("good-1"), report("good-2"))
# The number is the evidence: it must come back unmasked.
PARTIAL = body(report("ok", to="9779842271353"), report("bad", smsCount="two"))
UNPARSEABLE = b'{"results": [\xff'


async def posted(client: Client) -> dict[str, int]:
    """The three bodies pushed in this order; their inbox ids by name."""
    ids = {}
    for name, payload, status in (("good", GOOD, 200), ("partial", PARTIAL, 200),
                                  ("unparseable", UNPARSEABLE, 400)):
        response = await client.post("/webhooks/ib", content=payload, headers=BASIC)
        assert response.status_code == status, response.text
        listed = await client.get("/v1/inbox", params={"limit": 1, "state": "accepted,partial,"
                                                       "rejected"}, headers=ADMIN)
        ids[name] = listed.json()["items"][0]["id"]
    return ids


async def listed(client: Client, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/v1/inbox", params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def test_states_filter_and_the_reasons(client: Client) -> None:
    ids = await posted(client)
    default = await listed(client)  # everything not accepted, newest first
    assert [i["id"] for i in default] == [ids["unparseable"], ids["partial"]]
    unparseable, partial = default
    assert set(partial) == {"id", "source", "channel", "received_at", "content_type", "url",
                            "state", "accepted", "rejected", "reason", "size"}
    assert (partial["state"], partial["accepted"], partial["rejected"]) == ("partial", 1, 1)
    assert (partial["source"], partial["channel"], partial["url"]) == ("ib", "push", None)
    assert partial["size"] == len(PARTIAL)
    [why] = partial["reason"]
    assert (why["index"], why["message_id"]) == (1, "bad")
    assert "`$.results[1].smsCount`" in why["reason"]
    assert unparseable["state"] == "rejected"
    assert isinstance(unparseable["reason"], str)
    assert "invalid JSON" in unparseable["reason"]

    assert [i["id"] for i in await listed(client, state="rejected")] == [ids["unparseable"]]
    assert [i["id"] for i in await listed(client, state="partial")] == [ids["partial"]]
    [good] = await listed(client, state="accepted")
    assert (good["id"], good["reason"], good["accepted"]) == (ids["good"], None, 2)
    assert await listed(client, state="failed") == []
    assert await listed(client, state="received") == []
    both = [ids["unparseable"], ids["good"]]
    assert [i["id"] for i in await listed(client, state=["rejected", "accepted"])] == both
    assert [i["id"] for i in await listed(client, state="rejected,accepted")] == both


async def test_source_and_since_filters(client: Client, engine: AsyncEngine) -> None:
    await posted(client)
    assert await listed(client, source="other") == []
    assert len(await listed(client, source="ib")) == 2
    async with engine.begin() as conn:  # one body received long ago
        await conn.execute(sa.update(inbox).where(inbox.c.state == "partial")
                           .values(received_at=datetime.now(UTC) - timedelta(days=40)))
    since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert [i["state"] for i in await listed(client, since=since)] == ["rejected"]
    assert len(await listed(client, since="2000-01-01T00:00:00+05:45")) == 2


@pytest.mark.parametrize("params", [
    {"since": "2026-11-01T00:00:00"},  # no offset
    {"since": "yesterday"},
    {"state": "gone"},
    {"state": "rejected,Accepted"},
    {"cursor": "not-a-cursor"},
    {"cursor": base64.urlsafe_b64encode(str(2**63).encode()).decode()},
    {"limit": "0"},
    {"limit": "1001"},
])
async def test_bad_parameters_are_400(client: Client, params: dict[str, str]) -> None:
    response = await client.get("/v1/inbox", params=params, headers=ADMIN)
    assert response.status_code == 400, response.text


async def test_pages_through_with_a_small_limit(client: Client) -> None:
    for i in range(7):
        payload = body(report(f"m{i}"), report(f"bad{i}", smsCount="x"))
        assert (await client.post("/webhooks/ib", content=payload, headers=BASIC)).status_code == 200
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/inbox", params=params, headers=ADMIN)).json()
        seen += [i["id"] for i in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == 7
    assert seen == sorted(seen, reverse=True)


async def test_a_body_comes_back_byte_for_byte(client: Client) -> None:
    ids = await posted(client)
    got = await client.get(f"/v1/inbox/{ids['partial']}", headers=ADMIN)
    assert got.status_code == 200
    assert got.content == PARTIAL
    assert b"9779842271353" in got.content
    assert got.headers["content-type"] == "application/octet-stream"  # the push named none
    assert got.headers["x-inbox-state"] == "partial"
    assert got.headers["x-inbox-source"] == "ib"
    [kept] = await listed(client, state="partial")
    received = datetime.fromisoformat(got.headers["x-inbox-received-at"])
    assert received == datetime.fromisoformat(kept["received_at"])

    raw = await client.get(f"/v1/inbox/{ids['unparseable']}", headers=ADMIN)
    assert (raw.content, raw.headers["x-inbox-state"]) == (UNPARSEABLE, "rejected")


async def test_a_body_keeps_its_content_type(client: Client) -> None:
    headers = BASIC | {"Content-Type": "application/json; charset=utf-8"}
    assert (await client.post("/webhooks/ib", content=GOOD, headers=headers)).status_code == 200
    [kept] = await listed(client, state="accepted")
    assert kept["content_type"] == "application/json; charset=utf-8"
    got = await client.get(f"/v1/inbox/{kept['id']}", headers=ADMIN)
    assert got.headers["content-type"] == "application/json; charset=utf-8"
    assert got.content == GOOD


@pytest.mark.parametrize("kept_type", ["text/html", "image/svg+xml", "application/json", None])
async def test_a_body_is_served_as_a_download(client: Client, engine: AsyncEngine,
                                              kept_type: str | None) -> None:
    """Whatever type the sender named, a browser saves the body instead of showing it."""
    page = b"<html><script>alert(document.cookie)</script></html>"
    async with engine.begin() as conn:
        inbox_id = await conn.scalar(sa.insert(inbox).values(
            source="ib", channel="push", content_type=kept_type, body=page, state="rejected",
            accepted=0, rejected=0, reason="x").returning(inbox.c.id))
    got = await client.get(f"/v1/inbox/{inbox_id}", headers=ADMIN)
    assert got.status_code == 200
    assert got.content == page
    assert got.headers["content-type"].startswith(kept_type or "application/octet-stream")
    assert got.headers["content-disposition"] == f'attachment; filename="inbox-{inbox_id}.bin"'
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-security-policy"] == "sandbox"


@pytest.mark.parametrize("kept_type", ["text/plain; name=\u00e9\u20ac", "", "a\tb"])
async def test_an_odd_kept_content_type_is_not_repeated(client: Client, engine: AsyncEngine,
                                                        kept_type: str) -> None:
    async with engine.begin() as conn:  # as a provider's page could have been kept
        inbox_id = await conn.scalar(sa.insert(inbox).values(
            source="ib", channel="pull", content_type=kept_type, body=b"{}", state="rejected",
            accepted=0, rejected=0, reason="x").returning(inbox.c.id))
    got = await client.get(f"/v1/inbox/{inbox_id}", headers=ADMIN)
    assert got.status_code == 200
    assert got.content == b"{}"
    if kept_type.isprintable():
        assert got.headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize("path", ["/v1/inbox/999999", "/v1/inbox/0", "/v1/inbox/-1",
                                  f"/v1/inbox/{2**63}", f"/v1/inbox/{10**30}", "/v1/inbox/abc",
                                  "/v1/inbox/1.5"])
async def test_unknown_or_impossible_ids(client: Client, path: str) -> None:
    response = await client.get(path, headers=ADMIN)
    assert response.status_code in (400, 404), response.text


@pytest.mark.parametrize("path", ["/v1/inbox", "/v1/inbox/1"])
async def test_admin_scope_only(client: Client, path: str) -> None:
    assert (await client.get(path)).status_code == 401
    assert (await client.get(path, headers={"Authorization": "Bearer nope"})).status_code == 401
    read = {"Authorization": f"Bearer {READ_TOKEN}"}
    assert (await client.get(path, headers=read)).status_code == 403


async def test_ids_do_not_become_metric_labels(client: Client) -> None:
    for inbox_id in range(1000, 1005):  # unauthenticated: answered 401, still measured
        assert (await client.get(f"/v1/inbox/{inbox_id}")).status_code == 401
    scraped = (await client.get("/metrics")).text
    assert 'route="/v1/inbox/{inbox_id' in scraped  # the route's template
    assert "/v1/inbox/100" not in scraped
