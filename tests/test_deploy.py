"""The deployment files agree with the code: commands, env names, ports, probe paths."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from service import cli
from service.app import create_app
from service.config import DEFAULT_MAX_BODY_BYTES, load_settings

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d.get("kind") == kind]


def containers() -> list[dict[str, Any]]:
    pods = [d["spec"]["template"] for d in of_kind("Deployment") + of_kind("Job")]
    pods += [d["spec"]["jobTemplate"]["spec"]["template"] for d in of_kind("CronJob")]
    return [c for pod in pods for c in pod["spec"]["containers"]]


def variables_the_code_reads() -> set[str]:
    names = set()
    for path in (ROOT / "service").rglob("*.py"):
        names |= set(re.findall(r'"(DLR_[A-Z_]+)"', path.read_text()))
    return names


def test_every_container_runs_a_real_command() -> None:
    parser = cli.build_parser()
    commands = set()
    for container in containers():
        args = parser.parse_args(container["args"])  # exits on an unknown flag
        commands.add(args.command)
    assert commands == {"serve", "worker", "migrate", "prune"}


def test_env_names_are_ones_the_code_or_the_config_reads() -> None:
    toml = of_kind("ConfigMap")[0]["data"]["dlr.toml"]
    known = variables_the_code_reads() | set(re.findall(r'"env:([A-Z_]+)"', toml))
    secret = of_kind("Secret")[0]["stringData"]
    used = {e["name"] for c in containers() for e in c.get("env", [])} | set(secret)
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for service in compose["services"].values():
        used |= set(service.get("environment", {}))
    assert {n for n in used if n.startswith("DLR_")} <= known
    assert set(re.findall(r'"env:([A-Z_]+)"', toml)) <= set(secret)  # every reference is set


def test_config_map_is_a_valid_configuration(tmp_path: Path) -> None:
    toml = of_kind("ConfigMap")[0]["data"]["dlr.toml"]
    (tmp_path / "dlr.toml").write_text(toml)
    env = dict(of_kind("Secret")[0]["stringData"]) | {"DLR_CONFIG": str(tmp_path / "dlr.toml")}
    settings = load_settings(env)
    assert set(settings.sources) == {"ib", "dice"}


def test_ports_and_probes_match_the_app() -> None:
    [api] = [c for c in containers() if c["args"][0] == "serve"]
    env = {e["name"]: e["value"] for e in api["env"]}
    [port] = api["ports"]
    assert int(env["DLR_PORT"]) == port["containerPort"]
    [service] = of_kind("Service")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    paths = {route.path for route in create_app(load_settings({}), "postgresql+asyncpg://x/y").routes}
    for probe in ("readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["path"] in paths
        assert api[probe]["httpGet"]["port"] == port["name"]


def test_ingress_lets_a_full_push_through() -> None:
    [ingress] = of_kind("Ingress")
    size = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(size.rstrip("m")) * 1024 * 1024 >= DEFAULT_MAX_BODY_BYTES
    assert ingress["spec"]["tls"], "webhooks carry credentials: TLS at the ingress"


def test_ingress_exposes_webhooks_and_the_api_only() -> None:
    [ingress] = of_kind("Ingress")
    exposed = {p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert exposed == {"/webhooks", "/v1"}
    paths = {route.path for route in create_app(load_settings({}), "postgresql+asyncpg://x/y").routes}
    assert all(any(path.startswith(prefix) for path in paths) for prefix in exposed)


@pytest.mark.parametrize("line", ["pip install --require-hashes -r requirements.lock",
                                  "pip install --no-deps .", "EXPOSE 8080", "DLR_PORT=8080",
                                  'ENTRYPOINT ["dlr-reconciler"]',
                                  "/health/live", "USER dlr", "STOPSIGNAL SIGTERM"])
def test_dockerfile(line: str) -> None:
    assert line in (ROOT / "Dockerfile").read_text()


def test_dockerfile_stages_share_one_pinned_base() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.11\.\d+-slim-bookworm$", text, re.M)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE}", "${BASE}"]


def test_the_lock_pins_every_dependency_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = (DEPLOY / "requirements.lock").read_text()
    pinned = {canonicalize_name(name): Version(version)
              for name, version in re.findall(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)", lock, re.M)}
    assert "--hash=sha256:" in lock
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not in deploy/requirements.lock"
        assert pinned[name] in requirement.specifier, f"{name} {pinned[name]} is outside {line}"


def test_pods_are_given_the_time_a_graceful_stop_takes() -> None:
    limit = load_settings({}).shutdown_timeout_s
    for deployment in of_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        args = container["args"]
        stages = 2 if args[0] == "serve" and "--no-reconciler" not in args else 1
        assert pod["terminationGracePeriodSeconds"] > stages * limit
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name in ("api", "worker"):
        assert int(compose["services"][name]["stop_grace_period"].rstrip("s")) > limit
