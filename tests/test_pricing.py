"""Parts counted from the text, and rate cards: which rate prices a message, and how a card
is written (TOML tables, a CSV file) and refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import gsm0338
import msgspec
import pytest
import smsutil
from hypothesis import given, settings
from hypothesis import strategies as st

from service import pricing, rules
from service.config import load_settings
from service.errors import ConfigError
from service.providers import MAX_PARTS
from service.providers.dicesms import DiceSmsSource

# --- parts ---------------------------------------------------------------------------------------

GSM_BASIC = "".join(sorted(pricing.GSM_ALPHABET - pricing.GSM_EXTENSION))
GSM_EXTENSION = "".join(sorted(pricing.GSM_EXTENSION))
UCS2_ONLY = "жшऩक中ĉ\u00a0"  # Cyrillic, Devanagari, Han, Esperanto, a no-break space
EMOJI = "😀👍🏽🇳🇵"  # outside the BMP: a surrogate pair each (the flag and skin tone are two)
# smsutil counts ESC (0x1B) as a GSM character; it is the extension table's escape, no
# character of its own, so a text holding it goes as UCS-2 here (gsm0338 does not decode it).
texts = st.one_of(
    st.text(GSM_BASIC, max_size=700),
    st.text(GSM_BASIC + GSM_EXTENSION, max_size=700),
    st.text(GSM_BASIC + UCS2_ONLY, max_size=400),
    st.text(GSM_BASIC + GSM_EXTENSION + UCS2_ONLY + EMOJI, max_size=400),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x1b"), max_size=300),
)


@settings(max_examples=500)
@given(texts)
def test_parts_agree_with_smsutil_splitting(text: str) -> None:
    """smsutil splits texts itself (160/153 septets, 70/67 UCS-2 units, extension
    characters and surrogate pairs kept whole): the same count, up to the one-byte limit."""
    assert pricing.parts(text) == min(len(smsutil.split(text).parts), MAX_PARTS)


def _split_with_gsm0338(text: str) -> list[bytes]:
    """Greedy parts of a GSM text, each encoded by gsm0338 (an escape pair never split)."""
    codec = gsm0338.Codec()
    encoded = [codec.encode(c)[0] for c in text]
    if sum(map(len, encoded)) <= pricing.GSM_SINGLE:
        return [b"".join(encoded)]
    parts: list[bytes] = [b""]
    for septets in encoded:
        if len(parts[-1]) + len(septets) > pricing.GSM_PART:
            parts.append(b"")
        parts[-1] += septets
    return parts


@settings(max_examples=300)
@given(st.text(GSM_BASIC + GSM_EXTENSION, max_size=1000))
def test_gsm_parts_are_what_gsm0338_encodes(text: str) -> None:
    """A GSM text is one the library encodes; its parts hold what the library encodes, at
    most 153 septets each, and decode back to the text."""
    assert pricing.is_gsm(text)
    split = _split_with_gsm0338(text)
    assert pricing.parts(text) == len(split)
    assert all(len(p) <= pricing.GSM_PART for p in split) or len(split) == 1
    assert "".join(gsm0338.Codec().decode(p)[0] for p in split) == text


@given(st.text(GSM_BASIC + GSM_EXTENSION + UCS2_ONLY + EMOJI, min_size=1, max_size=200))
def test_what_gsm0338_cannot_encode_goes_as_ucs2(text: str) -> None:
    try:
        gsm0338.Codec().encode(text)
    except UnicodeEncodeError:
        assert not pricing.is_gsm(text)
    else:
        assert pricing.is_gsm(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("", 1),  # an empty message is still sent as one part
    ("a" * 160, 1), ("a" * 161, 2), ("a" * 306, 2), ("a" * 307, 3),
    ("€" * 80, 1), ("€" * 81, 2),  # extension characters take two septets
    ("a" * 152 + "€" + "a" * 8, 2),  # 161 septets: two parts
    ("a" * 152 + "€" + "a" * 152, 3),  # the € does not fit the first part's last septet
    ("ж" * 70, 1), ("ж" * 71, 2), ("ж" * 134, 2), ("ж" * 135, 3),
    ("a" * 159 + "ж", 3),  # one UCS-2 character makes the whole text UCS-2: 160 units
    ("😀" * 35, 1), ("😀" * 36, 2),  # two units each
    ("ж" * 66 + "😀" + "ж" * 66, 3),  # 134 units, but the pair is not split: 66 | 😀 65 | ж
    ("a" * 40_000, MAX_PARTS),  # no concatenated message has more
])
def test_parts(text: str, expected: int) -> None:
    assert pricing.parts(text) == expected


# --- rate cards ------------------------------------------------------------------------------------

JAN, JUL = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 7, 1, tzinfo=UTC)
NCELL = "+9779801912821"  # phonenumbers: NCell
NTC = "+9779842271353"  # Nepal Telecom
SMART_RANGE = "+9779612345678"  # Smart Telecom, prefix +97796


def rate(price: str, **fields: object) -> pricing.Rate:
    return msgspec.convert({"price": price, "currency": "NPR", **fields}, pricing.Rate)


CARD = pricing.Card([
    rate("1.00"),                                            # everything, always
    rate("0.80", country="NP"),
    rate("0.70", country="NP", **{"from": "2026-07-01"}),
    rate("0.60", prefix="+97796"),
    rate("0.50", operator="Ncell"),
    rate("0.40", operator="Ncell", **{"from": "2026-07-01"}),
    rate("0.45", mcc_mnc="42902", **{"from": "2026-07-01"}),
])


@pytest.mark.parametrize(("sent_at", "to", "mcc_mnc", "amount", "rate_json"), [
    # before July: the first rates
    (JAN, NCELL, None, "0.5", '{"operator":"Ncell"}'),
    (JAN, NCELL, "42902", "0.5", '{"operator":"Ncell"}'),  # the MCC+MNC rate is not in force
    (JAN, SMART_RANGE, None, "0.6", '{"prefix":"+97796"}'),
    (JAN, NTC, None, "0.8", '{"country":"NP"}'),
    (JAN, "+41793026727", None, "1", "{}"),
    # from July on: the later rate of each, and the MCC+MNC one above the operator's
    (JUL, NCELL, None, "0.4", '{"from":"2026-07-01","operator":"Ncell"}'),
    (JUL, NCELL, "42902", "0.45", '{"from":"2026-07-01","mcc_mnc":"42902"}'),
    (JUL, SMART_RANGE, None, "0.6", '{"prefix":"+97796"}'),
    (JUL, NTC, None, "0.7", '{"country":"NP","from":"2026-07-01"}'),
    (JUL - timedelta(microseconds=1), NTC, None, "0.8", '{"country":"NP"}'),  # just before
])
def test_the_most_specific_rate_in_force_applies(sent_at: datetime, to: str, mcc_mnc: str | None,
                                                 amount: str, rate_json: str) -> None:
    carrier = rules.recipient(to).carrier
    applied = CARD.rate(sent_at, to, mcc_mnc, rules.operator(mcc_mnc, carrier))
    assert applied is not None
    assert (applied.amount, applied.currency, applied.rate) == (Decimal(amount), "NPR", rate_json)


def test_no_rate_no_estimate() -> None:
    card = pricing.Card([rate("0.5", country="NP", **{"from": "2026-07-01"})])
    assert card.rate(JAN, NTC, None, None) is None  # not yet in force
    assert card.rate(JUL, "+41793026727", None, None) is None  # another country
    assert card.rate(JUL, "98625000", None, None) is None  # not E.164: no country known
    assert not pricing.Card([])


def test_an_estimate_fills_in_only_what_the_provider_did_not_say() -> None:
    reported = rules.observation(source="d", message_id="m", status="PENDING", sent_at=JUL,
                                 to=NTC, price_amount=Decimal("0.3"), price_currency="NPR",
                                 sms_count=2, text="hello")
    assert pricing.estimate(reported, CARD) == reported
    bare = msgspec.structs.replace(reported, price_amount=None, price_currency=None,
                                   sms_count=None)
    estimated = pricing.estimate(bare, CARD)
    assert (estimated.price_amount, estimated.price_estimate, estimated.sms_count,
            estimated.registered) == (Decimal("0.7"), pricing.COUNTRY, 1, rules.COUNTED)
    unsent = msgspec.structs.replace(bare, sent_at=None, text=None)
    assert pricing.estimate(unsent, CARD) == unsent  # when it was sent decides the rate


# --- writing a card -----------------------------------------------------------------------------

def write_config(tmp_path: Path, rates: str, extra: str = "") -> dict[str, str]:
    path = tmp_path / "dlr.toml"
    path.write_text(f"""
[[sources]]
name = "dice"
kind = "dicesms"
base_url = "https://dicesms.asia"
{extra}
{rates}
""")
    return {"DLR_CONFIG": str(path)}


def test_the_spelling_of_the_issue_is_accepted(tmp_path: Path) -> None:
    env = write_config(tmp_path, """
[[sources.rates]]
price = "0.50"          # per part, a decimal string
currency = "NPR"
operator = "Ncell"      # optional; or mcc_mnc = "42902", country = "NP", prefix = "+97798"
from = "2026-01-01"     # optional: in force from this UTC date

[[sources.rates]]
price = "0.65"
currency = "npr"
country = "NP"
from = 2026-07-01       # a TOML date works too

[[sources.rates]]
price = 1
currency = "NPR"
""")
    source = load_settings(env).sources["dice"]
    assert isinstance(source, DiceSmsSource)
    card = pricing.card_of(source.rates)
    assert card.rate(JUL, NTC, None, None) == pricing.Applied(
        Decimal("0.65"), "NPR", pricing.COUNTRY, '{"country":"NP","from":"2026-07-01"}')
    assert card.rate(JAN, NCELL, None, "NCell") == pricing.Applied(  # names match any case
        Decimal("0.5"), "NPR", pricing.OPERATOR, '{"from":"2026-01-01","operator":"Ncell"}')


def test_a_long_card_comes_from_a_csv_file(tmp_path: Path) -> None:
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "dice.csv").write_text(
        "price,currency,mcc_mnc,operator,prefix,country,from\n"
        "0.50,NPR,,Ncell,,,2026-01-01\n"
        "0.45,NPR,42902,,,,\n"
        "0.30,NPR,,,+97798,,2026-07-01\n")
    env = write_config(tmp_path, """
[[sources.rates]]
price = "0.9"
currency = "NPR"
""", extra='rates_file = "cards/dice.csv"   # beside this file')
    source = load_settings(env).sources["dice"]
    assert len(source.rates) == 4
    card = pricing.card_of(source.rates)
    assert card.rate(JUL, NTC, None, None).amount == Decimal("0.3")  # type: ignore[union-attr]
    assert card.rate(JAN, NTC, "42902", None).amount == Decimal("0.45")  # type: ignore[union-attr]
    assert card.rate(JAN, "+41793026727", None, None).amount == Decimal("0.9")  # type: ignore[union-attr]


@pytest.mark.parametrize(("rates", "message"), [
    ('price = 0.5\ncurrency = "NPR"',
     'sources[0].rates[0].price: write it as a string ("0.5")'),
    ('price = "fifty"\ncurrency = "NPR"', "sources[0].rates[0].price: not a decimal number"),
    ('price = "-1"\ncurrency = "NPR"', "sources[0].rates[0].price: not a price between 0"),
    ('price = "0.00000000001"\ncurrency = "NPR"', "sources[0].rates[0].price: more than 10 dec"),
    ('price = "1"\ncurrency = "rupees"', "sources[0].rates[0].currency: not a three-letter"),
    ('price = "1"', "missing required field `currency`"),
    ('price = "1"\ncurrency = "NPR"\noperator = "Ncell"\ncountry = "NP"',
     "sources[0].rates[0].country: a rate applies to one of"),
    ('price = "1"\ncurrency = "NPR"\nmcc_mnc = "429"', "sources[0].rates[0].mcc_mnc: not an MCC and MNC"),
    ('price = "1"\ncurrency = "NPR"\ncountry = "Nepal"', "sources[0].rates[0].country: not a region code"),
    ('price = "1"\ncurrency = "NPR"\nprefix = "977-98"', "sources[0].rates[0].prefix: not a number prefix"),
    ('price = "1"\ncurrency = "NPR"\nfrom = "soon"', "Invalid RFC3339 encoded date"),
    ('price = "1"\ncurrency = "NPR"\nnetwork = "Ncell"', "unknown field `network`"),
    ('price = "1"\ncurrency = "NPR"\n[[sources.rates]]\nprice = "2"\ncurrency = "NPR"',
     "sources[0].rates[1]: applies to what rates[0] applies to, from the same date"),
])
def test_a_bad_rate_is_refused_naming_it(tmp_path: Path, rates: str, message: str) -> None:
    env = write_config(tmp_path, f"[[sources.rates]]\n{rates}")
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("csv", "message"), [
    ("price,currency,network\n1,NPR,x\n", "line 1, column 3: not a rate card column; columns "
     "are price, currency"),
    ("price,operator\n1,Ncell\n", "line 1: no currency column"),
    ("price,currency,price\n1,NPR,2\n", "line 1: two price columns (columns 1 and 3)"),
    ("price,currency\n1,NPR\n0.5,NPR,extra\n", "line 3: more cells than columns"),
    ("price,currency\n1,NPR\nabc,NPR\n", "dice.csv line 3: price: not a decimal number"),
    ("price,currency,from\n1,NPR,2026-13-01\n", "line 2, column from: not a date (YYYY-MM-DD)"),
    ("price,currency\n1,NPR\n" + "9" * 200_000 + ",NPR\n", "line 3: not a CSV row"),
    ("price,currency,country\n1,NPR,NP\n2,NPR,np\n",
     "dice.csv line 3: applies to what rates_file: dice.csv line 2 applies to"),
])
def test_a_bad_rates_file_is_refused_naming_the_line(tmp_path: Path, csv: str,
                                                     message: str) -> None:
    (tmp_path / "dice.csv").write_text(csv)
    env = write_config(tmp_path, "", extra='rates_file = "dice.csv"')
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert str(caught.value).startswith("sources[0].rates_file: ")
    assert message in str(caught.value)


CANARY = "Qx-canary-7"  # what a file holds that no error may repeat
CELLS = st.sampled_from(["", "1", "0.5", "-1", "NPR", "npr", "NP", "+97798", "42902",
                         "2026-01-01", "2026-13-01", "Ncell", CANARY, f"+{CANARY}", "\"",
                         f"{CANARY},x", "\x00"])
HEADERS = st.sampled_from([*pricing.CSV_COLUMNS, CANARY, f" {CANARY}", ""])


@settings(max_examples=300, deadline=None)
@given(header=st.lists(HEADERS, min_size=1, max_size=8),
       rows=st.lists(st.lists(CELLS, max_size=8), max_size=6),
       raw=st.text(max_size=80))
def test_an_error_never_quotes_the_rates_file(header: list[str], rows: list[list[str]],
                                              raw: str) -> None:
    """A rates_file that is no rate card (say /etc/passwd) is refused naming lines and
    columns, never repeating what the file holds."""
    import tempfile
    lines = [",".join(header), *(",".join(row) for row in rows), CANARY + raw]
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "dice.csv").write_text("\n".join(lines), encoding="utf-8")
        env = write_config(Path(folder), "", extra='rates_file = "dice.csv"')
        with pytest.raises(ConfigError) as caught:
            load_settings(env)
    message = str(caught.value)
    assert CANARY not in message and "canary" not in message
    assert "\n" not in message


def test_rates_file_is_read_beside_the_configuration(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative to the configuration file's folder, whatever the working directory; an
    absolute path as it is."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "etc" / "dice.csv").write_text("price,currency\n0.5,NPR\n")
    (tmp_path / "elsewhere" / "dice.csv").write_text("price,currency\n0.9,NPR\n")
    (tmp_path / "etc" / "dlr.toml").write_text(
        '[[sources]]\nname = "dice"\nkind = "dicesms"\nbase_url = "https://dicesms.asia"\n'
        'rates_file = "dice.csv"\n')
    monkeypatch.chdir(tmp_path / "elsewhere")
    for config in (str(tmp_path / "etc" / "dlr.toml"), "../etc/dlr.toml"):
        [rate] = load_settings({"DLR_CONFIG": config}).sources["dice"].rates
        assert rate.price == "0.5"
    absolute = tmp_path / "etc" / "absolute.toml"
    absolute.write_text((tmp_path / "etc" / "dlr.toml").read_text().replace(
        '"dice.csv"', f'"{tmp_path / "elsewhere" / "dice.csv"}"'))
    [rate] = load_settings({"DLR_CONFIG": str(absolute)}).sources["dice"].rates
    assert rate.price == "0.9"


def test_a_missing_rates_file_is_refused(tmp_path: Path) -> None:
    env = write_config(tmp_path, "", extra='rates_file = "nowhere.csv"')
    with pytest.raises(ConfigError, match=r"sources\[0\]\.rates_file: cannot read .*nowhere.csv"):
        load_settings(env)
