"""The command line: refusals in one line with their own exit codes, help, version, progress."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from service import cli, db, ingest, retention
from tests.conftest import free_port
from tests.databases import scratch_database
from tests.reports import body, pushed, report
from tests.services import serving


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    with scratch_database(server_url, migrated=False) as url:
        yield url


def _env(url: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DLR_CONFIG"}
    return env | {"DLR_DATABASE_URL": url, "DLR_PORT": str(port)}


def test_serve_refuses_an_unmigrated_database(empty_database: str) -> None:
    result = subprocess.run([sys.executable, "-m", "service", "serve"],
                            env=_env(empty_database, free_port()), capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 4
    assert "no schema yet: run `dlr-reconciler migrate`" in result.stderr


def test_serve_refuses_an_older_schema(empty_database: str) -> None:
    async def fake_old_revision() -> None:
        conn = await asyncpg.connect(empty_database)
        try:
            await conn.execute("CREATE TABLE alembic_version (version_num text);"
                               "INSERT INTO alembic_version VALUES ('0000')")
        finally:
            await conn.close()

    asyncio.run(fake_old_revision())
    result = subprocess.run([sys.executable, "-m", "service", "serve"],
                            env=_env(empty_database, free_port()), capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 4
    assert f"at revision 0000, this version needs {db.head_revision()}" in result.stderr


def test_serve_migrate_migrates_then_serves(empty_database: str) -> None:
    with serving(_env(empty_database, free_port()), "--migrate") as served:
        assert httpx.get(f"{served.base}/health/ready").status_code == 200
    assert served.process.returncode == 0, served.output


def _run(env: dict[str, str], *args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", *args], env=env, text=True,
                          timeout=120, check=False, **({"capture_output": True} | options))


def test_version_is_the_distribution_s() -> None:
    result = _run(dict(os.environ), "--version")
    assert (result.returncode, result.stdout) == (0, f"dlr-reconciler {cli.version()}\n")
    assert cli.version() == metadata.version("dlr-reconciler")


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_each_command_s_help_says_what_it_does_and_how_it_exits(command: str) -> None:
    result = _run(dict(os.environ), command, "--help")
    assert result.returncode == 0
    about = cli.COMMANDS[command]
    text = " ".join(result.stdout.split())
    assert " ".join(about.description.split()) in text
    codes = dict(re.findall(r"^\s+(\d+)\s+(.+)$", result.stdout.split("exit codes:")[1], re.M))
    assert {int(code) for code in codes} == {0, 2, 130} | {int(c) for c in about.codes}
    assert len(set(codes.values())) == len(codes), "each code means something else"


def test_exit_codes_are_distinct() -> None:
    wanted = {"ADDRESS_IN_USE", "DATABASE_UNAVAILABLE", "CONFIG", "DIFFERENCES", "UNREACHABLE"}
    assert len({cli.Exit[name] for name in wanted}) == len(wanted)
    assert cli.Exit.FAILED not in {cli.Exit[name] for name in wanted}


@pytest.mark.parametrize(("args", "said"), [
    (["serve", "--port", "99999"], "argument --port: 99999 is outside 1..65535"),
    (["serve", "--port", "0"], "argument --port: 0 is outside 1..65535"),
    (["serve", "--port", "http"], "argument --port: 'http' is not a whole number"),
    (["serve", "--workers", "0"], "argument --workers: 0 is outside 1..64"),
    (["simulate", "--messages", "-3"], "argument --messages: -3 is outside 1..1000000"),
    (["simulate", "--timeout", "nan"], "argument --timeout: nan is outside 0..86400 seconds"),
    (["simulate", "--url", "127.0.0.1:8080"], "argument --url: '127.0.0.1:8080' is not an "
                                              "http(s) URL with a host"),
    (["serve", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_a_bad_argument_is_one_line_naming_it_and_exit_2(args: list[str], said: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DLR_CONFIG"}
    # were the argument taken, nothing starts: no database answers there
    env["DLR_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    result = _run(env, *args)
    assert result.returncode == cli.Exit.CONFIG
    [line] = result.stderr.splitlines()
    assert said in line and line.startswith("dlr-reconciler"), line
    assert line.endswith("--help)"), line


class StartupRefusing:
    """A PostgreSQL look-alike that refuses every connection's startup parameters as a
    transaction-pooling PgBouncer refuses lock_timeout."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._refuse, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length, code = struct.unpack("!ii", await reader.readexactly(8))
                await reader.readexactly(length - 8)
                if code != 80877103:  # not an SSLRequest: the startup message
                    break
                writer.write(b"N")
            said = (b"SFATAL\0VFATAL\0C08P01\0Munsupported startup parameter: lock_timeout"
                    b"\0\0")
            writer.write(b"E" + struct.pack("!i", len(said) + 4) + said)
            await writer.drain()
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@pytest.mark.parametrize("command", [["migrate"], ["serve", "--port", str(free_port())]])
def test_pgbouncer_without_its_url_flag_says_what_to_add(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        command: list[str]) -> None:
    bouncer = StartupRefusing()
    try:
        monkeypatch.setenv("DLR_DATABASE_URL", f"postgresql://dlr@127.0.0.1:{bouncer.port}/dlr")
        monkeypatch.delenv("DLR_CONFIG", raising=False)
        assert cli.main(command) == cli.Exit.CONFIG
    finally:
        bouncer.close()
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("config error: DLR_DATABASE_URL: the server refused the startup "
                           "parameter lock_timeout, as PgBouncer does: add ?pgbouncer=true"), line


def _simulate_config(directory: Path) -> Path:
    path = directory / "dlr.toml"
    path.write_text(f'''
[api]
tokens = [ {{ token = "t", scopes = ["read", "pii"] }} ]
[[sources]]
name = "ib"
kind = "infobip"
base_url = "http://127.0.0.1:{free_port()}"
api_key = "k"
[sources.webhook]
token = {{ header = "X-Hook", value = "h" }}
[[sources]]
name = "dice"
kind = "dicesms"
base_url = "http://127.0.0.1:{free_port()}"
token = "d"
''')
    return path


def test_simulate_without_a_service_says_so_in_one_line(tmp_path: Path) -> None:
    env = dict(os.environ) | {"DLR_CONFIG": str(_simulate_config(tmp_path))}
    url = f"http://127.0.0.1:{free_port()}"
    result = _run(env, "simulate", "--url", url, "--messages", "10")
    assert result.returncode == cli.Exit.UNREACHABLE == 9
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"cannot reach the service at {url}: ")
    assert result.stdout == ""  # nothing announced to a service that is not there


def test_simulate_with_a_fake_s_port_taken_says_so(tmp_path: Path) -> None:
    config = _simulate_config(tmp_path)
    port = int(re.findall(r"127\.0\.0\.1:(\d+)", config.read_text())[0])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = _run(dict(os.environ) | {"DLR_CONFIG": str(config)}, "simulate")
    assert result.returncode == cli.Exit.ADDRESS_IN_USE
    assert result.stderr.strip() == (f"cannot listen: a fake provider on 127.0.0.1:{port}: "
                                     "Address already in use; is another simulate running? (or "
                                     "give this setup's sources other ports)")


def test_no_database_url_and_no_embedded_postgres_is_a_configuration_error(
        tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLR_")}
    env["DLR_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['embedded_postgres'] = None; "
         "from service.cli import main; sys.exit(main(['migrate']))"],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == cli.Exit.CONFIG
    assert result.stderr.strip().splitlines() == [
        "config error: DLR_DATABASE_URL is not set, and the embedded PostgreSQL that stands in "
        "for it is not installed: set DLR_DATABASE_URL=postgresql://user:password@host/"
        "database, or install dlr-reconciler[embedded]"]


@pytest.fixture
def kept_bodies(server_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A database holding three pushed bodies of `ib` and one of `other`, and the env of a
    configuration with both sources."""
    config = tmp_path / "dlr.toml"
    config.write_text("".join(f'[[sources]]\nname = "{name}"\nkind = "infobip"\n'
                              f'base_url = "http://127.0.0.1:9"\n' for name in ("ib", "other")))
    with scratch_database(server_url) as url:
        async def keep() -> None:
            engine = db.create_engine(db.asyncpg_url(url))
            try:
                await ingest.write(engine, [pushed(source, body(report(f"{source}-{i}")))
                                            for source, i in (("ib", 1), ("ib", 2), ("ib", 3),
                                                              ("other", 1))])
            finally:
                await engine.dispose()

        asyncio.run(keep())
        yield dict(os.environ) | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                                  "DLR_LOG_FORMAT": "json"}


def test_replay_one_source(kept_bodies: dict[str, str]) -> None:
    result = _run(kept_bodies, "replay", "--source", "ib")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("replayed 3 bodies: 3 reports, 0 rows changed")
    unknown = _run(kept_bodies, "replay", "--source", "nope")
    assert unknown.returncode == cli.Exit.CONFIG
    assert unknown.stderr.strip() == (
        "config error: --source: no source named 'nope' in DLR_CONFIG "
        f"({kept_bodies['DLR_CONFIG']}); its sources: ib, other")


def test_no_dlr_config_is_said_at_start_and_when_a_source_is_asked_for(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path, server_url: str) -> None:
    monkeypatch.delenv("DLR_CONFIG", raising=False)
    monkeypatch.setenv("DLR_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/none")
    assert cli.main(["pull", "ib"]) == cli.Exit.CONFIG
    assert capsys.readouterr().err == ("config error: no source named 'ib': DLR_CONFIG is not "
                                       "set, so there are no sources\n")
    config = _simulate_config(tmp_path)  # sources ib and dice
    monkeypatch.setenv("DLR_CONFIG", str(config))
    assert cli.main(["pull", "infobip"]) == cli.Exit.CONFIG
    assert capsys.readouterr().err == (f"config error: no source named 'infobip' in DLR_CONFIG "
                                       f"({config}); its sources: ib, dice\n")
    warning = " WARNING service no DLR_CONFIG: no sources and no API tokens"
    with scratch_database(server_url) as url:
        env = _env(url, free_port()) | {"DLR_LOG_FORMAT": "text"}
        with serving(env) as served:
            pass
        assert warning in served.output
        with serving(env | {"DLR_CONFIG": str(config)}) as served:
            pass
        assert "DLR_CONFIG" not in served.output


def _on_a_terminal(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run a command with stderr on a pseudo-terminal; its exit code and what it wrote there."""
    controller, terminal = pty.openpty()
    written = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the last writer closed its end
                return
            if not chunk:
                return
            written.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        result = _run(env, *args, capture_output=False, stdout=subprocess.DEVNULL,
                      stderr=terminal)
    finally:
        os.close(terminal)
        reader.join(timeout=10)
        os.close(controller)
    return result.returncode, written.decode()


def test_progress_is_shown_on_a_terminal_only(kept_bodies: dict[str, str]) -> None:
    code, shown = _on_a_terminal(kept_bodies, "replay")
    assert code == 0
    assert re.search(r"\r\x1b\[Kreplay: 1 bodies, 1 reports, 0 changed \([\d,]+ reports/s\)",
                     shown), shown
    piped = _run(kept_bodies, "replay")
    assert piped.returncode == 0 and "replay:" not in piped.stderr

    async def old_partitions() -> None:  # months 7, 6 and 5 ago, as if made back then
        engine = db.create_engine(db.asyncpg_url(kept_bodies["DLR_DATABASE_URL"]))
        try:
            async with db.transaction(engine) as conn:
                await retention.ensure_partitions(conn, datetime.now(UTC) - timedelta(days=200),
                                                  13)
        finally:
            await engine.dispose()

    asyncio.run(old_partitions())
    code, shown = _on_a_terminal(kept_bodies | {"DLR_RETENTION_MONTHS": "1"}, "prune")
    assert code == 0
    assert re.search(r"\r\x1b\[Kprune: 1 dropped, 6 partitions \([\d,]+ dropped/s\)", shown), shown


def test_simulate_exits_8_on_differences_and_0_once_they_match(
        server_url: str, tmp_path: Path) -> None:
    config = _simulate_config(tmp_path)
    config.write_text(config.read_text().replace('api_key = "k"\n',
                                                 'api_key = "k"\npull_interval_s = 1\n')
                      .replace('token = "d"\n', 'token = "d"\npull_interval_s = 1\n'))
    with scratch_database(server_url) as url:
        port = free_port()
        env = dict(os.environ) | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                                  "DLR_PORT": str(port)}
        with serving(env, "--no-reconciler"):  # what the pushes lost stays lost
            missing = _run(env, "simulate", "--messages", "30", "--seed", "5", "--timeout", "1")
        assert missing.returncode == cli.Exit.DIFFERENCES, missing.stderr
        announced, *lines, last = missing.stdout.splitlines()
        assert re.fullmatch(r"fake Infobip on http://127\.0\.0\.1:\d+, fake DiceSMS on "
                            r"http://127\.0\.0\.1:\d+; seed 5; \d+ pushes \(\d+ final reports "
                            rf"lost in transit, left for the pull\) to http://127\.0\.0\.1:{port}",
                            announced), announced
        assert re.fullmatch(r"30 messages, [1-9]\d* differences \(seed 5\)", last), last
        for line in lines:  # not pulled: one-time reports, and DiceSMS's messages
            assert re.fullmatch(r'ib/sim-5-\d+: ((status|done_at) is ("[^"]*"|null), expected '
                                r'"[^"]*"|not in the service)|dice/\+977\d+@[-0-9T:.]+Z: not in the '
                                r"service|\.\.\. and \d+ more differences not shown", line), line
        with serving(env):  # its reconciler pulls the fakes every second
            # a new seed: other messages, so that the run tests something again
            code, shown = _on_a_terminal(env, "simulate", "--messages", "30", "--timeout", "60")
        assert code == cli.Exit.OK, shown
        assert re.search(r"simulate: [\d,]+ pushes \([\d,]+ pushes/s\)", shown), shown
        assert re.search(r"simulate: 30 matching, 30 messages \([\d,]+ matching/s\)", shown), shown


def test_simulate_of_another_kind_shows_progress_and_exits_8_on_differences(
        server_url: str, tmp_path: Path) -> None:
    config = tmp_path / "dlr.toml"
    config.write_text(f'''
[api]
tokens = [ {{ token = "t", scopes = ["read", "pii"] }} ]
[[sources]]
name = "sn"
kind = "sinch"
base_url = "http://127.0.0.1:{free_port()}"
service_plan_id = "plan0001"
api_token = "sinch-token"
[sources.webhook]
basic = {{ username = "sinch", password = "sinch-hook" }}
''')
    with scratch_database(server_url) as url:
        env = dict(os.environ) | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                                  "DLR_PORT": str(free_port())}
        with serving(env, "--no-reconciler"):  # what the pushes lost stays lost
            code, shown = _on_a_terminal(env, "simulate", "--provider", "sinch", "--messages",
                                         "40", "--seed", "3", "--timeout", "1")
    assert code == cli.Exit.DIFFERENCES, shown
    assert re.search(r"simulate: [\d,]+ pushes \([\d,]+ pushes/s\)", shown), shown
    assert re.search(r"simulate: \d+ matching, 40 messages \([\d,]+ matching/s\)", shown), shown
