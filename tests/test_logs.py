"""Logs: JSON lines, one per request, with phone numbers masked and no secret ever written."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import pty
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service import cli, logs
from service.logs import REQUEST_ID, JsonFormatter, TextFormatter, default_format, mask
from tests.conftest import READ_TOKEN, free_port
from tests.databases import scratch_database
from tests.reports import body, report
from tests.services import hooked_config, serving

Client = AsyncTestClient  # type: ignore[type-arg]


@pytest.mark.parametrize(("text", "expected"), [
    ("+9779842271353", "+97798******53"),
    ("to 9842271353 and +41793026727", "to 98******53 and +417******27"),
    ("+977 984-227 1353", "+977 98*-*** **53"),
    ("(984) 227.1353", "(98*) ***.**53"),
    ("1234567 or 123456", "*****67 or 123456"),
    ("order-42 at 10:00", "order-42 at 10:00"),
    ("+9779842271353@2025-11-04T11:15:45.126760Z", "+97798******53@2025-11-04T11:15:45.126760Z"),
    ("9842271353 at 2026-11-30 03:33:41,123 and 2026-11-30T03:33:41+05:45",
     "98******53 at 2026-11-30 03:33:41,123 and 2026-11-30T03:33:41+05:45"),
    ("9842\u20602713\u206053", "98**\u2060****\u206053"),  # invisible word joiners
    ("9842_2713_53", "98**_****_53"),
    ("GET /v1/messages/dice/9842271353 -> 404", "GET /v1/messages/dice/98******53 -> 404"),
])
def test_mask(text: str, expected: str) -> None:
    assert mask(text) == expected


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


async def test_requests_are_logged_without_secrets_or_numbers(client: Client,
                                                              captured: io.StringIO) -> None:
    basic = base64.b64encode(b"hook:hook-password").decode()
    await client.post("/webhooks/ib", content=body(report("m1", to="41793026727")),
                      headers={"Authorization": f"Basic {basic}"})
    await client.post("/webhooks/ib", content=b"{broken", headers={"Authorization": f"Basic {basic}"})
    await client.get("/v1/messages/dice/+9779842271353@2025-11-04T11:15:45.126760Z",
                     headers={"Authorization": f"Bearer {READ_TOKEN}"})
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    requests = [line for line in lines if line["logger"] == "service.http"]
    assert [r["status"] for r in requests] == [200, 400, 404]
    assert all({"time", "level", "message", "ms"} <= set(r) for r in requests)
    text = captured.getvalue()
    for secret in ("hook-password", basic, READ_TOKEN, "41793026727", "9779842271353"):
        assert secret not in text
    assert "GET /v1/messages/{source}/{message_id} -> 404" in text  # the route
    scraped = (await client.get("/metrics")).text
    assert 'dlr_webhook_requests_total{source="ib",status="200"}' in scraped
    assert 'dlr_webhook_requests_total{source="ib",status="400"}' in scraped


SEPARATORS = st.sampled_from(["", "", "", " ", "-", ".", "(", ")", ") ", " (", "  ", " - ", "-("])
UNSEPARATED = str.maketrans("", "", " -.()")


@st.composite
def phone_numbers(draw: st.DrawFn) -> tuple[str, str]:
    """A number of 7 to 15 digits as people write them, and its digits alone."""
    digits = draw(st.text("0123456789", min_size=7, max_size=15))
    between = draw(st.lists(SEPARATORS, min_size=len(digits) - 1, max_size=len(digits) - 1))
    spelled = digits[0] + "".join(s + d for s, d in zip(between, digits[1:], strict=True))
    return draw(st.sampled_from(["", "+", "(", "+("])) + spelled, digits


def record_about(number: str) -> logging.LogRecord:
    try:
        raise ValueError(f"provider refused {number}")
    except ValueError:
        record = logging.LogRecord("service.test", logging.ERROR, __file__, 1,
                                   "no report for %s", (number,), sys.exc_info())
    record.to = number
    record.detail = {"recipients": [number], number: 1}
    return record


@given(phone_numbers())
def test_no_number_survives_in_a_json_line(number: tuple[str, str]) -> None:
    spelled, digits = number
    line = json.loads(JsonFormatter().format(record_about(spelled)))
    for field in ("message", "to", "detail", "error"):
        assert digits not in json.dumps(line[field]).translate(UNSEPARATED), field


@given(phone_numbers())
def test_no_number_survives_in_a_text_line(number: tuple[str, str]) -> None:
    spelled, digits = number
    text = TextFormatter().format(record_about(spelled))
    after_the_time = text.split(" ", 2)[2]
    assert digits not in after_the_time.translate(UNSEPARATED)


def own_numbers_record() -> logging.LogRecord:
    record = logging.LogRecord("service.test", logging.INFO, __file__, 1,
                               "replayed %d of %s bodies, %s", (12345678, "+9779842271353",
                                                                 2.5), None)
    record.inbox_id = 1234567
    record.run_id = 7654321
    record.rejected_count = 100000000
    record.to = "+9779842271353"
    record.count = "9842271353"  # a known name, but text: it may come from anywhere
    return record


def test_the_services_own_numbers_are_not_masked() -> None:
    """Integers the code passes (counts, limits, ids) are the service's; what it
    interpolates as text, and other fields, may come from outside and are masked."""
    line = json.loads(JsonFormatter().format(own_numbers_record()))
    assert line["message"] == "replayed 12345678 of +97798******53 bodies, 2.5"
    assert (line["inbox_id"], line["run_id"], line["rejected_count"]) == (1234567, 7654321,
                                                                          100000000)
    assert (line["to"], line["count"]) == ("+97798******53", "98******53")
    text = TextFormatter().format(own_numbers_record())
    assert "replayed 12345678 of +97798******53 bodies" in text
    assert "inbox_id=1234567 run_id=7654321 rejected_count=100000000" in text
    assert "to=+97798******53 count=98******53" in text


async def test_a_refused_reload_says_its_limits_unmasked(captured: io.StringIO,
                                                         tmp_path: Path) -> None:
    from litestar.datastructures import State

    from service.app import reload_config
    from service.config import load_settings
    from tests.conftest import make_settings
    path = tmp_path / "dlr.toml"
    path.write_text('[[sources]]\nname = "sw"\nkind = "infobip"\nbase_url = "http://x"\n'
                    "[sources.webhook]\nstandard_webhooks = { secrets = [\"whsec_"
                    + base64.b64encode(b"k" * 32).decode() + '"], tolerance_s = 1234567 }\n')
    await reload_config(State({"settings": make_settings()}),
                        lambda: load_settings({"DLR_CONFIG": str(path)}), pulled=None)
    [refused] = [json.loads(line) for line in captured.getvalue().splitlines()
                 if "not reloaded" in line]
    assert refused["message"].endswith("tolerance_s: 1234567 is outside 1..86400")


@given(st.text())
def test_a_text_record_is_one_line_whatever_it_holds(message: str) -> None:
    record = logging.LogRecord("service.test", logging.INFO, __file__, 1, "got %s", (message,),
                               None)
    record.path = message
    assert len(TextFormatter().format(record).splitlines()) == 1


@given(st.text())
def test_a_traceback_cannot_forge_a_text_record(message: str) -> None:
    try:
        raise ValueError(message)
    except ValueError:
        record = logging.LogRecord("service.test", logging.ERROR, __file__, 1, "failed", (),
                                   sys.exc_info())
    rest = TextFormatter().format(record).splitlines()[1:]
    assert rest and all(line.startswith("    ") for line in rest)


async def test_a_request_path_cannot_forge_a_text_line(client: Client) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    http = logging.getLogger("service.http")
    http.addHandler(handler)
    http.setLevel(logging.INFO)
    try:
        await client.get("/no/route/a%0D%0A2026-11-30%2003:33:41,123%20INFO%20forged/b")
    finally:
        http.removeHandler(handler)
        http.setLevel(logging.NOTSET)
    [line] = stream.getvalue().splitlines()
    assert "\\r\\n2026-11-30 03:33:41,123 INFO forged" in line


def request_lines(captured: io.StringIO) -> list[str]:
    return [line["message"] for line in map(json.loads, captured.getvalue().splitlines())
            if line["logger"] == "service.http"]


async def test_a_routed_request_is_logged_by_its_route(client: Client,
                                                       captured: io.StringIO) -> None:
    """Ids in the path (a DiceSMS id holds the recipient) stay out of the log."""
    await client.get("/v1/messages/ib/order-7-for-alice", headers={
        "Authorization": f"Bearer {READ_TOKEN}"})
    await client.get("/v1/inbox/12345")  # unauthenticated: logged all the same
    assert request_lines(captured) == ["GET /v1/messages/{source}/{message_id} -> 404",
                                       "GET /v1/inbox/{inbox_id} -> 401"]


@given(path=st.text(st.characters(codec="ascii", exclude_characters="?#%"), min_size=1,
                    max_size=3000),
       query=st.text(st.characters(codec="ascii", exclude_characters="#"), max_size=200))
async def test_an_unrouted_path_is_logged_cut_short_without_its_query(path: str,
                                                                      query: str) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    http = logging.getLogger("service.http")
    http.addHandler(handler)
    http.setLevel(logging.INFO)

    async def unrouted(scope: object, receive: object, send: logs.Send) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def sent(message: object) -> None:
        pass

    scope = {"type": "http", "method": "GET", "path": "/nowhere/" + path, "headers": [],
             "query_string": ("secret-query=" + query).encode()}
    try:
        await logs.log_request(unrouted, scope, None, sent)  # type: ignore[arg-type]
    finally:
        http.removeHandler(handler)
        http.setLevel(logging.NOTSET)
    [message] = request_lines(stream)
    logged = message.removeprefix("GET ").removesuffix(" -> 404")
    assert "secret-query" not in stream.getvalue()
    full = "/nowhere/" + path
    if len(full) <= logs.LOGGED_PATH_CHARS:
        assert logged == mask(full)
    else:
        assert logged == mask(full[:logs.LOGGED_PATH_CHARS]) + f"…(cut, {len(full)} characters)"


@pytest.fixture
def pull_config(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "dlr.toml"
    config.write_text('[[sources]]\nname = "ib"\nkind = "infobip"\n'
                      'base_url = "http://127.0.0.1:9"\napi_key = "k"\n')
    monkeypatch.setenv("DLR_CONFIG", str(config))
    monkeypatch.setenv("DLR_DATABASE_URL", database_url)
    monkeypatch.delenv("DLR_LOG_FORMAT", raising=False)


@pytest.mark.parametrize(("command", "failing"), [(["pull", "ib"], "service.worker.pull"),
                                                  (["replay"], "service.ingest.replay")])
def test_command_failures_are_logged_masked(engine: AsyncEngine, pull_config: None,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str],
                                            command: list[str], failing: str) -> None:
    async def fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the provider choked on +977 984-227 1353")

    monkeypatch.setattr(failing, fails)
    assert cli.main(command) == 1
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines()]  # nothing but log lines
    [failure] = [line for line in lines if line["level"] == "error"]
    assert failure["message"] == f"{command[0]} failed"
    assert "+977 98*-*** **53" in failure["error"]
    assert "RuntimeError" in failure["error"]  # the traceback, in the log line
    assert "1353" not in err


def test_every_worker_of_serve_logs_json_with_numbers_masked(server_url: str,
                                                              tmp_path: Path) -> None:
    """serve --workers 2: request lines from each worker, JSON like the parent's, and not
    one full phone number anywhere in the log, whatever the route or the outcome."""
    config = hooked_config(tmp_path, "log-hook", api_token="log-token")
    numbers = ["41793026727", "9779842271353", "9842271353"]
    with scratch_database(server_url) as url:
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                            "DLR_PORT": str(free_port()), "DLR_LOG_FORMAT": "json"}
        with serving(env, "--no-reconciler", "--workers", "2") as served:
            for i in range(40):
                with served.client() as client:  # new connections spread over the workers
                    client.post("/webhooks/ib", headers={"X-Hook": "log-hook"},
                                content=body(report(f"m{i}", to=numbers[0])))
                    client.get("/v1/messages/ib/+9779842271353@2025-11-04T11:15:45Z",
                               headers={"Authorization": "Bearer log-token"})
                    client.get("/v1/messages", params={"to": "9842271353"},
                               headers={"Authorization": "Bearer log-token"})
    lines = [json.loads(line) for line in served.output.splitlines() if line.strip()]
    requests = [line for line in lines if line["logger"] == "service.http"]
    assert len(requests) >= 120
    for number in numbers:
        assert number not in served.output


HEX_ID = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize(("given", "kept"), [
    ("4bf92f3577b34da6a3ce929d0e0e4736", True),
    ("Root=1-5759e988-bd862e3fe1be46a994272793", True),
    ("trace.id:17/span+base64==~_-", True),
    ("x" * 128, True),
    ("x" * 129, False),
    ("two words", False),
    ('quote"d', False),
    ("", False),
    (None, False),
])
async def test_a_request_id_is_taken_when_usable_else_made(client: Client, given: str | None,
                                                          kept: bool) -> None:
    headers = {} if given is None else {"X-Request-ID": given}
    for path in ("/health/live", "/no/such/path"):  # routed or not
        answered = (await client.get(path, headers=headers)).headers["x-request-id"]
        if kept:
            assert answered == given
        else:
            assert HEX_ID.fullmatch(answered), answered


async def test_every_log_line_of_a_request_carries_its_id(client: Client,
                                                          captured: io.StringIO,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("service.store.get_message", broken)
    answer = await client.get("/v1/messages/ib/m1", headers={
        "Authorization": f"Bearer {READ_TOKEN}", "X-Request-ID": "req-0001"})
    assert (answer.status_code, answer.headers["x-request-id"]) == (500, "req-0001")
    made = (await client.get("/health/live")).headers["x-request-id"]
    logging.getLogger("service.test").info("after the requests")
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    failure, first, second, after = lines[-4:]
    assert (failure["message"], failure["request_id"]) == ("unhandled error", "req-0001")
    assert (first["logger"], first["request_id"]) == ("service.http", "req-0001")
    assert (second["logger"], second["request_id"]) == ("service.http", made)
    assert "request_id" not in after


def test_a_request_id_is_on_a_text_line_too() -> None:
    record = logging.LogRecord("service.test", logging.INFO, __file__, 1, "hello", (), None)
    token = REQUEST_ID.set("4bf92f3577b34da6a3ce929d0e0e4736")
    try:
        line = TextFormatter().format(record)
        as_json = json.loads(JsonFormatter().format(record))
    finally:
        REQUEST_ID.reset(token)
    assert line.endswith(" hello request_id=4bf92f3577b34da6a3ce929d0e0e4736")
    # not masked, though it holds seven digits in a row: it must read as it was answered
    assert as_json["request_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("environ", "stream", "expected"), [
    ({}, Terminal(), "text"),
    ({}, io.StringIO(), "json"),
    ({"DLR_LOG_FORMAT": "json"}, Terminal(), "json"),
    ({"DLR_LOG_FORMAT": "text"}, io.StringIO(), "text"),
])
def test_the_log_format_follows_stderr_unless_set(environ: dict[str, str], stream: io.StringIO,
                                                  expected: str) -> None:
    assert default_format(environ, stream) == expected


def test_an_unknown_log_format_stops_every_command_in_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DLR_CONFIG"} | {
        "DLR_LOG_FORMAT": "xml", "DLR_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}
    for command in ("migrate", "serve", "replay"):
        result = subprocess.run([sys.executable, "-m", "service", command], env=env,
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2
        assert result.stderr == "config error: DLR_LOG_FORMAT: 'xml' is not json or text\n"
    assert default_format({"DLR_LOG_FORMAT": "JSON"}, Terminal()) == "json"


def test_logs_at_a_terminal_are_text_lines() -> None:
    """configure() with no DLR_LOG_FORMAT, stderr a terminal (a pseudo-terminal here)."""
    program = ("import logging; from service import logs; logs.configure(); "
               "logging.getLogger('service.test').warning('to a person')")
    env = {k: v for k, v in os.environ.items() if k != "DLR_LOG_FORMAT"}
    leader, follower = pty.openpty()
    try:
        subprocess.run([sys.executable, "-c", program], stderr=follower, env=env, check=True,
                       timeout=60)
        printed = os.read(leader, 65536).decode()
    finally:
        os.close(leader)
        os.close(follower)
    assert " WARNING service.test to a person" in printed
    assert not printed.lstrip().startswith("{")


def test_uvicorns_loggers_go_through_the_same_handler() -> None:
    """Whatever uvicorn was configured with (its own config gives its loggers plain-text
    handlers of their own), configure() sends them through ours."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    plain = logging.StreamHandler(io.StringIO())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addHandler(plain)
        logging.getLogger(name).propagate = False
    try:
        logs.configure("json")
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            assert (logging.getLogger(name).handlers, logging.getLogger(name).propagate) == (
                [], True)
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_the_http_layers_own_lines_in_a_json_log_are_json(server_url: str,
                                                          tmp_path: Path) -> None:
    """Bytes that are no HTTP request: answered 400 and logged (rate-limited, in place of
    uvicorn's own warning per request) as JSON like every other line."""
    config = hooked_config(tmp_path, "log-hook")
    with scratch_database(server_url) as url:
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                            "DLR_PORT": str(free_port()), "DLR_LOG_FORMAT": "json"}
        with serving(env, "--no-reconciler") as served:
            port = int(served.base.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port)) as conn:
                conn.sendall(b"NOT HTTP\r\n\r\n")
                conn.settimeout(10)
                assert conn.recv(4096).startswith(b"HTTP/1.1 400 ")
            with served.client() as web:
                asked = web.get("/health/live", headers={"X-Request-ID": "served-1"})
                assert asked.headers["x-request-id"] == "served-1"
    lines = [json.loads(line) for line in served.output.splitlines() if line.strip()]
    assert any(line["logger"] == "service.http_limits" and line.get("reason") == "bad_request"
               for line in lines)
    [request] = [line for line in lines if line.get("request_id") == "served-1"]
    assert request["message"] == "GET /health/live -> 200"


def test_queued_logging_formats_off_the_calling_thread_and_keeps_the_request_id(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """serve's logs: a log call only queues the record; a thread masks and writes it, with
    the id of the request that logged it."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    formatted_in: list[str] = []
    real = logs.JsonFormatter.format
    monkeypatch.setattr(logs.JsonFormatter, "format", lambda self, record: (
        formatted_in.append(threading.current_thread().name), real(self, record))[1])
    logs.configure("json", queued=True)
    try:
        token = logs.REQUEST_ID.set("req-queued-1")
        logging.getLogger("service.test").warning("sent to %s", "+9779842271353")
        logs.REQUEST_ID.reset(token)
    finally:
        logs._flush()  # the writing thread drains the queue and stops
        logs.configure("json")
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["request_id"] == "req-queued-1"
    assert line["message"] == "sent to +97798******53"
    assert formatted_in and threading.main_thread().name not in formatted_in
