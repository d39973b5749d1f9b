"""The newcomer path: no DLR_DATABASE_URL, so migrate and serve run an embedded PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import PAYLOADS, free_port

CONFIG = '''
[api]
tokens = [ { token = "env:TEST_API_TOKEN", scopes = ["read"] } ]
[[sources]]
name = "ib"
kind = "infobip"
base_url = "http://127.0.0.1:9"
[sources.webhook]
token = { header = "X-Hook", value = "hook-secret" }
'''


def test_migrate_then_serve_on_the_embedded_default(tmp_path: Path) -> None:
    (tmp_path / "dlr.toml").write_text(CONFIG)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DLR_DATABASE_URL"}
    env |= {"DLR_DATA_DIR": str(tmp_path / "data"), "DLR_CONFIG": str(tmp_path / "dlr.toml"),
            "DLR_PORT": str(port), "TEST_API_TOKEN": "t0ken"}
    command = [sys.executable, "-m", "service"]
    migrated = subprocess.run([*command, "migrate"], env=env, capture_output=True, text=True,
                              timeout=120, check=False)
    assert migrated.returncode == 0, migrated.stderr
    assert "database at revision" in migrated.stdout

    server = subprocess.Popen([*command, "serve"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.communicate()[0]
            time.sleep(0.2)
        seed = (PAYLOADS / "infobip" / "seed_002.json").read_bytes()
        pushed = httpx.post(f"{base}/webhooks/ib", content=seed, headers={"X-Hook": "hook-secret"})
        assert pushed.json() == {"accepted": 2, "rejected": []}
        message = httpx.get(f"{base}/v1/messages/ib/MESSAGE-ID-123-xyz",
                            headers={"Authorization": "Bearer t0ken"}).json()
        assert (message["status"], message["to"]) == ("DELIVERED", "+41793026727")
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0]
    assert server.returncode == 0, output
    assert "hook-secret" not in output and "t0ken" not in output
