"""`worker` answers probes and serves its metrics on DLR_WORKER_PORT: pull lag, open gaps."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa
from litestar import Litestar
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db, store, worker
from service.config import InfobipSource, Settings
from service.providers.infobip.fake import FakeInfobip
from service.tables import outbound, runs
from tests.conftest import free_port
from tests.databases import scratch_database
from tests.services import metric_value

LAG = "dlr_reconciler_last_success_timestamp_seconds"


def config(directory: Path, fake: FakeInfobip) -> Path:
    path = directory / "dlr.toml"
    path.write_text(f'[[sources]]\nname = "ib"\nkind = "infobip"\nbase_url = "{fake.url}"\n'
                    f'api_key = "{fake.api_key}"\npull_interval_s = 60\n')
    return path


@contextmanager
def running_worker(env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """`worker` with `env`, until its /health/ready answers 200; SIGTERM on the way out."""
    log = Path(env["DLR_DATA_DIR"]) / "worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "service", "worker"], env=env,
                                   stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{env['DLR_WORKER_PORT']}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "worker did not become ready"
            try:
                if httpx.get(f"{base}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield base, process, log
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def test_a_scrape_of_worker_shows_its_pull_lag(server_url: str, tmp_path: Path) -> None:
    started = time.time()
    with FakeInfobip() as fake, scratch_database(server_url) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DLR_")} | {
            "DLR_DATABASE_URL": url, "DLR_CONFIG": str(config(tmp_path, fake)),
            "DLR_WORKER_PORT": str(free_port()), "DLR_DATA_DIR": str(tmp_path / "data")}
        with running_worker(env) as (base, process, log):
            assert httpx.get(f"{base}/health/live").json() == {"status": "ok"}
            deadline = time.monotonic() + 30
            while True:  # the first pass starts at once; its end sets the gauge
                scraped = httpx.get(f"{base}/metrics")
                if metric_value(scraped.text, f'{LAG}{{source="ib"}}') > 0:
                    break
                assert time.monotonic() < deadline, scraped.text
                time.sleep(0.2)
            assert scraped.headers["content-type"].startswith("text/plain")
            assert started <= metric_value(scraped.text, f'{LAG}{{source="ib"}}') <= time.time()
            assert metric_value(scraped.text,
                                'dlr_reconciler_pull_interval_seconds{source="ib"}') == 60
            assert 'dlr_open_gaps{source="ib"} 0.0' in scraped.text
            assert 'dlr_reconciler_runs_total{outcome="ok",source="ib"} 1.0' in scraped.text
        assert process.returncode == 0, log.read_text()

        # A restarted worker knows the last good pass from the database before its own
        # first pass ends: the lag survives restarts and standby replicas.
        env["DLR_WORKER_PORT"] = str(free_port())
        with running_worker(env) as (base, _, _):
            lag = metric_value(httpx.get(f"{base}/metrics").text, f'{LAG}{{source="ib"}}')
            assert started <= lag <= time.time()


def asgi_client(app: Litestar) -> httpx.AsyncClient:
    """A client of `app` on this test's event loop, where the engine given to it lives."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://worker")


def test_worker_refuses_a_taken_port(server_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken, scratch_database(server_url) as url:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DLR_")} | {
            "DLR_DATABASE_URL": url, "DLR_WORKER_PORT": str(port)}
        result = subprocess.run([sys.executable, "-m", "service", "worker"], env=env,
                                capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 7
    assert result.stderr.strip().splitlines() == [
        f"cannot listen: 127.0.0.1:{port}: Address already in use"]


async def test_worker_is_not_ready_on_an_old_schema_or_without_its_database(
        engine: AsyncEngine, database_url: str) -> None:
    settings = Settings(db_timeout_s=1.0)
    async with asgi_client(worker.ops_app(settings, engine)) as client:
        assert (await client.get("/health/ready")).status_code == 200
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = '0001'"))
        try:
            answer = await client.get("/health/ready")
        finally:
            async with engine.begin() as conn:
                await conn.execute(sa.text("UPDATE alembic_version SET version_num = :head"),
                                   {"head": db.head_revision()})
        assert answer.status_code == 503
        assert "needs" in answer.json()["detail"]  # a problem, as serve answers it
    gone = db.create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x", 1.0)
    async with asgi_client(worker.ops_app(settings, gone)) as client:
        answer = await client.get("/health/ready")
        assert (answer.status_code, answer.headers["retry-after"]) == (503, "5")
        assert (await client.get("/health/live")).status_code == 200
    await gone.dispose()


async def test_open_gaps_count_registrations_overdue_in_the_window(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(sa.insert(outbound), [
            {"source": "ib", "message_id": f"m{age}", "sent_at": now - timedelta(hours=age)}
            for age in (1, 47, 49, 100, 24 * 8)])  # in the window: 49 and 100 hours old
    await worker._show_open_gaps(engine, "ib")
    assert REGISTRY.get_sample_value("dlr_open_gaps", {"source": "ib"}) == 2


async def test_a_standby_reports_the_lag_of_the_process_that_pulls(engine: AsyncEngine) -> None:
    finished = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(sa.insert(runs).values(source="held", started_at=finished,
                                                  finished_at=finished))
        assert await store.acquire_lease(conn, "held", "the-active-one", 60)
    async with httpx.AsyncClient() as client:
        source = InfobipSource("held", "http://127.0.0.1:9", api_key="k")
        assert await worker.pull(engine, client, source, "a-standby") is None
    assert REGISTRY.get_sample_value(LAG, {"source": "held"}) == finished.timestamp()
