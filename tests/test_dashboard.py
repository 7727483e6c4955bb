"""The Grafana dashboard is its generator's output, every query parses (promtool), every metric exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from devstack.dashboard import DASHBOARD_FILE, PANELS, concrete, dashboard_json, metric_names
from devstack.metrics_doc import catalogue, metrics_table_markdown
from devstack.prometheus import promtool

OPS_DOC = Path(__file__).resolve().parent.parent / "docs" / "ops.md"
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def all_exprs() -> list[str]:
    return [
        target["expr"]
        for panel in json.loads(DASHBOARD_FILE.read_text())["panels"]
        for target in panel["targets"]
    ]


def test_the_committed_dashboard_is_the_generators_output() -> None:
    assert DASHBOARD_FILE.read_text() == dashboard_json(), (
        "deploy/grafana/skuforge.json is stale: run `skuforge dashboard json --write`"
    )


def test_the_dashboard_has_the_panels_ops_asked_for() -> None:
    titles = " | ".join(panel.title.lower() for panel in PANELS)
    for wanted in (
        "per stage",
        "lag",
        "gate decisions",
        "iou",
        "batch",
        "queue time",
        "dead letters",
        "backlog",
    ):
        assert wanted in titles, wanted


def test_every_panel_query_parses(promtool_bin: str, tmp_path: Path) -> None:
    # promtool parses PromQL when it checks rules: each query becomes a recording rule.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": concrete(expr)}
                    for n, expr in enumerate(all_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(all_exprs())} rules found" in result.stdout


def test_promtool_refuses_a_broken_query(promtool_bin: str, tmp_path: Path) -> None:
    # The check above can fail: the same route rejects a query with a typo.
    path = tmp_path / "broken.yml"
    path.write_text(
        json.dumps({"groups": [{"name": "d", "rules": [{"record": "d:q", "expr": "sum by (stage (up)"}]}]})
    )
    assert promtool("check", "rules", str(path)).returncode != 0


def test_every_metric_a_panel_reads_exists() -> None:
    known = {doc.name: doc.type for doc in catalogue()}
    exprs = all_exprs()
    # Every query but the bare `up` one reads a skuforge_ or nv_ series: an extractor that found none
    # would pass this test without checking anything.
    assert all(metric_names(expr) for expr in exprs if not re.search(r"\bup\{", expr)), exprs
    for expr in exprs:
        for name in metric_names(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            ok = name in known or (
                base in known and known[base] == "histogram" and name.endswith(HISTOGRAM_SERIES)
            )
            assert ok, f"{name} in {expr!r} is not a metric any service serves"


def test_docs_carry_the_current_metrics_table() -> None:
    assert metrics_table_markdown() in OPS_DOC.read_text(), (
        "docs/ops.md's metrics table is stale: paste `skuforge prometheus metrics`"
    )


def test_a_rate_beside_a_latency_is_not_drawn_in_seconds() -> None:
    # The store-writes panel drew failures per second on its seconds axis.
    panels = {panel["title"]: panel for panel in json.loads(dashboard_json())["panels"]}
    store = panels["Store writes: p95 latency and failures"]
    failures = next(t["refId"] for t in store["targets"] if "failures" in t["expr"])
    (override,) = store["fieldConfig"]["overrides"]
    assert override["matcher"]["options"] == failures
    assert {"id": "unit", "value": "ops"} in override["properties"]


def test_the_services_up_panel_shows_skuforges_jobs_only() -> None:
    """It plotted a bare `up`: on a shared Prometheus (kube-prometheus) every target it scrapes."""
    from devstack.prometheus import default_targets, scrape_config

    (panel,) = [panel for panel in PANELS if panel.title == "Services up"]
    (query,) = panel.queries
    match = re.fullmatch(r'up\{job=~"([^"]+)"\}', query.expr)
    assert match, query.expr
    jobs = set(match.group(1).split("|"))
    scraped = {job["job_name"] for job in scrape_config(default_targets())["scrape_configs"]}
    assert scraped | {"lora-trainer"} == jobs


def test_dashboard_render_refuses_an_address_without_a_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    """`--prometheus 127.0.0.1:9090` was a ValueError traceback from urllib after the render began."""
    from devstack.dashboard import main

    with pytest.raises(SystemExit) as exited:
        main(["render", "--prometheus", "127.0.0.1:9090", "--out", "x.png"])
    assert exited.value.code == 2
    assert "'127.0.0.1:9090' is not an http(s) address" in capsys.readouterr().err


def test_every_series_a_panel_reads_is_scoped_to_the_chosen_namespace_and_release() -> None:
    """On a shared Prometheus two installs' series were summed into one line (the chart labels every
    series with `namespace` and `release`); every selector carries the dashboard's two variables."""
    document = json.loads(DASHBOARD_FILE.read_text())
    variables = {v["name"]: v for v in document["templating"]["list"]}
    for name in ("namespace", "release"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
        assert f", {name})" in variables[name]["definition"]
    selectors = [
        (name, matchers)
        for expr in all_exprs()
        for name, matchers in re.findall(r"\b((?:skuforge|nv)_[a-z_]+|up)\{([^}]*)\}", expr)
    ]
    series = [name for expr in all_exprs() for name in re.findall(r"\b(?:skuforge|nv)_[a-z_]+\b", expr)]
    assert len(selectors) == len(series) + 1  # + the `up` of "Services up"
    for name, matchers in selectors:
        assert matchers.startswith('namespace=~"$namespace",release=~"$release"'), (name, matchers)
    # Only Grafana's rate window and label_replace's own `$1` (the install label for the legend) are left.
    assert all(
        "$" not in concrete(expr).replace("$__rate_interval", "").replace('"$1 "', "") for expr in all_exprs()
    )


def test_a_legend_shows_label_values_as_written_not_as_matplotlib_reads_them() -> None:
    """A value between two `$` was mathtext in the rendered panels (an unknown `\\command` failed the
    whole render), and a legend starting with `_` was left out of the panel's legend."""
    from devstack.dashboard import _legend

    assert _legend("{{group}} on {{topic}}", {"group": "team$\\ENV$", "topic": "t"}) == "team\\$\\ENV\\$ on t"
    assert _legend("{{reason}}", {"reason": "_price"}) == " _price"
    assert _legend("{{stage}}", {"stage": "x" * 80}) == "x" * 60
