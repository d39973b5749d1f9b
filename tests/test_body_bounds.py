"""A body is read within bounds as it is parsed: XML and JSON alike stop at a count of
elements or values derived from the report cap and at a nesting depth, so that a hostile
body costs about what a legal one of its size costs; what they refuse is kept."""

from __future__ import annotations

import base64
from typing import Any

import sqlalchemy as sa
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service import providers
from service.providers import infobip
from service.tables import inbox

Client = AsyncTestClient  # type: ignore[type-arg]
BASIC = {"Authorization": "Basic " + base64.b64encode(b"hook:hook-password").decode()}
MAX_BODY = 8 * 1024 * 1024  # DLR_MAX_BODY_BYTES by default
XML = "application/xml"


async def push(client: Client, body: bytes, content_type: str = "application/json") -> Any:
    return await client.post("/webhooks/ib", content=body,
                             headers=BASIC | {"Content-Type": content_type})


async def last_kept(engine: AsyncEngine) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(inbox).order_by(inbox.c.id.desc()).limit(1))).one()


def xml_report(message_id: str) -> str:
    return (f"<result><messageId>{message_id}</messageId><to>41793026727</to><status>"
            "<groupId>3</groupId><groupName>DELIVERED</groupName><id>5</id></status></result>")


# --- XML --------------------------------------------------------------------------------------

async def test_an_xml_body_of_a_million_empty_elements_is_cut_short(
        client: Client, engine: AsyncEngine) -> None:
    body = b"<reportResponse>" + b"<a/>" * ((MAX_BODY - 40) // 4) + b"</reportResponse>"
    answer = await push(client, body, XML)
    assert answer.status_code == 413, answer.text
    assert f"at most {providers.MAX_VALUES}" in answer.json()["detail"]
    kept = await last_kept(engine)
    assert (kept.state, kept.body) == ("rejected", body)


async def test_an_xml_body_nested_a_million_deep_is_cut_short(client: Client,
                                                               engine: AsyncEngine) -> None:
    depth = (MAX_BODY - 40) // 7
    body = b"<results>" + b"<a>" * depth + b"</a>" * depth + b"</results>"
    answer = await push(client, body, XML)
    assert answer.status_code == 400, answer.text
    assert f"deeper than {infobip.MAX_XML_DEPTH}" in answer.json()["detail"]
    assert (await last_kept(engine)).state == "rejected"


async def test_an_xml_element_of_a_million_attributes_is_cut_short(client: Client) -> None:
    attributes = b" ".join(b'a%d=""' % i for i in range(900_000))[:MAX_BODY - 100]
    body = b"<reportResponse><a " + attributes.rpartition(b" ")[0] + b"/></reportResponse>"
    answer = await push(client, body, XML)
    assert answer.status_code in (400, 413), answer.text
    assert "XML" in answer.json()["detail"]


async def test_many_attributes_count_against_the_elements(client: Client) -> None:
    tag = b"<a " + b" ".join(b'a%d=""' % i for i in range(1000)) + b"/>"
    body = b"<reportResponse>" + tag * (providers.MAX_VALUES // 1000 + 1) + b"</reportResponse>"
    answer = await push(client, body, XML)
    assert answer.status_code == 413, answer.text


async def test_a_legal_xml_body_at_the_cap_is_read(client: Client) -> None:
    reports = "".join(xml_report(f"x-{i}") for i in range(providers.MAX_REPORTS))
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<reportResponse xmlns="urn:x"><results>' \
           f"{reports}</results></reportResponse>".encode()
    answer = await push(client, body, XML)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == providers.MAX_REPORTS
