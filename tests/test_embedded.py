"""The newcomer path: no DLR_DATABASE_URL, so migrate and serve run an embedded PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PAYLOADS, free_port
from tests.services import serving

CONFIG = '''
[api]
tokens = [ { token = "env:TEST_API_TOKEN", scopes = ["read", "pii"] } ]
[[sources]]
name = "ib"
kind = "infobip"
base_url = "http://127.0.0.1:9"
[sources.webhook]
token = { header = "X-Hook", value = "hook-secret" }
'''


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A folder outside pytest's own, which pytest keeps at mode 0700 (and sets back to it
    when a parallel worker starts): the embedded server runs as a user of its own, which
    must reach its data directory."""
    with tempfile.TemporaryDirectory(prefix="dlr-embedded-") as folder:
        yield Path(folder)


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

    with serving(env) as served, served.client() as client:
        seed = (PAYLOADS / "infobip" / "seed_002.json").read_bytes()
        pushed = client.post("/webhooks/ib", content=seed, headers={"X-Hook": "hook-secret"})
        assert pushed.json() == {"accepted": 2, "rejected": [], "rejected_count": 0}
        message = client.get("/v1/messages/ib/MESSAGE-ID-123-xyz",
                             headers={"Authorization": "Bearer t0ken"}).json()
        assert (message["status"], message["to"]) == ("DELIVERED", "+41793026727")
    output = served.output
    assert served.process.returncode == 0, output
    assert "hook-secret" not in output and "t0ken" not in output
