"""Start-up, partition upkeep, pruning and reads tolerate any value ever stored: ±infinity,
years 1 and 9999, rows left in the DEFAULT partitions, huge and tiny numbers, NULLs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

from tests.conftest import free_port
from tests.databases import scratch_database
from tests.services import hooked_config, serving

TOKEN = "odd-token"
# Every spelling of a time that is, or ever was, stored (asyncpg writes the aware
# datetime.min and datetime.max as -infinity and infinity).
MOMENTS = ("-infinity", "infinity", "0001-01-01 00:00:00+00", "9999-12-31 23:59:59.999999+00",
           "9999-12-01 00:00:00+00", "1970-01-01 00:00:00+00")
MESSAGES = {  # message_id -> columns
    "minus-infinity": {"sent_at": "-infinity", "done_at": "-infinity", "price_amount": "1e27",
                       "sms_count": "2147483647"},
    "infinity": {"sent_at": "infinity", "done_at": "infinity", "price_amount": "1e-40",
                 "sms_count": "0"},
    "year-1": {"sent_at": "0001-01-01 00:00:00+00", "done_at": "9999-12-31 23:59:59+00",
               "price_amount": "-1e27", "sms_count": "-2147483648"},
    "nulls": {},
    "odd-bookkeeping": {"created_at": "-infinity", "updated_at": "infinity"},
    "huge": {"sent_at": "2026-01-01 00:00:00+00", "price_amount": "1.000000000000000000001e27",
             "sms_count": "2147483647"},
    "tiny": {"sent_at": "2026-01-01 00:00:00+00", "price_amount": "1e-40", "sms_count": "1"},
}
TYPES = {"price_amount": "numeric", "sms_count": "int"}  # the other columns: timestamptz


async def _store_odd_values(url: str) -> None:
    """Write the values with plain SQL, as no code path of ours would check them. No monthly
    partition exists yet: the inbox and history rows land in the DEFAULT partitions."""
    now = datetime.now(UTC).isoformat()
    conn = await asyncpg.connect(url)
    try:
        for moment in (*MOMENTS, now):
            await conn.execute(
                "INSERT INTO inbox (source, channel, received_at, body, state, accepted,"
                " rejected) VALUES ('ib', 'push', $1::text::timestamptz, 'x', 'accepted', 1, 0)",
                moment)
            await conn.execute(  # the history of one message, served with it
                "INSERT INTO message_history (source, message_id, obs_hash, channel,"
                " sent_month, status, done_at) VALUES ('ib', 'minus-infinity', 'h', 'push',"
                " $1::text::timestamptz, 'DELIVERED', $1::text::timestamptz)", moment)
            await conn.execute(
                "INSERT INTO outbound (source, message_id, sent_at)"
                " VALUES ('ib', $1, $1::text::timestamptz)", moment)
            await conn.execute(
                "INSERT INTO runs (source, started_at, finished_at)"
                " VALUES ('ib', $1::text::timestamptz, $1::text::timestamptz)", moment)
        for seq, (message_id, columns) in enumerate(MESSAGES.items(), start=1):
            names = "".join(f", {name}" for name in columns)
            values = "".join(f", ${i}::text::{TYPES.get(name, 'timestamptz')}"
                             for i, name in enumerate(columns, start=3))
            await conn.execute(
                "INSERT INTO messages (source, message_id, status, final, obs_hash, seq, bulk_id,"
                f" price_currency{names}) VALUES ('ib', $1, 'DELIVERED', true, 'h', $2, 'odd',"
                f" 'EUR'{values})", message_id, seq, *columns.values())
    finally:
        await conn.close()


def where_rows_are(url: str, table: str) -> dict[str, int]:
    async def count() -> dict[str, int]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(f"SELECT tableoid::regclass::text, count(*) FROM {table} GROUP BY 1")
        finally:
            await conn.close()
        return {name: n for name, n in rows}

    return asyncio.run(count())


@pytest.fixture
def odd_database(server_url: str) -> Iterator[str]:
    with scratch_database(server_url) as url:
        asyncio.run(_store_odd_values(url))
        yield url


def _env(url: str, config: Path) -> dict[str, str]:
    return os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                         "DLR_PORT": str(free_port()), "DLR_LOG_FORMAT": "text"}


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def _run_worker_until_it_runs(env: dict[str, str]) -> tuple[int, str]:
    """Start `worker`, wait for it to say it runs (or to exit), then SIGTERM it."""
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    try:
        with log.open("wb") as sink:
            process = subprocess.Popen([sys.executable, "-m", "service", "worker"],
                                       env=env | {"DLR_WORKER_PORT": str(free_port())},
                                       stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while process.poll() is None and "reconciler running" not in log.read_text():
            assert time.monotonic() < deadline, "worker neither ran nor exited"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=60), log.read_text()
    finally:
        log.unlink()


def test_commands_start_and_keep_up_whatever_is_stored(odd_database: str, tmp_path: Path) -> None:
    env = _env(odd_database, hooked_config(tmp_path, "odd-hook", api_token=TOKEN))
    migrated = _run(env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    this_month = f"{datetime.now(UTC):%Y_%m}"
    for table in ("inbox", "message_history"):  # only the kept month moved out of DEFAULT
        assert where_rows_are(odd_database, table) == {
            f"{table}_default": len(MOMENTS), f"{table}_p{this_month}": 1}
    dry = _run(env, "prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    code, output = _run_worker_until_it_runs(env)
    assert code == 0 and "reconciler running" in output, output
    with serving(env) as served, served.client(
            headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for message_id in MESSAGES:
            answer = client.get(f"/v1/messages/ib/{quote(message_id)}")
            assert answer.status_code == 200, (message_id, answer.text)
            message = answer.json()
            times = [message[name] for name in ("sent_at", "done_at", "updated_at")]
            times += [o[name] for o in message["history"] for name in ("done_at", "observed_at")]
            assert all(t is None or t.endswith("Z") for t in times), message
        for path in ("/v1/messages?limit=1000", "/v1/changes", "/v1/gaps", "/v1/runs",
                     "/v1/bulks/ib/odd"):
            assert client.get(path).status_code == 200, path
        billed = client.get("/v1/billing/summary", params={
            "from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"})
        assert billed.json()["rows"][0]["amount"] == (
            "2147483647000000000002147483647000000.0000000000000000000000000000000000000001"), \
            "exact, however many digits"
        odd = client.get("/v1/messages/ib/minus-infinity").json()
        assert odd["sent_at"] == "0001-01-01T00:00:00Z", "the year 1 a provider sent, given back"
        assert len(odd["history"]) == len(MOMENTS) + 1
    assert served.process.returncode == 0, served.output
    pruned = _run(env, "prune")
    assert pruned.returncode == 0, pruned.stderr
    for table in ("inbox", "message_history"):  # -infinity, year 1 and 1970 were older
        assert where_rows_are(odd_database, table) == {
            f"{table}_default": 3, f"{table}_p{this_month}": 1}
