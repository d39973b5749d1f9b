"""Each kind's status table, walked row by row through the kind's own decoder: every
documented status merges to the group and finality its row says, each row names its
source; Infobip's DELIVERED_TO_OPERATOR is intermediate and closes after its window."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import permutations
from typing import Any
from urllib.parse import urlencode

import msgspec
import pytest
import sqlalchemy as sa
from infobip_api_client.models import SmsDeliveryResult, SmsMessageStatus
from infobip_api_client.models.message_general_status import MessageGeneralStatus
from sqlalchemy.ext.asyncio import AsyncEngine

from service import rules, store, worker
from service.providers import Report, dicesms, infobip, registry, sinch, twilio, vonage
from service.providers.base import Status, StatusTable
from service.providers.infobip import status as infobip_status
from service.providers.twilio.fake import callback, message
from service.providers.vonage.fake import receipt, record
from service.tables import message_history, messages
from tests.reports import report
from tests.test_infobip_v3 import sdk_json, sdk_report

SENT = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
KINDS = {"infobip": infobip_status.table(), "twilio": twilio.STATUSES,
         "vonage": vonage.STATUSES, "sinch": sinch.STATUSES,
         "dicesms": dicesms.status.STATUSES}


def rows() -> Iterator[tuple[str, str, Status]]:
    for kind, table in KINDS.items():
        for raw, row in table.items():
            yield kind, raw, row


@pytest.mark.parametrize(("kind", "raw", "row"), list(rows()))
def test_every_row_says_where_it_comes_from(kind: str, raw: str, row: Status) -> None:
    assert row.group in ("PENDING", "DELIVERED", "UNDELIVERABLE", "EXPIRED", "REJECTED")
    assert row.final == (row.group != "PENDING") or row.closes_after_s, (kind, raw)
    assert row.final or row.group == "PENDING" or row.closes_after_s, \
        f"{kind} {raw}: an intermediate status past PENDING must close some time"
    assert len(row.source) > 20 and ("." in row.source or "seeds" in row.source)


def decoded(kind: str, raw: str) -> Report:
    """A report with status `raw`, through the kind's own decoder."""
    if kind == "infobip":
        status_id, row = infobip_status.STATUSES[raw.upper()]
        wire = report("m1", group_id=infobip_status.GROUP_IDS[row.group], status_id=status_id)
        wire["status"]["name"] = raw.upper()
        [got], _ = infobip.decode_reports("ib", json.dumps({"results": [wire]}).encode())
        return got
    if kind == "twilio":
        resource = message("AC" + "a" * 32, "SM" + "1" * 32, "+14155552671", raw, SENT)
        source = twilio.TwilioSource("tw", "http://127.0.0.1:1")
        [got], _ = twilio.decode_callback(source, urlencode(callback(resource, raw)).encode())
        return got
    if kind == "vonage":
        part = record("abcd1234", "0B00000123", "447700900000", raw, SENT,
                      SENT + timedelta(seconds=5))
        source = vonage.VonageSource("vg", "http://127.0.0.1:1")
        [got], _ = vonage.decode_receipt(source, urlencode(receipt(part)).encode(),
                                         "application/x-www-form-urlencoded")
        return got
    if kind == "sinch":
        body = {"type": "recipient_delivery_report_sms", "batch_id": "01B", "code": 0,
                "recipient": "46701234567", "status": raw, "at": "2026-11-01T10:00:05.000Z"}
        source = sinch.SinchSource("sn", "http://127.0.0.1:1")
        [got], _ = sinch.decode_report(source, json.dumps(body).encode())
        return got
    item = msgspec.convert({"sent_at": "2026-11-01T10:00:00.000000+05:45", "status": raw,
                            "message": "hi", "recipients": [{"client_phone": 9842271353}]},
                           dicesms.SmsReport)
    [got] = dicesms.to_reports(dicesms.DiceSmsSource("dice", "http://127.0.0.1:1"),
                               dicesms.StatusTable({}), item, "b1")
    return got


@pytest.mark.parametrize(("kind", "raw", "row"), list(rows()))
def test_every_row_merges_as_it_says(kind: str, raw: str, row: Status) -> None:
    got = decoded(kind, raw)
    assert (got.status, got.final) == (row.group, row.final), (kind, raw)
    assert got.status_name is not None and got.status_name.lower() == raw.lower()


def test_each_kind_gives_the_service_its_table() -> None:
    for provider in registry.PROVIDERS:
        source = provider.config(f"s-{provider.kind}", "http://127.0.0.1:1")
        table = provider.statuses(source)
        assert table and table == {k.lower(): v for k, v in KINDS[provider.kind].items()}


def test_a_status_map_overrides_a_row_and_says_so() -> None:
    table = StatusTable("tw", twilio.STATUSES, {"sent": "DELIVERED"})
    assert table.row("SENT") == Status("DELIVERED", True, "status_map of source tw")
    assert table.row("sent?") == Status("PENDING", False, table.row("sent?").source)


def test_dicesms_an_explicit_failure_stands_over_a_delivery_time() -> None:
    statuses = dicesms.StatusTable({})
    for raw, row in dicesms.status.STATUSES.items():
        expected = row.group if row.final else "DELIVERED"
        assert statuses.group(raw, delivered=True) == expected, raw
    assert statuses.group("SOMETHING_NEW", delivered=True) == "DELIVERED"


def operator_then(i: int, final_name: str, group: MessageGeneralStatus, group_id: int,
                  status_id: int, seconds: int) -> list[dict[str, Any]]:
    """Infobip's two reports of one message, built with its SDK's models: reached the
    operator, then `final_name` `seconds` later."""
    first = sdk_report(i, status=SmsMessageStatus(
        group_id=3, group_name=MessageGeneralStatus.DELIVERED, id=2,
        name="DELIVERED_TO_OPERATOR", description="Message delivered to operator"),
        done_at=SENT + timedelta(seconds=10), error=None)
    then = sdk_report(i, status=SmsMessageStatus(
        group_id=group_id, group_name=group, id=status_id, name=final_name,
        description=final_name), done_at=SENT + timedelta(seconds=seconds), error=None)
    return [sdk_json(SmsDeliveryResult(results=[r]))["results"][0] for r in (first, then)]


@pytest.mark.parametrize(("final_name", "group", "group_id", "status_id", "expected"), [
    ("DELIVERED_TO_HANDSET", MessageGeneralStatus.DELIVERED, 3, 5, "DELIVERED"),
    ("UNDELIVERABLE_NOT_DELIVERED", MessageGeneralStatus.UNDELIVERABLE, 2, 9, "UNDELIVERABLE"),
])
def test_delivered_to_operator_then_a_final_report_in_either_order(
        final_name: str, group: MessageGeneralStatus, group_id: int, status_id: int,
        expected: str) -> None:
    reports = [infobip.decode_reports("ib", json.dumps({"results": [wire]}).encode())[0][0]
               for wire in operator_then(1, final_name, group, group_id, status_id, 40)]
    assert not reports[0].final and reports[0].status == "DELIVERED"
    for order in permutations(reports):
        merged = rules.merge(rules.merge(None, order[0]), order[1])
        assert (merged.status, merged.final, merged.status_name) == (expected, True, final_name)
    # and the operator's report alone leaves the message open
    assert not rules.merge(None, reports[0]).final


def test_an_intermediate_status_outranks_pending_whatever_the_times() -> None:
    operator = decoded("infobip", "DELIVERED_TO_OPERATOR")
    later_pending = msgspec.structs.replace(
        decoded("infobip", "PENDING_ENROUTE"), done_at=operator.done_at + timedelta(hours=1))
    for order in permutations([operator, later_pending]):
        merged = rules.merge(rules.merge(None, order[0]), order[1])
        assert merged.status_name == "DELIVERED_TO_OPERATOR"


async def merged_rows(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        return {r.message_id: r for r in (await conn.execute(sa.select(messages))).all()}


async def test_an_intermediate_status_closes_once_its_window_has_passed(
        engine: AsyncEngine) -> None:
    source = infobip.InfobipSource("ib", "http://127.0.0.1:1")
    old, recent, handset = (operator_then(i, "DELIVERED_TO_HANDSET",
                                          MessageGeneralStatus.DELIVERED, 3, 5, 40)
                            for i in range(3))
    async with engine.begin() as conn:
        wires = [old[0], recent[0], *handset]
        reports = infobip.decode_reports("ib", json.dumps({"results": wires}).encode())[0]
        # MSG-0 was sent three days ago; MSG-1 an hour ago
        reports[0] = msgspec.structs.replace(reports[0], sent_at=SENT - timedelta(days=3))
        await store.write(conn, [], [(r, "push") for r in reports])
    now = SENT + timedelta(hours=1)
    assert await worker.close_intermediate(engine, source, now) == 1
    assert await worker.close_intermediate(engine, source, now) == 0  # once
    rows = await merged_rows(engine)
    assert (rows["MSG-0"].status, rows["MSG-0"].final) == ("DELIVERED", True)
    assert rows["MSG-0"].status_name == "DELIVERED_TO_OPERATOR"
    assert "made final by the reconciler" in rows["MSG-0"].status_description
    assert not rows["MSG-1"].final  # its window is still open
    assert rows["MSG-2"].status_name == "DELIVERED_TO_HANDSET"  # closed by its provider
    async with engine.connect() as conn:
        channels = (await conn.execute(sa.select(message_history.c.channel).where(
            message_history.c.message_id == "MSG-0"))).scalars().all()
    assert sorted(channels) == ["closed", "push"]
    # a handset report arriving after the close still has the last word
    late = infobip.decode_reports("ib", json.dumps({"results": [old[1]]}).encode())[0]
    async with engine.begin() as conn:
        await store.write(conn, [], [(late[0], "push")])
    assert (await merged_rows(engine))["MSG-0"].status_name == "DELIVERED_TO_HANDSET"


def test_a_sinch_unknown_is_final() -> None:
    got = decoded("sinch", "Unknown")
    assert (got.status, got.final) == ("EXPIRED", True)


def test_price_is_untouched_by_the_tables() -> None:
    got = decoded("infobip", "DELIVERED_TO_OPERATOR")
    assert got.price_amount == Decimal("0.01")
