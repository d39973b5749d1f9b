"""/schema/openapi.json says what a client needs: a valid OpenAPI 3.1 document with short
operation ids, security schemes with scopes, a request body for every shape the webhook and
outbound registration take (examples that really are accepted), a response schema for every
operation, the real error statuses as problems with their headers; a client generated from
it posts a webhook and reads the message back; and the docs page loads nothing from
elsewhere."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from infobip_api_client.models import SmsDeliveryResult
from litestar.testing import AsyncTestClient
from openapi_spec_validator import validate

from service.api import openapi
from service.providers import MAX_REPORTS
from service.providers.infobip import SmsReport
from tests.conftest import PAYLOADS, WRITE_TOKEN, free_port
from tests.databases import scratch_database
from tests.services import Served, hooked_config, serving

Client = AsyncTestClient  # type: ignore[type-arg]
Document = dict[str, Any]
OPERATIONS = {  # (method, path): (operationId, bearer scope or None)
    ("post", "/webhooks/{source}"): ("receiveReports", None),
    ("get", "/webhooks/{source}"): ("receiveReportQuery", None),
    ("get", "/v1/messages/{source}/{message_id}"): ("getMessage", "read"),
    ("get", "/v1/messages"): ("listMessages", "read"),
    ("get", "/v1/bulks/{source}/{bulk_id}"): ("getBulk", "read"),
    ("get", "/v1/billing/summary"): ("billingSummary", "read"),
    ("get", "/v1/changes"): ("listChanges", "read"),
    ("post", "/v1/outbound"): ("registerOutbound", "write"),
    ("get", "/v1/gaps"): ("listGaps", "read"),
    ("get", "/v1/runs"): ("listRuns", "admin"),
    ("get", "/v1/inbox"): ("listInbox", "admin"),
    ("get", "/v1/inbox/{inbox_id}"): ("getInbox", "admin"),
    ("get", "/health/live"): ("healthLive", None),
    ("get", "/health/ready"): ("healthReady", None),
    ("get", "/metrics"): ("metrics", None),
}
PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


@pytest.fixture
async def document(client: Client) -> Document:
    return dict((await client.get("/schema/openapi.json")).json())


def operations(document: Document) -> Iterator[tuple[str, str, Document]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                yield method, path, operation


def test_the_document_is_valid_openapi_31(document: Document) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_operation_has_a_short_id_and_its_security(document: Document) -> None:
    found = {}
    for method, path, operation in operations(document):
        scope = None
        if path.startswith("/v1/"):
            [requirement] = operation["security"]
            [scope] = requirement["bearer"]
        found[method, path] = (operation["operationId"], scope)
    assert found == OPERATIONS
    webhook = document["paths"]["/webhooks/{source}"]["post"]
    assert webhook["security"] == [{"webhookBasic": []}, {"webhookToken": []},
                                   {"standardWebhooks": []}, {"twilioSignature": []},
                                   {"vonageSignature": []}, {"sinchSignature": []}, {}]
    schemes = document["components"]["securitySchemes"]
    assert (schemes["bearer"]["type"], schemes["bearer"]["scheme"]) == ("http", "bearer")
    assert (schemes["webhookBasic"]["type"], schemes["webhookBasic"]["scheme"]) == ("http", "basic")
    assert (schemes["webhookToken"]["in"], schemes["webhookToken"]["name"]) == (
        "header", "X-Webhook-Token")
    assert schemes["standardWebhooks"]["name"] == "webhook-signature"


def test_every_error_is_a_problem_with_its_headers(document: Document) -> None:
    for method, path, operation in operations(document):
        responses = operation["responses"]
        where = f"{method} {path}"
        assert {"408", "431", "503"} <= set(responses), where
        if path.startswith("/v1/"):
            assert {"400", "401", "403"} <= set(responses), where
        for status, response in responses.items():
            assert response["headers"]["X-Request-ID"]["required"], (where, status)
            if int(status) >= 400:
                assert response["content"] == PROBLEM, (where, status)
            else:
                assert response["content"], (where, status)  # every answer has a schema
        if "401" in responses:
            assert responses["401"]["headers"]["WWW-Authenticate"]["required"]
        assert responses["503"]["headers"]["Retry-After"]["schema"] == {"type": "integer"}
    webhook = document["paths"]["/webhooks/{source}"]["post"]["responses"]
    assert set(webhook) == {"200", "400", "401", "403", "404", "408", "413", "431", "500", "503"}
    assert webhook["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Accepted"}
    problem = document["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])
    assert {"rejected", "rejected_count", "retry_after", "errors"} <= set(problem["properties"])


def test_billing_answers_json_or_csv(document: Document) -> None:
    content = document["paths"]["/v1/billing/summary"]["get"]["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/csv"}
    rows = content["application/json"]["schema"]["properties"]["rows"]
    assert {"messages", "parts", "amount"} <= set(rows["items"]["required"])


def test_country_is_documented_with_examples(document: Document) -> None:
    """The message's country, the filter on it and billing by it, each with an example."""
    message = document["components"]["schemas"]["Message"]
    assert "country" in message["required"] and message["properties"]["country"]["examples"]
    get = document["paths"]["/v1/messages"]["get"]
    [country] = [p for p in get["parameters"] if p["name"] == "country"]
    assert country["schema"]["pattern"] == "^[A-Za-z]{2}$"
    assert [e["value"] for e in country["examples"].values()] == ["NP"]
    billing = document["paths"]["/v1/billing/summary"]["get"]
    [group_by] = [p for p in billing["parameters"] if p["name"] == "group_by"]
    assert "country" in group_by["description"]
    assert [e["value"] for e in group_by["examples"].values()] == ["day,country,operator"]
    rows = billing["responses"]["200"]["content"]["application/json"]["schema"]
    assert rows["properties"]["rows"]["items"]["properties"]["country"]["examples"] == ["NP"]


async def test_every_documented_webhook_body_is_accepted(client: Client,
                                                         document: Document) -> None:
    body = document["paths"]["/webhooks/{source}"]["post"]["requestBody"]
    assert body["required"] and set(body["content"]) == {
        "application/json", "application/xml", "text/xml"}
    posted = 0
    for content_type, media in body["content"].items():
        for name, example in media["examples"].items():
            value = example["value"]
            raw = value.encode() if isinstance(value, str) else json.dumps(value).encode()
            answer = await client.post("/webhooks/ib-open", content=raw,
                                       headers={"Content-Type": content_type})
            assert answer.status_code == 200, (content_type, name, answer.text)
            assert answer.json()["accepted"] >= 1 and not answer.json()["rejected"]
            posted += 1
    assert posted == 4
    # the v1 example is Infobip's own documentation example; the v3 one reads in its SDK
    assert json.loads((PAYLOADS / "infobip" / "seed_002.json").read_text()) == openapi.V1_EXAMPLE
    sdk = SmsDeliveryResult.from_json(json.dumps(openapi.V3_EXAMPLE))
    assert sdk is not None and sdk.results and sdk.results[0].message_id == "MESSAGE-ID-123-xyz"


def _wire_names(struct: Any) -> dict[str, Any]:
    """A Struct's fields by their JSON names, each with the Struct it nests, if any."""
    names: dict[str, Any] = {}
    for field in msgspec.inspect.type_info(struct).fields:  # type: ignore[attr-defined]
        nested = [t.cls for t in getattr(field.type, "types", [field.type])
                  if isinstance(t, msgspec.inspect.StructType)]
        names[field.encode_name] = nested[0] if nested else None
    return names


@pytest.mark.parametrize("documented", [openapi.InfobipReportV3, openapi.InfobipReportV1])
def test_the_documented_reports_name_only_fields_the_decoder_reads(documented: type) -> None:
    def check(documented: Any, read: Any, where: str) -> None:
        ours, theirs = _wire_names(documented), _wire_names(read)
        assert set(ours) <= set(theirs), where
        for name, nested in ours.items():
            if nested is not None:
                check(nested, theirs[name], f"{where}.{name}")

    check(documented, SmsReport, documented.__name__)


async def test_the_outbound_body_is_an_array_of_registrations(client: Client,
                                                              document: Document) -> None:
    body = document["paths"]["/v1/outbound"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert (schema["type"], schema["maxItems"]) == ("array", MAX_REPORTS)
    item = schema["items"]
    assert set(item["required"]) == {"source", "sent_at"}
    assert {"to", "message_id", "bulk_id", "callback_data"} <= set(item["properties"])
    example = body["content"]["application/json"]["examples"]["registrations"]["value"]
    answer = await client.post("/v1/outbound", json=example,
                               headers={"Authorization": f"Bearer {WRITE_TOKEN}"})
    assert answer.status_code == 200 and answer.json()["registered"] == len(example)


async def test_the_docs_page_loads_nothing_from_elsewhere(client: Client) -> None:
    for page in ("/schema", "/schema/swagger"):
        html = (await client.get(page)).text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
        assert len(urls) == 4, urls  # the script, its preset, the style sheet, the icon
        for url in urls:
            assert url.startswith("/schema/assets/"), url
            asset = await client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 500, url
        assert "http://" not in html and "https://" not in html


@pytest.fixture
def served(server_url: str, tmp_path: Path) -> Iterator[Served]:
    config = hooked_config(tmp_path, "client-hook", api_token="client-token")
    with scratch_database(server_url) as url:
        env = os.environ | {"DLR_DATABASE_URL": url, "DLR_CONFIG": str(config),
                            "DLR_PORT": str(free_port()), "DLR_LOG_FORMAT": "text"}
        with serving(env, "--no-reconciler") as served:
            yield served


def test_a_generated_client_posts_a_webhook_and_reads_the_message(served: Served,
                                                                   tmp_path: Path) -> None:
    with served.client() as web:
        (tmp_path / "openapi.json").write_bytes(web.get("/schema/openapi.json").content)
    (tmp_path / "config.yaml").write_text("package_name_override: dlr_generated_client\n"
                                          "post_hooks: []\n")
    tool = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    assert tool, "openapi-python-client is a test dependency"
    generated = subprocess.run(
        [tool, "generate", "--path", "openapi.json", "--config", "config.yaml", "--meta", "none",
         "--output-path", "dlr_generated_client"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert generated.returncode == 0, generated.stdout + generated.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        package = importlib.import_module("dlr_generated_client")
        receive = importlib.import_module("dlr_generated_client.api.webhooks.receive_reports")
        read = importlib.import_module("dlr_generated_client.api.messages.get_message")
        reports = typing.get_type_hints(receive.sync_detailed)["body"]
        with package.Client(base_url=served.base, headers={"X-Hook": "client-hook"}) as hook:
            pushed = receive.sync(source="ib", client=hook,
                                  body=reports.from_dict(openapi.V3_EXAMPLE))
        assert (pushed.accepted, pushed.rejected_count) == (1, 0), pushed
        with package.AuthenticatedClient(base_url=served.base, token="client-token") as api:
            message = read.sync(source="ib", message_id="MESSAGE-ID-123-xyz", client=api)
            assert (message.status, message.final, message.sender) == ("DELIVERED", True, "InfoSMS")
            assert message.price.amount == "0.01"
            missing = read.sync(source="ib", message_id="nope", client=api)
            assert (missing.status, missing.title) == (404, "Not Found")  # a Problem
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n.startswith("dlr_generated_client")]:
            del sys.modules[name]
