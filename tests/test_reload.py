"""SIGHUP: `serve` rereads DLR_CONFIG in place (tokens, webhook credentials); a bad file is
refused and the old configuration kept; no request fails meanwhile. `worker` survives it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from litestar.datastructures import State

from service import pricing
from service.app import reload_config
from service.config import Settings, load_settings
from service.errors import ConfigError
from tests.conftest import free_port, make_settings
from tests.databases import scratch_database
from tests.reports import body, report
from tests.services import Served, serving

RELOADED = "configuration reloaded"
REFUSED = "configuration not reloaded, the previous one stays"


def config(tokens: list[str], hook_password: str, extra: str = "") -> str:
    """One Infobip source `ib` taking Basic `hook:<hook_password>`; admin tokens."""
    listed = ", ".join(f'{{ token = "{t}", scopes = ["read", "admin"] }}' for t in tokens)
    return (f"[api]\ntokens = [ {listed} ]\n{extra}\n"
            f'[[sources]]\nname = "ib"\nkind = "infobip"\nbase_url = "http://127.0.0.1:9"\n'
            f'[sources.webhook]\nbasic = {{ username = "hook", password = "{hook_password}" }}\n')


@pytest.fixture(scope="module")
def database(server_url: str) -> Iterator[str]:
    with scratch_database(server_url) as url:
        yield url


@pytest.fixture(params=[1, 2], ids=["1 worker", "2 workers"])
def workers(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def dlr_toml(tmp_path: Path) -> Path:
    path = tmp_path / "dlr.toml"
    path.write_text(config(["token-a"], "old-password"))
    return path


@pytest.fixture
def served(database: str, dlr_toml: Path, workers: int) -> Iterator[Served]:
    env = os.environ | {"DLR_DATABASE_URL": database, "DLR_CONFIG": str(dlr_toml),
                        "DLR_PORT": str(free_port())}
    env.pop("DLR_TEST_UNSET", None)
    with serving(env, "--workers", str(workers), "--no-reconciler") as running:
        deadline = time.monotonic() + 60
        while running.printed().count("app started") < workers:  # all of them, not just one
            assert time.monotonic() < deadline, running.printed()
            time.sleep(0.05)
        yield running
    assert running.process.returncode == 0, running.output


def hang_up(served: Served, workers: int, expect: str) -> None:
    """SIGHUP, then wait until every worker has logged `expect` once more."""
    wanted = served.printed().count(expect) + workers
    served.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while served.printed().count(expect) < wanted:
        assert served.process.poll() is None, served.printed()
        assert time.monotonic() < deadline, f"no {expect!r} in:\n{served.printed()}"
        time.sleep(0.05)


def runs(client: httpx.Client, token: str) -> int:
    return client.get("/v1/runs", headers={"Authorization": f"Bearer {token}"}).status_code


def push(client: httpx.Client, password: str) -> int:
    return client.post("/webhooks/ib", content=body(report("m1")),
                       auth=("hook", password)).status_code


def test_tokens_and_webhook_credentials_are_rotated(served: Served, dlr_toml: Path,
                                                    workers: int) -> None:
    with served.client() as client:
        assert (runs(client, "token-a"), runs(client, "token-b")) == (200, 401)
        assert (push(client, "old-password"), push(client, "new-password")) == (200, 401)
    dlr_toml.write_text(config(["token-b"], "new-password"))
    hang_up(served, workers, RELOADED)
    for _ in range(workers * 4):  # a new connection each: they spread over the workers
        with served.client() as client:
            assert (runs(client, "token-b"), runs(client, "token-a")) == (200, 401)
            assert (push(client, "new-password"), push(client, "old-password")) == (200, 401)


@pytest.mark.parametrize("broken", [
    "[api\n",  # not TOML
    config(["env:DLR_TEST_UNSET"], "new-password"),  # an unset variable
    config(["token-b"], "new-password", extra="colour = 'blue'"),  # an unknown key
    config(["token-b"], "new-password").replace(
        "basic = { username = \"hook\", password = \"new-password\" }",
        "standard_webhooks = { secrets = ['not base64!'] }"),  # a secret that cannot be used
], ids=["toml", "unset env", "unknown key", "bad secret"])
def test_a_broken_file_is_refused_and_the_old_one_kept(served: Served, dlr_toml: Path,
                                                       workers: int, broken: str) -> None:
    dlr_toml.write_text(broken)
    hang_up(served, workers, REFUSED)
    for _ in range(workers * 4):
        with served.client() as client:
            assert (runs(client, "token-a"), runs(client, "token-b")) == (200, 401)
            assert (push(client, "old-password"), push(client, "new-password")) == (200, 401)
    refusals = [line for line in served.printed().splitlines() if REFUSED in line]
    assert len(refusals) == workers  # one line per process, saying why
    assert all('"level":"error"' in line for line in refusals)


def test_no_request_fails_during_reloads(served: Served, dlr_toml: Path, workers: int) -> None:
    outcomes: list[str] = []
    stop = threading.Event()

    def keep_asking() -> None:
        with served.client(timeout=30) as client:  # keep-alive connections, as providers hold
            while not stop.is_set():
                try:
                    outcomes.append(str(runs(client, "token-a")))
                    outcomes.append(str(push(client, "old-password")))
                except httpx.HTTPError as exc:
                    outcomes.append(repr(exc))

    askers = [threading.Thread(target=keep_asking) for _ in range(4)]
    for asker in askers:
        asker.start()
    try:
        for i in range(6):  # tokens and sources change; the credentials in use stay
            tokens = ["token-a"] + [f"extra-{n}" for n in range(i)]
            dlr_toml.write_text(config(tokens, "old-password",
                                       extra="" if i % 2 else "[[sources]]\nname = 'ib2'\n"
                                       "kind = 'infobip'\nbase_url = 'http://127.0.0.1:9'\n"))
            hang_up(served, workers, RELOADED)
    finally:
        stop.set()
        for asker in askers:
            asker.join()
    assert outcomes
    assert set(outcomes) == {"200"}, {o for o in outcomes if o != "200"}


def test_worker_survives_sighup(database: str, tmp_path: Path) -> None:
    dlr_toml = tmp_path / "dlr.toml"
    dlr_toml.write_text(config(["token-a"], "old-password"))
    env = os.environ | {"DLR_DATABASE_URL": database, "DLR_CONFIG": str(dlr_toml),
                        "DLR_WORKER_PORT": str(free_port())}
    log = tmp_path / "worker.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "service", "worker"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=sink)
    try:
        deadline = time.monotonic() + 60
        while "reconciler running" not in log.read_text():  # past Python's own start-up
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        while "SIGHUP ignored" not in log.read_text():  # until its handler is in place
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            process.send_signal(signal.SIGHUP)
            time.sleep(0.1)
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0, log.read_text()


async def test_the_reconciler_keeps_its_sources_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    started = make_settings()
    state = State({"settings": started})
    changed = make_settings(sources={"ib": started.sources["ib"]})
    await reload_config(state, lambda: changed, pulled=started.sources)
    assert state.settings is changed
    assert "the reconciler pulls the sources it started with" in caplog.text

    caplog.clear()
    await reload_config(state, lambda: changed, pulled=None)  # serve --no-reconciler
    assert "reconciler" not in caplog.text

    def broken() -> Settings:
        raise ConfigError("sources[0].kind: nope")

    await reload_config(state, broken, pulled=None)
    assert state.settings is changed
    assert "configuration not reloaded, the previous one stays: sources[0].kind: nope" in caplog.text


async def test_a_large_card_is_reloaded_off_the_event_loop(tmp_path: Path) -> None:
    """The new configuration (a rate card of the most rates allowed: seconds of CPU) is
    built in another thread while the loop goes on running, then swapped in at once."""
    (tmp_path / "rates.csv").write_text("price,currency,prefix\n" + "".join(
        f"0.5,NPR,+1{i:06d}\n" for i in range(pricing.MAX_RATES)))
    path = tmp_path / "dlr.toml"
    path.write_text(config(["token-a"], "pw").replace(
        "[sources.webhook]", 'rates_file = "rates.csv"\n[sources.webhook]'))
    loaded_in: list[int] = []
    built, answered = threading.Event(), threading.Event()

    def load() -> Settings:
        loaded_in.append(threading.get_ident())
        settings = load_settings({"DLR_CONFIG": str(path)})
        built.set()
        answered.wait(10)  # on the loop's thread, this would stop the loop for 10 s
        return settings

    state = State({"settings": make_settings()})
    reloading = asyncio.create_task(reload_config(state, load, pulled=None))
    assert await asyncio.to_thread(built.wait, 60)  # the loop runs this while the load is under way
    assert state.settings.sources.keys() != {"ib"}  # built, not yet swapped in
    answered.set()
    await asyncio.wait_for(reloading, 30)
    assert state.settings.sources.keys() == {"ib"} and state.gates.keys() == {"ib"}
    assert len(state.settings.sources["ib"].rates) == pricing.MAX_RATES
    assert loaded_in == [loaded_in[0]] and loaded_in[0] != threading.get_ident()
