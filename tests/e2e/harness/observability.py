"""What observability/ ships, read for tests: the Grafana dashboard's queries and the
Prometheus rules' expressions, and the metric names they use.

Whether those names exist is judged against a real scrape of the demo gateway
(test_gateway.py); the dashboard's shape and its PromQL against Grafana's and
Prometheus's rules (test_observability.py).
"""

import json
import re

import yaml

from .paths import ROOT

OBSERVABILITY = ROOT / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "wasmgate-filters.json"
RULE_FILES = sorted((OBSERVABILITY / "prometheus" / "rules").glob("*.yml"))

# A metric selector: a name, then its label matchers if any.
# (A recording rule's name, job:wasmgate_jwt_denied:rate5m, is not one.)
SELECTOR = re.compile(r"(?<![\w:])((?:wasmgate|envoy)_[a-z0-9_]+)(?![\w:])(?:\{([^}]*)\})?")
MATCHER = re.compile(r'([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
RECORDED = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")
# Labels Prometheus adds to every scraped series, and a histogram's bucket bound.
TARGET_LABELS = {"job", "instance", "le"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list:
    """(panel title, PromQL) of every target of every panel, and the variables' queries."""
    queries = [(panel["title"], target["expr"]) for panel in dashboard()["panels"]
               for target in panel.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            queries.append((f"${variable['name']}", variable["query"]["query"]))
    return queries


def rules() -> list:
    """Every rule of the rule files, as the dicts Prometheus reads."""
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def rule_queries() -> list:
    """(rule name, PromQL) of every recording and alerting rule."""
    return [(rule.get("record") or rule["alert"], rule["expr"]) for rule in rules()]


def recorded_names() -> set:
    return {rule["record"] for rule in rules() if "record" in rule}


def selectors(expr: str) -> list:
    """[(metric name, {label: (operator, value)})] of the metric selectors in `expr`
    (wasmgate_* and envoy_* names; `label_values(...)` included)."""
    without_grouping = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", expr)
    return [(name, {label: (op, value) for label, op, value in MATCHER.findall(matchers or "")})
            for name, matchers in SELECTOR.findall(without_grouping)]


def recorded_used(expr: str) -> set:
    """The recording rules' names (level:metric:operations) an expression reads."""
    return set(RECORDED.findall(expr))


def grouping_labels(expr: str) -> set:
    """Labels of every `by (...)` in `expr`."""
    return {label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", expr)
            for label in group.split(",") if label.strip()}
