"""Before a signature is known good, a sender costs almost nothing: a body over its kind's
limit is refused by its Content-Length (or as it arrives), the process holds at most
DLR_UNVERIFIED_BODY_BYTES of unverified bodies (503 with Retry-After past it), and a
receipt that no provider could have signed is refused before any HMAC."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service.api.webhooks import sign
from service.app import create_app
from service.errors import BadRequest
from service.providers import twilio, vonage
from tests import test_twilio, test_vonage
from tests.conftest import PAYLOADS, free_port, make_settings
from tests.conftest import SW_SECRET as SW
from tests.databases import scratch_database
from tests.services import Served, metric_value, serving
from tests.test_http_limits import answer, problem, rss_mb, wait_until

SEED = (PAYLOADS / "infobip" / "seed_002.json").read_bytes()
SW_SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
CONFIG = f"""
[[sources]]
name = "sw"
kind = "infobip"
base_url = "http://127.0.0.1:9"
[sources.webhook]
standard_webhooks = {{ secrets = ["{SW_SECRET}"] }}

[[sources]]
name = "tw"
kind = "twilio"
base_url = "http://127.0.0.1:9"
[sources.webhook]
twilio_signature = {{ auth_tokens = ["{'t' * 32}"], public_url = "https://hooks.example.com/tw" }}

[[sources]]
name = "vg"
kind = "vonage"
base_url = "http://127.0.0.1:9"
[sources.webhook]
vonage_signature = {{ secret = "{'v' * 32}" }}

[[sources]]
name = "open"
kind = "infobip"
base_url = "http://127.0.0.1:9"
[sources.webhook]
unauthenticated = true
"""
MB = 1 << 20


@pytest.fixture(scope="module")
def served(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    config = tmp_path_factory.mktemp("unverified") / "dlr.toml"
    config.write_text(CONFIG)
    with scratch_database(server_url) as url:
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                            "DLR_PORT": str(free_port())}
        with serving(env, "--no-reconciler") as served:
            yield served


def connect(served: Served) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", int(served.base.rsplit(":", 1)[1])))
    conn.settimeout(30)
    return conn


def forged(source: str) -> str:
    """Headers that pass every check a header can pass, with a signature nobody made."""
    if source == "sw":
        return (f"webhook-id: msg_forged\r\nwebhook-timestamp: {int(time.time())}\r\n"
                "webhook-signature: v1,AAAA\r\n")
    if source == "tw":
        return "X-Twilio-Signature: junk\r\n"
    return ""


def head(source: str, length: int | None) -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else \
        "Transfer-Encoding: chunked\r\n"
    return (f"POST /webhooks/{source} HTTP/1.1\r\nHost: t\r\n{forged(source)}"
            f"Content-Type: application/json\r\n{size}\r\n").encode()


def unverified_bytes(served: Served) -> float:
    with served.client() as client:
        return metric_value(client.get("/metrics").text, "dlr_webhook_unverified_bytes")


def refusals(served: Served, source: str, reason: str) -> float:
    with served.client() as client:
        return metric_value(client.get("/metrics").text,
                            f'dlr_webhook_unverified_refused_total{{reason="{reason}",'
                            f'source="{source}"}}')


@pytest.mark.parametrize("source", ["sw", "tw", "vg", "open"])
@pytest.mark.parametrize("chunked", [False, True])
def test_forty_unverified_8_mib_bodies_leave_memory_where_it_was(served: Served, source: str,
                                                                 chunked: bool) -> None:
    pid = served.process.pid
    start, peak = rss_mb(pid), [0.0]
    chunk = b"x" * MB
    answers: list[bytes] = []

    def attack() -> None:
        with connect(served) as conn:
            try:
                conn.sendall(head(source, None if chunked else 8 * len(chunk)))
                for _ in range(8):
                    conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                    peak[0] = max(peak[0], rss_mb(pid))
                if chunked:
                    conn.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # refused and closed mid-way: as it should be
            answers.append(answer(conn))

    threads = [threading.Thread(target=attack) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    peak[0] = max(peak[0], rss_mb(pid))
    assert peak[0] - start < 64, f"RSS went from {start:.0f} MB to {peak[0]:.0f} MB"
    statuses = {a.split(b" ", 2)[1] for a in answers if a}
    expected = {b"413"} if source in ("tw", "vg") else {b"401", b"503"} if source == "sw" \
        else {b"400", b"503"}
    assert statuses and statuses <= expected, statuses
    wait_until(lambda: unverified_bytes(served) == 0)


def test_past_the_budget_a_signed_body_gets_503_with_retry_after(served: Served) -> None:
    """Two bodies of 8 MiB take the 16 MiB budget as they arrive: a third is refused at
    once; once they are gone, a good push goes through."""
    with connect(served) as one, connect(served) as two:
        for conn in (one, two):
            conn.sendall(head("sw", 8 * MB) + b"{" + b" " * (8 * MB - 2))
        wait_until(lambda: unverified_bytes(served) == 16 * MB - 2)
        before = refusals(served, "sw", "budget")
        with connect(served) as third:
            third.sendall(head("sw", 1000) + b"{" * 1000)
            headers, document = problem(answer(third), 503)
        assert headers["retry-after"] == "1" and document["retry_after"] == 1
        assert refusals(served, "sw", "budget") == before + 1
    wait_until(lambda: unverified_bytes(served) == 0)
    assert signed_push(served, SEED).status_code == 200


def test_a_length_declared_holds_none_of_the_budget_until_its_bytes_come(
        served: Served) -> None:
    """Two sockets that declare 8 MiB each and send nothing more hold none of the budget:
    a good push from elsewhere goes through. (Taken whole from the Content-Length, they
    left every signed push of the process answered 503 for as long as they stayed.)"""
    with connect(served) as one, connect(served) as two:
        for conn in (one, two):
            conn.sendall(head("sw", 8 * MB))
        time.sleep(0.5)  # read, and answered (or not) by now
        assert unverified_bytes(served) == 0
        assert signed_push(served, SEED).status_code == 200


def test_a_receipt_over_its_kind_limit_is_refused_before_it_is_read(served: Served) -> None:
    """7 MB of one nested JSON list to a Vonage webhook: 413 from its Content-Length, while
    the sender is still sending; the probes answer meanwhile."""
    with connect(served) as conn:
        conn.sendall(head("vg", 7_000_000) + b'{"a":[' + b"[" * 1000)
        _, document = problem(answer(conn), 413)
    assert "16384 bytes" in str(document["detail"])
    with served.client() as client:
        assert client.get("/health/live").status_code == 200


def signed_push(served: Served, payload: bytes) -> httpx.Response:
    stamp = int(time.time())
    msg_id = f"msg_{time.monotonic_ns()}"
    with served.client() as client:
        return client.post("/webhooks/sw", content=payload, headers={
            "webhook-id": msg_id, "webhook-timestamp": str(stamp),
            "webhook-signature": sign(SW_SECRET, msg_id, stamp, payload),
            "Content-Type": "application/json"})


scalars = st.one_of(st.text(max_size=20), st.integers(), st.booleans(), st.none())


def _nested(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.one_of(st.lists(inner, max_size=4),
                     st.dictionaries(st.text(max_size=5), inner, max_size=4))


shapes: st.SearchStrategy[object] = st.recursive(scalars, _nested, max_leaves=30)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=10), shapes, max_size=10))
def test_only_a_flat_receipt_reaches_the_signature(params: dict[str, object]) -> None:
    body = json.dumps(params).encode()
    flat = all(not isinstance(v, list | dict) for v in params.values())
    try:
        checked = vonage.signed_params(body, "application/json")
    except BadRequest as exc:
        assert not flat, exc
        assert not re.search(r"\w\(", exc.message)  # in words, not a repr
        return
    assert flat and set(checked) == set(params)
    assert all(isinstance(v, str) for v in checked.values())


def test_too_many_parameters_are_refused() -> None:
    many = "&".join(f"p{i}=1" for i in range(vonage.MAX_RECEIPT_PARAMS + 1)).encode()
    for body, content_type in ((many, "application/x-www-form-urlencoded"), (json.dumps(
            {f"p{i}": 1 for i in range(vonage.MAX_RECEIPT_PARAMS + 1)}).encode(), "json")):
        with pytest.raises(BadRequest):
            vonage.signed_params(body, content_type)




@pytest.fixture
def web(engine: AsyncEngine, database_url: str) -> Iterator[TestClient]:  # type: ignore[type-arg]
    """Each signed kind in one app, over HTTP, for a synchronous hypothesis test."""
    sources = {"sw": make_settings().sources["ib-signed"], "tw": test_twilio.source(),
               "vg": test_vonage.source()}
    with TestClient(app=create_app(make_settings(sources=sources), database_url)) as client:
        yield client


json_shapes = shapes.map(lambda v: json.dumps(v).encode())
forms = st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=12).map(
    lambda d: urlencode(d).encode())
bodies = st.one_of(st.binary(max_size=4096), json_shapes, forms,
                   st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(source=st.sampled_from(["sw", "tw", "vg"]), payload=bodies, signs=st.booleans(),
       content_type=st.sampled_from(["application/json", "application/x-www-form-urlencoded",
                                     "text/xml", "text/plain"]))
def test_whatever_a_signed_kind_is_sent_it_never_answers_5xx(
        web: TestClient, source: str, payload: bytes, signs: bool,  # type: ignore[type-arg]
        content_type: str) -> None:
    """Forged or real signatures over any body: 200, 400, 401 or 413, never a 5xx."""
    headers = {"Content-Type": content_type}
    if source == "sw":
        msg_id = f"msg_{time.monotonic_ns()}"
        stamp = int(time.time())
        headers |= {"webhook-id": msg_id, "webhook-timestamp": str(stamp),
                    "webhook-signature": sign(SW, msg_id, stamp, payload) if signs else "v1,x"}
    elif source == "tw":
        headers["X-Twilio-Signature"] = "junk"
        if signs:  # signed as Twilio signs a JSON body: its hash in the URL
            digest = hashlib.sha256(payload).hexdigest()
            url = f"{test_twilio.PUBLIC}?bodySHA256={digest}"
            headers["X-Twilio-Signature"] = twilio.sign(test_twilio.TOKEN, url, {})
            answer = web.post(f"/webhooks/tw?bodySHA256={digest}", content=payload,
                              headers=headers)
            assert answer.status_code in (200, 400, 401, 413), answer.text
            return
    answer = web.post(f"/webhooks/{source}", content=payload, headers=headers)
    assert answer.status_code in (200, 400, 401, 413), answer.text
