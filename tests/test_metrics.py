"""/metrics under `serve --workers 2`: every scrape adds up both processes."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import free_port
from tests.databases import scratch_database
from tests.reports import body, report
from tests.services import Served, hooked_config, metric_value, serving


def push_and_scrape(served: Served, pushes: int, scrapes: int) -> list[str]:
    for i in range(pushes):
        with served.client() as client:  # a new connection each: they spread over the workers
            pushed = client.post("/webhooks/ib", headers={"X-Hook": "metrics-hook"},
                                 content=body(report(f"m{i}")))
            assert pushed.status_code == 200
    expositions = []
    for _ in range(scrapes):
        with served.client() as client:
            expositions.append(client.get("/metrics").text)
    return expositions


def test_every_scrape_counts_the_requests_of_all_workers(server_url: str, tmp_path: Path) -> None:
    config = hooked_config(tmp_path, "metrics-hook")
    with scratch_database(server_url) as url:
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                            "DLR_PORT": str(free_port())}
        with serving(env, "--workers", "2", "--no-reconciler") as served:
            expositions = push_and_scrape(served, pushes=40, scrapes=10)
    requests = 'dlr_webhook_requests_total{source="ib",status="200"}'
    assert [metric_value(e, requests) for e in expositions] == [40.0] * 10
    assert {metric_value(e, "dlr_webhook_reports_total") for e in expositions} == {40.0}
    assert {metric_value(e, "dlr_db_pool_connections_in_use") for e in expositions} == {0.0}
