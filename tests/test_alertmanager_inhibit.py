"""Alertmanager's inhibit rules: one stage's outage pages once, as SkuforgeStageDown.

A stage that stops answering commits nothing, and its group's lag grows: SkuforgeStageDown,
SkuforgeStageStalled and SkuforgeConsumerLagGrowing paged together for that one outage. The inhibit
rules name the alerts of deploy/prometheus/alerts.yml (a renamed alert fails here, not silently in
Alertmanager), and the promtool unit tests show all three firing for one outage with the labels the
rules compare (promtool checks those labels against the rules themselves).
"""

from __future__ import annotations

import re
from collections import defaultdict

import yaml

from devstack.prometheus import ALERTS_FILE, ALERTS_TEST_FILE, PROMETHEUS_DIR

ALERTMANAGER_CONFIG = PROMETHEUS_DIR.parent / "alertmanager" / "alertmanager.yml"
SOURCE = "SkuforgeStageDown"
TARGETS = {"SkuforgeStageStalled", "SkuforgeConsumerLagGrowing"}


def _alert_names() -> set[str]:
    groups = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def _named(matchers: list[str]) -> set[str]:
    """The alert names that a rule's matchers select (alertname="A" or alertname=~"A|B")."""
    return {
        name
        for matcher in matchers
        for names in re.findall(r'^alertname=~?"([^"]+)"$', matcher)
        for name in names.split("|")
    }


def _inhibitions() -> dict[tuple[str, str], list[str]]:
    """(source alert, target alert) → the labels they must share, from the committed config."""
    rules = yaml.safe_load(ALERTMANAGER_CONFIG.read_text()).get("inhibit_rules", [])
    return {
        (source, target): rule["equal"]
        for rule in rules
        for source in _named(rule["source_matchers"])
        for target in _named(rule["target_matchers"])
    }


def test_stage_down_inhibits_the_stalled_and_lag_alerts_of_its_stage() -> None:
    inhibitions = _inhibitions()
    known = _alert_names()
    named = {name for pair in inhibitions for name in pair}
    assert named <= known, f"inhibit rules name alerts that alerts.yml lacks: {sorted(named - known)}"
    for target in TARGETS:
        equal = inhibitions.get((SOURCE, target))
        assert equal is not None, f"{SOURCE} does not inhibit {target}"
        # One install's outage must not silence another's, nor one stage's another's.
        assert {"namespace", "release", "stage"} <= set(equal), equal


def test_one_outage_fires_all_three_alerts_with_the_labels_the_inhibit_rules_compare() -> None:
    inhibitions = _inhibitions()
    shown: set[str] = set()
    for test in yaml.safe_load(ALERTS_TEST_FILE.read_text())["tests"]:
        firing: dict[str, dict[str, list[dict[str, str]]]] = defaultdict(dict)
        for case in test.get("alert_rule_test", []):
            expected = [alert.get("exp_labels", {}) for alert in case["exp_alerts"]]
            firing[case["eval_time"]][case["alertname"]] = expected
        for alerts in firing.values():
            for target in TARGETS & alerts.keys():
                equal = inhibitions.get((SOURCE, target), [])
                for labels in alerts[target]:
                    if equal and any(
                        all(source.get(name) == labels.get(name) for name in equal)
                        for source in alerts.get(SOURCE, [])
                    ):
                        shown.add(target)
    assert shown == TARGETS, f"no unit test shows {sorted(TARGETS - shown)} inhibited by {SOURCE}"
