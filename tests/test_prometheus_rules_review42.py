"""The alert rules, and the series their unit tests feed them, name metrics and labels the services serve.

alerts_test.yml writes its input series by hand: a rule whose metric or label matcher a service does not
serve (a renamed metric, a label it never had) passes its unit test and matches nothing in production,
as SkuforgeTritonQueueTimeHigh did with Triton's labels (tests/test_ops_review.py checks those against a
real Triton). This checks skuforge's own against the classes that define them, as the dashboard's are.
"""

from __future__ import annotations

import re

import yaml

from devstack.metrics_doc import catalogue
from devstack.prometheus import ALERTS_FILE, ALERTS_TEST_FILE

# Labels a target gets at scrape time: Prometheus's own, and those the chart's PodMonitors set.
TARGET_LABELS = {"job", "instance", "namespace", "release", "pod", "pod_phase"}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
_SELECTOR = re.compile(r"\b((?:skuforge|nv)_[a-z_]+|up)\b(?:\{([^}]*)\})?")


def _served() -> dict[str, set[str]]:
    """Series name → its label names, as served (a histogram's three series; ``up`` of every target)."""
    served: dict[str, set[str]] = {"up": set()}
    for doc in catalogue():
        if doc.type == "histogram":
            for suffix in HISTOGRAM_SERIES:
                served[doc.name + suffix] = set(doc.labels) | ({"le"} if suffix == "_bucket" else set())
        else:
            served[doc.name] = set(doc.labels)
    return served


def problems(expr: str, served: dict[str, set[str]]) -> list[str]:
    """What ``expr``'s selectors name that no service serves: a metric, or a label of a metric."""
    found = []
    for match in _SELECTOR.finditer(expr):
        name, matchers = match.group(1), match.group(2) or ""
        if name not in served:
            found.append(f"no service serves {name}")
            continue
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            if label not in served[name] | TARGET_LABELS:
                found.append(f"{name} has no label {label} (it has {sorted(served[name])})")
    return found


def test_every_metric_and_label_an_alert_rule_reads_is_served() -> None:
    served = _served()
    rules = [rule for group in yaml.safe_load(ALERTS_FILE.read_text())["groups"] for rule in group["rules"]]
    assert rules
    for rule in rules:
        assert problems(rule["expr"], served) == [], rule.get("alert") or rule.get("record")


def test_every_series_the_rules_unit_tests_feed_is_served_with_its_labels() -> None:
    served = _served()
    fed = [
        series["series"]
        for test in yaml.safe_load(ALERTS_TEST_FILE.read_text())["tests"]
        for series in test.get("input_series", [])
    ]
    assert fed
    for series in fed:
        assert problems(re.sub(r'="[^"]*"', '=""', series), served) == [], series


def test_the_check_finds_a_metric_or_a_label_no_service_serves() -> None:
    # The two tests above can fail: a name a letter off, and a label the counter never had.
    served = _served()
    assert problems("rate(skuforge_message_total[5m])", served) == [
        "no service serves skuforge_message_total"
    ]
    assert problems('increase(skuforge_dlq_total{group="g"}[1h])', served) == [
        "skuforge_dlq_total has no label group (it has ['reason', 'stage', 'topic'])"
    ]
