"""Real PostgreSQL for every test: the local server when it answers, else an embedded one.

One database per test session, built by the real migrations; every test starts with
empty tables (TRUNCATE is much cheaper than a database per test).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service import db
from service.api import changes
from service.app import create_app
from service.config import (
    ApiToken,
    BasicAuth,
    InfobipSource,
    Settings,
    StandardWebhooksAuth,
    TokenAuth,
    WebhookConfig,
)
from service.tables import metadata
from tests.databases import scratch_database, server_or_embedded

PAYLOADS = Path(__file__).parent / "payloads"
SERVER_URL = os.environ.get("DLR_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SW_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SW_SECRET = "whsec_" + "b2xkLXNlY3JldC1yb3RhdGVkLW91dC1zb29uLTAxMjM="  # 32 bytes
READ_TOKEN, WRITE_TOKEN, ADMIN_TOKEN = "read-token", "write-token", "admin-token"
MASKED_TOKEN = "masked-read-token"  # read without pii: numbers masked, texts withheld


@pytest.fixture(scope="session")
def server_url() -> str:
    """A PostgreSQL server URL (asyncpg spelling): local if it answers, else embedded (one
    per test process, in a folder of its own: pytest keeps its own folders at mode 0700,
    which the embedded server's user could not enter; it stops when the process ends)."""
    return server_or_embedded(SERVER_URL, Path(tempfile.mkdtemp(prefix="dlr-tests-")))


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A fresh migrated database for this test session (SQLAlchemy asyncpg URL)."""
    with scratch_database(server_url) as url:
        yield db.asyncpg_url(url)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(database_url)
    async with engine.begin() as conn:
        names = ", ".join(table.name for table in metadata.sorted_tables)
        await conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY")
        await conn.exec_driver_sql("ALTER SEQUENCE messages_seq RESTART")
    yield engine
    await engine.dispose()


def make_settings(**overrides: object) -> Settings:
    sources = {
        "ib": InfobipSource("ib", "http://127.0.0.1:1", webhook=WebhookConfig(
            basic=BasicAuth("hook", "hook-password"))),
        "ib-token": InfobipSource("ib-token", "http://127.0.0.1:1", webhook=WebhookConfig(
            token=TokenAuth("token-value", header="X-Webhook-Token"))),
        "ib-signed": InfobipSource("ib-signed", "http://127.0.0.1:1", webhook=WebhookConfig(
            standard_webhooks=StandardWebhooksAuth([OLD_SW_SECRET, SW_SECRET]))),
        "ib-open": InfobipSource("ib-open", "http://127.0.0.1:1", webhook=WebhookConfig(
            unauthenticated=True)),
        "ib-nohook": InfobipSource("ib-nohook", "http://127.0.0.1:1"),
        "ib-empty": InfobipSource("ib-empty", "http://127.0.0.1:1", webhook=WebhookConfig(
            basic=BasicAuth("hook", ""))),
        "ib-fenced": InfobipSource("ib-fenced", "http://127.0.0.1:1", webhook=WebhookConfig(
            unauthenticated=True, allow_ips=["10.0.0.0/8"])),
    }
    tokens = (ApiToken(READ_TOKEN, ["read", "pii"]), ApiToken(WRITE_TOKEN, ["write"]),
              ApiToken(ADMIN_TOKEN, ["read", "write", "admin"]),
              ApiToken(MASKED_TOKEN, ["read"]))
    values: dict[str, object] = {"sources": sources, "api_tokens": tokens, "db_timeout_s": 2.0}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def client(engine: AsyncEngine, database_url: str) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    app = create_app(make_settings(), database_url)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def patient_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /v1/changes shows a change only once every transaction begun before it has ended,
    across the whole server; the tests of other workers run on the same server, so in tests
    the feed waits for them as long as it takes (a test of its time limit sets its own)."""
    monkeypatch.setattr(changes, "WAIT_S", 60.0)
