"""The merge rule: order- and duplicate-independent, in Python and through the SQL upsert."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import phonenumbers
import phonenumbers.carrier
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from service import db, pricing, rules, store
from service.providers import MAX_TO, Report
from service.schemas import message_from_row
from service.tables import messages

T0 = datetime(2026, 11, 1, tzinfo=UTC)
GROUPS = ["PENDING", "DELIVERED", "UNDELIVERABLE", "EXPIRED", "REJECTED", "SOMETHING_NEW"]


@st.composite
def observations(draw: st.DrawFn) -> list[Report]:
    """A few observations of one message, with clashing and missing fields on purpose: some
    from providers, some from registrations (POST /v1/outbound), drawing on the same values."""
    count = draw(st.integers(1, 6))
    maybe = st.none() | st.just(None)
    out = []
    for _ in range(count):
        described = {
            # two countries, and a number whose country cannot be told
            "to": draw(st.sampled_from([None, "+41793026727", "+41793026834", "+9779801912821",
                                        "98625000000"])),
            "bulk_id": draw(st.sampled_from([None, "b1", "b2"])),
            "callback_data": draw(st.sampled_from([None, "cb", "cb-WRONG", "ç-ü"])),
            "sent_at": draw(st.sampled_from([None, T0, T0 - timedelta(seconds=1)])),
        }
        if draw(st.integers(0, 3)) == 0:
            out.append(rules.registration(source="ib", message_id="m", **described))
            continue
        report = rules.observation(
            source="ib",
            message_id="m",
            status=draw(st.sampled_from(GROUPS)),
            # intermediate now and then: a group past PENDING its provider says may still
            # change (Infobip's DELIVERED_TO_OPERATOR), or the same state made final later
            final=draw(st.sampled_from([True, True, False])),
            status_id=draw(st.none() | st.integers(1, 9)),
            status_name=draw(st.sampled_from([None, "A", "B"])),
            done_at=draw(st.none() | st.integers(0, 3).map(lambda s: T0 + timedelta(seconds=s))),
            error_id=draw(st.none() | st.integers(1, 3)),
            sms_count=draw(st.none() | st.integers(1, 3)),
            price_amount=draw(st.sampled_from([None, Decimal("0.01"), Decimal("0.02")])),
            price_currency=draw(st.sampled_from(["EUR", "USD", None])),
            mcc_mnc=draw(maybe | st.just("22801")),
            # one network spelled three ways (named as one by observation), and another
            operator=draw(st.sampled_from([None, "Ncell", "NCell", "42902", "Swisscom"])),
            part_ids=draw(st.sampled_from([None, "a1", "a2", "a1 a3", "b"])),  # Vonage's parts
            **described,
        )
        if report.sms_count is None and draw(st.booleans()):  # counted from the text
            report = msgspec.structs.replace(report, sms_count=draw(st.integers(1, 3)),
                                             registered=rules.COUNTED)
        if report.price_amount is None and draw(st.booleans()):  # a rate card's estimate
            amount, currency, specificity, rate = draw(st.sampled_from(ESTIMATES))
            report = msgspec.structs.replace(report, price_amount=amount, price_currency=currency,
                                             price_estimate=specificity, price_rate=rate)
        out.append(report)
    return out


# Estimates as a rate card gives them: clashing specificities and values on purpose.
ESTIMATES = [
    (Decimal("0.02"), "EUR", pricing.OPERATOR, '{"operator":"Swisscom"}'),
    (Decimal("0.01"), "EUR", pricing.OPERATOR, '{"from":"2026-01-01","operator":"Swisscom"}'),
    (Decimal("0.03"), "EUR", pricing.PREFIX + 4, '{"prefix":"+4179"}'),
    (Decimal("0.05"), "CHF", pricing.COUNTRY, '{"country":"CH"}'),
    (Decimal("0.01"), "EUR", pricing.EVERYTHING, "{}"),
]


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[list[Report], list[Report]]:
    """Observations, and the same ones as they might arrive: reordered, some repeated."""
    reports = draw(observations())
    repeats = draw(st.lists(st.sampled_from(reports), max_size=3))
    return reports, draw(st.permutations(reports + repeats))


def fold(reports: list[Report]) -> Report | None:
    merged = None
    for r in reports:
        merged = rules.merge(merged, r)
    return merged


@given(arrivals())
def test_merge_ignores_order_and_duplicates(case: tuple[list[Report], list[Report]]) -> None:
    reports, arrived = case
    assert fold(arrived) == fold(reports)


@given(observations(), observations())
def test_merge_is_associative(left: list[Report], right: list[Report]) -> None:
    assert rules.merge(fold(left), fold(right)) == fold(left + right)  # type: ignore[arg-type]


@given(observations())
def test_the_country_is_the_merged_recipients(reports: list[Report]) -> None:
    """`country` is derived from `to`: whichever `to` the merge keeps, it comes with it."""
    merged = fold(reports)
    assert merged is not None
    assert merged.country == rules.country(merged.to)
    assert all(r.country == rules.country(r.to) for r in reports)


@given(observations())
def test_one_name_per_network(reports: list[Report]) -> None:
    """However a report for a number of its region (or of none known) spells a network of
    NETWORKS, it names it one way; its MCC+MNC names it anywhere. Another region's network
    of that name (here a Swiss "NCell") is not it."""
    for report in reports:
        names = {None, "Ncell", "Swisscom"} | ({"NCell"} if report.country == "CH" else set())
        assert report.operator in names, report


@given(observations())
def test_final_is_never_replaced_by_pending(reports: list[Report]) -> None:
    merged = fold(reports)
    assert merged is not None
    assert merged.final == any(r.final for r in reports)
    if any(r.final for r in reports):
        assert merged.status != "PENDING"


@given(observations())
def test_intermediate_is_above_pending_and_below_final(reports: list[Report]) -> None:
    merged = fold(reports)
    assert merged is not None
    if not any(r.final for r in reports) and any(r.status != "PENDING" for r in reports):
        assert merged.status != "PENDING" and not merged.final


def _registered(report: Report) -> bool:
    return report.obs_hash == rules.REGISTRATION_HASH


@given(observations())
def test_a_provider_report_outranks_a_registration(reports: list[Report]) -> None:
    """For each field a registration can give, a provider's value wins over the registered
    one (the greatest when providers disagree); the state is a provider's when one spoke."""
    merged = fold(reports)
    assert merged is not None
    providers = [r for r in reports if not _registered(r)]
    registrations = [r for r in reports if _registered(r)]
    for name, bit in rules.REGISTERED.items():
        said = [getattr(r, name) for r in providers if getattr(r, name) is not None]
        given_ = [getattr(r, name) for r in registrations if getattr(r, name) is not None]
        if said:
            assert (getattr(merged, name), merged.registered & bit) == (max(said), 0)
        elif given_:
            assert (getattr(merged, name), merged.registered & bit) == (max(given_), bit)
        else:
            assert (getattr(merged, name), merged.registered & bit) == (None, 0)
    if providers:
        state = fold(providers)
        assert state is not None
        assert [getattr(merged, f) for f in rules.STATE_FIELDS] == \
            [getattr(state, f) for f in rules.STATE_FIELDS]


@given(observations())
def test_a_reported_price_outranks_every_estimate(reports: list[Report]) -> None:
    """The price is the greatest reported one (by amount, then currency) when a provider
    reported any; else the estimate by the most specific rate (then the greatest). Parts a
    provider reported (and the distinct parts seen) outrank parts counted from the text."""
    merged = fold(reports)
    assert merged is not None
    priced = [r for r in reports if r.price_amount is not None]
    reported = [r for r in priced if r.price_estimate == 0]
    price = (merged.price_amount, merged.price_currency or "", merged.price_estimate,
             merged.price_rate)
    if reported:
        assert price == max((r.price_amount, r.price_currency or "", 0, None) for r in reported)
    elif priced:
        best = max(priced, key=lambda r: (r.price_estimate, r.price_amount, r.price_currency,
                                          r.price_rate))
        assert price == (best.price_amount, best.price_currency, best.price_estimate,
                         best.price_rate)
    else:
        assert price == (None, "", 0, None)
    seen = {part for r in reports for part in (r.part_ids or "").split()}  # reported parts
    told = [r.sms_count for r in reports
            if r.sms_count is not None and not r.registered & rules.COUNTED] + \
        ([len(sorted(seen)[:rules.MAX_PARTS])] if seen else [])
    counted = [r.sms_count for r in reports if r.registered & rules.COUNTED]
    assert (merged.sms_count, bool(merged.registered & rules.COUNTED)) == (
        (max(told), False) if told else (max(counted), True) if counted else (None, False))


@pytest.mark.parametrize("reported", ["cb-WRONG", "cb-1"])  # sorting after, and before
def test_a_registration_loses_every_tie_with_a_provider_pending_report(reported: str) -> None:
    """The bare PENDING a provider may send (no status id, no time) still outranks it."""
    registered = rules.registration(source="ib", message_id="m", to="+41793026727",
                                        bulk_id=None, callback_data="cb-4", sent_at=T0)
    pending = rules.observation(source="ib", message_id="m", status="PENDING",
                                    callback_data=reported, sent_at=T0 - timedelta(hours=1))
    for merged in (rules.merge(registered, pending), rules.merge(pending, registered)):
        assert (merged.obs_hash, merged.callback_data) == (pending.obs_hash, reported)
        assert (merged.to, merged.sent_at) == ("+41793026727", T0 - timedelta(hours=1))
        assert merged.registered == rules.REGISTERED["to"]


def test_status_groups() -> None:
    assert rules.status_group("DELIVERED", 3) == "DELIVERED"
    assert rules.status_group("delivered", None) == "DELIVERED"
    assert rules.status_group(None, 2) == "UNDELIVERABLE"
    assert rules.status_group("QUEUED", 9) == "QUEUED"
    assert rules.status_group(None, None) == "PENDING"
    assert not rules.is_final("QUEUED")


@pytest.mark.parametrize(("raw", "region", "expected"), [
    ("41793026727", None, "+41793026727"),
    ("+41793026727", None, "+41793026727"),
    ("9842271353", "NP", "+9779842271353"),
    ("+977 984-2271353", None, "+9779842271353"),
    # ranges the numbering metadata does not know (yet): E.164 all the same
    ("9779837107012", None, "+9779837107012"),
    (" +977 (983) 710.7012 ", None, "+9779837107012"),
    ("(+977) 983-7107012", "NP", "+9779837107012"),
    ("9837107012", "NP", "+9779837107012"),
    ("09837107012", "NP", "+9779837107012"),
    ("98625000000", "NP", "+97798625000000"),
    # no phone number, or no country to be known: as given
    ("not a number", None, "not a number"),
    ("abc 9837107012", "NP", "abc 9837107012"),
    ("1", None, "1"),
    ("0 123", None, "0 123"),
    ("+999 123456", None, "+999 123456"),
    ("+977 98371070120000000", None, "+977 98371070120000000"),
])
def test_e164(raw: str, region: str | None, expected: str) -> None:
    assert rules.e164(raw, region) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("0.010", "0.01"), ("10", "10"), ("10.00", "10"), ("1E+1", "10"), ("0.0070", "0.007")])
def test_money_has_one_spelling(raw: str, expected: str) -> None:
    assert format(rules.money(Decimal(raw)), "f") == expected


# --- the same rule through PostgreSQL -----------------------------------------------------

@pytest.fixture(scope="module")
def runner(database_url: str) -> Iterator[tuple[asyncio.Runner, object]]:
    with asyncio.Runner() as run:
        engine = db.create_engine(database_url)
        yield run, engine
        run.run(engine.dispose())


def _comparable(row: object) -> dict[str, object]:
    data = msgspec.to_builtins(message_from_row(row))
    for volatile in ("message_id", "seq", "updated_at"):
        data.pop(volatile)
    return data | {"registered": row.registered,  # type: ignore[attr-defined]
                   "price_estimate": row.price_estimate}  # type: ignore[attr-defined]


def _as_row(report: Report) -> object:
    values = msgspec.structs.asdict(report) | {"seq": 0, "updated_at": T0, "matched_by": None}
    return type("Row", (), values)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrivals(), st.permutations(range(6)), st.integers(1, 4))
def test_upsert_matches_pure_merge_in_any_order(
        runner: tuple[asyncio.Runner, object], case: tuple[list[Report], list[Report]],
        permutation: list[int], batches: int) -> None:
    """Two message ids get the same observations in different orders, batches and repeats."""
    run, engine = runner
    key = uuid.uuid4().hex
    reports, arrived = case
    reordered = sorted(arrived, key=lambda r: permutation[arrived.index(r) % 6])
    orders = [arrived, reordered]

    async def apply(message_id: str, sequence: list[Report]) -> object:
        renamed = [msgspec.structs.replace(r, message_id=message_id) for r in sequence]
        for i in range(batches):
            async with db.transaction(engine) as conn:  # type: ignore[arg-type]
                await store.write(conn, [], [(r, "outbound" if _registered(r) else "push")
                                             for r in renamed[i::batches]])
        async with db.transaction(engine) as conn:  # type: ignore[arg-type]
            return await store.get_message(conn, "ib", message_id)

    rows = [run.run(apply(f"{key}-{i}", order)) for i, order in enumerate(orders)]
    expected = _comparable(_as_row(fold(reports)))  # type: ignore[arg-type]
    assert _comparable(rows[0]) == expected
    assert _comparable(rows[1]) == expected
    run.run(billing_agrees(engine))


BILLING_KEYS = ["day", "source", "currency", "operator", "status", "origin", "country"]


async def billing_agrees(engine: Any) -> None:
    """The rollup's summary equals the sum over messages, to the last decimal, for whole
    and cut quarter hours, in UTC and at +05:45."""
    async with db.transaction(engine) as conn:
        for since, until in ((T0 - timedelta(days=1), T0 + timedelta(days=1)),
                             (T0 - timedelta(minutes=7), T0 + timedelta(seconds=1)),
                             (T0 - timedelta(seconds=1), T0)):
            for tz in ("UTC", "Asia/Kathmandu"):
                rolled = await store.billing(conn, since, until, BILLING_KEYS, tz)
                summed = await store.billing_from_messages(conn, since, until, BILLING_KEYS, tz)
                assert [tuple(r) for r in rolled] == [tuple(r) for r in summed], (since, tz)


def test_the_rollup_can_be_rebuilt_from_messages(runner: tuple[asyncio.Runner, object]) -> None:
    run, engine = runner

    async def rebuild() -> None:
        async with db.transaction(engine) as conn:  # type: ignore[arg-type]
            await store.rebuild_billing(conn)

    run.run(rebuild())
    run.run(billing_agrees(engine))


def test_upsert_takes_a_new_seq_only_on_change(runner: tuple[asyncio.Runner, object]) -> None:
    run, engine = runner
    pending = rules.observation(source="ib", message_id="seq-test", status="PENDING",
                                    status_id=7, done_at=T0)
    final = rules.observation(source="ib", message_id="seq-test", status="DELIVERED",
                                  status_id=5, done_at=T0)

    async def apply(*reports: Report) -> tuple[int, int]:
        async with db.transaction(engine) as conn:  # type: ignore[arg-type]
            changed = (await store.write(conn, [], [(r, "pull") for r in reports])).changed
            seq = await conn.scalar(sa.select(messages.c.seq).where(
                messages.c.message_id == "seq-test"))
        return changed, int(seq or 0)

    changed, first = run.run(apply(pending))
    assert changed == 1
    assert run.run(apply(pending)) == (0, first)
    changed, second = run.run(apply(final, pending))
    assert changed == 1 and second > first
    assert run.run(apply(pending, final)) == (0, second)


@pytest.mark.parametrize(("to", "mcc_mnc", "expected"), [
    ("+9779842271353", None, "Nepal Telecom"),
    ("+9779801912821", None, "Ncell"),  # phonenumbers says "NCell": one name per network
    ("+9779612345678", None, "Smart Telecom"),
    ("+9779842271353", "42902", "Ncell"),  # the provider's network wins (a ported number)
    ("+41793026727", None, "Swisscom"),
    ("98625000000", None, None),
    (None, None, None),
])
def test_operator(to: str | None, mcc_mnc: str | None, expected: str | None) -> None:
    """What a decoder says (rules.operator), as the report names it (rules.observation)."""
    number = rules.recipient(to) if to else None
    report = rules.observation(source="ib", message_id="m", status="PENDING",
                               to=number.to if number else None, mcc_mnc=mcc_mnc,
                               operator=rules.operator(mcc_mnc, number and number.carrier))
    assert report.operator == expected


@pytest.mark.parametrize(("name", "region", "expected"), [
    ("NCell", "NP", "Ncell"),
    ("NCELL", "NP", "Ncell"),  # as DiceSMS's own counters spell it
    ("n-cell", "NP", "Ncell"),
    ("Ncell", "NP", "Ncell"),
    ("NCell", None, "Ncell"),  # no other region's network is called that
    ("NCell", "CH", "NCell"),  # a Swiss network of that name would not be Nepal's
    ("42902", None, "Ncell"),  # an MCC+MNC (Sinch's `operator`) names its network anywhere
    ("429-02", "CH", "Ncell"),
    ("22801", "CH", "22801"),  # not a network of NETWORKS: as given
    ("nepal telecom", "NP", "Nepal Telecom"),
    ("NDCL", "NP", "NDCL"),
    ("Swisscom", "CH", "Swisscom"),
    (None, "NP", None),
])
def test_network_name(name: str | None, region: str | None, expected: str | None) -> None:
    assert rules.network_name(name, region) == expected


def _carrier_names() -> dict[int, set[str]]:
    """Every carrier name (English) phonenumbers' carrier data gives, by calling code."""
    from phonenumbers.carrierdata import CARRIER_DATA

    found: dict[int, set[str]] = {}
    for prefix, names in CARRIER_DATA.items():
        if name := names.get("en"):
            code = next(int(prefix[:n]) for n in (1, 2, 3)
                        if int(prefix[:n]) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
            found.setdefault(code, set()).add(name)
    return found


# phonenumbers' other carriers of the regions of rules.CARRIERS: none of them is a network
# of NETWORKS (NDCL's ranges are Nepal Telecom's CDMA ones, not its GSM network 42901).
NOT_NETWORKS = {"NP": {"NDCL", "STM Telecom", "NSTPL", "UTL"}}


def test_every_carrier_name_of_a_networks_region_is_known() -> None:
    """Each name phonenumbers gives for numbers of a region where we bill by network is a
    network of NETWORKS (rules.CARRIERS) or known not to be one: a name it adds or respells
    in a later release fails here rather than splitting a network."""
    names = _carrier_names()
    assert set(rules.CARRIERS) == set(NOT_NETWORKS)
    for region, carriers in rules.CARRIERS.items():
        given = names[phonenumbers.country_code_for_region(region)]
        assert given == set(carriers) | NOT_NETWORKS[region], region
        for name, code in carriers.items():
            assert rules.network_name(name, region) == rules.NETWORKS[code]
    assert {code for carriers in rules.CARRIERS.values() for code in carriers.values()} \
        == set(rules.NETWORKS)


def test_no_calling_code_spells_one_carrier_two_ways() -> None:
    """Within a calling code, phonenumbers' names that differ only in case, spaces or
    punctuation are one name once network_name has named them."""
    for code, names in _carrier_names().items():
        regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[code]
        spellings: dict[str, set[str | None]] = {}
        for name in names:
            folded = "".join(c for c in name.casefold() if c.isalnum())
            spellings.setdefault(folded, set()).update(
                rules.network_name(name, region) for region in regions)
        assert all(len(named) == 1 for named in spellings.values()), (code, spellings)


@st.composite
def spelled_numbers(draw: st.DrawFn) -> tuple[str, str | None]:
    """A neighbour of a real number of some region and type (most valid, some not),
    spelled international, without '+', or national with the region as default."""
    region = draw(st.sampled_from(sorted(phonenumbers.SUPPORTED_REGIONS)))
    kind = draw(st.sampled_from([phonenumbers.PhoneNumberType.MOBILE,
                                 phonenumbers.PhoneNumberType.FIXED_LINE,
                                 phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
                                 phonenumbers.PhoneNumberType.PAGER,
                                 phonenumbers.PhoneNumberType.TOLL_FREE]))
    example = phonenumbers.example_number_for_type(region, kind)
    if example is None:
        return "+" + draw(st.text("0123456789", max_size=12)), None
    number = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
    tail = draw(st.text("0123456789", max_size=3))
    number = number[:len(number) - len(tail)] + tail
    national = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL)
    return draw(st.sampled_from([(number, None), (number[1:], None), (national, region)]))


@settings(max_examples=300)
@given(spelled_numbers())
def test_one_parse_agrees_with_phonenumbers_own_checks(spelled: tuple[str, str | None]) -> None:
    """recipient() parses and type-matches a number once; the answer must be what
    is_valid_number, format_number and carrier.name_for_number give."""
    raw, region = spelled
    raw = raw.strip()
    text = raw if raw.startswith("+") or region else f"+{raw}"
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        expected = rules.Recipient(raw, None)
    else:
        if phonenumbers.is_valid_number(parsed):
            expected = rules.Recipient(
                phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164),
                phonenumbers.carrier.name_for_number(parsed, "en") or None)
        elif region is None:  # international: its digits, whatever the metadata says
            expected = rules.Recipient("+" + "".join(c for c in raw if c.isdigit()), None)
        else:
            expected = rules.Recipient(
                phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), None)
    assert rules.recipient.__wrapped__(raw, region) == expected


def _spelled(draw: st.DrawFn, digits: str) -> str:
    """`digits` with a separator (or none) after each one."""
    gaps = draw(st.lists(st.sampled_from(["", "", " ", "-", "."]), min_size=len(digits),
                         max_size=len(digits)))
    return "".join(d + g for d, g in zip(digits, gaps, strict=True)).strip(" -.")


@st.composite
def unknown_ranges(draw: st.DrawFn) -> tuple[str, str, str]:
    """(region, its country code, a national number the metadata finds no valid range for)."""
    region = draw(st.sampled_from(sorted(phonenumbers.SUPPORTED_REGIONS)))
    code = str(phonenumbers.country_code_for_region(region))
    national = draw(st.text("0123456789", min_size=4, max_size=15 - len(code))
                    .filter(lambda d: not d.startswith("0")))
    assume(not phonenumbers.is_valid_number(phonenumbers.parse(f"+{code}{national}")))
    return region, code, national


@settings(max_examples=300)
@given(unknown_ranges(), st.data())
def test_an_unknown_range_given_in_international_form_is_plus_and_its_digits(
        case: tuple[str, str, str], data: st.DataObject) -> None:
    """Infobip's 9779837107012 (a range newer than the metadata) is +9779837107012."""
    _, code, national = case
    spelled = _spelled(data.draw, code + national)
    plus = data.draw(st.booleans())
    region = data.draw(st.sampled_from([None, "NP", "US"])) if plus else None
    number = rules.recipient.__wrapped__(("+" if plus else "") + spelled, region)
    assert number == rules.Recipient(f"+{code}{national}", None)


@settings(max_examples=300)
@given(unknown_ranges(), st.data())
def test_an_unknown_range_given_nationally_in_a_known_region_is_e164(
        case: tuple[str, str, str], data: st.DataObject) -> None:
    """DiceSMS's national numbers (region NP) are E.164 even in a range the metadata lacks."""
    region, _, national = case
    spelled = _spelled(data.draw, national)
    try:
        parsed = phonenumbers.parse(spelled, region)
    except phonenumbers.NumberParseException:
        assume(False)
    number = rules.recipient.__wrapped__(spelled, region)
    assert number.carrier is None or phonenumbers.is_valid_number(parsed)
    assert number.to.startswith("+") and number.to[1:].isdigit(), number
    assert phonenumbers.parse(number.to) == parsed


@given(st.text("0123456789 +()-./x", max_size=MAX_TO) | st.text(max_size=MAX_TO),
       st.sampled_from([None, "NP", "CH", "US"]))
def test_a_recipient_stays_within_its_bound(text: str, region: str | None) -> None:
    number = rules.recipient.__wrapped__(text, region)
    assert len(number.to) <= MAX_TO
    assert number.to == text.strip() or (number.to.startswith("+") and number.to[1:].isdigit())


def test_a_report_kept_before_the_v3_state_fields_keeps_its_hash() -> None:
    """A body kept before status.action and error.description were read replays to the
    same observation (so to no new history row): those fields are hashed only when given."""
    import hashlib

    report = rules.observation(source="ib", message_id="m", status="DELIVERED", status_id=5,
                               status_name="DELIVERED_TO_HANDSET", done_at=T0, error_id=27)
    first_fields = ("status", "final", "status_id", "status_name", "status_description",
                    "done_at", "error_group_id", "error_group_name", "error_id", "error_name",
                    "error_permanent")
    before = msgspec.msgpack.encode(["ib", "m", *[getattr(report, f) for f in first_fields]])
    assert report.obs_hash == hashlib.sha256(before).digest()[:16]
    advised = rules.observation(source="ib", message_id="m", status="DELIVERED", status_id=5,
                                status_name="DELIVERED_TO_HANDSET", done_at=T0, error_id=27,
                                status_action="none")
    assert advised.obs_hash != report.obs_hash
