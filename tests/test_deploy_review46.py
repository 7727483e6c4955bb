"""Review 46 of deploy/: what the chart's alerts say matches what they wait for."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.helm import render, require_helm


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


def _alerts(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    rules = [doc for doc in docs if doc["kind"] == "PrometheusRule"]
    assert len(rules) == 1
    return {r["alert"]: r for group in rules[0]["spec"]["groups"] for r in group["rules"] if "alert" in r}


@pytest.mark.parametrize(("startup_s", "minutes"), [(300, 15), (1800, 30), (1801, 31)])
def test_triton_downs_summary_names_the_wait_the_chart_gives_it(
    helm: str, startup_s: int, minutes: int
) -> None:
    """The chart waits triton.startupSeconds (rounded up to minutes) before SkuforgeTritonDown fires where
    that is longer than 15 minutes, but its page still said "has not answered /metrics for 15 minutes"
    after 30: the on-call read a wait the alert does not have."""
    alert = _alerts(render(helm, f"triton.startupSeconds={startup_s}"))["SkuforgeTritonDown"]
    assert alert["for"] == f"{minutes}m"
    summary = alert["annotations"]["summary"]
    assert f"for {minutes} minutes" in summary, summary
    if minutes != 15:
        assert "15 minutes" not in summary, summary
