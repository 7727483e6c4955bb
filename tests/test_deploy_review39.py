"""Review 39 of the deploy surface: values the Helm chart rendered that leak a secret or cannot run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from schemas.flow import CONSOLE
from shared.config import ENV_PREFIX, load_settings, secret_variables
from shared.generation.settings import GenerationSettings
from skuforge_cli.main import SETTINGS_MODELS
from tests.support.helm import REPO, pod_env, render, render_error, require_helm

# Every place the chart writes a value into a ConfigMap or a pod spec in plain text.
PLAIN_SOURCES = ("settings", "stageDefaults.env", "stages.generator.env", "console.env", "triton.env")


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


@pytest.mark.parametrize("name", sorted(secret_variables(SETTINGS_MODELS)))
def test_a_secret_setting_is_refused_outside_the_secret(helm: str, name: str) -> None:
    """settings.SKUFORGE_KAFKA_SASL_PASSWORD rendered into the ConfigMap and the topics Job's env, and
    any secret in a pod's env map into its Deployment, readable by whoever can read the namespace; only
    the console's two secrets were refused, and only under `settings`."""
    for source in PLAIN_SOURCES:
        message = render_error(helm, f"{source}.{name}=x")
        assert f"{source}.{name} is a secret" in message, message
        assert "secret.values or secret.existingSecret" in message
    docs = render(helm, f"secret.values.{name}=x")
    assert any(doc["kind"] == "Secret" and name in doc.get("stringData", {}) for doc in docs)


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"])
def test_object_store_credentials_are_refused_in_the_pods_env_maps(helm: str, name: str) -> None:
    """values.yaml lists the AWS keys under secret.values, and `settings` refuses them, but a pod's env
    map took them into its Deployment in plain text."""
    for source in PLAIN_SOURCES[1:]:
        message = render_error(helm, f"{source}.{name}=x")
        assert f"{source}.{name} is a secret" in message, message
    render(helm, f"secret.values.{name}=x")


def test_the_console_port_is_not_its_metrics_port(helm: str) -> None:
    """console.port at the console's /metrics port (files/flow.json) rendered one container port twice:
    the web server and /metrics cannot both listen there, so the pod exited at start, for ever."""
    message = render_error(helm, f"console.port={CONSOLE.metrics_port}")
    assert f"console.port={CONSOLE.metrics_port}" in message and "/metrics" in message
    # Port 0 binds a port nobody knows: the probes and the Service miss it.
    assert "console.port=0" in render_error(helm, "console.port=0")
    render(helm, "console.port=8080")


def test_the_documented_scene_library_values_start_the_generator_stage_with_photo_scenes(
    helm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/deploy.md gave SKUFORGE_SCENES_URI to the Triton pod alone (triton.env), but the generator
    stage checks photo-scene parameters against it too: with {"scene": "photo"} in
    SKUFORGE_GENERATION_PARAMETERS, the values the page shows stopped the stage at start ("scene 'photo'
    needs a scene library: set SKUFORGE_SCENES_URI"), for ever."""
    section = (REPO / "docs" / "deploy.md").read_text().split("\n### A scene library\n", 1)[1]
    example = yaml.safe_load(section.split("```\n", 2)[1])
    example.setdefault("settings", {})["SKUFORGE_GENERATION_PARAMETERS"] = '{"scene": "photo"}'
    values = tmp_path / "scenes.yaml"
    values.write_text(yaml.safe_dump(example))
    docs = render(helm, files=[values], model=False)
    for deployment in ("rel-skuforge-generator", "rel-skuforge-triton"):
        for name in [name for name in os.environ if name.upper().startswith(ENV_PREFIX)]:
            monkeypatch.delenv(name)
        for name, value in pod_env(docs, deployment).items():
            monkeypatch.setenv(name, value)
        generation = load_settings(GenerationSettings)  # a ConfigError here: the pod exits at start
        assert generation.scenes_uri == "s3://acme-skuforge/scenes", deployment


def test_the_deployment_alerts_of_two_installs_and_two_deployments_go_out_apart(
    helm: str, tmp_path: Path, promtool_bin: str
) -> None:
    """The chart's deployment alerts (kube-state-metrics: no `release` label) carried only a namespace
    and the Deployment's name, which Alertmanager does not group by: two installs in one namespace, and
    two Deployments of one install, went out as one notification, though alertmanager.yml keeps installs
    and places apart. promtool runs the rendered rules of "staging" and "prod" in one namespace."""
    from devstack.prometheus import promtool

    series, files = [], []
    for release in ("staging", "prod"):
        (rule,) = [
            doc for doc in render(helm, release=release, namespace="shop") if doc["kind"] == "PrometheusRule"
        ]
        (tmp_path / f"{release}.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        files.append(f"{release}.yml")
    unavailable = [("staging", "gate"), ("staging", "console"), ("prod", "gate")]
    for release, component in unavailable:
        labels = f'namespace="shop", deployment="{release}-skuforge-{component}"'
        series.append(
            {"series": f"kube_deployment_status_replicas_unavailable{{{labels}}}", "values": "1x30"}
        )
    alerts = [
        {
            "exp_labels": {
                "severity": "ticket",
                "namespace": "shop",
                "release": release,
                "deployment": f"{release}-skuforge-{component}",
            },
            "exp_annotations": {
                "summary": f"{release}-skuforge-{component} has had unavailable pods for 15 minutes",
                "runbook": rule_annotation(tmp_path / f"{release}.yml", "SkuforgePodsUnavailable", "runbook"),
            },
        }
        for release, component in unavailable
    ]
    tests = {
        "rule_files": files,
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": "SkuforgePodsUnavailable", "exp_alerts": alerts}
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # Each alert a notification of its own under alertmanager.yml's grouping.
    group_by = yaml.safe_load((REPO / "deploy" / "alertmanager" / "alertmanager.yml").read_text())["route"][
        "group_by"
    ]
    keys = {tuple(alert["exp_labels"].get(label) for label in ["alertname", *group_by]) for alert in alerts}
    assert len(keys) == len(alerts), keys


def rule_annotation(rules_file: Path, alert: str, key: str) -> str:
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    (rule,) = [rule for group in groups for rule in group["rules"] if rule.get("alert") == alert]
    return str(rule["annotations"][key])


def test_a_stage_without_autoscaling_runs_no_more_members_than_partitions(helm: str) -> None:
    """With KEDA on, maxReplicas above topicPartitions is refused; with autoscaling off, `replicas` above
    it rendered, and the extra members of the stage's group held no partition and sat idle."""
    message = render_error(helm, "stages.matting.autoscaling.enabled=false", "stages.matting.replicas=7")
    assert "stages.matting.replicas (7) is more than the 6 partitions matting consumes" in message, message
    message = render_error(helm, "stageDefaults.autoscaling.enabled=false", "stageDefaults.replicas=7")
    assert "replicas (7) is more than the 6 partitions" in message, message
    docs = render(helm, "stages.matting.autoscaling.enabled=false", "stages.matting.replicas=6")
    (matting,) = [
        doc
        for doc in docs
        if doc["metadata"]["name"] == "rel-skuforge-matting" and doc["kind"] == "Deployment"
    ]
    assert matting["spec"]["replicas"] == 6


@pytest.mark.parametrize("port", ["http", "grpc", "metrics"])
def test_a_triton_port_is_a_port(helm: str, port: str) -> None:
    """triton.ports were checked only for being alike: one outside 1-65535 rendered, and the API server
    refused the Triton Deployment and Service at install (Triton's settings refuse it too), as
    console.port's check says."""
    for value in ("0", "70000"):
        message = render_error(helm, f"triton.ports.{port}={value}")
        assert f"triton.ports.{port}={value} is no port" in message, message
        assert "from 1 to 65535" in message


def test_the_generator_pod_has_the_time_a_triton_request_takes(helm: str) -> None:
    """The generator stage's grace was a fixed 330 s for SKUFORGE_GENERATION_TRITON_TIMEOUT_S's 300 s:
    with the timeout raised, a pod stopped mid-request was killed before the request ended, and the
    batch in hand was never committed."""
    default_s = GenerationSettings.model_fields["generation_triton_timeout_s"].default
    for source in ("settings", "stageDefaults.env", "stages.generator.env"):
        message = render_error(helm, f"{source}.SKUFORGE_GENERATION_TRITON_TIMEOUT_S=600")
        assert f"{source}.SKUFORGE_GENERATION_TRITON_TIMEOUT_S=600" in message, message
        assert "stages.generator.terminationGracePeriodSeconds (330)" in message, message
    grace = "stages.generator.terminationGracePeriodSeconds"
    render(helm, "settings.SKUFORGE_GENERATION_TRITON_TIMEOUT_S=600", f"{grace}=630")
    # The default timeout (values.yaml's `settings`) is checked too: a grace cut below it lets the pod be
    # killed mid-request.
    message = render_error(helm, f"{grace}={int(default_s) + 29}")
    assert f"settings.SKUFORGE_GENERATION_TRITON_TIMEOUT_S={int(default_s)} does not fit" in message, message
    render(helm, f"{grace}={int(default_s) + 30}")


def test_a_scene_library_for_triton_alone_is_refused_with_photo_scene_parameters(helm: str) -> None:
    """triton.env.SKUFORGE_SCENES_URI rendered with photo-scene parameters, but the generator stage reads
    the settings, not triton.env: without a library it refused the parameters at start, for ever (where
    it asks for composite variants: test_deploy_review40.py)."""
    scenes = "triton.env.SKUFORGE_SCENES_URI=s3://acme-skuforge/scenes"
    composite = "triton.backends={composite}"
    for parameters in (r"\{\"scene\": \"photo\"\}", r"\{\"scene_key\": \"shelves/a.jpg\"\}"):
        message = render_error(
            helm, scenes, composite, f"settings.SKUFORGE_GENERATION_PARAMETERS={parameters}"
        )
        assert "triton.env.SKUFORGE_SCENES_URI" in message and "settings.SKUFORGE_SCENES_URI" in message, (
            message
        )
    # Under settings both pods get it; without photo scenes Triton's own library is fine.
    render(
        helm,
        "settings.SKUFORGE_SCENES_URI=s3://acme-skuforge/scenes",
        composite,
        r"settings.SKUFORGE_GENERATION_PARAMETERS=\{\"scene\": \"photo\"\}",
    )
    render(helm, scenes, composite, r"settings.SKUFORGE_GENERATION_PARAMETERS=\{\"scene\": \"plain\"\}")


def test_compose_keeps_the_console_logins_across_restarts() -> None:
    """Compose's console got no SKUFORGE_CONSOLE_SESSION_SECRET, so it signed its cookies with a key drawn
    at each start: every restart (restart: unless-stopped, `up -d` after a change) logged every reviewer
    out, though the stack keeps its task table on a volume. The shell's (or --env-file's) secret is passed
    on, and deploy.md's env file names it."""
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]["console"]
    # No value: compose passes the shell's, and leaves it unset (a secret per process) otherwise.
    assert "SKUFORGE_CONSOLE_SESSION_SECRET" in compose["environment"]
    assert compose["environment"]["SKUFORGE_CONSOLE_SESSION_SECRET"] is None
    section = (REPO / "docs" / "deploy.md").read_text().split("\n## One host: compose\n", 1)[1]
    # A key of its own, drawn once into the env file every command reads: none committed here.
    assert 'echo "SKUFORGE_CONSOLE_SESSION_SECRET=$(openssl rand -hex 32)" >> ~/skuforge.env' in section
