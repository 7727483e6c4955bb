"""The alert rules' unit tests feed Triton's series with the labels a real Triton exports.

alerts_test.yml writes its ``nv_*`` input series by hand; if their labels differ from Triton's, a rule
can pass its unit test and match nothing in production. Triton 2.51 labels
``nv_inference_request_failure`` with a ``reason``: ``rate(success) + rate(failure)`` then matched no
series, and SkuforgeTritonQueueTimeHigh never fired while its unit test (without ``reason``) passed.
"""

from __future__ import annotations

import re
import urllib.request

import pytest
import yaml

from devstack.prometheus import ALERTS_TEST_FILE
from tests.support.triton import TritonServerProcess, triton  # noqa: F401

pytestmark = pytest.mark.slow

# Labels Prometheus adds at scrape time, not part of what Triton exports.
SCRAPE_LABELS = {"job", "instance"}


def _label_names(series: str) -> tuple[str, frozenset[str]]:
    """``name{a="1", b="2"}`` (exposition text or promtool's input notation) → name, label names."""
    match = re.match(r"(\w+)\{(.*)\}", series)
    assert match, series
    name, body = match.groups()
    return name, frozenset(re.findall(r'(\w+)\s*=\s*"', body))


def _label_names_by_metric(text: str) -> dict[str, set[frozenset[str]]]:
    """Metric name → the label-name sets of its samples, as written (the client parser would rename
    Triton's counters to *_total)."""
    names: dict[str, set[frozenset[str]]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" in line:
            name, labels = _label_names(line)
            names.setdefault(name, set()).add(labels)
    return names


def test_the_triton_series_in_the_rules_unit_tests_carry_tritons_own_labels(
    triton: TritonServerProcess,  # noqa: F811
) -> None:
    url = f"http://127.0.0.1:{triton.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        exported = _label_names_by_metric(response.read().decode())
    fed = [
        series["series"]
        for test in yaml.safe_load(ALERTS_TEST_FILE.read_text())["tests"]
        for series in test.get("input_series", [])
        if series["series"].startswith("nv_")
    ]
    assert fed, "alerts_test.yml feeds no Triton series any more: drop or adapt this test"
    for series in fed:
        name, labels = _label_names(series)
        labels -= SCRAPE_LABELS
        assert name in exported, f"Triton exports no {name} (alerts_test.yml: {series})"
        assert labels in exported[name], (
            f"alerts_test.yml feeds {series}; Triton labels {name} with "
            f"{sorted(sorted(found) for found in exported[name])}"
        )
