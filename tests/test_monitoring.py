"""The shipped dashboard and alert rules read only metrics and labels the code exports.

PromQL is read by a small tokenizer (promtool is not installed here): every metric name in
every expression must be one service/metrics.py exports, with the labels it has, and every
function one PromQL has; so a renamed metric or label fails here, not on a dashboard.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from service import metrics, rules

ROOT = Path(__file__).parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dlr-reconciler.json"
RULES = ROOT / "deploy" / "k8s" / "components" / "monitoring" / "prometheus-rule.yaml"

FUNCTIONS = {"sum", "max", "min", "avg", "count", "rate", "increase", "irate", "delta", "deriv",
             "histogram_quantile", "time", "clamp_min", "clamp_max", "absent", "abs",
             "max_over_time", "min_over_time", "avg_over_time", "topk"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
BINARY = {"and", "or", "unless", "bool", "offset"}
LABEL_VALUES = re.compile(r"label_values\((.+), *(\w+)\)")
TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<range>\[[^\]]*\])
  | (?P<duration>\d+(?:ms|[smhdwy])\b)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<matcher>=~|!~|!=|==|>=|<=|=)
  | (?P<punct>[(){},+\-*/%^<>])
  | (?P<space>\s+)
  | (?P<grafana>\$\w+)
""", re.X)


def exported() -> dict[str, set[str]]:
    """Every sample name the service can export, with its label names."""
    names: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        [family] = metric.describe()
        labels = set(metric._labelnames)
        suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_sum", "_count"]}
        for suffix in suffixes[family.type]:
            names[family.name + suffix] = labels
        if family.type == "histogram":
            names[family.name + "_bucket"] = labels | {"le"}
    return names


def tokens(expr: str) -> list[tuple[str, str]]:
    out, position = [], 0
    while position < len(expr):
        match = TOKEN.match(expr, position)
        assert match, f"cannot read {expr[position:]!r} in {expr!r}"
        position = match.end()
        if match.lastgroup != "space":
            out.append((match.lastgroup or "", match.group()))
    return out


def problems(expr: str) -> list[str]:
    """What in `expr` the code does not export: unknown metrics, labels or functions."""
    known = exported()
    found: list[str] = []
    used_labels: set[str] = set()
    grouping: set[str] = set()
    items = tokens(expr)
    i = 0

    def matchers(start: int, metric: str | None) -> int:
        """Read `{name op "value", …}` from `start` (at the brace); return the index after."""
        j = start + 1
        while items[j][1] != "}":
            name, op, (kind, value) = items[j][1], items[j + 1][1], items[j + 2]
            assert kind == "string" and op in ("=", "!=", "=~", "!~"), expr
            used_labels.add(name)
            if metric is not None and name not in known.get(metric, set()) | {"__name__"}:
                found.append(f"{metric} has no label {name!r}")
            final_status = metric == "dlr_messages_final_total" and name == "status"
            if final_status and op == "=" and value.strip("\"'") not in rules.FINAL_GROUPS:
                found.append(f"{value} is no final status")
            j += 3
            if items[j][1] == ",":
                j += 1
        return j + 1

    metrics_used: list[str] = []
    while i < len(items):
        kind, text = items[i]
        following = items[i + 1][1] if i + 1 < len(items) else ""
        if kind == "ident" and text in GROUPING:
            if following == "(":
                j = i + 2
                while items[j][1] != ")":
                    if items[j][0] == "ident":
                        grouping.add(items[j][1])
                    j += 1
                i = j + 1
                continue
        elif kind == "ident" and text in BINARY:
            pass
        elif kind == "ident" and (following == "(" or following in GROUPING):
            if text not in FUNCTIONS:  # a function, or an aggregation: sum by (…) (…)
                found.append(f"{text}() is not a PromQL function")
        elif kind == "ident":
            metrics_used.append(text)
            if text not in known:
                found.append(f"{text} is not exported")
            if following == "{":
                i = matchers(i + 1, text)
                continue
        elif text == "{":
            i = matchers(i, None)
            continue
        i += 1
    available = set().union(*(known.get(m, set()) for m in metrics_used)) if metrics_used else set()
    if metrics_used:
        found += [f"no metric of the expression has a label {label!r}"
                  for label in sorted(grouping - available)]
    return found


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(board["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in board["templating"]["list"]:
        if isinstance(variable.get("query"), dict):  # Grafana's label_values(selector, label)
            match = LABEL_VALUES.fullmatch(variable["query"]["query"])
            assert match, variable["query"]["query"]
            selector, label = match.groups()
            assert any(label in labels for labels in exported().values()), label
            yield f"${variable['name']}", selector


def alert_rules() -> list[dict[str, Any]]:
    resource = yaml.safe_load(RULES.read_text())
    assert resource["kind"] == "PrometheusRule"
    return [rule for group in resource["spec"]["groups"] for rule in group["rules"]]


@pytest.mark.parametrize(("where", "expr"), list(dashboard_expressions()))
def test_dashboard_expressions_read_exported_metrics(where: str, expr: str) -> None:
    assert problems(expr) == [], f"{where}: {expr}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_expressions_read_exported_metrics(rule: dict[str, Any]) -> None:
    assert problems(rule["expr"]) == [], rule["expr"]
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert rule["annotations"]["summary"]
    assert re.fullmatch(r"\d+[smh]", rule["for"])


def test_the_checker_catches_what_would_drift() -> None:
    assert problems('rate(dlr_webhook_reports_total{outcome="accepted"}[5m])') == []
    assert problems("rate(dlr_reports_total[5m])") == ["dlr_reports_total is not exported"]
    assert problems('dlr_open_gaps{provider="ib"}') == ["dlr_open_gaps has no label 'provider'"]
    assert problems("sum by (route) (dlr_open_gaps)") == [
        "no metric of the expression has a label 'route'"]
    assert problems("summ(dlr_open_gaps)") == ["summ() is not a PromQL function"]
    assert problems('dlr_messages_final_total{status="DELIVRED"}') == [
        '"DELIVRED" is no final status']


def test_the_dashboard_shows_what_an_operator_asks_first() -> None:
    titles = {title for title, _ in dashboard_expressions()}
    assert {"Reports ingested", "Reports rejected", "5xx answers", "Request latency",
            "Pull lag", "Open gaps", "Delivery rate", "Delivery latency"} <= titles


def test_the_rules_alert_on_what_the_issue_names() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    assert {"DlrPullLagging", "DlrOpenGapsGrowing", "DlrReportsRejected", "DlrHttp5xx",
            "DlrDatabaseUnavailable", "DlrProviderCountMismatch"} <= set(names)
