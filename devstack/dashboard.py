"""The Grafana dashboard, as code: ``skuforge dashboard json --write`` writes deploy/grafana/skuforge.json.

Panels are written here once, with the metric names of the code (``devstack/metrics_doc.py``); a test
checks the committed JSON is this module's output, that every query parses (promtool) and that every
metric a query names exists. ``skuforge dashboard render`` plots the panels' queries from a running
Prometheus into a PNG (docs/ops.md shows one from the integration run), so the queries are seen to
return data, not only to parse.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from devstack.prometheus import REPO_ROOT, api_get, default_targets
from schemas.flow import LORA_TRAINER
from shared.argtypes import CommandParser, file_problem, path_argument, positive_float

DASHBOARD_FILE = REPO_ROOT / "deploy" / "grafana" / "skuforge.json"
# Grafana's own window for rate(); the checks and the plot put a concrete window in its place.
RATE_WINDOW = "$__rate_interval"
# The dashboard's two variables. On a shared Prometheus (the chart's PodMonitors label every series with
# the pod's `namespace` and the chart's `release`) they pick one install; "All" is the regex `.*`, which
# also matches a series without the label (the compose stack's Prometheus sets neither).
SCOPE_VARIABLES = ("namespace", "release")
_SCOPE = ",".join(f'{name}=~"${name}"' for name in SCOPE_VARIABLES)
# A series selector of a query: a skuforge_/nv_ metric, or `up` with its matchers.
_SELECTOR = re.compile(r"\b((?:skuforge|nv)_[a-z_]+\b|up(?=\{))(?:\{([^}]*)\})?")
# An aggregation of a query, with its `by (...)` labels if it has any.
_AGGREGATION = re.compile(r"\b(sum|max|min|avg|count)\s*(?:by\s*\(([^)]*)\))?\s*\(")
# Each series' legend starts with its install, so two releases' lines are told apart: the query adds an
# `install` label, "namespace/release " on the chart's series and none on the compose stack's (a legend of
# "{{namespace}}/{{release}}" started with a bare "/" there).
INSTALL_LABEL = "install"


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel and its legend."""

    expr: str
    legend: str
    unit: str = ""  # its own unit, on a right-hand axis, when it differs from the panel's


@dataclass(frozen=True)
class Panel:
    """One time-series panel."""

    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    extra: dict[str, Any] = field(default_factory=dict)


def _rate(metric: str, by: str, selector: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{selector}[{RATE_WINDOW}]))"


PANELS: tuple[Panel, ...] = (
    Panel(
        "Flow: input messages handled per stage",
        (Query(_rate("skuforge_messages_total", "stage", '{outcome="ok"}'), "{{stage}}"),),
        unit="ops",
        description="Events each stage handled successfully, per second.",
    ),
    Panel(
        "Flow: images per stage and backend",
        (Query(_rate("skuforge_images_total", "stage, backend"), "{{stage}} {{backend}}"),),
        unit="ops",
        description="Images generated, matted and gated per second, by generation backend.",
    ),
    Panel(
        "Images reaching the retraining store",
        (Query(_rate("skuforge_trainstore_images_stored_total", "source"), "{{source}}"),),
        unit="ops",
    ),
    Panel(
        "Consumer group lag",
        (Query("max by (group, topic) (skuforge_consumer_group_lag_messages)", "{{group}} on {{topic}}"),),
        description="Messages each group has not committed yet (read from the broker, so a stopped "
        "stage's lag still shows).",
    ),
    Panel(
        "Gate decisions",
        (Query(_rate("skuforge_gate_decisions_total", "decision"), "{{decision}}"),),
        unit="ops",
    ),
    Panel(
        "Gate IoU distribution",
        (
            Query(
                f"histogram_quantile(0.1, sum by (le) (rate(skuforge_gate_iou_bucket[{RATE_WINDOW}])))", "p10"
            ),
            Query(
                f"histogram_quantile(0.5, sum by (le) (rate(skuforge_gate_iou_bucket[{RATE_WINDOW}])))", "p50"
            ),
            Query(
                f"histogram_quantile(0.9, sum by (le) (rate(skuforge_gate_iou_bucket[{RATE_WINDOW}])))", "p90"
            ),
        ),
        unit="percentunit",
        description="IoU of predicted and expected mask; items below the threshold go to the console.",
    ),
    Panel(
        "Gate flags by reason",
        (Query(_rate("skuforge_gate_flags_total", "reason"), "{{reason}}"),),
        unit="ops",
    ),
    Panel(
        "Model latency (p95 per call)",
        (
            Query(
                "histogram_quantile(0.95, sum by (stage, model, le) "
                f"(rate(skuforge_model_seconds_bucket[{RATE_WINDOW}])))",
                "{{stage}} {{model}}",
            ),
        ),
        unit="s",
    ),
    Panel(
        "Batch sizes: stage micro-batches and Triton's dynamic batches",
        (
            Query(
                f"{_rate('skuforge_model_batch_size_sum', 'stage, model')} "
                f"/ {_rate('skuforge_model_batch_size_count', 'stage, model')}",
                "{{stage}} {{model}}",
            ),
            Query(
                f"{_rate('nv_inference_count', 'model')} / {_rate('nv_inference_exec_count', 'model')}",
                "triton {{model}}",
            ),
        ),
    ),
    Panel(
        "Triton queue time per request",
        (
            Query(
                f"{_rate('nv_inference_queue_duration_us', 'model')} / 1e6 "
                f"/ {_rate('nv_inference_request_success', 'model')}",
                "{{model}}",
            ),
        ),
        unit="s",
    ),
    Panel(
        "Triton errors and refusals",
        (
            Query(_rate("skuforge_triton_errors_total", "model, kind"), "generator saw {{kind}} {{model}}"),
            Query(_rate("nv_inference_request_failure", "model"), "triton failed {{model}}"),
        ),
        unit="ops",
    ),
    Panel(
        "Dead letters",
        (Query(_rate("skuforge_dlq_total", "stage, topic, reason"), "{{stage}} {{topic}} {{reason}}"),),
        unit="ops",
    ),
    Panel(
        "Store writes: p95 latency and failures",
        (
            Query(
                "histogram_quantile(0.95, sum by (stage, le) "
                f"(rate(skuforge_store_write_seconds_bucket[{RATE_WINDOW}])))",
                "p95 {{stage}}",
            ),
            Query(_rate("skuforge_store_write_failures_total", "stage"), "failures/s {{stage}}", unit="ops"),
        ),
        unit="s",
    ),
    Panel(
        "Console backlog",
        (
            Query('sum by (state) (skuforge_console_tasks{state=~"pending|claimed"})', "{{state}}"),
            Query("max(skuforge_console_oldest_task_age_seconds)", "oldest waiting (s)"),
        ),
    ),
    Panel(
        "Matting: mask foreground fraction (median)",
        (
            Query(
                "histogram_quantile(0.5, sum by (le) "
                f"(rate(skuforge_matting_foreground_fraction_bucket[{RATE_WINDOW}])))",
                "median foreground fraction",
            ),
        ),
        unit="percentunit",
    ),
    Panel(
        "Services up",
        # skuforge's jobs only: on a shared Prometheus a bare `up` plots every target it scrapes.
        (Query(f'up{{job=~"{"|".join([*default_targets(), LORA_TRAINER.name])}"}}', "{{job}}"),),
        description="1 when Prometheus scraped the service's /metrics.",
    ),
)


def _unit_overrides(panel: Panel) -> list[dict[str, Any]]:
    """A query with a unit of its own (failures/s beside a latency) gets it, on the right-hand axis."""
    return [
        {
            "matcher": {"id": "byFrameRefID", "options": chr(ord("A") + n)},
            "properties": [
                {"id": "unit", "value": q.unit},
                {"id": "custom.axisPlacement", "value": "right"},
            ],
        }
        for n, q in enumerate(panel.queries)
        if q.unit and q.unit != panel.unit
    ]


def scoped(expr: str) -> str:
    """``expr`` with the dashboard's namespace and release matchers in every series selector."""
    return _SELECTOR.sub(
        lambda match: f"{match.group(1)}{{{_SCOPE}{',' + match.group(2) if match.group(2) else ''}}}", expr
    )


def per_install(expr: str) -> str:
    """``expr`` with the dashboard's namespace and release labels kept by every aggregation: with several
    installs chosen (All is the default), a `sum by (stage)` added their figures into one line."""

    def keep(match: re.Match[str]) -> str:
        labels = [label.strip() for label in (match.group(2) or "").split(",") if label.strip()]
        kept = [*SCOPE_VARIABLES, *(label for label in labels if label not in SCOPE_VARIABLES)]
        return f"{match.group(1)} by ({', '.join(kept)}) ("

    return _AGGREGATION.sub(keep, expr)


def with_install(expr: str) -> str:
    """``expr`` with an ``install`` label on each series for its legend: "namespace/release " (trailing
    space) where the series has the chart's labels, none where it has neither (the compose stack)."""
    joined = f'label_join({expr}, "{INSTALL_LABEL}", "/", "{SCOPE_VARIABLES[0]}", "{SCOPE_VARIABLES[1]}")'
    # Both labels empty join to "/": an empty replacement removes the label. Then "ns/rel" gets its space.
    bare = f'label_replace({joined}, "{INSTALL_LABEL}", "", "{INSTALL_LABEL}", "/")'
    return f'label_replace({bare}, "{INSTALL_LABEL}", "$1 ", "{INSTALL_LABEL}", "(.+)")'


def panel_expr(query: Query) -> str:
    """The query as the dashboard asks it: scoped to the chosen installs, one series per install, each
    with its install label for the legend."""
    return with_install(scoped(per_install(query.expr)))


def panel_legend(query: Query) -> str:
    """The query's legend, after its series' install ("namespace/release ", nothing without the labels)."""
    return f"{{{{{INSTALL_LABEL}}}}}{query.legend}"


def _scope_variable(name: str, datasource: dict[str, str]) -> dict[str, Any]:
    """A multi-value query variable over the label ``name`` of skuforge's series, "All" by default."""
    earlier = SCOPE_VARIABLES[: SCOPE_VARIABLES.index(name)]
    matchers = ",".join(f'{other}=~"${other}"' for other in earlier)
    selector = f"{{{matchers}}}" if matchers else ""
    query = f"label_values(skuforge_messages_total{selector}, {name})"
    return {
        "name": name,
        "label": name.capitalize(),
        "type": "query",
        "datasource": datasource,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard model (schema version 39), two panels a row."""
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    panels = []
    for index, panel in enumerate(PANELS):
        panels.append(
            {
                "id": index + 1,
                "type": panel.kind,
                "title": panel.title,
                "description": panel.description,
                "datasource": datasource,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": _unit_overrides(panel)},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {
                        "refId": chr(ord("A") + n),
                        "datasource": datasource,
                        "expr": panel_expr(q),
                        "legendFormat": panel_legend(q),
                    }
                    for n, q in enumerate(panel.queries)
                ],
            }
        )
    return {
        "uid": "skuforge-flow",
        "title": "skuforge: flow, lag, gate, Triton, DLQ, console",
        "tags": ["skuforge"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                },
                *(_scope_variable(name, datasource) for name in SCOPE_VARIABLES),
            ]
        },
        "panels": panels,
    }


def dashboard_json() -> str:
    """The dashboard as the committed file holds it."""
    return json.dumps(dashboard(), indent=2) + "\n"


def concrete(expr: str, window: str = "5m") -> str:
    """``expr`` with Grafana's rate window replaced by ``window`` and its variables by "All" (plain
    PromQL)."""
    for name in SCOPE_VARIABLES:
        expr = expr.replace(f'=~"${name}"', '=~".*"')
    return expr.replace(RATE_WINDOW, window)


def metric_names(expr: str) -> set[str]:
    """The skuforge_ and nv_ series names ``expr`` reads (as written: ``_bucket``, ``_sum``... kept)."""
    return set(re.findall(r"\b(?:skuforge|nv)_[a-z_]+\b", expr))


def _legend(template: str, labels: dict[str, str], max_chars: int = 60) -> str:
    """Grafana's ``{{label}}`` legend filled from a series' labels (cut at ``max_chars``), as matplotlib
    shows it literally: text between two ``$`` is mathtext there (a label value with an unknown
    ``\\command`` in it failed the whole render), and a label that starts with ``_`` is left out."""
    text = re.sub(r"\{\{(\w+)\}\}", lambda match: labels.get(match.group(1), ""), template)[:max_chars]
    text = text.replace("$", r"\$")
    return f" {text}" if text.startswith("_") else text


# A panel draws at most this many series of each query; more made its legend unreadable.
MAX_SERIES_PER_QUERY = 8


class Rendered(NamedTuple):
    """What ``render`` could not draw: the panels with no data (the picture says so too), and for each
    panel that had more series than ``MAX_SERIES_PER_QUERY`` a query, how many it left out."""

    no_data: list[str]
    left_out: dict[str, int]


def render(prometheus_url: str, out: Path, start: float, end: float, window: str = "30s") -> Rendered:
    """Plot every panel's queries over [start, end] from ``prometheus_url`` into ``out`` (a PNG); the
    panels with no data to draw and the series left out of the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 2
    rows = (len(PANELS) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(14, 2.6 * rows), squeeze=False)
    step = max(1.0, (end - start) / 200)
    no_data = []
    left_out: dict[str, int] = {}
    for index, panel in enumerate(PANELS):
        axis = axes[index // columns][index % columns]
        for query in panel.queries:
            data = api_get(
                prometheus_url,
                "query_range",
                query=concrete(panel_expr(query), window),  # as the dashboard asks, "All" chosen
                start=str(start),
                end=str(end),
                step=str(step),
            )
            if len(data["result"]) > MAX_SERIES_PER_QUERY:
                more = len(data["result"]) - MAX_SERIES_PER_QUERY
                left_out[panel.title] = left_out.get(panel.title, 0) + more
            for series in data["result"][:MAX_SERIES_PER_QUERY]:
                times = [float(t) - start for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                if not any(math.isfinite(value) for value in values):
                    # NaN only (a quantile of no observations, 0/0 while idle): nothing to draw. It was an
                    # empty plot under a legend, where an empty result says "no data".
                    continue
                axis.plot(times, values, label=_legend(panel_legend(query), series["metric"]))
        axis.set_title(panel.title, fontsize=9)
        axis.tick_params(labelsize=7)
        if axis.lines:
            axis.legend(fontsize=6, loc="upper left")
        else:
            no_data.append(panel.title)
            axis.text(0.5, 0.5, "no data in this run", ha="center", va="center", transform=axis.transAxes)
    for index in range(len(PANELS), rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.supxlabel("seconds since the run started", fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return Rendered(no_data, left_out)


def prometheus_address(text: str) -> str:
    """An argparse type: an http(s) URL of a Prometheus (a bare host:port was a ValueError traceback)."""
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) address, e.g. http://127.0.0.1:9090")
    return text.rstrip("/")


def main(argv: list[str] | None = None) -> int:
    """``skuforge dashboard``: print or write the dashboard JSON, or render its panels from a Prometheus."""
    parser = CommandParser(
        prog="skuforge dashboard",
        description="The Grafana dashboard (deploy/grafana/skuforge.json) from its Python definition.",
    )
    sub = parser.add_subparsers(dest="action")
    show = sub.add_parser("json", help="print the dashboard JSON (default)")
    show.add_argument(
        "--write", action="store_true", help=f"write it to {DASHBOARD_FILE.relative_to(REPO_ROOT)}"
    )
    plot = sub.add_parser("render", help="plot every panel's queries from a running Prometheus into a PNG")
    plot.add_argument(
        "--prometheus",
        required=True,
        type=prometheus_address,
        help="the Prometheus address, e.g. http://127.0.0.1:9090",
    )
    plot.add_argument("--out", type=path_argument("file"), required=True, help="the PNG to write")
    plot.add_argument(
        "--minutes",
        type=positive_float,
        default=15.0,
        help="how far back to plot, above 0 (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.action == "render":
        # Now, not at savefig after every panel's queries (and said then under the Prometheus address).
        if problem := file_problem(args.out, "panels.png"):
            plot.error(f"--out {args.out}: {problem}")
        try:  # now, not after asking Prometheus for every panel
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "skuforge dashboard render: needs matplotlib, from the docs extra: "
                "pip install 'skuforge[docs]'",
                file=sys.stderr,
            )
            return 2
        end = time.time()
        try:
            rendered = render(args.prometheus, args.out, end - 60 * args.minutes, end)
        except (OSError, ValueError, RuntimeError) as exc:  # nothing there, or an error answer
            print(f"skuforge dashboard render: {args.prometheus}: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {args.out}")
        if rendered.no_data:
            print(f"no data in this run: {'; '.join(rendered.no_data)}")
        if rendered.left_out:
            panels = "; ".join(f"{title}: {count} series" for title, count in rendered.left_out.items())
            print(f"left out ({MAX_SERIES_PER_QUERY} series a query at most): {panels}")
        return 0
    if getattr(args, "write", False):
        DASHBOARD_FILE.parent.mkdir(parents=True, exist_ok=True)
        DASHBOARD_FILE.write_text(dashboard_json())
        print(f"wrote {DASHBOARD_FILE}")
        return 0
    print(dashboard_json(), end="")
    return 0
