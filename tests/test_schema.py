"""schemathesis over /schema/openapi.json: no 5xx, and every response matches the schema."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.databases import scratch_database
from tests.services import hooked_config, serving


@pytest.fixture
def service_url(server_url: str, tmp_path: Path) -> Iterator[str]:
    config = hooked_config(tmp_path, "schema-hook", api_token="schema-token")
    port = free_port()
    with scratch_database(server_url) as url:
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                            "DLR_PORT": str(port), "DLR_LOG_FORMAT": "text"}
        with serving(env, "--no-reconciler") as served:
            yield served.base


def test_api_conforms_to_its_schema(service_url: str, tmp_path: Path) -> None:
    tool = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert tool, "schemathesis is a test dependency"
    result = subprocess.run(
        [tool, "run", f"{service_url}/schema/openapi.json",
         "-H", "Authorization: Bearer schema-token",
         "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance",
         "--max-examples", "25", "--seed", "1", "--no-color"],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:]
