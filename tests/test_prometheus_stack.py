"""A real Prometheus scraping a real stack: PromQL sees the flow, and the lag alert fires when a stage stops.

``skuforge up --with-prometheus`` runs the whole stack (on the session's Kafka, its own topic namespace
and consumer groups) with a Prometheus that scrapes every second and loads deploy/prometheus/alerts.yml
with two `for:` durations shortened. SKUs go through; the test asks Prometheus's HTTP API (PromQL, not
/metrics text) what happened, runs `promtool check metrics` on every service's /metrics, then freezes
the gate (SIGSTOP: alive, but neither consuming nor answering) while more SKUs arrive, and waits for
the stage-down and lag alerts to fire, then lets the gate go and sees its lag worked off.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.dashboard import concrete, scoped
from devstack.prometheus import ALERTS_FILE, api_get, promtool
from schemas.flow import PIPELINE
from tests.support.polling import wait_for

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE = REPO_ROOT / "samples" / "grocerystore" / "GROCERY-OATLY-001"
VARIANTS = 2
SHORT_FOR = {"SkuforgeConsumerLagGrowing": "20s", "SkuforgeStageDown": "10s"}
SERVICES = [*(stage.name for stage in PIPELINE), "console"]


def shortened_rules(path: Path) -> Path:
    """alerts.yml with the `for:` of SHORT_FOR's alerts replaced (everything else as committed)."""
    rules = yaml.safe_load(ALERTS_FILE.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in SHORT_FOR:
                rule["for"] = SHORT_FOR[rule["alert"]]
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def make_skus(root: Path, prefix: str, count: int) -> Path:
    """``count`` SKU folders, each the sample's product photo with its own sku_id."""
    metadata = json.loads((SAMPLE / "metadata.json").read_text())
    for index in range(count):
        sku_id = f"{prefix}-{index:03d}"
        folder = root / sku_id
        folder.mkdir(parents=True)
        shutil.copy(SAMPLE / "Oatly-Oat-Milk_Iconic.jpg", folder / "photo.jpg")
        (folder / "metadata.json").write_text(json.dumps({**metadata, "sku_id": sku_id}))
    return root


class Prom:
    """Questions to the stack's Prometheus, in PromQL over its HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def vector(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = api_get(self.url, "query", query=promql)["result"]
        return result

    def value(self, promql: str) -> float | None:
        result = self.vector(promql)
        assert len(result) <= 1, f"{promql} gave {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = api_get(self.url, "alerts")["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


def read_stack(workdir: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((workdir / "stack.json").read_text())
        return state
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.timeout(900)  # the waits below add up past the suite's 600 s on a loaded machine
def test_prometheus_sees_the_flow_and_the_lag_alert_fires_when_a_stage_stops(
    tmp_path: Path, kafka_bootstrap: str, prometheus_bin: str, promtool_bin: str
) -> None:
    run_id = uuid.uuid4().hex[:8]
    namespace, group_prefix = f"prom{run_id}.", f"prom{run_id}"
    gate_group, matted_topic = f"{group_prefix}.gate", f"{namespace}image.matted.v1"
    workdir = tmp_path / "stack"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKUFORGE_")}
    env.update(
        SKUFORGE_LOG_FORMAT="text",
        SKUFORGE_TOPIC_NAMESPACE=namespace,
        SKUFORGE_CONSUMER_GROUP_PREFIX=group_prefix,
        SKUFORGE_TOPIC_PARTITIONS="2",
        SKUFORGE_GROUP_LAG_INTERVAL_S="1",
        SKUFORGE_GENERATION_VARIANTS_PER_SKU=str(VARIANTS),
        SKUFORGE_GENERATION_BACKEND="composite",
    )
    out_path = tmp_path / "up.out"
    argv = [
        *(sys.executable, "-m", "skuforge_cli", "up", "--workdir", str(workdir), "--ports", "free"),
        *("--kafka-bootstrap", kafka_bootstrap, "--with-prometheus", "--scrape-interval-s", "1"),
        *("--prometheus-rules", str(shortened_rules(tmp_path / "alerts.yml"))),
    ]
    with out_path.open("wb") as out:
        up = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    gate_pid: int | None = None
    started = time.time()
    try:

        def ready() -> bool:
            if up.poll() is not None:
                raise AssertionError(f"skuforge up exited with {up.returncode}:\n{out_path.read_text()}")
            return read_stack(workdir).get("state") == "ready"

        wait_for("the stack to be ready", ready, 480, every_s=0.5)
        stack = read_stack(workdir)
        url = stack["prometheus_url"]
        assert f"prometheus {url}" in out_path.read_text()  # `skuforge up` prints its address
        prom = Prom(url)
        client_env = {**env, **stack["env"]}

        # Every service, the generator server's own /metrics and Triton's are scraped.
        jobs = {*SERVICES, "generator-server", "triton"}
        wait_for(
            "every target to be up",
            lambda: {s["metric"]["job"] for s in prom.vector("up == 1")} == jobs,
            60,
            every_s=1.0,
        )

        # Each service's real /metrics passes promtool's checks.
        for name in SERVICES:
            with urllib.request.urlopen(stack["services"][name]["metrics"], timeout=10) as response:
                text = response.read().decode()
            checked = promtool("check", "metrics", input_text=text)
            assert checked.returncode == 0, f"{name}: {checked.stdout}{checked.stderr}"

        # SKUs through the flow, seen in PromQL.
        skus = 3
        ingest = subprocess.run(
            [
                sys.executable,
                "-m",
                "skuforge_cli",
                "ingest",
                str(make_skus(tmp_path / "skus", "PROM-A", skus)),
            ],
            cwd=REPO_ROOT,
            env=client_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ingest.returncode == 0, ingest.stderr
        images = skus * VARIANTS
        # Delivery is at least once, so counters of work done may count a redelivered input twice; the
        # store is effectively once: one reference photo per SKU lands there exactly once.
        wait_for(
            "every generated image to be gated and every reference photo stored",
            lambda: (
                prom.value('sum(skuforge_trainstore_images_stored_total{source="real"})') == skus
                and (prom.value("sum(skuforge_gate_decisions_total)") or 0) >= images
            ),
            300,
            every_s=1.0,
        )
        assert (prom.value('sum(skuforge_messages_total{stage="captioner", outcome="ok"})') or 0) >= skus

        def images_by_stage() -> dict[str, float]:
            return {
                s["metric"]["stage"]: float(s["value"][1])
                for s in prom.vector('sum by (stage) (skuforge_images_total{backend="composite"})')
            }

        # Each target is scraped on its own clock: the gate's counter may have been scraped after the
        # matting stage's last scrape (seen: gate 6, matting 4), so wait for every stage's count.
        wait_for(
            "every stage's image count to be scraped",
            lambda: (
                set(counts := images_by_stage()) == {"generator", "matting", "gate"}
                and all(count >= images for count in counts.values())
            ),
            30,
            every_s=1.0,
        )
        # Model calls were timed and sized: every image went through one matting call.
        assert prom.value('sum(skuforge_model_batch_size_sum{stage="matting"})') >= images  # type: ignore[operator]
        assert prom.value('sum(skuforge_model_seconds_count{stage="generator"})') >= 1  # type: ignore[operator]
        assert prom.value('sum(skuforge_model_batch_size_sum{stage="captioner", model="matting"})') >= skus  # type: ignore[operator]
        # Mask statistics: one observation per matted image, every fraction within (0, 1).
        assert prom.value("sum(skuforge_matting_foreground_fraction_count)") >= images  # type: ignore[operator]
        assert prom.value('sum(skuforge_matting_foreground_fraction_bucket{le="0.0"})') == 0
        # Triton's own metrics agree that it served the variants.
        assert prom.value('sum(nv_inference_request_success{model="skuforge_generator_composite"})') >= images  # type: ignore[operator]
        # What the gate accepted reached the store as synthetic images (each item once).
        accepted = prom.value('sum(skuforge_gate_decisions_total{decision="accepted"})') or 0.0
        if accepted:
            wait_for(
                "accepted images to be stored",
                lambda: (
                    0
                    < (prom.value('sum(skuforge_trainstore_images_stored_total{source="synthetic"})') or 0)
                    <= min(accepted, images)
                ),
                120,
                every_s=1.0,
            )
        assert (prom.value('sum(skuforge_store_write_seconds_count{stage="matting"})') or 0) >= 2 * images
        # Every group catches up; nothing is dead-lettered.
        wait_for(
            "every consumer group to catch up",
            lambda: prom.vector("max by (group, topic) (skuforge_consumer_group_lag_messages) > 0") == [],
            120,
            every_s=1.0,
        )
        assert prom.vector(
            f'max by (group, topic) (skuforge_consumer_group_lag_messages{{group="{gate_group}"}})'
        )
        assert prom.value("sum(skuforge_dlq_total)") in (None, 0.0)
        assert prom.firing("SkuforgeConsumerLagGrowing") == []

        # The gate stops (frozen: alive, but it neither consumes nor answers) while SKUs keep coming.
        gate_pid = int(stack["services"]["gate"]["pid"])
        os.kill(gate_pid, signal.SIGSTOP)
        stopped_at = time.time()
        more = subprocess.run(
            [
                sys.executable,
                "-m",
                "skuforge_cli",
                "ingest",
                str(make_skus(tmp_path / "more", "PROM-B", skus)),
            ],
            cwd=REPO_ROOT,
            env=client_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert more.returncode == 0, more.stderr
        down = wait_for("the stage-down alert", lambda: prom.firing("SkuforgeStageDown"), 120, every_s=1.0)
        assert [a["labels"]["job"] for a in down] == ["gate"]
        lagging = wait_for(
            "the lag alert", lambda: prom.firing("SkuforgeConsumerLagGrowing"), 240, every_s=1.0
        )
        assert {(a["labels"]["group"], a["labels"]["topic"]) for a in lagging} == {(gate_group, matted_topic)}
        # It fired only after the lag had grown for its whole `for:` (20 s here, 10 min in production).
        assert time.time() - stopped_at >= 20
        lag_now = prom.value(f'max(skuforge_consumer_group_lag_messages{{group="{gate_group}"}})')
        assert lag_now is not None and 0 < lag_now <= images
        # The dashboard's queries carry its namespace and release variables; "All" (`.*`) must match
        # this Prometheus's series, which have neither label.
        lag_query = f'max(skuforge_consumer_group_lag_messages{{group="{gate_group}"}})'
        assert prom.value(concrete(scoped(lag_query))) == lag_now

        if os.environ.get("SKUFORGE_DASHBOARD_PNG"):  # docs/ops.md's picture comes from this run
            from devstack.dashboard import render

            render(url, Path(os.environ["SKUFORGE_DASHBOARD_PNG"]), started, time.time())

        # The gate comes back and works its lag off; every item of both batches is decided.
        os.kill(gate_pid, signal.SIGCONT)
        gate_pid = None
        wait_for(
            "the gate's lag to be worked off",
            lambda: prom.value(f'max(skuforge_consumer_group_lag_messages{{group="{gate_group}"}})') == 0,
            240,
            every_s=1.0,
        )
        wait_for(
            "both batches gated and stored",
            lambda: (
                prom.value('sum(skuforge_trainstore_images_stored_total{source="real"})') == 2 * skus
                and (prom.value("sum(skuforge_gate_decisions_total)") or 0) >= 2 * images
            ),
            120,
            every_s=1.0,
        )

        os.kill(up.pid, signal.SIGINT)
        assert up.wait(timeout=240) == 0, out_path.read_text()[-4000:]
    finally:
        if gate_pid is not None:
            os.kill(gate_pid, signal.SIGCONT)
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
