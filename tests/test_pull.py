"""The Infobip pull: one-time pages drained and kept, retries, refusals, one puller per source."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db, store, worker
from service.config import InfobipSource
from service.errors import DatabaseUnavailable
from service.providers import http
from service.providers.fakes import Fault
from service.providers.infobip.fake import FakeInfobip
from service.tables import inbox, leases, messages, runs
from tests.conftest import ADMIN_TOKEN, READ_TOKEN, free_port
from tests.reports import report

FAST = http.Retry(attempts=4, base_s=0.01, max_s=0.05)


def source_for(fake: FakeInfobip, api_key: str | None = None) -> InfobipSource:
    return InfobipSource("ib", fake.url, api_key=api_key or fake.api_key)


async def run_pull(engine: AsyncEngine, source: InfobipSource, retry: http.Retry = FAST,
                   holder: str = "test") -> worker.RunResult | None:
    async with httpx.AsyncClient() as client:
        return await worker.pull(engine, client, source, holder, retry)


async def rows(engine: AsyncEngine, query: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def test_drains_one_time_reports_and_keeps_every_page(engine: AsyncEngine) -> None:
    with FakeInfobip() as fake:
        fake.queue(*[report(f"m{i}") for i in range(2500)])
        result = await run_pull(engine, source_for(fake))
        assert not fake.queued
    assert result is not None and result.error is None
    assert (result.pages, result.reports, result.changed) == (4, 2500, 2500)
    pages = await rows(engine, sa.select(inbox.c.channel, inbox.c.state, inbox.c.accepted)
                       .order_by(inbox.c.id))
    assert pages == [("pull", "accepted", 1000), ("pull", "accepted", 1000),
                     ("pull", "accepted", 500), ("pull", "accepted", 0)]
    assert len(await rows(engine, sa.select(messages.c.message_id))) == 2500
    [run] = await rows(engine, sa.select(runs))
    assert (run.pages, run.reports, run.error, run.finished_at is not None) == (4, 2500, None, True)


async def test_retries_5xx_and_429_then_succeeds(engine: AsyncEngine) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    retry = http.Retry(attempts=5, base_s=0.01, max_s=10, sleep=sleep)
    with FakeInfobip() as fake:
        fake.queue(report("m1"))
        fake.faults.extend([Fault(500), Fault(429, {"Retry-After": "7"}), Fault(503)])
        result = await run_pull(engine, source_for(fake), retry)
    assert result is not None and result.error is None and result.reports == 1
    assert len(slept) == 3
    assert slept[1] == 7  # Retry-After honoured


async def test_slow_answers_time_out_and_are_retried(engine: AsyncEngine) -> None:
    with FakeInfobip() as fake:
        fake.queue(report("m1"))
        fake.faults.append(Fault(200, body=b'{"results": []}', delay_s=1.0))
        async with httpx.AsyncClient(timeout=0.2) as client:
            result = await worker.pull(engine, client, source_for(fake), "t", FAST)
        assert len(fake.requests) == 3  # the slow one, then the page, then the empty page
    assert result is not None and result.error is None and result.reports == 1


async def test_gives_up_after_bounded_attempts_and_records_it(engine: AsyncEngine) -> None:
    with FakeInfobip() as fake:
        fake.queue(report("m1"))
        fake.faults.extend([Fault(500)] * 10)
        result = await run_pull(engine, source_for(fake))
        assert len(fake.requests) == FAST.attempts
    assert result is not None and "gave up after 4 attempts" in (result.error or "")
    [run] = await rows(engine, sa.select(runs.c.error))
    assert "answered 500" in run.error


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_end_the_run_without_retrying(engine: AsyncEngine,
                                                                status: int) -> None:
    with FakeInfobip() as fake:
        fake.faults.append(Fault(status))
        result = await run_pull(engine, source_for(fake))
        assert len(fake.requests) == 1
    assert result is not None and "credentials" in (result.error or "")


async def test_wrong_api_key_is_a_recorded_error(engine: AsyncEngine) -> None:
    with FakeInfobip() as fake:
        result = await run_pull(engine, source_for(fake, api_key="wrong"))
    assert result is not None and "401" in (result.error or "")


async def test_redirect_to_another_origin_is_not_followed(engine: AsyncEngine) -> None:
    with FakeInfobip() as fake, FakeInfobip() as elsewhere:
        fake.faults.append(Fault(302, {"Location": f"{elsewhere.url}/sms/1/reports"}))
        result = await run_pull(engine, source_for(fake))
        assert elsewhere.requests == []
    assert result is not None and "redirect" in (result.error or "")


def test_urls_off_the_configured_origin_are_refused() -> None:
    async def attempt() -> None:
        async with httpx.AsyncClient() as client:
            await http.get(client, "https://api.example", "https://evil.example/x", {})

    with pytest.raises(http.ForeignOrigin):
        asyncio.run(attempt())


async def test_page_is_kept_even_when_merging_it_fails(engine: AsyncEngine,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object) -> int:
        raise RuntimeError("bug in the merge")

    monkeypatch.setattr(store, "write", broken)
    with FakeInfobip() as fake:
        fake.queue(report("m1"), report("m2"))
        await run_pull(engine, source_for(fake))
        assert not fake.queued  # handed out once: only our inbox has them now
    [page, _] = await rows(engine, sa.select(inbox.c.state, inbox.c.body).order_by(inbox.c.id))
    assert page.state == "rejected"  # each report merged alone, and each failed
    assert b'"m1"' in page.body and b'"m2"' in page.body
    [run] = await rows(engine, sa.select(runs.c.finished_at, runs.c.error, runs.c.rejected))
    assert run.finished_at is not None and run.rejected == 2
    assert "could not be merged" in run.error


async def test_unusable_page_is_kept_rejected_and_stops_the_run(engine: AsyncEngine) -> None:
    with FakeInfobip() as fake:
        fake.faults.append(Fault(200, body=b"<html>maintenance</html>"))
        result = await run_pull(engine, source_for(fake))
    assert result is not None and "unusable" in (result.error or "")
    [page] = await rows(engine, sa.select(inbox.c.state, inbox.c.body))
    assert (page.state, page.body) == ("rejected", b"<html>maintenance</html>")


async def test_one_puller_per_source(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        assert await store.acquire_lease(conn, "ib", "other-process", 60)
    with FakeInfobip() as fake:
        fake.queue(report("m1"))
        assert await run_pull(engine, source_for(fake), holder="me") is None
        assert fake.requests == []
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await store.release_lease(conn, "ib", "other-process")
        result = await run_pull(engine, source_for(fake), holder="me")
    assert result is not None and result.reports == 1


async def test_concurrent_pullers_count_nothing_twice(engine: AsyncEngine) -> None:
    with FakeInfobip() as fake:
        fake.queue(*[report(f"m{i}") for i in range(3000)])
        results = await asyncio.gather(*[run_pull(engine, source_for(fake), holder=f"p{i}")
                                         for i in range(3)])
    done = [r for r in results if r is not None]
    assert sum(r.reports for r in done) == 3000
    assert len(await rows(engine, sa.select(messages.c.message_id))) == 3000


async def test_runs_are_listed_for_admins(engine: AsyncEngine, client: Any) -> None:
    with FakeInfobip() as fake:
        fake.queue(report("m1"))
        await run_pull(engine, source_for(fake))
    listed = await client.get("/v1/runs", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    [run] = listed.json()["items"]
    assert (run["source"], run["reports"], run["pages"], run["error"]) == ("ib", 1, 2, None)
    refused = await client.get("/v1/runs", headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert refused.status_code == 403


def test_pull_command(engine: AsyncEngine, database_url: str, tmp_path: Path) -> None:
    with FakeInfobip() as fake:
        fake.queue(report("m1"), report("m2"))
        config = tmp_path / "dlr.toml"
        config.write_text(f'''
[[sources]]
name = "ib"
kind = "infobip"
base_url = "{fake.url}"
api_key = "env:TEST_IB_KEY"
''')
        env = os.environ | {"DLR_DATABASE_URL": database_url, "DLR_CONFIG": str(config),
                            "TEST_IB_KEY": fake.api_key}
        done = subprocess.run([sys.executable, "-m", "service", "pull", "ib"], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert "ib: 2 pages, 2 reports, 2 changed, 0 rejected" in done.stdout
        env["TEST_IB_KEY"] = "wrong"
        failed = subprocess.run([sys.executable, "-m", "service", "pull", "ib"], env=env,
                                capture_output=True, text=True, timeout=60, check=False)
        assert failed.returncode == 1
        assert "credentials" in failed.stdout
        unknown = subprocess.run([sys.executable, "-m", "service", "pull", "nope"], env=env,
                                 capture_output=True, text=True, timeout=60, check=False)
        assert unknown.returncode == 2


async def test_serve_runs_the_reconciler_in_process(engine: AsyncEngine, database_url: str) -> None:
    from litestar.testing import AsyncTestClient

    from service.app import create_app
    from tests.conftest import make_settings

    with FakeInfobip() as fake:
        fake.queue(report("pulled-1"))
        settings = make_settings(sources={"ib": source_for(fake)})
        app = create_app(settings, database_url, reconciler=True)
        async with AsyncTestClient(app=app) as client:
            headers = {"Authorization": f"Bearer {READ_TOKEN}"}
            for _ in range(100):
                found = await client.get("/v1/messages/ib/pulled-1", headers=headers)
                if found.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert found.status_code == 200
            assert found.json()["status"] == "DELIVERED"


async def test_a_long_provider_outage_is_survived_and_counted_once(engine: AsyncEngine) -> None:
    with FakeInfobip() as fake:
        fake.queue(*[report(f"m{i}") for i in range(3000)])
        fake.faults.extend([Fault(500), Fault(429, {"Retry-After": "0"}), Fault(503)] * 4
                           + [Fault(200, body=b"{}", delay_s=0.5)] * 3)
        source = InfobipSource("ib", fake.url, api_key=fake.api_key, pull_interval_s=0.05)
        stop = asyncio.Event()
        async with httpx.AsyncClient(timeout=0.2) as client:
            reconciling = asyncio.create_task(worker.run_forever(
                engine, client, {"ib": source}, stop, http.Retry(attempts=3, base_s=0.01)))
            for _ in range(1200):  # up to a minute on a loaded machine
                passes = await rows(engine, sa.select(runs.c.error, runs.c.reports))
                if fake.queued or not any(p.error is None and p.reports for p in passes):
                    await asyncio.sleep(0.05)
                    continue
                break
            stop.set()
            await reconciling
    failed = [p for p in passes if p.error]
    assert len(failed) >= 4 and all("gave up" in p.error for p in failed)
    assert sum(p.reports for p in passes) == 3000
    assert len(await rows(engine, sa.select(messages.c.message_id))) == 3000
    [accepted] = await rows(engine, sa.select(sa.func.sum(inbox.c.accepted)))
    assert accepted[0] == 3000


async def test_a_stuck_source_does_not_hold_up_the_others(engine: AsyncEngine) -> None:
    with FakeInfobip() as stuck, FakeInfobip() as lively:
        stuck.queue(report("never"))
        stuck.delay_s = 60  # answers after the test has ended
        lively.queue(*[report(f"m{i}") for i in range(10)])
        sources = {name: InfobipSource(name, fake.url, api_key=fake.api_key, pull_interval_s=60)
                   for name, fake in (("stuck", stuck), ("lively", lively))}
        stop = asyncio.Event()
        async with httpx.AsyncClient(timeout=120) as client:
            reconciling = asyncio.create_task(worker.run_forever(
                engine, client, sources, stop, http.Retry(attempts=1)))
            try:
                for _ in range(600):  # at most 30 s, only so that a failure ends
                    if await rows(engine, sa.select(messages.c.message_id)) and stuck.requests:
                        break
                    await asyncio.sleep(0.05)
                stored = await rows(engine, sa.select(messages.c.source))
            finally:
                stop.set()
                await worker.stop_within(reconciling, stop, 0.5)
    assert len(stored) == 10 and {r.source for r in stored} == {"lively"}
    assert stuck.requests, "the stuck source was asked first and is still waiting"


async def test_partition_upkeep_failing_does_not_stop_the_reconciler(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(worker, "UPKEEP_INTERVAL_S", 0.05)
    nowhere = db.create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x",
                               timeout_s=1)
    stop = asyncio.Event()
    try:
        reconciling = asyncio.create_task(worker.run_forever(nowhere, None, {}, stop))
        for _ in range(100):  # at most 5 s, only so that a failure ends
            if caplog.text.count("partition upkeep skipped") >= 2:
                break
            await asyncio.sleep(0.05)
        assert not reconciling.done(), "the reconciler stopped with its upkeep"
        stop.set()
        await reconciling
    finally:
        await nowhere.dispose()
    assert caplog.text.count("partition upkeep skipped: database unavailable") >= 2


# --- a fetched one-time page is never dropped ----------------------------------------------

class Killed(BaseException):
    """Stands for kill -9: nothing after it runs."""


def held_pages(spool_dir: Path) -> int:
    return len(list(spool_dir.rglob("*.page")))


async def stored_ids(engine: AsyncEngine) -> set[str]:
    return {r.message_id for r in await rows(engine, sa.select(messages.c.message_id))}


async def test_a_failed_save_is_retried_until_the_database_is_back(
        engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_keep, failures = store.keep_raw, [2]

    async def flaky(conn: Any, row: Any) -> int:
        if failures[0]:
            failures[0] -= 1
            raise DatabaseUnavailable("database unavailable")
        return await real_keep(conn, row)

    monkeypatch.setattr(store, "keep_raw", flaky)
    with FakeInfobip() as fake:
        fake.queue(*[report(f"r{i}") for i in range(5)])
        async with httpx.AsyncClient() as client:
            result = await worker.pull(engine, client, source_for(fake), "t", FAST,
                                       spool_dir=tmp_path)
    assert result is not None and result.error is None
    assert await stored_ids(engine) == {f"r{i}" for i in range(5)}
    assert held_pages(tmp_path) == 0


@pytest.mark.parametrize("how", ["stopped while the database is down", "killed"])
async def test_a_page_the_inbox_did_not_take_is_kept_by_the_next_pass(
        engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    real_keep = store.keep_raw
    stop = asyncio.Event()

    async def down(conn: Any, row: Any) -> int:
        if how == "killed":
            raise Killed
        stop.set()  # SIGTERM arrives while the database is away
        raise DatabaseUnavailable("database unavailable")

    with FakeInfobip() as fake:
        fake.queue(*[report(f"k{i}") for i in range(7)])
        async with httpx.AsyncClient() as client:
            with monkeypatch.context() as patch:
                patch.setattr(store, "keep_raw", down)
                with contextlib.suppress(Killed):
                    await worker.pull(engine, client, source_for(fake), "t", FAST, stop,
                                      spool_dir=tmp_path)
            assert not fake.queued  # handed out once: the provider will not send them again
            assert held_pages(tmp_path) == 1
            assert store.keep_raw is real_keep
            async with engine.begin() as conn:  # the dead process's lease has not expired
                await conn.execute(sa.delete(leases))
            result = await worker.pull(engine, client, source_for(fake), "t2", FAST,
                                       spool_dir=tmp_path)
    assert result is not None and result.error is None
    assert await stored_ids(engine) == {f"k{i}" for i in range(7)}
    assert held_pages(tmp_path) == 0


async def test_a_pass_stopped_for_shutdown_is_no_error(
        engine: AsyncEngine, caplog: pytest.LogCaptureFixture) -> None:
    """Asked to stop, a pass ends after the page in hand: told at info, recorded as a stop
    in the run's detail, not as its error."""
    stop = asyncio.Event()
    stop.set()
    with FakeInfobip() as fake:
        fake.queue(*[report(f"s{i}") for i in range(1500)])
        async with httpx.AsyncClient() as client:
            with caplog.at_level(logging.INFO, logger="service.worker"):
                result = await worker.pull(engine, client, source_for(fake), "t", FAST, stop)
    assert result is not None and result.error is None and result.pages == 1
    [run] = await rows(engine, sa.select(runs))
    assert run.error is None
    assert run.detail == {"stopped": "stopped for shutdown after page 1; the next pass resumes"}
    [said] = [r for r in caplog.records if r.getMessage().startswith("pull ib:")]
    assert said.levelno == logging.INFO
    assert said.getMessage().endswith("; stopped for shutdown after page 1; the next pass resumes")


async def test_the_reconciler_says_where_it_pulls_each_source_from(
        engine: AsyncEngine, caplog: pytest.LogCaptureFixture) -> None:
    sources = {"ib": InfobipSource("ib", "https://hook:s3cret@api.example.com:8443/base?k=v",
                                   api_key="key", pull_interval_s=10),
               "quiet": InfobipSource("quiet", "http://127.0.0.1:9")}  # no credentials: no pull
    stop = asyncio.Event()
    stop.set()  # start, say so, and end at once
    with caplog.at_level(logging.INFO, logger="service.worker"):
        async with httpx.AsyncClient() as client:
            await worker.run_forever(engine, client, sources, stop)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pulling")]
    assert said == ["pulling ib (infobip) from https://api.example.com:8443 every 10 s"]
