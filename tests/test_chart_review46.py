"""The chart's values.schema.json: a misspelt key or a wrong type is refused at render, naming the key,
instead of being ignored. And NOTES.txt's port-forward names the release's namespace."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.helm import CHART, REPO, render, render_error, require_helm


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


def values_file(tmp_path: Path, values: dict[str, object]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ("stageDefaults.autoscaling.maxReplica=3", "maxReplica"),
        ("monitorin.podMonitors=false", "monitorin"),
        ("stages.matting.autoscalng.enabled=false", "autoscalng"),
        ("stages.gate.resources.limit.memory=1Gi", "limit"),
        ("triton.modelcache.sizeLimit=1Gi", "modelcache"),
        ("triton.ports.https=8443", "https"),
        ("console.persistence.sise=2Gi", "sise"),
        ("topicsJob.activeDeadline=600", "activeDeadline"),
        ("image.pullpolicy=Always", "pullpolicy"),
    ],
)
def test_a_misspelt_key_is_refused_naming_it(helm: str, given: str, key: str) -> None:
    """`--set stageDefaults.autoscaling.maxReplica=3` or `monitorin.podMonitors=false` rendered as if
    never given: the stages kept scaling to 6 and the PodMonitors were still made, with no word."""
    message = render_error(helm, given)
    assert "values don't meet the specifications of the schema" in message, message
    parts = given.split("=")[0].split(".")
    where = "".join(f"/{part}" for part in parts[: parts.index(key)])
    assert f"at '{where}': additional properties '{key}' not allowed" in message, message


@pytest.mark.parametrize(
    ("given", "wrong"),
    [
        ("image.pullPolicy=Sometimes", "image.pullPolicy"),
        ("console.service.type=Ingress", "console.service.type"),
    ],
)
def test_a_value_outside_its_kubernetes_enum_is_refused_naming_it(helm: str, given: str, wrong: str) -> None:
    """The render took them and the API server refused the Deployment or Service at install."""
    message = render_error(helm, given)
    assert wrong.split(".")[-1] in message and "must be one of" in message, message


def test_every_kubernetes_enum_value_renders(helm: str) -> None:
    for policy in ["Always", "IfNotPresent", "Never"]:
        render(helm, f"image.pullPolicy={policy}")
    for kind in ["ClusterIP", "NodePort", "LoadBalancer"]:
        docs = render(helm, f"console.service.type={kind}")
        (service,) = [
            doc
            for doc in docs
            if doc["kind"] == "Service" and doc["metadata"]["name"] == "rel-skuforge-console"
        ]
        assert service["spec"]["type"] == kind


@pytest.mark.parametrize(
    "values",
    [
        {"console": {"enabled": "false"}},
        {"triton": {"enabled": "no"}},
        {"monitoring": {"podMonitors": "false"}},
        {"stages": {"matting": {"autoscaling": {"enabled": "false"}}}},
    ],
)
def test_a_switch_given_as_text_is_refused(helm: str, tmp_path: Path, values: dict[str, object]) -> None:
    """A values file's `enabled: "false"` is a non-empty string, true to the templates: the console or
    the PodMonitors were rendered while the values said off."""
    message = render_error(helm, files=[values_file(tmp_path, values)])
    assert re.search(r"got string, want (null or )?boolean", message), message


def test_the_documented_values_files_render(helm: str, tmp_path: Path) -> None:
    """Every ```yaml block and `cat > my-values.yaml` file in docs/deploy.md holds only keys the schema
    takes (each rendered on its own, over the defaults)."""
    text = (REPO / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    blocks += re.findall(r"cat > my-values.yaml <<'EOF'\n(.*?)EOF\n", text, re.S)
    blocks += re.findall(r"```\n(triton:\n.*?)```", text, re.S)
    assert len(blocks) >= 3, blocks
    for number, block in enumerate(blocks):
        values = yaml.safe_load(block)
        path = tmp_path / f"doc{number}.yaml"
        path.write_text(yaml.safe_dump(values))
        # A secret or a model the block leaves out comes from render's defaults (--set).
        render(helm, "secret.existingSecret=", files=[path])


def test_the_charts_own_values_pass_the_schema(helm: str) -> None:
    """values.yaml is the schema's first user: every key it defines is one the schema takes (helm lint)."""
    result = subprocess.run(
        [
            helm,
            "lint",
            str(CHART),
            "--strict",
            "--set",
            "secret.values.SKUFORGE_CONSOLE_USERS=a:b",
            "--set",
            "triton.env.SKUFORGE_DIFFUSION_MODEL=s3://m/x",
            "--kube-version",
            "1.33.0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def notes(helm: str, tmp_path: Path, *values: str, namespace: str) -> str:
    """NOTES.txt as `helm install` prints it: `helm template` leaves NOTES out and `install --dry-run`
    asks a cluster, so a copy of the chart renders it as a named template into a ConfigMap."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    text = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "notes-render.yaml").write_text(
        '{{- define "test.notes" }}' + text + "{{ end }}\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data: {notes: {{ include "test.notes" . | toJson }}}\n'
    )
    docs = render(helm, *values, chart=chart, namespace=namespace)
    (config,) = [doc for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "notes"]
    return str(config["data"]["notes"])


def test_the_notes_port_forward_names_the_release_namespace(helm: str, tmp_path: Path) -> None:
    """`kubectl port-forward svc/rel-skuforge-console ...` had no -n: run as printed, in another
    namespace than the release's, it answered 'services "rel-skuforge-console" not found'."""
    printed = notes(helm, tmp_path, namespace="shop")
    (line,) = [line.strip() for line in printed.splitlines() if "port-forward" in line]
    assert line == "kubectl -n shop port-forward svc/rel-skuforge-console 8087:8087", printed
