"""Odd query parameters (times out of range, huge durations, garbage) answer 400, never 5xx;
the CLI's time arguments fail in one line with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from service.app import create_app
from tests.conftest import READ_TOKEN, make_settings

READ = {"Authorization": f"Bearer {READ_TOKEN}"}
EXTREMES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z", "1969-12-31T23:59:59Z", "2200-01-01T00:00:00Z",
            "2026-11-01", "2026-11-01T00:00:00", "2026-02-30T00:00:00Z", "infinity", "",
            "2026-11-01T00:00:00+24:00", "+275760-09-13T00:00:00Z", "2026-11-01T00:00:00Z"]
OFFSETS = st.sampled_from([None, UTC, timezone(timedelta(hours=14)),
                           timezone(-timedelta(hours=23, minutes=59))])
times = st.one_of(st.sampled_from(EXTREMES), st.text(max_size=30),
                  st.datetimes(timezones=OFFSETS).map(datetime.isoformat))
durations = st.one_of(
    st.tuples(st.integers(0, 10**30), st.sampled_from(["", "s", "m", "h", "d"]))
    .map(lambda t: f"{t[0]}{t[1]}"),
    st.text(max_size=30), st.just("9" * 5000), st.just("٣d"))
PATIENT = settings(max_examples=150, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def client(database_url: str) -> Iterator[TestClient]:  # type: ignore[type-arg]
    with TestClient(app=create_app(make_settings(), database_url)) as test_client:
        yield test_client


@PATIENT
@given(times, times)
@example("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-23:59")
@example("2026-11-01T00:00:00Z", "9999-12-31T23:59:59-23:59")
def test_billing_period(client: TestClient, start: str, end: str) -> None:  # type: ignore[type-arg]
    answer = client.get("/v1/billing/summary", params={"from": start, "to": end}, headers=READ)
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 400:
        assert answer.json()["detail"].startswith(("from:", "to:")), answer.text


@PATIENT
@given(st.sampled_from(["sent_from", "sent_to", "updated_since"]), times)
@example("sent_from", "0001-01-01T00:00:00+14:00")
@example("updated_since", "9999-12-31T23:59:59-23:59")
def test_message_filters(client: TestClient, name: str, value: str) -> None:  # type: ignore[type-arg]
    answer = client.get("/v1/messages", params={name: value}, headers=READ)
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 400:
        assert answer.json()["detail"].startswith(f"{name}:"), answer.text


@PATIENT
@given(durations)
@example("1000000000d")
@example("3651d")
def test_gap_grace_period(client: TestClient, older_than: str) -> None:  # type: ignore[type-arg]
    answer = client.get("/v1/gaps", params={"older_than": older_than}, headers=READ)
    assert answer.status_code in (200, 400), answer.text
    if older_than in ("1000000000d", "3651d"):
        assert answer.status_code == 400
        assert answer.json()["detail"].startswith("older_than:")


def test_a_year_of_gaps_is_fine(client: TestClient) -> None:  # type: ignore[type-arg]
    assert client.get("/v1/gaps", params={"older_than": "3650d"}, headers=READ).status_code == 200


@pytest.mark.parametrize("argument", ["--since=0001-01-01T00:00:00+14:00",
                                      "--until=9999-12-31T23:59:59-23:59",
                                      "--since=2026-11-01T00:00:00", "--until=yesterday"])
def test_replay_refuses_an_odd_time_in_one_line(database_url: str, argument: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DLR_CONFIG"}
    result = subprocess.run([sys.executable, "-m", "service", "replay", argument],
                            env=env | {"DLR_DATABASE_URL": database_url}, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(argument.split("=")[0]), result.stderr


@pytest.mark.parametrize(("path", "name"), [("/v1/messages", "sent_from"),
                                            ("/v1/messages", "updated_since"),
                                            ("/v1/billing/summary", "from")])
@pytest.mark.parametrize("written", ["2026-11-01T00:00:00+05:45", "2026-11-01T00:00+0545",
                                     "2026-11-01 00:00:00.5+05"])
def test_an_unescaped_plus_in_a_time_says_to_percent_encode_it(
        client: TestClient, path: str, name: str, written: str) -> None:  # type: ignore[type-arg]
    query = {"from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"} | {name: written}
    raw = "&".join(f"{k}={v}" for k, v in query.items())  # the '+' as typed: a space
    answer = client.get(f"{path}?{raw}", headers=READ)
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"] == (
        f"{name}: a space where the offset's '+' would be: percent-encode '+' in a query "
        "string as %2B (2026-11-01T00:00:00%2B05:45)")
    encoded = client.get(path, params=query, headers=READ)  # httpx encodes '+' as %2B
    assert encoded.status_code == 200, encoded.text
