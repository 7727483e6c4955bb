"""Alertmanager's inhibit rules: one stage's outage pages once, as SkuforgeStageDown.

A stage that stops answering commits nothing, and its group's lag grows: SkuforgeStageDown,
SkuforgeStageStalled and SkuforgeConsumerLagGrowing paged together for that one outage. The inhibit
rules name the alerts of deploy/prometheus/alerts.yml (a renamed alert fails here, not silently in
Alertmanager), and the promtool unit tests show all three firing for one outage with the labels the
rules compare (promtool checks those labels against the rules themselves). A stage that feeds the
store down also left no images stored: SkuforgeNoImagesStored paged beside it, and waits now too;
beside SkuforgeTritonDown of its install it does not fire at all (its rule waits while Triton is down).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator

import pytest
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
    """(source alert, target alert) → the labels they must share, from the committed config's rules that
    match by alert name alone (a rule for particular stages, as the console's for its intake, is not the
    general one)."""
    rules = yaml.safe_load(ALERTMANAGER_CONFIG.read_text()).get("inhibit_rules", [])
    return {
        (source, target): rule["equal"]
        for rule in rules
        if all(
            matcher.startswith("alertname")
            for matcher in [*rule["source_matchers"], *rule["target_matchers"]]
        )
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


def _firing_together(source: str, target: str) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """Each (``source``, ``target``) pair of alerts, with the labels they carry, that a promtool unit test
    in alerts_test.yml expects firing at one evaluation time."""
    for test in yaml.safe_load(ALERTS_TEST_FILE.read_text())["tests"]:
        firing: dict[str, dict[str, list[dict[str, str]]]] = defaultdict(dict)
        for case in test.get("alert_rule_test", []):
            expected = [
                {"alertname": case["alertname"]} | alert.get("exp_labels", {}) for alert in case["exp_alerts"]
            ]
            firing[case["eval_time"]][case["alertname"]] = expected
        for alerts in firing.values():
            for first in alerts.get(source, []):
                for second in alerts.get(target, []):
                    yield first, second


def test_one_outage_fires_all_three_alerts_with_the_labels_the_inhibit_rules_compare() -> None:
    inhibitions = _inhibitions()
    shown: set[str] = set()
    for target in TARGETS:
        equal = inhibitions.get((SOURCE, target), [])
        for source, labels in _firing_together(SOURCE, target):
            if equal and all(source.get(name) == labels.get(name) for name in equal):
                shown.add(target)
    assert shown == TARGETS, f"no unit test shows {sorted(TARGETS - shown)} inhibited by {SOURCE}"


NO_IMAGES = "SkuforgeNoImagesStored"
# The stages between the captioner and the store, and the generator server the generator calls: with
# one of them down no image reaches the store. The others' outage leaves the flow to the store whole.
FEEDING = ["generator", "generator-server", "matting", "gate", "trainstore"]
NOT_FEEDING = ["captioner", "console", "lora-trainer"]
INSTALL = {"namespace": "prod", "release": "skuforge"}


def _matches(matcher: str, labels: dict[str, str]) -> bool:
    """Whether labels satisfy one Alertmanager matcher (name="v", name!="v", name=~"re", name!~"re"); a
    missing label reads as empty, and a regular expression matches the whole value, as Alertmanager's."""
    found = re.fullmatch(r'(\w+)(=~|!~|!=|=)"(.*)"', matcher)
    assert found is not None, f"a matcher this test does not read: {matcher}"
    name, operator, value = found.groups()
    given = labels.get(name, "")
    if operator in {"=~", "!~"}:
        return (re.fullmatch(value, given) is not None) == (operator == "=~")
    return (given == value) == (operator == "=")


def _inhibited(source: dict[str, str], target: dict[str, str]) -> bool:
    """Whether an inhibit rule of the committed config holds ``target`` back while ``source`` fires."""
    rules = yaml.safe_load(ALERTMANAGER_CONFIG.read_text()).get("inhibit_rules", [])
    return any(
        all(_matches(matcher, source) for matcher in rule["source_matchers"])
        and all(_matches(matcher, target) for matcher in rule["target_matchers"])
        and all(source.get(name, "") == target.get(name, "") for name in rule.get("equal", []))
        for rule in rules
    )


def _stage_down(stage: str, **install: str) -> dict[str, str]:
    labels = {"alertname": SOURCE, "severity": "page", "job": stage, "instance": "p:9100", "stage": stage}
    return labels | install


def test_a_stage_feeding_the_store_down_inhibits_no_images_stored_of_its_install() -> None:
    """The generator (or matting, the gate, the trainstore) down stores no image: SkuforgeNoImagesStored
    paged beside its SkuforgeStageDown for that one outage, with nothing more to say."""
    no_images = {"alertname": NO_IMAGES, "severity": "page"} | INSTALL
    for stage in FEEDING:
        assert _inhibited(_stage_down(stage, **INSTALL), no_images), stage
        # Another install's outage, or a stage's outside the flow to the store, leaves it paging.
        assert not _inhibited(_stage_down(stage, **(INSTALL | {"namespace": "staging"})), no_images)
        assert not _inhibited(_stage_down(stage, **(INSTALL | {"release": "other"})), no_images)
    for stage in NOT_FEEDING:
        assert not _inhibited(_stage_down(stage, **INSTALL), no_images), stage


def test_one_outage_fires_stage_down_and_no_images_stored_with_the_labels_the_rule_compares() -> None:
    """promtool's unit test of the outage (run by tests/test_prometheus_rules.py) fires both alerts, and
    the labels it expects of them are ones the rule holds the second back for."""
    shown = any(
        _inhibited(source, target)
        for source, target in _firing_together(SOURCE, NO_IMAGES)
        # The install's labels given, so the test shows them compared, not both missing.
        if source["stage"] in FEEDING and INSTALL.items() <= target.items()
    )
    assert shown, f"no unit test shows {NO_IMAGES} firing with {SOURCE} of a stage that feeds the store"


TRITON_DOWN = "SkuforgeTritonDown"


def _triton_down(**install: str) -> dict[str, str]:
    return {"alertname": TRITON_DOWN, "severity": "page", "job": "triton", "instance": "t:8002"} | install


def test_triton_down_inhibits_no_images_stored_of_its_install() -> None:
    """Triton down, the generator draws nothing and no image reaches the store: SkuforgeNoImagesStored
    paged beside SkuforgeTritonDown for that one outage. Another install's Triton leaves it paging."""
    no_images = {"alertname": NO_IMAGES, "severity": "page"} | INSTALL
    assert _inhibited(_triton_down(**INSTALL), no_images)
    assert not _inhibited(_triton_down(**(INSTALL | {"namespace": "staging"})), no_images)
    assert not _inhibited(_triton_down(**(INSTALL | {"release": "other"})), no_images)


def test_one_triton_outage_pages_as_triton_down_alone() -> None:
    """SkuforgeTritonDown waits 15 minutes (longer in the chart) and SkuforgeNoImagesStored 5, so the
    inhibit above started too late and the outage paged as "no images stored": the rule itself waits
    while the install's Triton is down. promtool's unit test of a Triton outage (run by
    tests/test_prometheus_rules.py) has SkuforgeTritonDown of the install firing while no
    SkuforgeNoImagesStored fires, and none fires with it."""
    shown = False
    for test in yaml.safe_load(ALERTS_TEST_FILE.read_text())["tests"]:
        expected: dict[str, dict[str, list[dict[str, str]]]] = defaultdict(dict)
        for case in test.get("alert_rule_test", []):
            expected[case["eval_time"]][case["alertname"]] = [
                a.get("exp_labels", {}) for a in case["exp_alerts"]
            ]
        for alerts in expected.values():
            if any(INSTALL.items() <= labels.items() for labels in alerts.get(TRITON_DOWN, [])):
                shown = shown or alerts.get(NO_IMAGES) == []
    assert shown, f"no unit test shows {TRITON_DOWN} of an install firing while its {NO_IMAGES} waits"
    assert not list(_firing_together(TRITON_DOWN, NO_IMAGES)), "a unit test pages a Triton outage twice"


def test_the_console_down_inhibits_the_stalled_and_lag_alerts_of_its_intakes_group() -> None:
    """The console runs its intake (group <prefix>.console-intake): the console down, that group's lag
    grows and nothing commits, so SkuforgeStageStalled and SkuforgeConsumerLagGrowing fire with
    stage="console-intake" (the group's last part) beside SkuforgeStageDown's stage="console" (the job):
    the stage-equal rule never matched them, and one console outage paged three times."""
    group = {"group": "skuforge.console-intake", "topic": "correction.pending.v1", "stage": "console-intake"}
    for target in TARGETS:
        intake = {"alertname": target, "severity": "page"} | group | INSTALL
        assert _inhibited(_stage_down("console", **INSTALL), intake), target
        # Another install's console, or another stage of this one, leaves it paging.
        assert not _inhibited(_stage_down("console", **(INSTALL | {"namespace": "staging"})), intake), target
        assert not _inhibited(_stage_down("console", **(INSTALL | {"release": "other"})), intake), target
        assert not _inhibited(_stage_down("gate", **INSTALL), intake), target


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_triton_or_the_generator_server_down_inhibits_the_generator_stages_stalled_and_lag_alerts(
    target: str,
) -> None:
    """Triton away, the generator stage retries every batch (GeneratorUnavailable) and commits nothing:
    its group's lag grows and stalls, so SkuforgeStageStalled and SkuforgeConsumerLagGrowing
    (stage="generator") paged beside SkuforgeTritonDown, or beside SkuforgeStageDown of the
    generator server (stage="generator-server"): one outage, three pages. The install's own outage holds
    them back; another install's, or another stage's alerts, are left alone."""
    generator = {"alertname": target, "severity": "page", "stage": "generator", "group": "skuforge.generator"}
    for source in (_triton_down(**INSTALL), _stage_down("generator-server", **INSTALL)):
        assert _inhibited(source, generator | INSTALL), source
        assert not _inhibited(source, generator | INSTALL | {"namespace": "staging"}), source
        assert not _inhibited(source, generator | INSTALL | {"release": "other"}), source
        matting = generator | INSTALL | {"stage": "matting", "group": "skuforge.matting"}
        assert not _inhibited(source, matting), source
