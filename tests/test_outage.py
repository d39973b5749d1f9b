"""The database going away: 503 with Retry-After in bounded time, then recovery without restart."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from service import cli
from service.app import create_app
from service.tables import messages
from tests.conftest import READ_TOKEN, free_port, make_settings
from tests.reports import body, report

BASIC = {"Authorization": "Basic " + base64.b64encode(b"hook:hook-password").decode()}


class FaultyProxy:
    """A TCP proxy in front of PostgreSQL that can refuse, or swallow, all traffic.

    It runs its own event loop in a thread: the test client runs the app in another
    thread and blocks the test's loop while a request is in flight.
    """

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        self.unix_path = f"{socket_dir}/.s.PGSQL.{parts.port or 5432}" if socket_dir else None
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.port = free_port()
        self.mode = "up"
        self.server: asyncio.Server | None = None
        self.open: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def url(self, database_url: str) -> str:
        parts = urlsplit(database_url)
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}{parts.path}"

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=5)

    def up(self) -> None:
        self._call(self._up())

    def down(self, mode: str = "refuse") -> None:
        """refuse: connections are reset and the port closed; blackhole: nothing answers;
        shutting-down: connections are reset and new ones told the server is shutting down."""
        self._call(self._down(mode))

    def close(self) -> None:
        self.down()
        self._call(self._end_pipes())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()

    @staticmethod
    async def _end_pipes() -> None:
        """Pipes still waiting (in a blackhole, say) end now, not when a later test collects them."""
        pipes = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)

    async def _up(self) -> None:
        self.mode = "up"
        if self.server is None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _down(self, mode: str) -> None:
        self.mode = mode
        if mode == "refuse" and self.server is not None:
            self.server.close()
            self.server = None
        if mode in ("refuse", "shutting-down"):
            for writer in list(self.open):
                writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "shutting-down":
            await self._shutting_down(reader, writer)
            return
        self.open.add(writer)
        try:
            if self.unix_path:
                up_reader, up_writer = await asyncio.open_unix_connection(self.unix_path)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            self.open.discard(writer)
            writer.transport.abort()

    @staticmethod
    async def _shutting_down(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """What PostgreSQL answers a new connection while it shuts down: SQLSTATE 57P03."""
        try:
            length = int.from_bytes(await reader.readexactly(4), "big")
            packet = await reader.readexactly(length - 4)
            if packet[:4] == (80877103).to_bytes(4, "big"):  # SSLRequest: "N", then startup
                writer.write(b"N")
                length = int.from_bytes(await reader.readexactly(4), "big")
                await reader.readexactly(length - 4)
            fields = b"SFATAL\0VFATAL\0C57P03\0Mthe database system is shutting down\0\0"
            writer.write(b"E" + (len(fields) + 4).to_bytes(4, "big") + fields)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                while self.mode == "blackhole":
                    await asyncio.sleep(0.05)
                if self.mode != "up":
                    break
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()


@pytest.fixture
def proxy(server_url: str) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(server_url)
    proxy.up()
    yield proxy
    proxy.close()


async def _push(client: AsyncTestClient, message_id: str) -> int:  # type: ignore[type-arg]
    response = await client.post("/webhooks/ib", content=body(report(message_id)), headers=BASIC)
    if response.status_code == 503:
        assert int(response.headers["retry-after"]) > 0
        assert response.json()["detail"]
    return int(response.status_code)


@pytest.mark.parametrize("mode", ["refuse", "blackhole", "shutting-down"])
async def test_outage_gives_503_then_recovers(engine: AsyncEngine, database_url: str,
                                              proxy: FaultyProxy, mode: str) -> None:
    app = create_app(make_settings(db_timeout_s=1.0), proxy.url(database_url))
    acknowledged = []
    async with AsyncTestClient(app=app) as client:
        assert await _push(client, "before") == 200
        acknowledged.append("before")

        proxy.down(mode)
        started = time.monotonic()
        assert await _push(client, "during") == 503
        assert time.monotonic() - started < 10, "a dead database must not hang requests"
        assert (await client.get("/health/ready")).status_code == 503
        read = await client.get("/v1/messages/ib/before",
                                headers={"Authorization": f"Bearer {READ_TOKEN}"})
        assert read.status_code == 503

        proxy.up()
        deadline = time.monotonic() + 10
        status = 0
        while time.monotonic() < deadline:
            status = await _push(client, "after")
            if status == 200:
                break
            await asyncio.sleep(0.2)
        assert status == 200, "service did not recover after the database came back"
        acknowledged.append("after")
        assert (await client.get("/health/ready")).status_code == 200

    async with engine.connect() as conn:
        stored = set((await conn.execute(sa.select(messages.c.message_id))).scalars())
    assert set(acknowledged) <= stored


async def test_503s_for_the_database_warn_once_a_minute_naming_its_error(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from service import app as app_module

    said = app_module.Every(60.0)
    monkeypatch.setattr(app_module, "UNAVAILABLE_WARNING", said)
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"
    app = create_app(make_settings(db_timeout_s=1.0), url)
    with caplog.at_level(logging.INFO):
        async with AsyncTestClient(app=app) as client:
            assert [await _push(client, f"m{i}") for i in range(3)] == [503] * 3
            warned = [r for r in caplog.records if r.levelno == logging.WARNING
                      and r.getMessage().startswith("answering 503")]
            assert len(warned) == 1, [r.getMessage() for r in warned]
            assert warned[0].getMessage().startswith(
                "answering 503, the database is unavailable: no connection to the database (")
            assert "Connect call failed" in warned[0].getMessage()
            said.last -= 60  # a minute later, while it lasts
            assert await _push(client, "m4") == 503
    assert len([r for r in caplog.records if r.getMessage().startswith("answering 503")]) == 2


async def test_closed_port_gives_503(engine: AsyncEngine) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"
    app = create_app(make_settings(db_timeout_s=1.0), url)
    async with AsyncTestClient(app=app) as client:
        assert await _push(client, "m1") == 503
        assert (await client.get("/health/ready")).status_code == 503
        assert (await client.get("/health/live")).status_code == 200


async def test_pgbouncer_mode_url_works(database_url: str, engine: AsyncEngine) -> None:
    from service import db, store

    separator = "&" if "?" in database_url else "?"
    bouncer = db.create_engine(f"{database_url}{separator}pgbouncer=true")
    try:
        for _ in range(3):  # the same statement again: no cached prepared statement needed
            async with db.transaction(bouncer) as conn:
                assert await store.get_message(conn, "ib", "none") is None
    finally:
        await bouncer.dispose()


async def test_a_lock_that_blocks_writes_gives_503_and_not_ready(
        client: AsyncTestClient, engine: AsyncEngine, database_url: str) -> None:  # type: ignore[type-arg]
    """A maintenance lock (here SHARE, as CREATE INDEX takes) lets reads through but no
    write: the webhook answers 503 once DLR_DB_TIMEOUT_S has passed, not later, and
    /health/ready turns 503 while it lasts."""
    from service import db

    bounded = db.create_engine(database_url, timeout_s=2)  # as the app makes its engine
    try:
        async with bounded.connect() as probe:
            assert await probe.scalar(sa.text("SHOW lock_timeout")) == "2s"
    finally:
        await bounded.dispose()
    locker = await engine.connect()
    try:
        await locker.execute(sa.text("LOCK TABLE messages IN SHARE MODE"))
        assert (await client.get("/health/ready")).status_code == 503
        blocked = await client.post("/webhooks/ib", content=body(report("m1")), headers=BASIC)
        assert blocked.status_code == 503 and "retry-after" in blocked.headers
        assert (await client.get("/v1/messages?limit=1",
                                 headers={"Authorization": f"Bearer {READ_TOKEN}"})
                ).status_code == 200  # reads go on
    finally:
        await locker.rollback()
        await locker.close()
    assert (await client.get("/health/ready")).status_code == 200
    again = await client.post("/webhooks/ib", content=body(report("m1")), headers=BASIC)
    assert again.status_code == 200


PYTHON_NAMES = re.compile(r"[a-z](Error|Exception)\b|Errno|Traceback|<class ")


@pytest.mark.parametrize("mode", ["refuse", "blackhole", "shutting-down"])
async def test_an_unavailable_database_is_told_in_words(engine: AsyncEngine, database_url: str,
                                                        proxy: FaultyProxy, mode: str) -> None:
    app = create_app(make_settings(db_timeout_s=1.0), proxy.url(database_url))
    read = {"Authorization": f"Bearer {READ_TOKEN}"}
    async with AsyncTestClient(app=app) as client:
        proxy.down(mode)
        answers = [
            await client.post("/webhooks/ib", content=body(report("m1")), headers=BASIC),
            await client.get("/v1/messages/ib/m1", headers=read),
            await client.get("/v1/billing/summary", headers=read, params={
                "from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"}),
            await client.get("/health/ready"),
        ]
    for answer in answers:
        assert answer.status_code == 503
        assert not PYTHON_NAMES.search(answer.text), answer.text


def test_commands_tell_an_unavailable_database_in_words(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DLR_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/none")
    monkeypatch.delenv("DLR_CONFIG", raising=False)
    before = REGISTRY.get_sample_value("dlr_database_unavailable_total") or 0.0
    assert cli.main(["replay"]) == 3
    assert REGISTRY.get_sample_value("dlr_database_unavailable_total") == before + 1
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.startswith("database unavailable: ")
    assert not PYTHON_NAMES.search(said), said


@pytest.mark.parametrize("state", ["40P01", "40001", "55P03", "57P01", "08006", "53300"])
def test_a_transaction_the_server_gave_up_on_is_worth_a_retry(state: str) -> None:
    """A deadlock, a serialization failure or a lock not had in time answers 503 (retry),
    never 500."""
    from service import db

    class ServerSaid(Exception):
        sqlstate = state

    assert db.is_unavailable(ServerSaid())
    assert not db.is_unavailable(type("Bug", (Exception,), {"sqlstate": "42703"})())
