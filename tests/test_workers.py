"""Several processes on one database: one puller per source at a time, nothing doubled."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db
from service.providers.infobip.fake import FakeInfobip
from service.tables import inbox, messages, runs
from tests.conftest import free_port
from tests.reports import report


@pytest.mark.parametrize("role", ["worker", "serve"])
def test_processes_share_a_source_without_overlap(engine: AsyncEngine, database_url: str,
                                                  tmp_path: Path, role: str) -> None:
    """Two workers, or three serve processes with their reconcilers on."""
    with FakeInfobip() as fake:
        fake.queue(*[report(f"m{i}") for i in range(5000)])
        config = tmp_path / "dlr.toml"
        config.write_text(f'[[sources]]\nname = "ib"\nkind = "infobip"\nbase_url = "{fake.url}"\n'
                          f'api_key = "{fake.api_key}"\npull_interval_s = 0.2\n')
        env = os.environ | {"DLR_DATABASE_URL": database_url, "DLR_CONFIG": str(config)}
        commands = ([["worker"]] * 2 if role == "worker"
                    else [["serve", "--port", str(free_port())] for _ in range(3)])
        workers = [subprocess.Popen([sys.executable, "-m", "service", *command],
                                    env=env | {"DLR_WORKER_PORT": str(free_port())},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                   for command in commands]
        try:
            deadline = time.monotonic() + 60
            while fake.queued and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.5)  # a few more passes, on an empty provider
        finally:
            for process in workers:
                process.send_signal(signal.SIGTERM)
            errors = [process.communicate(timeout=30)[1] for process in workers]
        assert [p.returncode for p in workers] == [0] * len(workers), errors
        assert not fake.queued

    async def outcome() -> tuple[Any, Any, list[Any]]:
        checker = db.create_engine(database_url)
        try:
            async with checker.connect() as conn:
                stored = await conn.scalar(sa.select(sa.func.count()).select_from(messages))
                accepted = await conn.scalar(sa.select(sa.func.sum(inbox.c.accepted)))
                passes = (await conn.execute(sa.select(
                    runs.c.started_at, runs.c.finished_at, runs.c.reports,
                ).order_by(runs.c.started_at))).all()
        finally:
            await checker.dispose()
        return stored, accepted, list(passes)

    stored, accepted, passes = asyncio.run(outcome())
    assert stored == 5000
    assert accepted == 5000  # every report handed out once, and kept once
    assert sum(p.reports for p in passes) == 5000
    for earlier, later in itertools.pairwise(passes):
        assert earlier.finished_at <= later.started_at, "two passes over one source overlapped"


def test_sigterm_ends_a_drain_after_the_page_in_hand(engine: AsyncEngine, database_url: str,
                                                     tmp_path: Path) -> None:
    with FakeInfobip() as fake:
        fake.queue(*[report(f"s{i}") for i in range(30_000)])
        fake.delay_s = 0.3  # 30 pages: about 10 s to drain
        config = tmp_path / "dlr.toml"
        config.write_text(f'[[sources]]\nname = "ib"\nkind = "infobip"\nbase_url = "{fake.url}"\n'
                          f'api_key = "{fake.api_key}"\n')
        env = os.environ | {"DLR_DATABASE_URL": database_url, "DLR_CONFIG": str(config),
                            "DLR_WORKER_PORT": str(free_port())}
        worker = subprocess.Popen([sys.executable, "-m", "service", "worker"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while len(fake.queued) > 27_000:
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        errors = worker.communicate(timeout=30)[1]
        took = time.monotonic() - stopped_at
        assert worker.returncode == 0, errors
        assert took < 5, f"shutdown took {took:.1f} s"
        left = len(fake.queued)
    assert left > 0, "the drain had finished before the signal"

    async def outcome() -> tuple[Any, Any, Any]:
        checker = db.create_engine(database_url)
        try:
            async with checker.connect() as conn:
                stored = await conn.scalar(sa.select(sa.func.count()).select_from(messages))
                states = set((await conn.execute(sa.select(inbox.c.state))).scalars())
                run = (await conn.execute(sa.select(runs.c.error, runs.c.detail))).one()
        finally:
            await checker.dispose()
        return stored, states, run

    stored, states, run = asyncio.run(outcome())
    assert stored + left == 30_000  # every page handed out was kept and merged
    assert states == {"accepted"}
    assert run.error is None  # a normal stop, not an error
    assert "stopped for shutdown" in run.detail["stopped"]
    warned = [line for line in errors.splitlines() if '"level":"warning"' in line]
    assert not warned, warned  # the stop is said at info


def test_a_stuck_provider_does_not_hold_shutdown_past_its_limit(database_url: str,
                                                                tmp_path: Path) -> None:
    with FakeInfobip() as fake:
        fake.queue(report("stuck"))
        fake.delay_s = 25  # under the client's 30 s read timeout: the GET just waits
        config = tmp_path / "dlr.toml"
        config.write_text(f'[[sources]]\nname = "ib"\nkind = "infobip"\nbase_url = "{fake.url}"\n'
                          f'api_key = "{fake.api_key}"\n')
        env = os.environ | {"DLR_DATABASE_URL": database_url, "DLR_CONFIG": str(config),
                            "DLR_SHUTDOWN_TIMEOUT_S": "1", "DLR_WORKER_PORT": str(free_port())}
        worker = subprocess.Popen([sys.executable, "-m", "service", "worker"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            while not fake.requests:
                assert worker.poll() is None, worker.communicate()[1]
                time.sleep(0.05)
            worker.send_signal(signal.SIGTERM)
            errors = worker.communicate(timeout=20)[1]  # the provider would take 25 s
        finally:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, errors
    assert "reconciler cancelled: still busy 1 s after the stop" in errors
