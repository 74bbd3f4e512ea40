"""observability/: the Grafana dashboard is a dashboard Grafana can import (no Grafana
runs here: its JSON model's fields are checked one by one), every query in it is PromQL
Prometheus accepts, and the alerting rules name their runbook in docs/operations.md.

The rules themselves are checked by `make observability` (promtool check and unit
tests on synthetic series); that every metric the dashboard and the rules read exists
is checked against a real scrape in test_gateway.py.
"""

import re
import subprocess

import pytest
import yaml

from harness import ROOT
from harness.observability import dashboard, dashboard_queries, grouping_labels, rules

# Grafana's panel types and units this dashboard may use (Grafana's own ids).
PANEL_TYPES = {"row", "timeseries", "stat"}
UNITS = {"reqps", "percentunit", "short", "ms", "ops"}
# Grafana's global variables a query may use besides the dashboard's own.
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range"}


def test_the_dashboard_has_the_fields_grafana_imports():
    board = dashboard()
    assert isinstance(board["title"], str) and board["title"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"])
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert isinstance(board["version"], int)
    assert set(board["time"]) == {"from", "to"}
    assert "id" not in board, "an exported dashboard carries no database id"
    variables = board["templating"]["list"]
    names = [v["name"] for v in variables]
    assert len(names) == len(set(names))
    datasource, = [v for v in variables if v["type"] == "datasource"]
    assert (datasource["name"], datasource["query"]) == ("datasource", "prometheus")
    for variable in variables:
        assert variable["type"] in {"datasource", "query"}
        if variable["type"] == "query":
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert variable["query"]["query"] == variable["definition"]
            assert variable["query"]["query"].startswith("label_values(")


def test_every_panel_is_placed_typed_and_queries_the_chosen_prometheus():
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    taken = set()
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["title"]
        pos = panel["gridPos"]
        assert set(pos) == {"x", "y", "w", "h"} and all(isinstance(v, int) for v in pos.values())
        assert 0 <= pos["x"] and 0 < pos["w"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                 for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"{panel['title']!r} overlaps another panel"
        taken |= cells
        if panel["type"] == "row":
            assert pos["w"] == 24 and pos["h"] == 1 and panel["panels"] == []
            continue
        assert panel["description"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip() and target["legendFormat"]
            # A legend names only labels the query keeps.
            for label in re.findall(r"\{\{(\w+)\}\}", target["legendFormat"]):
                assert label in grouping_labels(target["expr"]), (panel["title"], label)


def test_every_query_uses_defined_variables_only():
    defined = {v["name"] for v in dashboard()["templating"]["list"]} | GRAFANA_VARIABLES
    for title, expr in dashboard_queries():
        for variable in re.findall(r"\$\{?(\w+)", expr):
            assert variable in defined, (title, variable)


def test_every_dashboard_query_is_promql_prometheus_accepts(tmp_path):
    """promtool reads each query as a recording rule's expression, with the dashboard's
    variables replaced by values they may take."""
    values = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h",
              "$job": "wasmgate-gateway", "$instance": ".*"}
    exprs = []
    for title, expr in dashboard_queries():
        if expr.startswith("label_values("):  # Grafana's, not PromQL: its selector is
            expr = re.fullmatch(r"label_values\((.*), \w+\)", expr).group(1)
        for variable, value in values.items():
            expr = expr.replace(variable, value)
        exprs.append(expr)
    rules_file = tmp_path / "dashboard.rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}:expr", "expr": expr} for i, expr in enumerate(exprs)]}]}))
    result = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_a_broken_query_is_refused(tmp_path):
    # The check above must be able to say no.
    rules_file = tmp_path / "broken.rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "x:y:z", "expr": "sum by (reason (rate(wasmgate_jwt_denied_total[1m]))"}]}]}))
    result = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0


@pytest.mark.parametrize("rule", [r for r in rules() if "alert" in r], ids=lambda r: r["alert"])
def test_each_alert_has_a_severity_and_an_entry_in_the_operations_page(rule):
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert f"`{rule['alert']}`" in operations, f"docs/operations.md does not explain {rule['alert']}"


def test_the_shipped_stats_tags_are_those_istio_writes_for_extra_stat_tags():
    """Istio's bootstrap template (tools/packaging/common/envoy_bootstrap.json in
    istio/istio) writes `{"regex": "(<tag>=\\.=(.*?);\\.;)", "tag_name": "<tag>"}` for
    each name of a proxy's `extraStatTags`: with the four names the docs give, an Istio
    proxy extracts the filters' labels exactly as gateway.yaml does."""
    shipped = yaml.safe_load((ROOT / "envoy-config" / "gateway.yaml").read_text())["stats_config"]
    istio_names = ["reason", "kind", "provider", "result"]
    assert shipped == {"stats_tags": [{"tag_name": tag, "regex": f"({tag}=\\.=(.*?);\\.;)"}
                                      for tag in istio_names]}
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert 'extraStatTags: ["reason", "kind", "provider", "result"]' in operations
