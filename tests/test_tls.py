"""serve terminates TLS itself with DLR_TLS_CERT and DLR_TLS_KEY."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import httpx
import pytest
import trustme

from service.config import load_settings
from service.errors import ConfigError
from tests.conftest import PAYLOADS, free_port
from tests.databases import scratch_database
from tests.services import hooked_config, serving


def test_webhook_over_tls(server_url: str, tmp_path: Path) -> None:
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    cert, key, ca = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    config = hooked_config(tmp_path, "tls-hook")
    port = free_port()
    with scratch_database(server_url) as url:
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                            "DLR_PORT": str(port), "DLR_TLS_CERT": str(cert),
                            "DLR_TLS_KEY": str(key)}
        trusted = ssl.create_default_context(cafile=str(ca))
        with serving(env, "--no-reconciler", scheme="https", verify=trusted) as served, \
                served.client(verify=trusted) as client:
            pushed = client.post("/webhooks/ib", headers={"X-Hook": "tls-hook"},
                                 content=(PAYLOADS / "infobip" / "seed_002.json").read_bytes())
            assert pushed.json() == {"accepted": 2, "rejected": [], "rejected_count": 0}
            with pytest.raises(httpx.TransportError):  # plain HTTP is not served
                httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2)


def test_tls_needs_both_files(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    with pytest.raises(ConfigError, match="set both"):
        load_settings({"DLR_TLS_CERT": str(tmp_path / "cert.pem")})
    with pytest.raises(ConfigError, match="no file"):
        load_settings({"DLR_TLS_CERT": str(tmp_path / "cert.pem"),
                       "DLR_TLS_KEY": str(tmp_path / "missing.pem")})
