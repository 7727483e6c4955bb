"""Review 47 (ops): the dashboard keeps installs apart; alert timing while Triton is down."""

from __future__ import annotations

import json
import re

from devstack.dashboard import DASHBOARD_FILE, INSTALL_LABEL, SCOPE_VARIABLES

# An aggregation of PromQL: `sum by (a, b) (`, or one with no `by` at all (`max(`), which keeps no label.
_AGGREGATION = re.compile(r"\b(sum|max|min|avg|count)\s*(?:by\s*\(([^)]*)\))?\s*\(")


def _targets() -> list[dict[str, str]]:
    return [
        target for panel in json.loads(DASHBOARD_FILE.read_text())["panels"] for target in panel["targets"]
    ]


def test_every_panel_keeps_each_install_its_own_series() -> None:
    # The namespace and release variables take several values and start at All: an aggregation without
    # those labels added two releases' figures into one line under one legend.
    for target in _targets():
        aggregations = _AGGREGATION.findall(target["expr"])
        for operator, by in aggregations:
            labels = {label.strip() for label in by.split(",")}
            assert set(SCOPE_VARIABLES) <= labels, f"{operator} by ({by}) in {target['expr']}"
        # Each line says its install: the query joins both labels into `install`, the legend reads it.
        assert target["legendFormat"].startswith("{{" + INSTALL_LABEL + "}}"), target
        joined = f'"{INSTALL_LABEL}", "/", "{SCOPE_VARIABLES[0]}", "{SCOPE_VARIABLES[1]}"'
        assert joined in target["expr"], target


def test_the_check_above_sees_an_aggregation_that_drops_the_release() -> None:
    for expr in ("sum by (stage) (rate(x[5m]))", "max(x)"):
        ((_operator, by),) = _AGGREGATION.findall(expr)
        assert "release" not in by
