"""X-Forwarded-For is believed only from DLR_TRUSTED_PROXIES, under a real `serve`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.databases import scratch_database
from tests.reports import body, report
from tests.services import serving

FENCED = '''
[[sources]]
name = "ib"
kind = "infobip"
base_url = "http://127.0.0.1:9"
[sources.webhook]
unauthenticated = true
allow_ips = ["10.0.0.0/8"]
'''


@pytest.mark.parametrize(("trusted", "forwarded_status"), [
    ("", 403),                           # the default: the header is ignored
    ("127.0.0.1", 200),
    ("192.168.0.0/16, 127.0.0.0/8", 200),
])
def test_forwarded_for_counts_only_from_trusted_proxies(server_url: str, tmp_path: Path,
                                                        trusted: str, forwarded_status: int) -> None:
    config = tmp_path / "dlr.toml"
    config.write_text(FENCED)
    env = {k: v for k, v in os.environ.items() if k != "FORWARDED_ALLOW_IPS"}
    with scratch_database(server_url) as url:
        env |= {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config), "DLR_PORT": str(free_port()),
                "DLR_TRUSTED_PROXIES": trusted}
        with serving(env, "--no-reconciler") as served, served.client() as client:
            forwarded = client.post("/webhooks/ib", content=body(report("m1")),
                                    headers={"X-Forwarded-For": "10.1.2.3"})
            direct = client.post("/webhooks/ib", content=body(report("m2")))
            outside = client.post("/webhooks/ib", content=body(report("m3")),
                                  headers={"X-Forwarded-For": "192.0.2.1"})
    assert forwarded.status_code == forwarded_status, forwarded.text
    assert direct.status_code == 403
    assert outside.status_code == 403
