"""Rendering the Helm chart with a real ``helm`` (``make helm`` builds it from Go modules): the tests
skip without it, and fail without it when ``SKUFORGE_REQUIRE_HELM`` is set, as in CI."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "skuforge"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a recent one.
KUBE_VERSIONS = ("1.27.0", "1.33.0")
# The console needs reviewers (the render refuses it without them); later --set values may override.
REVIEWERS = "secret.values.SKUFORGE_CONSOLE_USERS=alice:pw"
MODEL = "triton.env.SKUFORGE_DIFFUSION_MODEL=s3://models/sd15-inpaint"
# The toleration the chart gives a pod that asks for a GPU, for nodes tainted GPU:NoSchedule.
GPU = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}


def helm_binary() -> str | None:
    """``SKUFORGE_HELM``, else ``helm`` on PATH, else the one ``make helm`` builds, else Go's bin."""
    candidates = [
        os.environ.get("SKUFORGE_HELM"),
        shutil.which("helm"),
        str(REPO / "var" / "tools" / "helm"),
        str(Path.home() / "go" / "bin" / "helm"),
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def require_helm() -> str:
    """The helm binary, for a module's ``helm`` fixture; skips the test (fails it in CI) without one."""
    path = helm_binary()
    if path is None:
        message = (
            "helm not found: `make helm` builds it (go install helm.sh/helm/v3/cmd/helm) into var/tools/"
        )
        if os.environ.get("SKUFORGE_REQUIRE_HELM"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def render(
    helm: str,
    *values: str,
    kube_version: str = KUBE_VERSIONS[-1],
    reviewers: bool = True,
    model: bool = True,
    release: str = "rel",
    namespace: str = "default",
    files: Sequence[Path] = (),
    chart: Path = CHART,
) -> list[dict[str, Any]]:
    """``helm template`` of ``chart`` with values ``files`` and ``--set`` values (which win); the
    manifests as dicts (fails with helm's message)."""
    command = [helm, "template", release, str(chart), "--kube-version", kube_version, "-n", namespace]
    for file in files:
        command += ["-f", str(file)]
    for value in [REVIEWERS] * reviewers + [MODEL] * model + list(values):
        command += ["--set", value]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(
    helm: str,
    *values: str,
    reviewers: bool = True,
    model: bool = True,
    files: Sequence[Path] = (),
    chart: Path = CHART,
) -> str:
    """helm's message for values (files, then ``--set``) the render of ``chart`` refuses (fails the
    test if it renders)."""
    command = [helm, "template", "rel", str(chart), "--kube-version", KUBE_VERSIONS[-1]]
    for file in files:
        command += ["-f", str(file)]
    for value in [REVIEWERS] * reviewers + [MODEL] * model + list(values):
        command += ["--set", value]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, "the render should have failed"
    return result.stderr


def nested(key: str, value: object) -> dict[str, object]:
    """``{"a": {"b": value}}`` for the key ``a.b``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    assert isinstance(value, dict)
    return value


def values_file(folder: Path, key: str, value: object) -> Path:
    """A values file ``folder / "values.yaml"`` that gives the key ``key`` (``a.b``) ``value`` alone."""
    values = folder / "values.yaml"
    values.write_text(yaml.safe_dump(nested(key, value)))
    return values


def pod_env(docs: list[dict[str, Any]], deployment: str) -> dict[str, str]:
    """The variables a Deployment's container starts with: the ConfigMap, the Secret, then its env."""
    env = dict(next(doc for doc in docs if doc["kind"] == "ConfigMap")["data"])
    env |= next(doc for doc in docs if doc["kind"] == "Secret").get("stringData") or {}
    (deployed,) = [
        doc for doc in docs if doc["kind"] == "Deployment" and doc["metadata"]["name"] == deployment
    ]
    (container,) = deployed["spec"]["template"]["spec"]["containers"]
    return env | {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
