"""Slow, oversized or unauthenticated requests are cut off by serve: 408 for a request that
does not arrive in time (nothing of it is kept), 431 for headers over the limit, 401 before
any of an unauthenticated body is read, 503 past the connection limit; each an RFC 9457
problem, as is the answer to bytes that are no HTTP request."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.api.webhooks import sign
from service.config import load_settings
from tests.conftest import PAYLOADS, free_port
from tests.databases import scratch_database
from tests.services import Served, hooked_config, metric_value, serving

SEED = (PAYLOADS / "infobip" / "seed_002.json").read_bytes()


@pytest.fixture(scope="module")
def served(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    config = hooked_config(tmp_path_factory.mktemp("limits"), "limits-hook")
    with scratch_database(server_url) as url:
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                            "DLR_PORT": str(free_port()), "DLR_REQUEST_TIMEOUT_S": "1",
                            "DLR_MAX_HEADER_BYTES": "4096"}
        with serving(env, "--no-reconciler") as served:
            yield served


def connect(served: Served) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", int(served.base.rsplit(":", 1)[1])))
    conn.settimeout(20)  # only so that a broken server cannot hang the test
    return conn


def answer(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
    return received


def problem(reply: bytes, status: int) -> tuple[dict[str, str], dict[str, object]]:
    """The headers and problem document of a raw answer, checked to be one of `status`."""
    head, _, content = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} "), reply
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["content-type"] == "application/problem+json"
    assert int(headers["content-length"]) == len(content)
    document = json.loads(content)
    assert (document["type"], document["status"]) == ("about:blank", status)
    assert document["title"] == lines[0].split(" ", 2)[2] and document["detail"]
    assert headers["x-request-id"]
    return headers, document


def request(body: bytes, extra: str = "") -> bytes:
    return (f"POST /webhooks/ib HTTP/1.1\r\nHost: t\r\nX-Hook: limits-hook\r\n{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def accepted_requests(served: Served) -> int:
    with served.client() as client:
        exposition = client.get("/metrics").text
    return int(metric_value(exposition, 'dlr_webhook_requests_total{source="ib",status="200"}'))


def test_a_connection_that_sends_nothing_is_closed(served: Served) -> None:
    with connect(served) as conn:
        _, document = problem(answer(conn), 408)
    assert document["detail"] == "no request began within 1 s"


def test_bytes_that_are_no_http_request_get_a_400_problem(served: Served) -> None:
    with connect(served) as conn:
        conn.sendall(b"GARBAGE\r\n\r\n")
        problem(answer(conn), 400)


def test_headers_that_trickle_in_are_cut_off(served: Served) -> None:
    with connect(served) as conn:
        conn.sendall(b"POST /webhooks/ib HTTP/1.1\r\n")
        try:
            for _ in range(40):  # a header line every 0.1 s: never idle, never done
                conn.sendall(b"X-Pad: 1\r\n")
                time.sleep(0.1)
        except OSError:
            pass  # closed on us mid-way, as it should be
        assert answer(conn).startswith(b"HTTP/1.1 408 ")


def test_a_body_that_stalls_is_cut_off_and_not_kept(served: Served) -> None:
    before = accepted_requests(served)
    with connect(served) as conn:
        whole = request(SEED, extra="X-Request-ID: stalled-1\r\n")
        conn.sendall(whole[:-10])  # all but the last ten bytes of the body
        reply = answer(conn)
    headers, _ = problem(reply, 408)
    assert headers["x-request-id"] == "stalled-1"  # the application had begun on it
    assert accepted_requests(served) == before


def test_a_stalled_body_is_counted_as_408_not_500(served: Served) -> None:
    def count(status: str) -> float:
        with served.client() as client:
            return metric_value(client.get("/metrics").text,
                                f'dlr_webhook_requests_total{{source="ib",status="{status}"}}')

    before = count("408"), count("500")
    with connect(served) as conn:
        conn.sendall(request(SEED)[:-10])
        assert answer(conn).startswith(b"HTTP/1.1 408 ")
    deadline = time.monotonic() + 10  # the handler notices the disconnect, then counts
    while count("408") == before[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (count("408"), count("500")) == (before[0] + 1, before[1])


def test_oversized_headers_get_431(served: Served) -> None:
    with connect(served) as conn:
        conn.sendall(request(SEED, extra=f"X-Pad: {'a' * 5000}\r\n"))
        _, document = problem(answer(conn), 431)
    assert document["detail"] == "the request line and headers exceed 4096 bytes"


def test_requests_within_the_limits_are_served_on_one_connection(served: Served) -> None:
    with served.client() as client:
        for _ in range(3):
            pushed = client.post("/webhooks/ib", headers={"X-Hook": "limits-hook"}, content=SEED)
            assert pushed.status_code == 200
            time.sleep(0.6)  # idle between requests, under the keep-alive timeout


def test_request_limits_are_configurable() -> None:
    settings = load_settings({"DLR_REQUEST_TIMEOUT_S": "7", "DLR_MAX_HEADER_BYTES": "8192"})
    assert (settings.request_timeout_s, settings.max_header_bytes) == (7, 8192)


def test_an_unauthenticated_body_is_refused_before_it_is_read(served: Served) -> None:
    """A 401 comes back at once: the server does not wait for the 8 MB it was promised."""
    with connect(served) as conn:
        conn.sendall(b"POST /webhooks/ib HTTP/1.1\r\nHost: t\r\nX-Hook: wrong\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 8000000\r\n\r\n{")
        assert answer(conn).startswith(b"HTTP/1.1 401 ")


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("VmRSS:"))) / 1024


def test_unauthenticated_bodies_do_not_grow_memory(served: Served) -> None:
    """64 clients at once, each sending 8 MB with a wrong credential."""
    pid = served.process.pid
    start, peak = rss_mb(pid), [0.0]
    chunk = b"x" * (1 << 20)
    head = (b"POST /webhooks/ib HTTP/1.1\r\nHost: t\r\nX-Hook: wrong\r\n"
            b"Content-Length: %d\r\n\r\n" % (8 * len(chunk)))

    def attack() -> None:
        with connect(served) as conn:
            try:
                conn.sendall(head)
                for _ in range(8):
                    conn.sendall(chunk)
                    peak[0] = max(peak[0], rss_mb(pid))
            except OSError:
                pass  # refused and closed mid-way: as it should be

    threads = [threading.Thread(target=attack) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    peak[0] = max(peak[0], rss_mb(pid))
    assert peak[0] - start < 100, f"RSS went from {start:.0f} MB to {peak[0]:.0f} MB"


def test_connections_past_the_limit_get_503_with_retry_after_but_probes_answer(
        server_url: str, tmp_path: Path) -> None:
    config = hooked_config(tmp_path, "cap-hook")
    with scratch_database(server_url) as url:
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                            "DLR_PORT": str(free_port()), "DLR_MAX_CONNECTIONS": "3",
                            "DLR_MAX_CONNECTIONS_PER_CLIENT": "3"}
        with serving(env, "--no-reconciler") as served, contextlib.ExitStack() as held:
            for _ in range(3):
                held.enter_context(connect(served))
            wait_until(lambda: open_slots(served) == 0)
            with connect(served) as extra:
                extra.sendall(request(SEED).replace(b"limits-hook", b"cap-hook"))
                headers, document = problem(answer(extra), 503)
            assert headers["retry-after"] == "1" and document["retry_after"] == 1
            # the kubelet's probes still answer, from the reserve
            for path in ("/health/live", "/health/ready"):
                with connect(served) as probe:
                    probe.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n"
                                  "Connection: close\r\n\r\n".encode())
                    assert answer(probe).startswith(b"HTTP/1.1 200 "), path
            assert refused(served, "capacity") >= 2
            held.close()
            with served.client() as client:
                wait_until(lambda: client.post("/webhooks/ib", headers={"X-Hook": "cap-hook"},
                                               content=SEED).status_code == 200)


def wait_until(condition: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def refused(served: Served, reason: str) -> float:
    with connect(served) as conn:  # a probe: answered even when every slot is taken
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        reply = answer(conn)
    if not reply.startswith(b"HTTP/1.1 200 "):
        return -1.0
    text = reply.partition(b"\r\n\r\n")[2].decode()
    return metric_value(text, f'dlr_connections_refused_total{{reason="{reason}"}}')


def open_slots(served: Served) -> int:
    """0 when a request from here is refused for capacity, else 1."""
    with connect(served) as conn:
        conn.sendall(b"GET /health/nothing HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        return 0 if answer(conn).startswith(b"HTTP/1.1 503 ") else 1


SW_KEY = base64.b64encode(b"k" * 32).decode()


def signed_config(directory: Path) -> Path:
    path = directory / "dlr.toml"
    path.write_text('[[sources]]\nname = "ib"\nkind = "infobip"\nbase_url = "http://127.0.0.1:9"\n'
                    '[sources.webhook]\n'
                    f'standard_webhooks = {{ secrets = ["whsec_{SW_KEY}"] }}\n')
    return path


def signed_push(served: Served, body: bytes, msg_id: str) -> httpx.Response:
    stamp = int(time.time())
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(stamp),
               "webhook-signature": sign(f"whsec_{SW_KEY}", msg_id, stamp, body),
               "Content-Type": "application/json"}
    with served.client(timeout=5) as client:
        return client.post("/webhooks/ib", content=body, headers=headers)


def test_idle_sockets_from_one_address_leave_probes_and_signed_pushes_answering(
        server_url: str, tmp_path: Path) -> None:
    """513 sockets from one address that send nothing: that address gets its share of the
    512 connections, the rest is refused, and a probe and a signed push from elsewhere are
    answered at once."""
    with scratch_database(server_url) as url:
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(signed_config(tmp_path)),
                            "DLR_PORT": str(free_port()), "DLR_FIRST_BYTE_TIMEOUT_S": "30"}
        with serving(env, "--no-reconciler") as served:
            port = int(served.base.rsplit(":", 1)[1])
            idle = []
            try:
                for _ in range(513):
                    conn = socket.socket()
                    conn.bind(("127.0.0.2", 0))  # another client address than the tests'
                    conn.connect(("127.0.0.1", port))
                    idle.append(conn)
                wait_until(lambda: refused(served, "client_share") >= 513 - 128 - 2 - 1)
                started = time.monotonic()
                with served.client(timeout=5) as client:
                    assert client.get("/health/live").status_code == 200
                    assert client.get("/health/ready").status_code == 200
                assert signed_push(served, SEED, "msg_idle_1").status_code == 200
                assert time.monotonic() - started < 5  # at once, not after the idle ones go
            finally:
                for conn in idle:
                    conn.close()


UPGRADE = (b"GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, close\r\n"
           b"Upgrade: websocket\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def test_websocket_upgrades_give_their_connections_back(server_url: str, tmp_path: Path) -> None:
    """The service has no WebSocket route: an upgrade request is a plain request, and its
    connection's slot is given back when it closes. (Handed to uvicorn's WebSocket protocol,
    a connection never gave its slot back: DLR_MAX_CONNECTIONS upgrades, each closed at
    once, left the service refusing every request until it restarted.)"""
    config = hooked_config(tmp_path, "ws-hook")
    with scratch_database(server_url) as url:
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                            "DLR_PORT": str(free_port()), "DLR_MAX_CONNECTIONS": "4",
                            "DLR_MAX_CONNECTIONS_PER_CLIENT": "4"}
        with serving(env, "--no-reconciler") as served:
            for _ in range(10):
                with connect(served) as conn:
                    conn.sendall(UPGRADE)
                    assert answer(conn).startswith(b"HTTP/1.1 200 ")
            assert open_slots(served) == 1
            with served.client() as client:
                assert client.post("/webhooks/ib", headers={"X-Hook": "ws-hook"},
                                   content=SEED).status_code == 200


def test_a_flood_of_unreadable_requests_is_not_a_flood_of_log_lines(served: Served) -> None:
    """uvicorn warns once per request it cannot parse or whose upgrade it does not take;
    those are answered and counted here, and logged at most once per 10 s per reason."""
    time.sleep(0.5)  # what earlier tests logged is written
    before = len(served.printed().splitlines())
    for payload in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
                    f"GET / HTTP/1.1\r\nX-Pad: {'a' * 5000}\r\n\r\n".encode(),
                    b"GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, close\r\n"
                    b"Upgrade: h2c\r\n\r\n"):
        for _ in range(25):
            with connect(served) as conn:
                conn.sendall(payload)
                answer(conn)
    time.sleep(0.5)
    added = served.printed().splitlines()[before:]
    assert not [line for line in added if "uvicorn.error" in line], added[:3]
    # the upgrades' access lines (served), and a refusal summary per reason at most
    assert len(added) <= 25 + 2, added[:5]


def bound_to(address: str, served: Served) -> socket.socket:
    conn = socket.socket()
    conn.bind((address, 0))
    conn.settimeout(20)
    conn.connect(("127.0.0.1", int(served.base.rsplit(":", 1)[1])))
    return conn


def test_idle_sockets_from_many_addresses_leave_the_probes_their_reserve(
        server_url: str, tmp_path: Path) -> None:
    """Every slot taken, then two idle sockets from each of ten other addresses (more than
    the reserve's sixteen): the probes from here still answer, as a place in the reserve is
    taken only by a probe that has arrived, and given back with its answer. A probe past
    the caps must come at once: one sent in pieces is refused, and holds nothing."""
    config = hooked_config(tmp_path, "reserve-hook")
    with scratch_database(server_url) as url:
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                            "DLR_PORT": str(free_port()), "DLR_MAX_CONNECTIONS": "4",
                            "DLR_MAX_CONNECTIONS_PER_CLIENT": "4",
                            "DLR_FIRST_BYTE_TIMEOUT_S": "30"}
        with serving(env, "--no-reconciler") as served, contextlib.ExitStack() as held:
            for _ in range(4):
                held.enter_context(bound_to("127.0.0.2", served))
            wait_until(lambda: open_slots(served) == 0)
            for host in range(3, 13):
                for _ in range(2):
                    held.enter_context(bound_to(f"127.0.0.{host}", served))
            piecemeal = held.enter_context(bound_to("127.0.0.13", served))
            piecemeal.sendall(b"GET /health/li")
            time.sleep(0.2)
            with contextlib.suppress(OSError):
                piecemeal.sendall(b"ve HTTP/1.1\r\nHost: t\r\n\r\n")
            assert answer(piecemeal).startswith(b"HTTP/1.1 503 ")
            for path in ("/health/live", "/health/ready", "/metrics") * 3:
                with connect(served) as probe:
                    probe.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                    reply = answer(probe)  # closed once answered, though it asked for none
                assert reply.startswith(b"HTTP/1.1 200 "), (path, reply[:200])
                assert b"\r\nconnection: close\r\n" in reply.lower()
