"""The service behind a real PgBouncer in transaction mode: migrate, webhooks under load, the
reconciler and replay, with no 5xx and nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from service.providers.infobip.fake import FakeInfobip
from tests.conftest import free_port
from tests.databases import scratch_database
from tests.pgbouncer import pgbouncer
from tests.reports import body, report
from tests.services import hooked_config, serving

TOKEN = "bouncer-token"


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_migrate_then_webhooks_under_load(server_url: str, tmp_path: Path) -> None:
    config = hooked_config(tmp_path, "bouncer-hook", api_token=TOKEN)
    with scratch_database(server_url, migrated=False) as direct, pgbouncer(direct) as url:
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                            "DLR_PORT": str(free_port())}
        migrated = run(env, "migrate")
        assert migrated.returncode == 0, migrated.stderr
        with serving(env, "--no-reconciler", "--workers", "2") as served:

            def pusher(n: int) -> list[int]:
                with served.client(timeout=30) as client:
                    return [client.post("/webhooks/ib", headers={"X-Hook": "bouncer-hook"},
                                        content=body(report(f"c{n}-{i}"))).status_code
                            for i in range(20)]

            with ThreadPoolExecutor(32) as pool:
                statuses = [s for batch in pool.map(pusher, range(32)) for s in batch]
            assert statuses == [200] * 640
            with served.client() as client:
                seen, cursor = 0, None
                while True:
                    page = client.get("/v1/messages", headers={"Authorization": f"Bearer {TOKEN}"},
                                      params={"limit": 1000} | ({"cursor": cursor} if cursor else {}))
                    seen += len(page.json()["items"])
                    if not (cursor := page.json()["next_cursor"]):
                        break
                assert seen == 640
                assert client.get("/health/ready").status_code == 200


def test_pull_and_replay(server_url: str, tmp_path: Path) -> None:
    with scratch_database(server_url) as direct, pgbouncer(direct) as url, FakeInfobip() as fake:
        fake.queue(*[report(f"p{i}") for i in range(300)])
        config = tmp_path / "dlr.toml"
        config.write_text(f'[[sources]]\nname = "ib"\nkind = "infobip"\nbase_url = "{fake.url}"\n'
                          f'api_key = "{fake.api_key}"\n')
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config)}
        pulled = run(env, "pull", "ib")
        assert pulled.returncode == 0, pulled.stderr
        assert "300 reports, 300 changed, 0 rejected" in pulled.stdout
        for _ in range(2):
            replayed = run(env, "replay")
            assert replayed.returncode == 0, replayed.stderr
            assert "0 rows changed" in replayed.stdout, replayed.stdout


def test_the_seed_report_through_serve_and_back(server_url: str, tmp_path: Path) -> None:
    seed = (Path(__file__).parent / "payloads" / "infobip" / "seed_002.json").read_bytes()
    config = hooked_config(tmp_path, "bouncer-hook", api_token=TOKEN)
    with scratch_database(server_url) as direct, pgbouncer(direct) as url:
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                            "DLR_PORT": str(free_port())}
        with serving(env) as served, served.client() as client:
            pushed = client.post("/webhooks/ib", headers={"X-Hook": "bouncer-hook"}, content=seed)
            assert pushed.status_code == 200, pushed.text
            read = client.get("/v1/messages/ib/MESSAGE-ID-123-xyz",
                              headers={"Authorization": f"Bearer {TOKEN}"})
            assert json.loads(read.content)["status"] == "DELIVERED"
            feed = client.get("/v1/changes", headers={"Authorization": f"Bearer {TOKEN}"})
            assert feed.status_code == 200 and len(feed.json()["items"]) == 2
            assert isinstance(httpx.get(f"{served.base}/metrics").text, str)
