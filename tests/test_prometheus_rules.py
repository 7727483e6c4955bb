"""deploy/prometheus: the scrape config matches the ports in the code, and every alert rule is unit-tested.

``promtool test rules`` runs alerts_test.yml; these tests also make sure every alert *has* a test in
which it fires, a runbook line in docs/ops.md, and that the scrape jobs are the ones the rules name.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from devstack.broker import free_port
from devstack.metrics_doc import service_registries
from devstack.prometheus import (
    ALERTS_FILE,
    ALERTS_TEST_FILE,
    CONFIG_FILE,
    PROMETHEUS_DIR,
    config_yaml,
    default_targets,
    promtool,
    scrape_config,
    stack_prometheus,
)
from devstack.up import DEFAULT_PORTS, build_config
from schemas.flow import LORA_TRAINER, PIPELINE, TRITON

OPS_DOC = Path(__file__).resolve().parent.parent / "docs" / "ops.md"


def alert_names() -> list[str]:
    groups = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_the_committed_scrape_config_is_generated_from_the_ports_in_the_code() -> None:
    assert CONFIG_FILE.read_text() == config_yaml(scrape_config(default_targets())), (
        "deploy/prometheus/prometheus.yml is stale: run `skuforge prometheus config --write`"
    )
    # The same ports `skuforge up` uses by default, so the file works against a default stack.
    targets = default_targets()
    assert {stage.name: targets[stage.name] for stage in PIPELINE} == {
        stage.name: DEFAULT_PORTS[stage.name] for stage in PIPELINE
    }
    assert targets["console"] == DEFAULT_PORTS["console_metrics"]
    assert targets["generator-server"] == DEFAULT_PORTS["generator_server_metrics"] == TRITON.metrics_port
    assert targets["triton"] == DEFAULT_PORTS["triton_metrics"]


def test_promtool_accepts_the_config_and_the_rules(promtool_bin: str) -> None:
    checked = promtool("check", "config", str(CONFIG_FILE))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_every_alert_rule_passes_its_promtool_unit_tests(promtool_bin: str) -> None:
    result = promtool("test", "rules", ALERTS_TEST_FILE.name, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_shown_firing_in_a_unit_test_and_has_a_runbook_line() -> None:
    tests = yaml.safe_load(ALERTS_TEST_FILE.read_text())["tests"]
    fired = {
        case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case["exp_alerts"]
    }
    silent = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if not case["exp_alerts"]
    }
    names = alert_names()
    assert len(names) >= 8
    assert set(names) <= fired, f"alerts never shown firing: {sorted(set(names) - fired)}"
    assert set(names) <= silent, f"alerts never shown silent: {sorted(set(names) - silent)}"
    ops = OPS_DOC.read_text()
    for name in names:
        assert re.search(rf"^### {name}$", ops, re.MULTILINE), (
            f"docs/ops.md has no runbook section for {name}"
        )


def test_the_stage_down_alert_names_every_scrape_job(tmp_path: Path) -> None:
    groups = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    # SkuforgeStageDown, and SkuforgeTritonDown for Triton (which loads its model for minutes first).
    exprs = [
        rule["expr"]
        for group in groups
        for rule in group["rules"]
        if rule.get("alert") in ("SkuforgeStageDown", "SkuforgeTritonDown")
    ]
    assert len(exprs) == 2
    jobs = {
        job
        for expr in exprs
        for matcher in re.findall(r'job=~?"([^"]+)"', expr)
        for job in matcher.split("|")
    }
    # The committed scrape config's jobs, and every job of the Prometheus that `skuforge up
    # --with-prometheus --with-trainer` runs (as up.py builds it): that one scrapes the lora-trainer too,
    # and a job the regex leaves out can stop answering without a page.
    stack = build_config(tmp_path, ports_mode="free", kafka_bootstrap="127.0.0.1:9", with_trainer=True)
    prometheus = stack_prometheus(
        tmp_path / "prometheus",
        stack.ports,
        port=free_port(),
        stage_members={stage.name: stack.replica_names(stage.name) for stage in stack.stages},
    )
    scrape_configs = yaml.safe_load(prometheus.config_path.read_text())["scrape_configs"]
    scraped = {job["job_name"] for job in scrape_configs}
    assert LORA_TRAINER.name in scraped
    assert jobs == set(default_targets()) | scraped


def test_every_services_metrics_pass_promtool_check_metrics(promtool_bin: str) -> None:
    # The exposition text of each service's metric classes; the integration test checks the live
    # /metrics of a running stack the same way.
    with service_registries() as registries:
        for services, registry in registries.items():
            checked = promtool("check", "metrics", input_text=generate_latest(registry).decode())
            assert checked.returncode == 0, f"{services}: {checked.stdout}{checked.stderr}"


def test_promtool_check_metrics_refuses_a_badly_named_counter(promtool_bin: str) -> None:
    # The check above can fail: a counter without _total is refused.
    text = "# HELP jobs Jobs done.\n# TYPE jobs counter\njobs 3\n"
    assert promtool("check", "metrics", input_text=text).returncode != 0


ALERTMANAGER_CONFIG = PROMETHEUS_DIR.parent / "alertmanager" / "alertmanager.yml"
CHART_RULES = PROMETHEUS_DIR.parent / "helm" / "skuforge" / "rules"


def test_alertmanager_routes_every_severity_the_alerts_use_to_its_receiver(amtool_bin: str) -> None:
    # Before, the rules' comments said docs/ops.md routes `page` and `ticket`, but no Alertmanager
    # configuration existed: nothing routed either.
    import subprocess

    checked = subprocess.run(
        [amtool_bin, "check-config", str(ALERTMANAGER_CONFIG)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0 and "SUCCESS" in checked.stdout, checked.stdout + checked.stderr
    severities = {
        rule["labels"]["severity"]
        for path in (ALERTS_FILE, *sorted(CHART_RULES.glob("*.yml")))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert severities == {"page", "ticket"}
    for severity in severities:
        routed = subprocess.run(
            [
                amtool_bin,
                "config",
                "routes",
                "test",
                f"--config.file={ALERTMANAGER_CONFIG}",
                f"severity={severity}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert routed.returncode == 0, routed.stderr
        assert routed.stdout.split() == [severity], routed.stdout


def test_alertmanager_keeps_two_installs_and_two_stages_apart() -> None:
    # Before, group_by was [alertname, job, group, topic]: production's and staging's alerts of one name
    # (the chart's PodMonitors give both the same job) merged into one notification, as did two stages'
    # SkuforgeDeadLetters or SkuforgeStoreWriteFailures (labelled by stage, not job).
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    grouped = set(config["route"]["group_by"])
    assert {"alertname", "namespace", "release", "stage", "job", "group", "topic"} <= grouped
    for route in config["route"].get("routes", []):
        assert set(route.get("group_by", grouped)) >= grouped, route  # a sub-route inherits unless it says
    # Every label an alert keeps to say where it is (its aggregation's `by` and `on` labels) is grouped
    # on, except what it says about the fault itself (reason, kind, model).
    kept = {
        label.strip()
        for group in yaml.safe_load(ALERTS_FILE.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
        for grouping in re.findall(r"\b(?:by|on) \(([^)]*)\)", rule["expr"])
        for label in grouping.split(",")
    }
    assert kept - {"reason", "kind", "model"} <= grouped, kept - grouped
