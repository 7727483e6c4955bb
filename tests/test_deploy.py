"""The deployment files, validated offline: the Helm chart, the compose files and the Dockerfile.

The chart is linted and rendered by a real ``helm`` (``make helm`` builds it from Go modules; these
tests skip without it, and fail without it when ``SKUFORGE_REQUIRE_HELM`` is set, as in CI). What it
renders is validated by ``kubernetes-validate --strict`` (Kubernetes' own kinds) and against the
committed CRD schemas of KEDA and prometheus-operator (``deploy/schemas/``), closed to unknown
fields. The stages come from ``schemas/flow.py`` through ``files/flow.json``, so the chart, compose
and the flow cannot drift apart without a test failing here.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from schemas.flow import CONSOLE, PIPELINE, TRITON, flow_document
from services.console.server import stop_timeout_s as console_stop_timeout_s
from shared.config import ENV_PREFIX, Settings
from skuforge_cli.main import SETTINGS_MODELS
from tests.support.compose import DEFAULT_GRACE, compose_duration_s
from tests.support.helm import (
    CHART,
    GPU_TOLERATION,
    KUBE_VERSIONS,
    MODEL,
    REPO,
    REVIEWERS,
    render,
    render_error,
    require_helm,
)

SCHEMAS = REPO / "deploy" / "schemas"
PIPELINE_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_v1_podmonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_prometheusrule.json",
}
STAGES = [stage.name for stage in PIPELINE]
KUBERNETES_DEFAULT_GRACE_S = 30  # a pod spec without terminationGracePeriodSeconds gets this
# Triton's --exit-timeout-secs default, which PyTriton keeps (TritonConfig.exit_timeout_secs None):
# how long SIGTERM waits for requests in flight before Triton stops (deploy/triton/README.md).
TRITON_EXIT_TIMEOUT_S = 30


def console_stop_s() -> float:
    """How long ``serve console`` may take to stop after SIGTERM with the default settings: open
    requests, the intake's join, then the relay's shutdown drain."""
    defaults = Settings.model_construct()  # the documented defaults, whatever this shell's SKUFORGE_*
    return console_stop_timeout_s(defaults)


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def pod_templates(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod the chart runs, by workload name: the Deployments' and the topics Job's templates."""
    return {
        doc["metadata"]["name"]: doc["spec"]["template"]
        for doc in docs
        if doc["kind"] in ("Deployment", "Job")
    }


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    return {
        item["name"]: item.get("value", item.get("valueFrom"))
        for item in container(deployment).get("env", [])
    }


@cache
def closed_schema(file_name: str) -> dict[str, Any]:
    """A CRD schema in which every object listing ``properties`` refuses other fields."""

    def close(node: Any) -> Any:
        if isinstance(node, dict):
            node = {key: close(value) for key, value in node.items()}
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            return node
        if isinstance(node, list):
            return [close(item) for item in node]
        return node

    schema: dict[str, Any] = close(json.loads((SCHEMAS / file_name).read_text()))
    # apiVersion, kind and metadata are checked by the API server itself, not by the CRD schema.
    schema.setdefault("properties", {})["metadata"] = {"type": "object"}
    return schema


def crd_validator(file_name: str) -> jsonschema.Draft7Validator:
    """A validator for a CRD's OpenAPI v3 schema (draft 7 is the closest JSON Schema dialect).

    The schema itself is not checked against the metaschema: CRDs carry Go regular expressions
    (``^(?i)...``) that Python's ``re`` refuses, and they only matter for fields the chart never sets.
    """
    return jsonschema.Draft7Validator(closed_schema(file_name))


# --------------------------------------------------------------------------------------------------
# the flow is written once
# --------------------------------------------------------------------------------------------------


def test_the_chart_carries_the_current_flow() -> None:
    carried = json.loads((CHART / "files" / "flow.json").read_text())
    assert carried == flow_document(), (
        "deploy/helm/skuforge/files/flow.json is stale: "
        "skuforge flow --json > deploy/helm/skuforge/files/flow.json"
    )


def test_the_values_configure_exactly_the_stages_of_the_flow() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert sorted(values["stages"]) == sorted(STAGES)
    # More members than partitions would hold nothing.
    for name in STAGES:
        stage = copy.deepcopy(values["stageDefaults"]["autoscaling"])
        stage.update((values["stages"][name] or {}).get("autoscaling", {}))
        assert stage["maxReplicas"] <= values["topicPartitions"]


# --------------------------------------------------------------------------------------------------
# helm lint, helm template, and what it renders
# --------------------------------------------------------------------------------------------------


def test_helm_lint_is_clean(helm: str) -> None:
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSIONS[-1], "--set", REVIEWERS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_stage_is_a_deployment_of_its_own_scaled_by_keda_on_its_consumer_groups_lag(helm: str) -> None:
    docs = render(helm)
    deployments = of_kind(docs, "Deployment")
    scaled = of_kind(docs, "ScaledObject")
    for stage in PIPELINE:
        deployment = deployments[f"rel-skuforge-{stage.name}"]
        main = container(deployment)
        assert main["args"] == ["run", stage.name]
        assert main["ports"] == [{"name": "metrics", "containerPort": stage.metrics_port}]
        assert "replicas" not in deployment["spec"], "with KEDA on, the ScaledObject owns the replica count"
        env = env_of(deployment)
        assert env["SKUFORGE_METRICS_PORT"] == str(stage.metrics_port)
        # Static membership, stable for the pod's life.
        assert env["SKUFORGE_GROUP_INSTANCE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"

        scaler = scaled[f"rel-skuforge-{stage.name}"]["spec"]
        assert scaler["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        triggers = scaler["triggers"]
        assert {t["type"] for t in triggers} == {"kafka"}
        assert [t["metadata"]["topic"] for t in triggers] == [topic.name for topic in stage.consumes]
        assert {t["metadata"]["consumerGroup"] for t in triggers} == {f"skuforge.{stage.name}"}
        assert {t["metadata"]["bootstrapServers"] for t in triggers} == {"kafka:9092"}
    assert len(scaled) == len(PIPELINE)


def test_names_follow_the_topic_namespace_and_group_prefix(helm: str) -> None:
    docs = render(helm, "topicNamespace=staging.", "consumerGroupPrefix=sf-staging")
    config = of_kind(docs, "ConfigMap")["rel-skuforge-settings"]["data"]
    assert config["SKUFORGE_TOPIC_NAMESPACE"] == "staging."
    assert config["SKUFORGE_CONSUMER_GROUP_PREFIX"] == "sf-staging"
    trigger = of_kind(docs, "ScaledObject")["rel-skuforge-matting"]["spec"]["triggers"][0]["metadata"]
    assert trigger["topic"] == "staging.image.generated.v1"
    assert trigger["consumerGroup"] == "sf-staging.matting"


def test_triton_gets_a_gpu_its_health_probes_and_shared_memory(helm: str) -> None:
    docs = render(helm)
    triton = of_kind(docs, "Deployment")["rel-skuforge-triton"]
    main = container(triton)
    assert main["image"] == "skuforge:0.1.0-cuda"
    assert main["args"][:2] == ["serve", "generator"]
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert main["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert main["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert main["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    volumes = {v["name"]: v for v in triton["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in main["volumeMounts"]
    # The generator stage calls it through its Service.
    config = of_kind(docs, "ConfigMap")["rel-skuforge-settings"]["data"]
    assert config["SKUFORGE_GENERATION_TRITON_URL"] == "rel-skuforge-triton:8001"
    assert {
        p["name"]: p["port"] for p in of_kind(docs, "Service")["rel-skuforge-triton"]["spec"]["ports"]
    } == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    # The process's own /metrics (the scene library's counters) on its port in the flow, scraped
    # beside Triton's.
    assert {"name": "server-metrics", "containerPort": TRITON.metrics_port} in main["ports"]
    assert env_of(triton)["SKUFORGE_METRICS_PORT"] == str(TRITON.metrics_port)
    monitor = of_kind(docs, "PodMonitor")["rel-skuforge-triton"]["spec"]
    assert [endpoint["port"] for endpoint in monitor["podMetricsEndpoints"]] == ["metrics", "server-metrics"]


@pytest.mark.parametrize(("startup_s", "allowed_s"), [(900, 900), (905, 910), (5, 10), (1, 10)])
def test_triton_s_startup_probe_allows_at_least_triton_startup_seconds(
    helm: str, startup_s: int, allowed_s: int
) -> None:
    # Before, failureThreshold was startupSeconds / 10 rounded down: 905 s allowed 900 s, and below 10 s
    # it rendered 0, which Kubernetes replaces by its default 3 (30 s).
    triton = of_kind(render(helm, f"triton.startupSeconds={startup_s}"), "Deployment")["rel-skuforge-triton"]
    probe = container(triton)["startupProbe"]
    assert probe["failureThreshold"] >= 1
    assert probe["periodSeconds"] * probe["failureThreshold"] == allowed_s


def test_triton_copies_an_s3_model_into_a_volume_it_requested_room_for(helm: str) -> None:
    # Before, the s3:// model went to the container's temp folder (SKUFORGE_DIFFUSION_CACHE_DIR unset), on
    # no volume and with no ephemeral storage requested: a model of gigabytes could get the pod evicted.
    triton = of_kind(render(helm), "Deployment")["rel-skuforge-triton"]
    main = container(triton)
    volumes = {v["name"]: v for v in triton["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model-cache"] == {"name": "model-cache", "emptyDir": {"sizeLimit": "20Gi"}}
    assert {"name": "model-cache", "mountPath": "/var/cache/skuforge"} in main["volumeMounts"]
    # A folder in the volume: the server makes it for its user alone (an emptyDir's root is writable by
    # everyone, which the model cache refuses).
    assert env_of(triton)["SKUFORGE_DIFFUSION_CACHE_DIR"] == "/var/cache/skuforge/models"
    assert main["resources"]["requests"]["ephemeral-storage"] == "20Gi"
    assert main["resources"]["requests"]["cpu"] == "2"  # the values' requests are kept
    # Another size, or the values' own request; or a claim of the operator's, kept across pods.
    sized = of_kind(
        render(helm, "triton.modelCache.sizeLimit=50Gi", "triton.modelCache.mountPath=/models/"), "Deployment"
    )["rel-skuforge-triton"]
    assert container(sized)["resources"]["requests"]["ephemeral-storage"] == "50Gi"
    assert env_of(sized)["SKUFORGE_DIFFUSION_CACHE_DIR"] == "/models/models"
    own = of_kind(render(helm, "triton.resources.requests.ephemeral-storage=60Gi"), "Deployment")
    assert container(own["rel-skuforge-triton"])["resources"]["requests"]["ephemeral-storage"] == "60Gi"
    claimed = of_kind(render(helm, "triton.modelCache.existingClaim=models"), "Deployment")[
        "rel-skuforge-triton"
    ]
    volumes = {v["name"]: v for v in claimed["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model-cache"] == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "models"}}
    assert "ephemeral-storage" not in container(claimed)["resources"]["requests"]
    # The chart sets the folder: one in triton.env would come twice in the container's env.
    message = render_error(helm, "triton.env.SKUFORGE_DIFFUSION_CACHE_DIR=/tmp/x")
    assert (
        "triton.env.SKUFORGE_DIFFUSION_CACHE_DIR: the chart sets this variable itself; use triton.modelCache"
        in message
    )


SHM = "Triton's shared memory (dshm)"
CA_VOLUME = ("extraVolumes[0].name=kafka-ca", "extraVolumes[0].secret.secretName=kafka-ca")


def ca_mounted_at(mount_path: str) -> tuple[str, ...]:
    """Values mounting a Kafka CA Secret into every pod at ``mount_path``, read-only (docs/deploy.md)."""
    return (
        *CA_VOLUME,
        "extraVolumeMounts[0].name=kafka-ca",
        f"extraVolumeMounts[0].mountPath={mount_path}",
        "extraVolumeMounts[0].readOnly=true",
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # The API server refuses two volumes at one path: the install stopped half-applied.
        (("triton.modelCache.mountPath=/dev/shm",), f"is also where {SHM} is mounted"),
        (("triton.modelCache.mountPath=/dev/shm/",), f"is also where {SHM} is mounted"),
        (
            ("triton.modelCache.mountPath=/etc/kafka-ca", *ca_mounted_at("/etc/kafka-ca")),
            "is also where extraVolumeMounts[0] (kafka-ca) is mounted",
        ),
        # One inside the other: the CA Secret's volume is read-only (no mount point can be made in it),
        # and a volume inside the cache hides the cache's own folder.
        (
            ("triton.modelCache.mountPath=/etc/kafka-ca/cache", *ca_mounted_at("/etc/kafka-ca")),
            "is inside extraVolumeMounts[0] (kafka-ca) at /etc/kafka-ca",
        ),
        (
            ("triton.modelCache.mountPath=/mnt", *ca_mounted_at("/mnt/kafka-ca")),
            "is above extraVolumeMounts[0] (kafka-ca) at /mnt/kafka-ca",
        ),
        (("triton.modelCache.mountPath=/dev/shm/models",), f"is inside {SHM} at /dev/shm"),
        # Over the image's own folders (or its /dev): the container has nothing to start with.
        (("triton.modelCache.mountPath=/",), "would hide the image's /opt/skuforge"),
        (("triton.modelCache.mountPath=/opt",), "would hide the image's /opt/skuforge"),
        (("triton.modelCache.mountPath=/usr",), "would hide the image's /usr"),
        (("triton.modelCache.mountPath=/dev",), f"is above {SHM} at /dev/shm"),
        # SKUFORGE_DIFFUSION_CACHE_DIR would be relative to the server's working folder, the mount not.
        (("triton.modelCache.mountPath=cache",), "triton.modelCache.mountPath=cache is not an absolute path"),
    ],
)
def test_the_model_cache_needs_a_folder_of_its_own_in_the_triton_container(
    helm: str, values: tuple[str, ...], message: str
) -> None:
    # Before, each rendered: a pod the API server refuses (the same path twice), or a cache volume
    # mounted into or over another volume or the image's own folders.
    error = render_error(helm, *values)
    assert message in error
    assert "mount the model cache at a folder of its own" in error


def test_the_model_cache_may_sit_beside_the_other_mounts(helm: str) -> None:
    for values in (
        ("triton.modelCache.mountPath=/tmp",),
        ("triton.modelCache.mountPath=/opt/models",),
        ("triton.modelCache.mountPath=/etc/kafka-ca-cache", *ca_mounted_at("/etc/kafka-ca")),
        ("triton.modelCache.mountPath=/var/cache/skuforge/", *ca_mounted_at("/var/cache/kafka-ca")),
    ):
        triton = of_kind(render(helm, *values), "Deployment")["rel-skuforge-triton"]
        cache_path = values[0].split("=", 1)[1]
        assert {"name": "model-cache", "mountPath": cache_path} in container(triton)["volumeMounts"], values


def test_the_console_keeps_its_task_table_on_a_volume_and_runs_alone(helm: str) -> None:
    docs = render(helm)
    console = of_kind(docs, "Deployment")["rel-skuforge-console"]
    assert console["spec"]["replicas"] == 1 and console["spec"]["strategy"] == {"type": "Recreate"}
    main = container(console)
    assert main["args"] == ["serve", "console"]
    env = env_of(console)
    assert env["SKUFORGE_CONSOLE_DB_PATH"].startswith("/data/")
    assert env["SKUFORGE_CONSOLE_METRICS_PORT"] == str(CONSOLE.metrics_port)
    assert {"name": "tasks", "mountPath": "/data"} in main["volumeMounts"]
    (volume,) = console["spec"]["template"]["spec"]["volumes"]
    claim = of_kind(docs, "PersistentVolumeClaim")[volume["persistentVolumeClaim"]["claimName"]]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # An existing claim replaces the chart's own.
    docs = render(helm, "console.persistence.existingClaim=reviews")
    assert not of_kind(docs, "PersistentVolumeClaim")
    (volume,) = of_kind(docs, "Deployment")["rel-skuforge-console"]["spec"]["template"]["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == "reviews"


def test_the_console_stays_in_its_service_while_kafka_is_away(helm: str) -> None:
    """Its /readyz means "the intake joined its group": as the readiness probe, a Kafka outage took
    the pages away from reviewers although they keep working (the intake restarts meanwhile)."""
    main = container(of_kind(render(helm), "Deployment")["rel-skuforge-console"])
    assert main["readinessProbe"]["httpGet"] == {"path": "/login", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_the_console_pod_has_the_time_the_console_takes_to_stop(helm: str) -> None:
    pod = of_kind(render(helm), "Deployment")["rel-skuforge-console"]["spec"]["template"]["spec"]
    grace_s = pod.get("terminationGracePeriodSeconds", KUBERNETES_DEFAULT_GRACE_S)
    assert grace_s >= console_stop_s(), f"the console may take {console_stop_s()} s to stop, gets {grace_s} s"
    pod = of_kind(render(helm, "console.terminationGracePeriodSeconds=600"), "Deployment")
    assert pod["rel-skuforge-console"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 600


def test_every_skuforge_variable_the_chart_sets_is_a_setting_skuforge_reads(helm: str) -> None:
    known = {ENV_PREFIX + name.upper() for model in SETTINGS_MODELS for name in model.model_fields}
    docs = render(helm, "secret.values.SKUFORGE_CONSOLE_USERS=alice:pw")
    names = set(of_kind(docs, "ConfigMap")["rel-skuforge-settings"]["data"])
    names |= set(of_kind(docs, "Secret")["rel-skuforge-settings"]["stringData"])
    for deployment in of_kind(docs, "Deployment").values():
        names |= set(env_of(deployment))
    unknown = {name for name in names if name.startswith(ENV_PREFIX)} - known
    assert not unknown, f"the chart sets variables no settings model reads: {sorted(unknown)}"


def test_a_stage_can_run_on_a_gpu_with_the_cuda_image(helm: str) -> None:
    docs = render(
        helm, "stages.matting.image.tag=0.1.0-cuda", "stages.matting.resources.limits.nvidia\\.com/gpu=1"
    )
    deployments = of_kind(docs, "Deployment")
    matting = container(deployments["rel-skuforge-matting"])
    assert matting["image"] == "skuforge:0.1.0-cuda"
    assert matting["resources"]["limits"] == {"memory": "3Gi", "nvidia.com/gpu": 1}
    assert container(deployments["rel-skuforge-gate"])["image"] == "skuforge:0.1.0"


def test_a_stage_given_a_gpu_takes_the_cuda_image_as_triton_does(helm: str) -> None:
    """A GPU limit alone left the stage on the CPU image: ONNX Runtime found no CUDA provider and
    matting ran on the CPU, silently, with the GPU it held idle."""
    gpu = "stages.matting.resources.limits.nvidia\\.com/gpu=1"
    images = {name: container(d)["image"] for name, d in of_kind(render(helm, gpu), "Deployment").items()}
    assert images["rel-skuforge-matting"] == "skuforge:0.1.0-cuda"
    assert images["rel-skuforge-gate"] == "skuforge:0.1.0"
    images = {
        name: container(d)["image"]
        for name, d in of_kind(render(helm, gpu, "image.tag=0.2.0"), "Deployment").items()
    }
    assert images["rel-skuforge-matting"] == "skuforge:0.2.0-cuda"
    assert images["rel-skuforge-gate"] == "skuforge:0.2.0"
    # A tag of the stage's own is kept as it is.
    docs = render(helm, gpu, "stages.matting.image.tag=custom-gpu")
    assert container(of_kind(docs, "Deployment")["rel-skuforge-matting"])["image"] == "skuforge:custom-gpu"


def test_a_stage_given_a_gpu_tolerates_the_gpu_nodes_taint_as_triton_does(helm: str) -> None:
    # Before, a GPU matting stage (the recipe in docs/deploy.md) had no toleration, unlike Triton: on GPU
    # nodes tainted nvidia.com/gpu:NoSchedule its pods stayed Pending.
    docs = render(helm, "stages.matting.resources.limits.nvidia\\.com/gpu=1")
    pods = {name: template["spec"] for name, template in pod_templates(docs).items()}
    # And rolls out as Triton does, without a surge pod: that one needed a GPU more, stayed Pending with
    # none free, and with maxUnavailable 0 no old pod went: the rollout stalled without an alert.
    deployments = of_kind(docs, "Deployment")
    assert deployments["rel-skuforge-matting"]["spec"]["strategy"]["rollingUpdate"] == {
        "maxSurge": 0,
        "maxUnavailable": 1,
    }
    assert deployments["rel-skuforge-gate"]["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 1
    assert GPU_TOLERATION in pods["rel-skuforge-triton"]["tolerations"]
    assert pods["rel-skuforge-matting"]["tolerations"] == [GPU_TOLERATION]
    assert "tolerations" not in pods["rel-skuforge-gate"], "a stage without a GPU stays off the GPU nodes"
    # A stage's own toleration for the key is kept as it is, not doubled; its others are kept too.
    docs = render(
        helm,
        "stages.matting.resources.limits.nvidia\\.com/gpu=1",
        "stages.matting.tolerations[0].key=nvidia.com/gpu",
        "stages.matting.tolerations[0].operator=Equal",
        "stages.matting.tolerations[0].value=present",
        "stages.matting.tolerations[0].effect=NoSchedule",
    )
    assert of_kind(docs, "Deployment")["rel-skuforge-matting"]["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
    ]
    docs = render(
        helm,
        "stages.matting.resources.limits.nvidia\\.com/gpu=1",
        "stages.matting.tolerations[0].key=spot",
        "stages.matting.tolerations[0].operator=Exists",
    )
    assert of_kind(docs, "Deployment")["rel-skuforge-matting"]["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "spot", "operator": "Exists"},
        GPU_TOLERATION,
    ]


def test_without_autoscaling_the_values_set_the_replicas(helm: str) -> None:
    docs = render(helm, "stageDefaults.autoscaling.enabled=false", "stages.matting.replicas=3")
    assert not of_kind(docs, "ScaledObject")
    deployments = of_kind(docs, "Deployment")
    assert deployments["rel-skuforge-matting"]["spec"]["replicas"] == 3
    assert deployments["rel-skuforge-gate"]["spec"]["replicas"] == 1


def test_optional_parts_can_be_left_out(helm: str) -> None:
    docs = render(
        helm,
        "triton.enabled=false",
        # The generator stage calls a Triton for every backend: without the chart's, it names another.
        "settings.SKUFORGE_GENERATION_TRITON_URL=triton.gpu-pool:8001",
        "console.enabled=false",
        "monitoring.podMonitors=false",
        "monitoring.prometheusRule=false",
        "topicsJob.enabled=false",
        "staticMembership=false",
        "serviceAccount.create=false",
    )
    kinds = {doc["kind"] for doc in docs}
    assert kinds == {"ConfigMap", "Secret", "Deployment", "ScaledObject"}
    assert sorted(of_kind(docs, "Deployment")) == sorted(f"rel-skuforge-{name}" for name in STAGES)
    config = of_kind(docs, "ConfigMap")["rel-skuforge-settings"]["data"]
    assert config["SKUFORGE_GENERATION_TRITON_URL"] == "triton.gpu-pool:8001"
    assert "SKUFORGE_GENERATION_TRITON_PROTOCOL" not in config  # the code default, grpc
    assert all("SKUFORGE_GROUP_INSTANCE_ID" not in env_of(d) for d in of_kind(docs, "Deployment").values())


def test_without_the_charts_triton_the_generator_stage_must_be_told_where_triton_is(helm: str) -> None:
    # Before, triton.enabled=false rendered a generator stage with no SKUFORGE_GENERATION_TRITON_URL: it
    # called the code default, 127.0.0.1:8001 (its own pod), and retried forever. It calls Triton for
    # every backend, the composite one too (services/generator/stage.py builds a TritonGenerator always).
    message = render_error(helm, "triton.enabled=false")
    assert "set settings.SKUFORGE_GENERATION_TRITON_URL" in message
    assert "composite too" in message
    for given in (
        "settings.SKUFORGE_GENERATION_TRITON_URL=t:8001",
        "stages.generator.env.SKUFORGE_GENERATION_TRITON_URL=t:8001",
        "secret.values.SKUFORGE_GENERATION_TRITON_URL=t:8001",
    ):
        docs = render(helm, "triton.enabled=false", given)
        generator = of_kind(docs, "Deployment")["rel-skuforge-generator"]
        named = env_of(generator).get("SKUFORGE_GENERATION_TRITON_URL")
        named = named or of_kind(docs, "ConfigMap")["rel-skuforge-settings"]["data"].get(
            "SKUFORGE_GENERATION_TRITON_URL"
        )
        named = named or of_kind(docs, "Secret")["rel-skuforge-settings"]["stringData"].get(
            "SKUFORGE_GENERATION_TRITON_URL"
        )
        assert named == "t:8001", given


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("stages.nosuch.replicas=2", 'stages: no such stage "nosuch"; the stages are captioner, generator'),
        # Unquoted, "stages.gate.x: no such stage" read as gate's field x, not a stage named gate.x.
        ("stages.gate\\.x.replicas=1", 'stages: no such stage "gate.x"; the stages are captioner'),
        ("stages.matting.autoscaling.maxReplicas=7", "is more than topicPartitions (6)"),
        # Before, rendered: KEDA's webhook refuses the ScaledObject, the stage stays at one replica.
        (
            "stages.gate.autoscaling.minReplicas=5,stages.gate.autoscaling.maxReplicas=2",
            "stages.gate.autoscaling.minReplicas (5) is more than its maxReplicas (2)",
        ),
        ("settings.LOG_LEVEL=DEBUG", "settings.LOG_LEVEL: only SKUFORGE_* settings belong here"),
    ],
)
def test_values_that_cannot_work_fail_the_render_saying_what_to_fix(
    helm: str, value: str, message: str
) -> None:
    assert message in render_error(helm, value)


def test_values_found_in_review_to_fail_only_once_deployed_fail_the_render(helm: str) -> None:
    # Before, each rendered: a console pod that exits at start for want of reviewers (it crash-looped
    # on the chart's defaults), a generator stage calling a backend Triton does not serve, and a
    # reviewer password in the ConfigMap anyone who can read the namespace can read.
    assert "console.enabled needs reviewers: set secret.values.SKUFORGE_CONSOLE_USERS" in render_error(
        helm, reviewers=False
    )
    render(helm, "secret.existingSecret=mine", reviewers=False)  # the reviewers are in that Secret
    render(helm, "console.enabled=false", reviewers=False)
    assert "Triton serves only diffusion (triton.backends)" in render_error(
        helm, "settings.SKUFORGE_GENERATION_BACKEND=composite"
    )
    assert "settings.SKUFORGE_CONSOLE_USERS is a secret" in render_error(
        helm, "settings.SKUFORGE_CONSOLE_USERS=bob:pw"
    )
    # The defaults serve diffusion on Triton: without a model, `skuforge serve generator` exits at start.
    assert "set triton.env.SKUFORGE_DIFFUSION_MODEL" in render_error(helm, model=False)
    render(helm, "secret.values.SKUFORGE_DIFFUSION_MODEL=s3://m/sd", model=False)
    render(helm, "secret.existingSecret=mine", model=False)  # it may be in that Secret
    render(helm, "triton.backends={composite}", "settings.SKUFORGE_GENERATION_BACKEND=composite", model=False)
    render(helm, "triton.enabled=false", "settings.SKUFORGE_GENERATION_TRITON_URL=t:8001", model=False)


def test_a_file_store_needs_a_volume_every_pod_shares(helm: str) -> None:
    """``storeUri: file:///data/store`` rendered, and every pod wrote to a folder of its own image: the
    generator's images were not in matting's pod, so every item was dead-lettered ``object_missing``."""
    message = render_error(helm, "storeUri=file:///data/store")
    assert "storeUri=file:///data/store is a folder in each pod" in message
    assert "extraVolumeMounts" in message and "s3://" in message
    # A relative folder, a volume mounted elsewhere, or read-only, is no shared store either.
    assert "is a folder in each pod" in render_error(helm, "storeUri=file://./var/store")
    shared = ["extraVolumes[0].name=store", "extraVolumes[0].persistentVolumeClaim.claimName=rwx"]
    elsewhere = [*shared, "extraVolumeMounts[0].name=store", "extraVolumeMounts[0].mountPath=/data/st"]
    assert "is a folder in each pod" in render_error(helm, "storeUri=file:///data/store", *elsewhere)
    read_only = [*shared, "extraVolumeMounts[0].name=store", "extraVolumeMounts[0].mountPath=/data/store"]
    read_only.append("extraVolumeMounts[0].readOnly=true")
    assert "is a folder in each pod" in render_error(helm, "storeUri=file:///data/store", *read_only)
    # On a volume every pod mounts (a ReadWriteMany claim), at the folder or above it, it renders.
    for mount_path, store_uri in (
        ("/data/store", "file:///data/store"),
        ("/data/store/", "file:///data/store/skuforge"),
        ("/mnt/shared", "file:///mnt/shared/skuforge"),
    ):
        mounted = [*shared, "extraVolumeMounts[0].name=store", f"extraVolumeMounts[0].mountPath={mount_path}"]
        docs = render(helm, f"storeUri={store_uri}", *mounted)
        assert of_kind(docs, "ConfigMap")["rel-skuforge-settings"]["data"]["SKUFORGE_STORE_URI"] == store_uri
    render(helm, "storeUri=s3://bucket/prefix")


def test_the_generator_stage_asks_for_the_backend_triton_serves(helm: str) -> None:
    # Before, Triton served diffusion (the default triton.backends) while the stage, told nothing,
    # asked for the code default, composite: every SKU a model-not-found error.
    settings = of_kind(render(helm), "ConfigMap")["rel-skuforge-settings"]["data"]
    assert settings["SKUFORGE_GENERATION_BACKEND"] == "diffusion"
    mixed = render(
        helm,
        "triton.backends={composite,diffusion}",
        r'settings.SKUFORGE_GENERATION_BACKEND_MIX=\{"composite": 1\, "diffusion": 1\}',
    )
    assert "SKUFORGE_GENERATION_BACKEND" not in of_kind(mixed, "ConfigMap")["rel-skuforge-settings"]["data"]


def test_a_backend_mix_asks_only_for_backends_triton_serves(helm: str) -> None:
    # Before, each rendered: a mix giving composite a share beside Triton's default diffusion sent those
    # variants to a model nobody serves (model_missing at every retry), an empty mix ("{}", which means
    # SKUFORGE_GENERATION_BACKEND alone) kept the chart from naming Triton's backend, so the stage asked
    # for the code default, composite, for every variant, and a mix --set without escaping its braces
    # (a list to helm) reached the pods as '["composite": 3, ...]', which every pod refused at start.
    mix = r'settings.SKUFORGE_GENERATION_BACKEND_MIX=\{"composite": 3\, "diffusion": 1\}'
    message = render_error(helm, mix)
    assert "SKUFORGE_GENERATION_BACKEND_MIX gives composite a share" in message
    assert "triton.backends" in message
    render(helm, mix, "triton.backends={composite,diffusion}")
    # A share of 0 asks for nothing.
    render(helm, r'settings.SKUFORGE_GENERATION_BACKEND_MIX=\{"composite": 0\, "diffusion": 1\}')
    empty = of_kind(render(helm, r"settings.SKUFORGE_GENERATION_BACKEND_MIX=\{\}"), "ConfigMap")
    assert empty["rel-skuforge-settings"]["data"]["SKUFORGE_GENERATION_BACKEND"] == "diffusion"
    # A list to helm: refused as no one value (review 40), with the same escaping advice.
    message = render_error(
        helm, r'settings.SKUFORGE_GENERATION_BACKEND_MIX={"composite": 3\, "diffusion": 1}'
    )
    assert "settings.SKUFORGE_GENERATION_BACKEND_MIX is a list" in message
    assert r'escape its braces and commas: \{"composite": 3\, "diffusion": 1\}' in message, message
    assert "is not a JSON object of shares" in render_error(
        helm, 'settings.SKUFORGE_GENERATION_BACKEND_MIX="composite: 3"'
    )


def test_the_backend_checks_read_what_the_generator_stage_gets(helm: str) -> None:
    # Before, each rendered: the checks read `settings` alone, while the generator's env map (its own or
    # stageDefaults') and secret.values reach its container too, and win: a backend or a mix share that
    # Triton does not serve went to the stage unchecked, and every variant called a model nobody serves.
    for source in ("stages.generator.env", "stageDefaults.env", "secret.values"):
        message = render_error(helm, f"{source}.SKUFORGE_GENERATION_BACKEND=composite")
        assert f"{source}.SKUFORGE_GENERATION_BACKEND=composite, but Triton serves only diffusion" in message
        mix = source + r'.SKUFORGE_GENERATION_BACKEND_MIX=\{"composite": 3\, "diffusion": 1\}'
        assert f"{source}.SKUFORGE_GENERATION_BACKEND_MIX gives composite a share" in render_error(helm, mix)
    # The generator's env beats `settings`: the value it gets is the one checked.
    message = render_error(
        helm,
        "settings.SKUFORGE_GENERATION_BACKEND=diffusion",
        "stages.generator.env.SKUFORGE_GENERATION_BACKEND=composite",
    )
    assert "stages.generator.env.SKUFORGE_GENERATION_BACKEND=composite" in message
    render(
        helm,
        "settings.SKUFORGE_GENERATION_BACKEND=composite",
        "stages.generator.env.SKUFORGE_GENERATION_BACKEND=diffusion",
    )
    # A mix in the generator's env with a share for a backend Triton serves renders, and the stage asks
    # for what the mix gives.
    mixed = render(
        helm,
        "triton.backends={composite,diffusion}",
        r'stages.generator.env.SKUFORGE_GENERATION_BACKEND_MIX=\{"composite": 1\, "diffusion": 1\}',
    )
    generator = env_of(of_kind(mixed, "Deployment")["rel-skuforge-generator"])
    assert generator["SKUFORGE_GENERATION_BACKEND_MIX"] == '{"composite": 1, "diffusion": 1}'


def test_the_topics_job_reads_this_releases_settings_not_the_configmap(helm: str) -> None:
    # A pre-upgrade hook runs before the ConfigMap is updated: reading it, the Job created topics on
    # the previous kafka.bootstrap, or under the previous topicNamespace.
    docs = render(helm, "kafka.bootstrap=new-kafka:9092", "topicNamespace=staging.")
    (job,) = of_kind(docs, "Job").values()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env == of_kind(docs, "ConfigMap")["rel-skuforge-settings"]["data"]
    assert (
        env["SKUFORGE_KAFKA_BOOTSTRAP"] == "new-kafka:9092" and env["SKUFORGE_TOPIC_NAMESPACE"] == "staging."
    )
    assert container["envFrom"] == [{"secretRef": {"name": "rel-skuforge-topics-settings"}}]


def test_the_topics_job_reads_this_releases_secret_values_not_the_previous_secret(helm: str) -> None:
    # The chart's Secret is updated after the pre-upgrade hook: adding SASL (docs/deploy.md) gave the Job
    # the new protocol and username without the password, and it exited 2 until the upgrade timed out.
    docs = render(
        helm,
        "settings.SKUFORGE_KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        "secret.values.SKUFORGE_KAFKA_SASL_PASSWORD=s3cret",
    )
    secrets = of_kind(docs, "Secret")
    hook = secrets["rel-skuforge-topics-settings"]
    assert hook["stringData"]["SKUFORGE_KAFKA_SASL_PASSWORD"] == "s3cret"
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    assert int(hook["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0  # before the Job
    assert secrets["rel-skuforge-settings"]["stringData"] == hook["stringData"]  # what the stages get
    (job,) = of_kind(docs, "Job").values()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "rel-skuforge-topics-settings"}}]
    # A Secret of the user's own is theirs to update before the upgrade: read as it is, no copy made.
    docs = render(helm, "secret.existingSecret=mine")
    assert "rel-skuforge-topics-settings" not in of_kind(docs, "Secret")
    (job,) = of_kind(docs, "Job").values()
    assert job["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "mine"}}]


def test_the_topics_jobs_copy_of_the_secret_values_is_deleted_once_the_job_succeeds(helm: str) -> None:
    # Before, only the next hook run replaced it (before-hook-creation): a release switched to
    # secret.existingSecret, or uninstalled, kept <release>-topics-settings and the passwords in it for
    # good, since Helm deletes a hook's objects only by their delete policy. Helm runs the policy
    # hook-succeeded once every hook of the event has succeeded, the Job first, so the Job's pods
    # have had it; and, since Helm 3.19 (make helm builds 3.22), on the hooks that succeeded before a
    # later one failed (pkg/action/hooks.go), so a failed Job's copy goes too. hook-failed on the
    # Secret would change nothing: Helm applies it to the failed hook alone, the Job.
    docs = render(helm, "secret.values.SKUFORGE_KAFKA_SASL_PASSWORD=s3cret")
    hook = of_kind(docs, "Secret")["rel-skuforge-topics-settings"]["metadata"]["annotations"]
    (job,) = of_kind(docs, "Job").values()
    job_hook = job["metadata"]["annotations"]
    assert hook["helm.sh/hook"] == job_hook["helm.sh/hook"]  # the same hook runs, so deleted together
    assert set(hook["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
    assert "hook-succeeded" in job_hook["helm.sh/hook-delete-policy"].split(",")


def test_the_topics_job_gives_up_within_its_deadline(helm: str) -> None:
    """With Kafka away the Job retried (backoffLimit 6, its back-off doubling from 10 s) for some ten
    minutes, past `helm install`'s --timeout (5m by default): Helm gave up on a Job that still ran, with
    no status saying why. It now fails itself (DeadlineExceeded) after topicsJob.activeDeadlineSeconds,
    by default before Helm's timeout."""

    def deadline(*values: str) -> Any:
        (job,) = of_kind(render(helm, *values), "Job").values()
        return job["spec"]["activeDeadlineSeconds"]

    assert deadline() == 240 < 5 * 60
    assert deadline("topicsJob.activeDeadlineSeconds=900") == 900
    for wrong in ["0", "-1", "1.5", "soon", "null"]:
        error = render_error(helm, f"topicsJob.activeDeadlineSeconds={wrong}")
        assert "topicsJob.activeDeadlineSeconds" in error and "whole number of seconds" in error, error


def test_the_topics_job_adds_partitions_only_when_asked(helm: str) -> None:
    # Before, raising topicPartitions failed every `helm upgrade`: the hook ran `topics create`, which
    # exits 1 when an existing topic has fewer partitions than asked, and the chart had no way to pass
    # --grow. Off by default: adding partitions moves SKUs' keys (docs/deploy.md, Adding partitions).
    def args(*values: str) -> list[str]:
        (job,) = of_kind(render(helm, *values), "Job").values()
        (topics,) = job["spec"]["template"]["spec"]["containers"]
        return list(topics["args"])

    assert args() == ["topics", "create"]
    assert args("topicsJob.grow=true", "topicPartitions=12") == ["topics", "create", "--grow"]
    # Topics that differ from the settings exit 3, which no retry changes: the Job fails at once
    # (before, six retries with back-off, then the upgrade's --timeout), Kafka away (1) is retried.
    (job,) = of_kind(render(helm), "Job").values()
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # what podFailurePolicy needs
    (rule,) = job["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"] == {"containerName": "topics", "operator": "In", "values": [3]}
    usage = subprocess.run(
        [sys.executable, "-m", "skuforge_cli", "topics", "create", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert usage.returncode == 0 and "--grow" in usage.stdout, usage.stdout + usage.stderr
    assert "3 existing topics differ from the settings" in " ".join(usage.stdout.split())
    # The alert that sends operators to add partitions says how, in the chart's own values.
    rules = yaml.safe_load((CHART / "rules" / "deploy.yml").read_text())
    (runbook,) = [
        rule["annotations"]["runbook"]
        for group in rules["groups"]
        for rule in group["rules"]
        if rule.get("alert") == "SkuforgeStageAtMaxReplicas"
    ]
    for value in ("topicPartitions", "maxReplicas", "topicsJob.grow=true", "helm upgrade"):
        assert value in runbook, value


@pytest.mark.parametrize(
    "release",
    [
        "rel",
        "recommendations-team-production-eu-west",
        "recommendations-team-production-eu-skuforge",
        # The chart's name first: its fullname is the release name, and the Deployments are
        # skuforge-prod-triton..., which a pattern wanting "skuforge-triton" missed.
        "skuforge-prod",
        "a" * 53,
    ],
)
def test_the_deployment_alerts_see_every_release_name(helm: str, release: str) -> None:
    """The deployment alerts find the chart's Deployments and KEDA's HPAs by name (kube-state-metrics
    has no chart labels by default). A long release name cut the chart's name off the end: its stages
    were invisible to SkuforgeStageAtMaxReplicas and SkuforgePodsUnavailable."""
    rules = yaml.safe_load((CHART / "rules" / "deploy.yml").read_text())
    by_alert = {rule.get("alert"): rule["expr"] for group in rules["groups"] for rule in group["rules"]}
    exprs = " ".join(by_alert.values())
    (hpa_pattern,) = set(re.findall(r'horizontalpodautoscaler=~"([^"]+)"', exprs))

    def ticketed_by(alert: str, name: str) -> bool:
        """Whether the alert's deployment matchers (=~ and !~) select the Deployment ``name``."""
        wanted = re.findall(r'deployment=~"([^"]+)"', by_alert[alert])
        unwanted = re.findall(r'deployment!~"([^"]+)"', by_alert[alert])
        return all(re.fullmatch(p, name) for p in wanted) and not any(re.fullmatch(p, name) for p in unwanted)

    docs = render(helm, "console.enabled=true", release=release)
    deployments = of_kind(docs, "Deployment")
    scaled = of_kind(docs, "ScaledObject")
    assert deployments and scaled
    for name in deployments:
        # Each Deployment is ticketed by exactly one of the two (Triton and the generator wait longer).
        ours = [
            a for a in ("SkuforgePodsUnavailable", "SkuforgeTritonPodsUnavailable") if ticketed_by(a, name)
        ]
        expected = (
            "SkuforgeTritonPodsUnavailable"
            if name.endswith(("-triton", "-generator"))
            else "SkuforgePodsUnavailable"
        )
        assert ours == [expected], name
        assert len(name) <= 63, name
    for name in scaled:
        # KEDA names the HPA it makes keda-hpa-<ScaledObject>, and a Kubernetes name is at most 63.
        assert re.fullmatch(hpa_pattern, f"keda-hpa-{name}"), name
        assert len(f"keda-hpa-{name}") <= 63, name
    # The console's volume claim keeps the name earlier versions gave it (release-chart, cut at 40): a
    # new name on upgrade would be a new, empty volume, the waiting review tasks left on the old one.
    earlier = release if "skuforge" in release else f"{release}-skuforge"
    (claim,) = of_kind(docs, "PersistentVolumeClaim")
    assert claim == f"{earlier[:40].rstrip('-')}-console"
    console = deployments[next(name for name in deployments if name.endswith("-console"))]
    mounted = {
        volume["persistentVolumeClaim"]["claimName"]
        for volume in console["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in volume
    }
    assert mounted == {claim}


def _chart_set_variables(helm: str) -> set[str]:
    """The SKUFORGE_* names the chart writes itself (ConfigMap, and each container's own env) with the
    default values, the console and Triton on: not those it copies from a values map."""
    docs = render(helm)
    names = set(of_kind(docs, "ConfigMap")["rel-skuforge-settings"]["data"])
    for deployment in of_kind(docs, "Deployment").values():
        names |= set(env_of(deployment))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    copied = set(values["settings"]) | set(values["triton"]["env"]) | {"SKUFORGE_DIFFUSION_MODEL"}
    copied |= {name for stage in values["stages"].values() for name in (stage or {}).get("env", {})}
    # Written only while the values choose no backend: choosing one in `settings:` is the way to.
    copied.add("SKUFORGE_GENERATION_BACKEND")
    return {name for name in names if name.startswith(ENV_PREFIX)} - copied


def test_every_variable_the_chart_sets_is_refused_in_settings_and_secret_values(helm: str) -> None:
    # Before, settings.SKUFORGE_CONSUMER_GROUP_PREFIX (or _KAFKA_BOOTSTRAP, _TOPIC_NAMESPACE...) made a
    # second ConfigMap key with the chart's own, while KEDA's triggers and the topics Job kept the
    # chart's value: the stages joined one group and KEDA scaled them on another's lag.
    chart_set = _chart_set_variables(helm)
    assert {
        "SKUFORGE_KAFKA_BOOTSTRAP",
        "SKUFORGE_TOPIC_NAMESPACE",
        "SKUFORGE_CONSUMER_GROUP_PREFIX",
        "SKUFORGE_TOPIC_PARTITIONS",
        "SKUFORGE_STORE_URI",
        "SKUFORGE_GENERATION_TRITON_URL",
        "SKUFORGE_METRICS_PORT",
        "SKUFORGE_CONSOLE_PORT",
    } <= chart_set
    for name in sorted(chart_set):
        for source in ("settings", "secret.values"):
            message = render_error(helm, f"{source}.{name}=x")
            assert f"{source}.{name}: the chart sets this variable itself; " in message, message


def test_every_variable_the_chart_sets_is_refused_in_the_pods_env_maps_too(helm: str) -> None:
    # Before, each rendered: stages.matting.env.SKUFORGE_METRICS_PORT gave the container that variable
    # twice, the later one won, and the server listened where neither the probes nor the PodMonitor
    # looked (the pod restarted for ever); stages.generator.env.SKUFORGE_GENERATION_TRITON_URL sent the
    # generator past the chart's Triton, and an env SKUFORGE_CONSUMER_GROUP_PREFIX beat the ConfigMap's
    # while KEDA scaled the stage on the chart's group.
    for name in sorted(_chart_set_variables(helm)):
        message = render_error(helm, f"stages.matting.env.{name}=x")
        assert f"stages.matting.env.{name}: the chart sets this variable itself; " in message, message
    for source, name in [
        ("stageDefaults.env", "SKUFORGE_CONSUMER_GROUP_PREFIX"),
        ("stages.generator.env", "SKUFORGE_GENERATION_TRITON_URL"),
        ("console.env", "SKUFORGE_CONSOLE_PORT"),
        ("triton.env", "SKUFORGE_GENERATION_SERVER_GRPC_PORT"),
    ]:
        message = render_error(helm, f"{source}.{name}=x")
        assert f"{source}.{name}: the chart sets this variable itself; " in message, message
    # Settings the chart leaves alone still go per pod.
    render(helm, "stages.matting.env.SKUFORGE_MATTING_THREADS=2", "console.env.SKUFORGE_LOG_LEVEL=DEBUG")


@pytest.mark.parametrize(
    ("name", "instead"),
    [
        ("SKUFORGE_KAFKA_BOOTSTRAP", "use kafka.bootstrap"),
        ("SKUFORGE_TOPIC_NAMESPACE", "use topicNamespace"),
        ("SKUFORGE_CONSUMER_GROUP_PREFIX", "use consumerGroupPrefix"),
        ("SKUFORGE_TOPIC_PARTITIONS", "use topicPartitions"),
        ("SKUFORGE_STORE_URI", "use storeUri"),
        ("SKUFORGE_SESSION_TIMEOUT_MS", "use sessionTimeoutMs"),
        ("SKUFORGE_GROUP_INSTANCE_ID", "use staticMembership"),
        ("SKUFORGE_GENERATION_TRITON_URL", "set triton.enabled=false"),
    ],
)
def test_a_chart_set_variable_in_settings_names_the_value_to_use(helm: str, name: str, instead: str) -> None:
    assert instead in render_error(helm, f"settings.{name}=x")


def test_another_triton_is_named_in_settings_once_the_charts_is_off(helm: str) -> None:
    docs = render(
        helm,
        "triton.enabled=false",
        "settings.SKUFORGE_GENERATION_TRITON_URL=t:8000",
        "settings.SKUFORGE_GENERATION_TRITON_PROTOCOL=http",
    )
    config = of_kind(docs, "ConfigMap")["rel-skuforge-settings"]["data"]
    assert (config["SKUFORGE_GENERATION_TRITON_URL"], config["SKUFORGE_GENERATION_TRITON_PROTOCOL"]) == (
        "t:8000",
        "http",
    )


def test_triton_ports_alike_fail_the_render(helm: str) -> None:
    # Before, each rendered: two of triton.ports alike made a Service the API server refuses (a port
    # twice), and triton.ports.metrics on the server's own /metrics port (9109, files/flow.json) a pod
    # that exits at start.
    for value in ("triton.ports.grpc=8000", "triton.ports.metrics=9109"):
        assert "each needs a port of its own" in render_error(helm, value)
    render(helm, "triton.ports.http=9000", "triton.ports.grpc=9001", "triton.ports.metrics=9002")


def test_triton_rolls_out_without_a_second_gpu_and_has_the_time_its_exit_takes(helm: str) -> None:
    # Before, Triton had the default rolling update (a surge pod): any settings change (the checksum
    # annotation) asked for a second GPU, and with none free the new pod stayed Pending for good.
    docs = render(helm)
    triton = of_kind(docs, "Deployment")["rel-skuforge-triton"]
    strategy = triton["spec"]["strategy"]
    assert strategy.get("type", "RollingUpdate") == "Recreate" or strategy["rollingUpdate"]["maxSurge"] == 0
    grace_s = triton["spec"]["template"]["spec"].get(
        "terminationGracePeriodSeconds", KUBERNETES_DEFAULT_GRACE_S
    )
    assert grace_s > TRITON_EXIT_TIMEOUT_S, (
        f"Triton waits {TRITON_EXIT_TIMEOUT_S} s for requests, gets {grace_s} s"
    )
    # Compose gives it the same.
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]["triton"]
    assert compose_duration_s(compose.get("stop_grace_period", DEFAULT_GRACE)) == grace_s
    triton = of_kind(render(helm, "triton.terminationGracePeriodSeconds=120"), "Deployment")[
        "rel-skuforge-triton"
    ]
    assert triton["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120


def test_every_pod_runs_as_the_releases_service_account(helm: str) -> None:
    # Before, the chart had no ServiceAccount: EKS IRSA or GKE workload identity could not give the
    # pods the object store's credentials.
    role = "arn:aws:iam::123456789012:role/skuforge"
    docs = render(
        helm,
        f"serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn={role}",
        "podAnnotations.team=vision",
    )
    (account,) = of_kind(docs, "ServiceAccount").values()
    assert account["metadata"]["name"] == "rel-skuforge"
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": role}
    assert account["automountServiceAccountToken"] is False  # skuforge never calls the Kubernetes API
    pods = pod_templates(docs)
    assert set(pods) == {f"rel-skuforge-{name}" for name in [*STAGES, "triton", "console", "topics"]}
    for name, template in pods.items():
        assert template["spec"]["serviceAccountName"] == "rel-skuforge", name
        assert template["spec"]["automountServiceAccountToken"] is False, name
        assert template["metadata"]["annotations"]["team"] == "vision", name
    # An account of your own; or none named: the namespace's default.
    docs = render(helm, "serviceAccount.create=false", "serviceAccount.name=skuforge-irsa")
    assert not of_kind(docs, "ServiceAccount")
    assert {t["spec"]["serviceAccountName"] for t in pod_templates(docs).values()} == {"skuforge-irsa"}
    docs = render(helm, "serviceAccount.create=false")
    assert {t["spec"]["serviceAccountName"] for t in pod_templates(docs).values()} == {"default"}


def test_the_upgrade_that_creates_the_service_account_runs_its_topics_job_without_it(helm: str) -> None:
    # The Job is a pre-upgrade hook: on the first upgrade to a chart with the ServiceAccount, the account
    # does not exist yet when the Job starts, and a pod naming a missing account is never created (the
    # hook hung). Outside a cluster `lookup` finds nothing, as on that upgrade.
    command = [helm, "template", "rel", str(CHART), "--kube-version", KUBE_VERSIONS[-1], "--is-upgrade"]
    for value in (REVIEWERS, MODEL):
        command += ["--set", value]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    pods = pod_templates(docs)
    assert "serviceAccountName" not in pods["rel-skuforge-topics"]["spec"]
    assert pods["rel-skuforge-gate"]["spec"]["serviceAccountName"] == "rel-skuforge"


# --------------------------------------------------------------------------------------------------
# schema validation: Kubernetes kinds, and the CRDs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_kubernetes_kinds_pass_kubernetes_validate_strict(
    helm: str, tmp_path: Path, kube_version: str
) -> None:
    docs = render(helm, kube_version=kube_version)
    builtin = [doc for doc in docs if (doc["apiVersion"], doc["kind"]) not in CRD_SCHEMAS]
    assert {doc["kind"] for doc in builtin} >= {"Deployment", "Service", "ConfigMap", "Secret", "Job"}
    manifest = tmp_path / "builtin.yaml"
    manifest.write_text(yaml.safe_dump_all(builtin))
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", kube_version, str(manifest)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("passed for resource") == len(builtin), output


def test_keda_and_prometheus_operator_objects_match_their_crd_schemas(helm: str) -> None:
    docs = render(helm)
    custom = [doc for doc in docs if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS]
    assert {doc["kind"] for doc in custom} == {"ScaledObject", "PodMonitor", "PrometheusRule"}
    for doc in custom:
        crd_validator(CRD_SCHEMAS[doc["apiVersion"], doc["kind"]]).validate(doc)


def test_the_crd_validation_refuses_a_misspelt_field(helm: str) -> None:
    """The closed schema is not vacuous: a field KEDA does not know is refused."""
    scaled = next(doc for doc in render(helm) if doc["kind"] == "ScaledObject")
    misspelt = copy.deepcopy(scaled)
    misspelt["spec"]["maxReplicas"] = misspelt["spec"].pop("maxReplicaCount")
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        crd_validator(CRD_SCHEMAS["keda.sh/v1alpha1", "ScaledObject"]).validate(misspelt)
    untyped = copy.deepcopy(scaled)
    untyped["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 50  # KEDA wants strings there
    with pytest.raises(jsonschema.ValidationError):
        crd_validator(CRD_SCHEMAS["keda.sh/v1alpha1", "ScaledObject"]).validate(untyped)


def test_the_prometheus_rule_holds_the_groups_of_every_rules_file(helm: str) -> None:
    expected = [
        group
        for path in sorted((CHART / "rules").glob("*.yml"))
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", [])
    ]
    assert expected, "deploy/helm/skuforge/rules/ holds no rule group"
    (rule,) = of_kind(render(helm), "PrometheusRule").values()
    # Each expression is the file's, kept to this install's series (test_an_installs_rules_alert_on_...).
    for group in rule["spec"]["groups"]:
        for rendered in group["rules"]:
            rendered["expr"] = rendered["expr"].startswith("(\n") and "scoped"
    for group in expected:
        for written in group["rules"]:
            if "alert" in written and ".*skuforge.*" in written["expr"]:
                # kube-state-metrics' series carry no release: the deployment alerts get the install's.
                written["labels"] = {**written.get("labels", {}), "release": "rel"}
            written["expr"] = "scoped"
    assert rule["spec"]["groups"] == expected


def test_triton_down_waits_triton_s_start_up_and_rule_labels_reach_every_alert(helm: str) -> None:
    """SkuforgeTritonDown paged after 15 minutes even where triton.startupSeconds allowed a start of
    30; and on a shared Prometheus nothing but severity told the cluster's Alertmanager whose alerts
    these were."""
    (rule,) = of_kind(
        render(
            helm,
            "triton.startupSeconds=1800",
            "monitoring.ruleLabels.team=retail-ml",
            "monitoring.ruleLabels.severity=overridden",
        ),
        "PrometheusRule",
    ).values()
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r}
    assert alerts["SkuforgeTritonDown"]["for"] == "30m"
    # So does the ticket for Triton's (and the generator's) unavailable pods: a rollout takes a model
    # load, and under SkuforgePodsUnavailable (15 minutes) every settings change opened two tickets.
    assert alerts["SkuforgeTritonPodsUnavailable"]["for"] == "30m"
    assert alerts["SkuforgePodsUnavailable"]["for"] == "15m"
    assert len(alerts) > 10
    for name, alert in alerts.items():
        assert alert["labels"]["team"] == "retail-ml", name
        assert alert["labels"]["severity"] in ("page", "ticket"), name  # its own severity wins
    records = [r for group in rule["spec"]["groups"] for r in group["rules"] if "record" in r]
    assert records and all("team" not in r.get("labels", {}) for r in records)
    (default,) = of_kind(render(helm, "triton.startupSeconds=300"), "PrometheusRule").values()
    by_name = {r.get("alert"): r for group in default["spec"]["groups"] for r in group["rules"]}
    assert by_name["SkuforgeTritonDown"]["for"] == "15m"  # never sooner than the file says
    assert by_name["SkuforgeTritonPodsUnavailable"]["for"] == "15m"


def test_an_installs_rules_alert_on_its_own_series_only(helm: str, tmp_path: Path, promtool_bin: str) -> None:
    """Two installs in one cluster each bring the same rules, and one Prometheus evaluates both: staging's
    rules fired on production's series (and the other way round), with staging's ruleLabels, so one
    install's outage paged the other's team. promtool runs the rendered rules of release "staging" in
    namespace "shop" on a stopped stage, an unavailable Deployment and an HPA at its maximum of three
    installs: itself, "prod" in the same namespace, and a "staging" in another namespace."""
    from devstack.prometheus import promtool

    docs = render(helm, "monitoring.ruleLabels.team=staging", release="staging", namespace="shop")
    (rule,) = of_kind(docs, "PrometheusRule").values()
    (tmp_path / "chart.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    series = []
    for namespace, release in (("shop", "staging"), ("shop", "prod"), ("other", "staging")):
        where = f'namespace="{namespace}"'
        deployment = f'deployment="{release}-skuforge-gate"'
        series += [
            {"series": f'up{{job="matting", {where}, release="{release}", instance="m"}}', "values": "0x60"},
            {
                "series": f"kube_deployment_status_replicas_unavailable{{{where}, {deployment}}}",
                "values": "1x60",
            },
        ]
        hpa = f'{where}, horizontalpodautoscaler="keda-hpa-{release}-skuforge-matting"'
        for metric, replicas in (("status_current", 4), ("spec_min", 1), ("spec_max", 4)):
            name = f"kube_horizontalpodautoscaler_{metric}_replicas"
            series.append({"series": f"{name}{{{hpa}}}", "values": f"{replicas}x60"})
    ours = {"team": "staging", "namespace": "shop"}
    expected = {
        "SkuforgeStageDown": {
            **ours,
            "severity": "page",
            "job": "matting",
            "stage": "matting",
            "release": "staging",
            "instance": "m",
        },
        "SkuforgePodsUnavailable": {
            **ours,
            "severity": "ticket",
            "release": "staging",
            "deployment": "staging-skuforge-gate",
        },
        "SkuforgeStageAtMaxReplicas": {
            **ours,
            "severity": "ticket",
            "release": "staging",
            "horizontalpodautoscaler": "keda-hpa-staging-skuforge-matting",
        },
    }
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r}
    cases = []
    for name, labels in expected.items():
        annotations = {}
        for key, text in alerts[name]["annotations"].items():
            for label, value in labels.items():
                text = text.replace(f"{{{{ $labels.{label} }}}}", str(value))
            annotations[key] = text
        cases.append(
            {
                "eval_time": "40m",
                "alertname": name,
                "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}],
            }
        )
    tests = {
        "rule_files": ["chart.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": cases}],
    }
    (tmp_path / "chart_test.yml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", "chart_test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, and In/NotIn expressions) against pod labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value, values = labels.get(expression["key"]), expression.get("values", [])
        assert expression["operator"] in ("In", "NotIn"), expression
        if (value in values) != (expression["operator"] == "In"):
            return False
    return True


class _Dropped(Exception):
    """The endpoint's relabelings drop the target."""


def _operator_label(
    monitor: dict[str, Any],
    endpoint: dict[str, Any],
    pod_labels: dict[str, str],
    label: str = "job",
    *,
    phase: str = "Running",
) -> str | None:
    """A label prometheus-operator gives a PodMonitor target: for ``job`` the pod label named by
    ``jobLabel``, else "<namespace>/<PodMonitor name>"; then the endpoint's own relabelings
    (``_Dropped`` when they drop the target of a pod in ``phase``)."""
    spec = monitor["spec"]
    value: str | None = None
    if label == "job":
        value = pod_labels[spec["jobLabel"]] if "jobLabel" in spec else f"ns/{monitor['metadata']['name']}"
    meta = {"__meta_kubernetes_pod_label_" + re.sub(r"\W", "_", k): v for k, v in pod_labels.items()}
    meta["__meta_kubernetes_pod_phase"] = phase
    for rule in endpoint.get("relabelings", []):
        action = rule.get("action", "replace")
        assert action in ("replace", "drop"), rule
        source = ";".join(meta.get(name, "") for name in rule.get("sourceLabels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), source)
        if action == "drop":
            if match:
                raise _Dropped(rule)
            continue
        if match and rule.get("targetLabel") == label:
            value = match.expand(rule.get("replacement", "$1").replace("$", "\\"))
    return value


def _monitored_endpoints(
    docs: list[dict[str, Any]],
) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, str]]]:
    """(PodMonitor, endpoint, pod labels) for every workload port a PodMonitor of the chart scrapes."""
    found = []
    for workload in of_kind(docs, "Deployment").values():
        template = workload["spec"]["template"]
        ports = {port["name"] for port in container(workload).get("ports", [])}
        for monitor in of_kind(docs, "PodMonitor").values():
            if _selects(monitor["spec"]["selector"], template["metadata"]["labels"]):
                for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                    if endpoint["port"] in ports:
                        found.append((monitor, endpoint, template["metadata"]["labels"]))
    return found


def test_under_prometheus_operator_the_targets_carry_the_job_names_the_alerts_use(helm: str) -> None:
    """``SkuforgeTargetDown`` matches ``up{job=~"captioner|...|triton"}``; under the operator a
    target's job would be "<namespace>/<PodMonitor>" and the alert could never fire."""
    jobs = {_operator_label(*scraped) for scraped in _monitored_endpoints(render(helm))}
    rules = yaml.safe_load(PIPELINE_RULES.read_text())
    # By name, not by the start of the expr: wrapped (label_replace, a sum), an expr no longer began
    # with up{ and the set compared against read no jobs.
    up_alerts = {"SkuforgeStageDown", "SkuforgeTritonDown"}
    up_exprs = [r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("alert") in up_alerts]
    assert len(up_exprs) == len(up_alerts)
    # The first matcher of each: SkuforgeStageDown's second one is the lora-trainer, which the chart
    # does not deploy; SkuforgeTritonDown's is Triton.
    alerted = {
        job
        for expr in up_exprs
        for job in re.search(r'up\{job=~?"([^"]+)"', expr).group(1).split("|")  # type: ignore[union-attr]
    }
    scrape = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert jobs == alerted == {job["job_name"] for job in scrape["scrape_configs"]}


def test_under_prometheus_operator_a_pod_not_started_yet_is_not_scraped(helm: str) -> None:
    """A Pending pod (its image still pulling: minutes for Triton's CUDA image) has an address but no
    /metrics; scraped, it is up 0, and SkuforgeStageDown paged on every rollout and scale-up."""
    scraped = _monitored_endpoints(render(helm))
    assert len(scraped) >= 7
    for target in scraped:
        assert _operator_label(*target) is not None  # Running: scraped
        if _operator_label(*target) == "triton":
            # Triton's own port is scraped while Pending: SkuforgeTritonDown waits 15 minutes, and
            # its up 0 holds SkuforgeTritonRefusing back while Triton (re)starts.
            assert _operator_label(*target, phase="Pending") == "triton"
            continue
        with pytest.raises(_Dropped):
            _operator_label(*target, phase="Pending")


def test_triton_down_does_not_count_the_image_pull_against_triton_s_start_up(
    helm: str, tmp_path: Path, promtool_bin: str
) -> None:
    """A new Triton pod pulls its CUDA image (minutes, phase Pending, scraped all the same for
    SkuforgeTritonRefusing), then loads its model for up to triton.startupSeconds: SkuforgeTritonDown's
    clock ran from the pull, so an 8-minute pull and a 12-minute load paged at 15 minutes, though the
    model loaded well within its time. promtool runs the rendered rules on Triton's ``up`` labelled as
    the PodMonitor labels it in each phase: that start is silent, a Triton that starts and never answers
    still pages."""
    from devstack.prometheus import promtool

    docs = render(helm)
    (rule,) = of_kind(docs, "PrometheusRule").values()
    (tmp_path / "chart.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    (triton,) = [target for target in _monitored_endpoints(docs) if _operator_label(*target) == "triton"]
    names = {relabel["targetLabel"] for relabel in triton[1]["relabelings"] if "targetLabel" in relabel}

    def up(phase: str) -> dict[str, str]:
        """Triton's ``up`` labels in ``phase``: the chart's relabelings, and the operator's namespace."""
        chart_set = {name: _operator_label(*triton, label=name, phase=phase) for name in sorted(names)}
        return {"namespace": "default", "instance": "t", **{k: v for k, v in chart_set.items() if v}}

    def input_series(minutes: dict[str, list[str]]) -> list[dict[str, str]]:
        """Minute-by-minute ``up`` values of each phase; one series where the phases share labels, else
        the earlier phase's series ends (a stale marker) as the target's labels change."""
        by_labels: dict[str, list[str]] = {}
        start = 0
        for phase, values in minutes.items():
            labels = ", ".join(f'{key}="{value}"' for key, value in up(phase).items())
            series = by_labels.setdefault(f"up{{{labels}}}", [])
            for earlier in by_labels.values():
                if earlier is not series and len(earlier) == start:
                    earlier.append("stale")
            series += ["_"] * (start - len(series)) + values
            start += len(values)
        return [{"series": name, "values": " ".join(values)} for name, values in by_labels.items()]

    running = up("Running")
    annotations = {
        key: text.replace("{{ $labels.instance }}", "t")
        for key, text in rule_annotations(rule, "SkuforgeTritonDown")
    }
    tests = {
        "rule_files": ["chart.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                # 9 minutes pulling, then 12 loading, then serving.
                "input_series": input_series({"Pending": ["0"] * 9, "Running": ["0"] * 12 + ["1"] * 20}),
                "alert_rule_test": [
                    {"eval_time": f"{minute}m", "alertname": "SkuforgeTritonDown", "exp_alerts": []}
                    for minute in (16, 20, 25)
                ],
            },
            {
                "interval": "1m",
                "input_series": input_series({"Pending": ["0"] * 9, "Running": ["0"] * 30}),
                "alert_rule_test": [
                    {"eval_time": "23m", "alertname": "SkuforgeTritonDown", "exp_alerts": []},
                    {
                        "eval_time": "27m",
                        "alertname": "SkuforgeTritonDown",
                        "exp_alerts": [
                            {"exp_labels": {**running, "severity": "page"}, "exp_annotations": annotations}
                        ],
                    },
                ],
            },
        ],
    }
    (tmp_path / "chart_test.yml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", "chart_test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_triton_pods_unavailable_does_not_count_the_image_pull_against_triton_s_start_up(
    helm: str, tmp_path: Path, promtool_bin: str
) -> None:
    """SkuforgeTritonPodsUnavailable waits triton.startupSeconds, the model's load, but its clock ran
    from the start of the CUDA image pull: a 9-minute pull and a 12-minute load ticketed Triton's and
    the generator's Deployments at 15 minutes on a rollout that went well. promtool runs the rendered
    rules on kube-state-metrics' series: that rollout is silent; a pull stuck (or no GPU node free), or
    a model that never loads, still tickets after the wait."""
    from devstack.prometheus import promtool

    (rule,) = of_kind(render(helm), "PrometheusRule").values()
    (tmp_path / "chart.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))

    def input_series(pending_min: int, unavailable_min: int) -> list[dict[str, str]]:
        """A Triton rollout: its new pod Pending for ``pending_min`` minutes, then Running; Triton's and
        the generator's Deployments unavailable for ``unavailable_min`` minutes, then available."""
        phase = 'kube_pod_status_phase{namespace="default", pod="rel-skuforge-triton-5d9c7-x2k4p", '
        series = [
            {"series": phase + 'phase="Pending"}', "values": f"1x{pending_min} 0x40"},
            {"series": phase + 'phase="Running"}', "values": f"0x{pending_min} 1x40"},
        ]
        unavailable = "kube_deployment_status_replicas_unavailable"
        for deployment in ("rel-skuforge-triton", "rel-skuforge-generator"):
            labels = f'{{namespace="default", deployment="{deployment}"}}'
            series.append({"series": unavailable + labels, "values": f"1x{unavailable_min} 0x40"})
        return series

    def fired(labels: dict[str, str]) -> list[dict[str, Any]]:
        return [
            {
                "exp_labels": {
                    "namespace": "default",
                    "release": "rel",
                    "deployment": deployment,
                    "severity": "ticket",
                    **labels,
                },
                "exp_annotations": {
                    key: text.replace("{{ $labels.deployment }}", deployment)
                    for key, text in rule_annotations(rule, "SkuforgeTritonPodsUnavailable")
                },
            }
            for deployment in ("rel-skuforge-generator", "rel-skuforge-triton")
        ]

    alert = "SkuforgeTritonPodsUnavailable"
    tests = {
        "rule_files": ["chart.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {  # 9 minutes pulling, then 12 loading, then serving
                "interval": "1m",
                "input_series": input_series(9, 21),
                "alert_rule_test": [
                    {"eval_time": f"{minute}m", "alertname": alert, "exp_alerts": []}
                    for minute in (16, 20, 25)
                ],
            },
            {  # a pull that never ends (a wrong tag), or no GPU node free
                "interval": "1m",
                "input_series": input_series(40, 40),
                "alert_rule_test": [
                    {"eval_time": "14m", "alertname": alert, "exp_alerts": []},
                    {
                        "eval_time": "17m",
                        "alertname": alert,
                        "exp_alerts": fired({"triton_phase": "Pending"}),
                    },
                ],
            },
            {  # pulled in 9 minutes, then a model that never loads
                "interval": "1m",
                "input_series": input_series(9, 40),
                "alert_rule_test": [
                    {"eval_time": "23m", "alertname": alert, "exp_alerts": []},
                    {"eval_time": "27m", "alertname": alert, "exp_alerts": fired({})},
                ],
            },
        ],
    }
    (tmp_path / "chart_test.yml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", "chart_test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def rule_annotations(rule: dict[str, Any], alert: str) -> list[tuple[str, str]]:
    """The annotations of ``alert`` in a rendered PrometheusRule."""
    (found,) = [r for group in rule["spec"]["groups"] for r in group["rules"] if r.get("alert") == alert]
    return list(found["annotations"].items())


def test_under_prometheus_operator_every_target_carries_its_release(helm: str) -> None:
    """The alert rules aggregate by (namespace, release), so two installs watched by one Prometheus do
    not hide each other's failures; the operator gives ``namespace``, the chart must give ``release``."""
    scraped = _monitored_endpoints(render(helm))
    assert len(scraped) >= 7  # the six stages' and the console's /metrics, Triton's two
    assert {_operator_label(*target, label="release") for target in scraped} == {"rel"}
    rules = yaml.safe_load(PIPELINE_RULES.read_text())
    for rule in (rule for group in rules["groups"] for rule in group["rules"]):
        for grouping in re.findall(r"\b(?:by|on) \(([^)]*)\)", rule["expr"]):
            assert {"namespace", "release"} <= {label.strip() for label in grouping.split(",")}, rule
        assert not re.search(r"\b(sum|max|min|avg|count)\(", rule["expr"]), (
            f"aggregates every install: {rule}"
        )


def test_the_chart_carries_the_pipeline_alert_rules() -> None:
    """deploy/prometheus/alerts.yml (the pipeline's alerts) must reach the chart as rules/skuforge.yml."""
    carried = CHART / "rules" / "skuforge.yml"
    assert carried.exists() and carried.read_text() == PIPELINE_RULES.read_text(), (
        "link the pipeline's rules into the chart: "
        "ln -sf ../../../prometheus/alerts.yml deploy/helm/skuforge/rules/skuforge.yml"
    )


# --------------------------------------------------------------------------------------------------
# compose and the Dockerfile
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["compose.yaml", "compose.gpu.yaml"])
def test_compose_files_follow_the_compose_specification(name: str) -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    document = yaml.safe_load((REPO / "deploy" / name).read_text())
    # The file names draft 7 without the trailing "#", which jsonschema does not recognise.
    jsonschema.Draft7Validator(schema).validate(document)


def test_compose_runs_every_stage_of_the_flow_the_console_and_triton() -> None:
    services = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]
    commands = {name: service.get("command") for name, service in services.items()}
    for stage in STAGES:
        assert commands[stage] == ["run", stage]
    assert commands["console"] == ["serve", "console"]
    assert commands["triton"] == ["serve", "generator"]
    assert commands["topics"] == ["topics", "create"]
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services), f"{name} depends on a missing service"
    stage_env = services["matting"]["environment"]
    assert stage_env["SKUFORGE_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"


COMPOSE_PASSED_THROUGH = (
    "SKUFORGE_S3_ENDPOINT_URL",
    "SKUFORGE_S3_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "SKUFORGE_SCENES_URI",
)


def test_compose_takes_the_store_and_its_credentials_from_the_shell() -> None:
    # Before, SKUFORGE_STORE_URI was fixed to the volume although deploy.md said to set it for S3, and
    # no credentials reached the containers.
    services = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]
    skuforge = {name: s for name, s in services.items() if name != "kafka"}
    for name, service in skuforge.items():
        env = service["environment"]
        assert env["SKUFORGE_STORE_URI"] == "${SKUFORGE_STORE_URI:-file:///data/store}", name
        for variable in COMPOSE_PASSED_THROUGH:
            # No value: compose passes the shell's (or --env-file's) value, and leaves it unset otherwise.
            # Not ${VAR:-}: an empty SKUFORGE_S3_ENDPOINT_URL reaches boto3 as an endpoint, and is refused.
            assert variable in env and env[variable] is None, (name, variable)


def test_compose_waits_for_triton_to_load_its_diffusion_model() -> None:
    # Before, the GPU overlay's Triton had 60 checks 10 s apart and no start period: a diffusion model
    # that took longer to load failed `docker compose up`. The chart's startup probe allows 900 s.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    healthcheck = yaml.safe_load((REPO / "deploy" / "compose.gpu.yaml").read_text())["services"]["triton"][
        "healthcheck"
    ]
    assert compose_duration_s(healthcheck["start_period"]) >= values["triton"]["startupSeconds"]
    assert healthcheck["test"][-1].endswith("/v2/health/ready')")


def test_compose_gives_the_console_the_time_it_takes_to_stop() -> None:
    console = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]["console"]
    grace_s = compose_duration_s(console.get("stop_grace_period", DEFAULT_GRACE))
    assert grace_s >= console_stop_s(), f"the console may take {console_stop_s()} s to stop, gets {grace_s} s"


def test_the_image_holds_every_package_and_runs_skuforge() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    packages = re.search(r"include = \[(.*?)\]", pyproject)
    assert packages is not None
    for pattern in re.findall(r'"(\w+)\*"', packages.group(1)):
        assert f"COPY {pattern} {pattern}" in dockerfile, f"the Dockerfile does not copy {pattern}/"
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "skuforge"]' in dockerfile
    assert "ARG VARIANT=cpu" in dockerfile and "VARIANT=cuda" in dockerfile


def test_the_image_owns_every_folder_compose_mounts_a_volume_on() -> None:
    # A new named volume takes the ownership of the image's folder it is mounted on; the image had no
    # /data, so compose's store and console volumes were root's and the services (uid 10001) could
    # not write to them. (No Docker daemon here: this reads the two files.)
    dockerfile = (REPO / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert user is not None
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    named = set(compose.get("volumes") or {})
    mounts = {
        target
        for service in compose["services"].values()
        if "skuforge" in str(service.get("image", "")) or "build" in service or "<<" in service
        for volume in service.get("volumes", [])
        if isinstance(volume, str) and volume.split(":", 1)[0] in named
        for target in [volume.split(":")[1]]
        if not target.startswith("/var/lib/kafka")
    }
    assert mounts >= {"/data/store", "/data/console"}, mounts
    made = re.search(r"mkdir -p ([^\\\n&]+)", dockerfile)
    assert made is not None and set(made.group(1).split()) >= mounts, dockerfile
    assert f"chown -R {user.group(1)}:{user.group(2)} /data" in dockerfile


def test_the_kafka_volume_is_where_kafka_writes() -> None:
    # apache/kafka writes under /tmp unless KAFKA_LOG_DIRS says otherwise: the named volume stayed empty,
    # and a recreated container lost every topic, offset and waiting correction. (compose.gpu.yaml is an
    # overlay of compose.yaml: its kafka is this one.)
    kafka = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]["kafka"]
    mounted = {volume.split(":")[1] for volume in kafka.get("volumes", []) if isinstance(volume, str)}
    assert kafka["environment"].get("KAFKA_LOG_DIRS") in mounted, (kafka["environment"], mounted)


def test_every_chart_alert_has_a_severity_ops_routes() -> None:
    """docs/ops.md routes `page` and `ticket`; an alert labelled otherwise (`warning`) reached nobody."""
    for path in sorted((CHART / "rules").glob("*.yml")):
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["labels"]["severity"] in ("page", "ticket"), (path.name, rule["alert"])


def test_the_at_max_replicas_alert_fires_only_for_a_stage_that_may_scale(
    tmp_path: Path, promtool_bin: str
) -> None:
    """A stage pinned (min = max replicas, or topicPartitions 1) is always at its maximum: the ticket
    was open for good. promtool runs the chart's rule on a stage at its maximum and a pinned one."""
    from devstack.prometheus import promtool

    shutil.copy(CHART / "rules" / "deploy.yml", tmp_path / "deploy.yml")
    (rule,) = [
        rule
        for group in yaml.safe_load((CHART / "rules" / "deploy.yml").read_text())["groups"]
        for rule in group["rules"]
        if rule.get("alert") == "SkuforgeStageAtMaxReplicas"
    ]
    series = []
    for stage, (current, low, high) in {"matting": (4, 1, 4), "trainstore": (1, 1, 1)}.items():
        labels = f'namespace="n", horizontalpodautoscaler="keda-hpa-rel-skuforge-{stage}"'
        for metric, value in (
            ("status_current_replicas", current),
            ("spec_min_replicas", low),
            ("spec_max_replicas", high),
        ):
            series.append(
                {"series": f"kube_horizontalpodautoscaler_{metric}{{{labels}}}", "values": f"{value}x60"}
            )
    matting = "keda-hpa-rel-skuforge-matting"
    tests = {
        "rule_files": ["deploy.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {
                        "eval_time": "40m",
                        "alertname": "SkuforgeStageAtMaxReplicas",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "ticket",
                                    "namespace": "n",
                                    "horizontalpodautoscaler": matting,
                                },
                                "exp_annotations": {
                                    "summary": f"{matting} has run at its maximum replicas for 30 minutes",
                                    "runbook": rule["annotations"]["runbook"],
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "deploy_test.yml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", "deploy_test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_extra_volumes_reach_every_pod_and_triton_follows_the_image_tag(helm: str) -> None:
    """SKUFORGE_KAFKA_SSL_CAFILE was "a file mounted into the pods" with no way to mount one, and
    `image.tag=0.2.0` moved every pod but Triton, which stayed on <appVersion>-cuda."""
    docs = render(
        helm,
        "extraVolumes[0].name=kafka-ca",
        "extraVolumes[0].secret.secretName=kafka-ca",
        "extraVolumeMounts[0].name=kafka-ca",
        "extraVolumeMounts[0].mountPath=/etc/kafka-ca",
        "extraVolumeMounts[0].readOnly=true",
        "image.tag=0.2.0",
    )
    pods = pod_templates(docs)
    assert set(pods) == {f"rel-skuforge-{name}" for name in [*STAGES, "triton", "console", "topics"]}
    for name, template in pods.items():
        volumes = {volume["name"]: volume for volume in template["spec"]["volumes"]}
        assert volumes["kafka-ca"] == {"name": "kafka-ca", "secret": {"secretName": "kafka-ca"}}, name
        (only,) = template["spec"]["containers"]
        mounts = {mount["name"]: mount for mount in only["volumeMounts"]}
        wanted_mount = {"name": "kafka-ca", "mountPath": "/etc/kafka-ca", "readOnly": True}
        assert mounts["kafka-ca"] == wanted_mount, name
        wanted = "skuforge:0.2.0-cuda" if name.endswith("-triton") else "skuforge:0.2.0"
        assert only["image"] == wanted, name
    # The console's and Triton's own volumes stay.
    assert {v["name"] for v in pods["rel-skuforge-console"]["spec"]["volumes"]} == {"tasks", "kafka-ca"}
    assert {v["name"] for v in pods["rel-skuforge-triton"]["spec"]["volumes"]} == {
        "dshm",
        "model-cache",
        "kafka-ca",
    }
    # Without them no pod of the stages gets an empty volumes list.
    plain = pod_templates(render(helm))
    assert "volumes" not in plain["rel-skuforge-gate"]["spec"]


def test_numbers_in_a_values_file_reach_the_pods_as_written(helm: str, tmp_path: Path) -> None:
    """Helm reads a values-file number as a float and toString printed 1200000 as "1.2e+06", which no
    setting takes: every stage, the console and the topics Job failed at start. (--set is not affected.)"""
    values = tmp_path / "values.yaml"
    values.write_text(
        "settings: {SKUFORGE_MAX_POLL_INTERVAL_MS: 1200000, SKUFORGE_RETRY_BACKOFF_MAX_S: 2.5}\n"
        "stages: {gate: {env: {SKUFORGE_MAX_POLL_INTERVAL_MS: 40000000},"
        " autoscaling: {lagThreshold: 2000000}}}\n"
        "console: {env: {SKUFORGE_CONSOLE_LEASE_S: 3000000}}\n"
        "sessionTimeoutMs: 1200000\n"
    )
    command = [helm, "template", "rel", str(CHART), "--kube-version", KUBE_VERSIONS[-1], "-f", str(values)]
    for value in (REVIEWERS, MODEL):
        command += ["--set", value]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    settings = next(
        doc for doc in docs if doc["kind"] == "ConfigMap" and "SKUFORGE_KAFKA_BOOTSTRAP" in doc["data"]
    )
    assert settings["data"]["SKUFORGE_MAX_POLL_INTERVAL_MS"] == "1200000"
    assert settings["data"]["SKUFORGE_RETRY_BACKOFF_MAX_S"] == "2.5"
    assert settings["data"]["SKUFORGE_SESSION_TIMEOUT_MS"] == "1200000"  # one of the chart's own values
    deployments = of_kind(docs, "Deployment")
    assert env_of(deployments["rel-skuforge-gate"])["SKUFORGE_MAX_POLL_INTERVAL_MS"] == "40000000"
    assert env_of(deployments["rel-skuforge-console"])["SKUFORGE_CONSOLE_LEASE_S"] == "3000000"
    [trigger] = of_kind(docs, "ScaledObject")["rel-skuforge-gate"]["spec"]["triggers"]
    assert trigger["metadata"]["lagThreshold"] == "2000000"
    job = next(doc for doc in docs if doc["kind"] == "Job")
    job_env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert job_env["SKUFORGE_MAX_POLL_INTERVAL_MS"] == "1200000"
