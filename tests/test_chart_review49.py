"""Review 49 of the chart: values.schema.json's edge cases. An empty list where a map of yours belongs
(`podAnnotations: []`) rendered before review 48's schema refused it: it is taken as the empty map again
where that renders the same; a section's field left null is refused naming it, not as a default's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.helm import CHART, nested, render, render_error, require_helm


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


# Neither the reviewers' nor the model's --set (helm cannot --set into a list): the same from a file.
BASE: dict[str, Any] = {
    "secret": {"existingSecret": "skuforge"},
    "triton": {"env": {"SKUFORGE_DIFFUSION_MODEL": "s3://models/sd15-inpaint"}},
}


def _merged(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _file(folder: Path, name: str, key: str, value: object) -> Path:
    """A values file giving ``key`` ``value`` beside BASE (``key`` wins)."""
    values = nested(key, value)
    if key == "triton.env":
        # triton.env empty names no model: serve composite alone.
        values = _merged(values, {"triton": {"backends": ["composite"]}})
        base = {"secret": BASE["secret"]}
    else:
        base = BASE
    path = folder / name
    path.write_text(yaml.safe_dump(_merged(base, values)))
    return path


# The maps that are yours to fill and empty by default: Helm merges a values file's `{}` into the
# chart's empty map and keeps a `[]` as it is, which the templates read as none alike.
EMPTY_BY_DEFAULT = [
    "serviceAccount.annotations",
    "podAnnotations",
    "secret.values",
    "stageDefaults.env",
    "stageDefaults.nodeSelector",
    "stageDefaults.affinity",
    "stages.gate.nodeSelector",
    "stages.gate.affinity",
    "triton.nodeSelector",
    "triton.affinity",
    "triton.env",
    "console.env",
    "monitoring.labels",
    "monitoring.ruleLabels",
]


@pytest.mark.parametrize("key", EMPTY_BY_DEFAULT)
def test_an_empty_list_renders_as_the_empty_map(helm: str, tmp_path: Path, key: str) -> None:
    """`podAnnotations: []` rendered as `{}` before review 48; its schema refused it ("got array,
    want null or object"), failing upgrades of values files that had worked."""
    as_map = render(helm, reviewers=False, model=False, files=[_file(tmp_path, "map.yaml", key, {})])
    as_list = render(helm, reviewers=False, model=False, files=[_file(tmp_path, "list.yaml", key, [])])
    assert as_list == as_map


@pytest.mark.parametrize("key", EMPTY_BY_DEFAULT)
def test_a_list_with_items_is_still_refused_naming_it(helm: str, tmp_path: Path, key: str) -> None:
    message = render_error(helm, reviewers=False, model=False, files=[_file(tmp_path, "v.yaml", key, ["a"])])
    where = "".join(f"/{part}" for part in key.split("."))
    assert f"at '{where}': got array, want null or object" in message, message
    assert f"at '{where}': maxItems: got 1, want 0" in message, message


# The maps the chart fills by default: Helm keeps a `[]` in place of the chart's map, where `{}` is
# merged into it, so `settings: []` would drop SKUFORGE_LOG_FORMAT and the Triton timeout, and
# `podSecurityContext: []` run the pods as root: refused, naming the key (give {} or the keys to drop).
FILLED_BY_DEFAULT = ["settings", "stages.matting.env", "podSecurityContext", "securityContext"]


@pytest.mark.parametrize("key", FILLED_BY_DEFAULT)
def test_an_empty_list_over_a_filled_map_is_refused_naming_it(helm: str, tmp_path: Path, key: str) -> None:
    message = render_error(helm, reviewers=False, model=False, files=[_file(tmp_path, "v.yaml", key, [])])
    where = "".join(f"/{part}" for part in key.split("."))
    assert f"at '{where}': got array, want null or object" in message, message


def _scaled_object(docs: list[dict[str, Any]], stage: str) -> dict[str, Any] | None:
    found = [doc for doc in docs if doc["kind"] == "ScaledObject" and doc["metadata"]["name"].endswith(stage)]
    return found[0] if found else None


def _null_refused_as_missing(helm: str, tmp_path: Path, key: str) -> list[str]:
    """Asserts that ``key`` given null, in a values file and with --set, is refused as a missing property
    of its parent, at the parent's path; the two refusals."""
    *parents, name = key.split(".")
    where = "".join(f"/{part}" for part in parents)
    file = tmp_path / "v.yaml"
    file.write_text(yaml.safe_dump(_merged(BASE, nested(key, None))))
    messages = [
        render_error(helm, reviewers=False, model=False, files=[file]),
        render_error(helm, f"{key}=null"),
    ]
    for message in messages:
        assert f"at '{where}': missing property '{name}'" in message, message
    return messages


@pytest.mark.parametrize("key", ["stageDefaults.autoscaling", "stageDefaults.autoscaling.enabled"])
def test_the_default_autoscaling_left_null_is_refused_naming_it(helm: str, tmp_path: Path, key: str) -> None:
    """`stageDefaults.autoscaling: null` was refused as "stageDefaults.autoscaling.activationLagThreshold=null
    is no whole number", naming a field the user never wrote; its `enabled: null` turned KEDA off for
    every stage, without a word. Helm drops a key given null: the schema names it as missing."""
    for message in _null_refused_as_missing(helm, tmp_path, key):
        assert "activationLagThreshold" not in message, message


def test_a_stage_autoscaling_left_null_takes_the_defaults(helm: str) -> None:
    """A stage's null is no override: the stage scales as stageDefaults says (generator's lag threshold,
    4 in values.yaml, back to the default)."""
    scaled = _scaled_object(render(helm, "stages.generator.autoscaling=null"), "generator")
    assert scaled is not None
    (trigger, *_) = scaled["spec"]["triggers"]
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["stageDefaults"]["autoscaling"]
    assert trigger["metadata"]["lagThreshold"] == str(defaults["lagThreshold"])


def test_a_stage_autoscaling_switch_left_null_takes_the_default(helm: str, tmp_path: Path) -> None:
    """`stages.gate.autoscaling.enabled: null` (a key values.yaml's gate lacks, so Helm keeps the null)
    turned KEDA off for the gate alone, without a word; it is stageDefaults' (on), as for a null
    autoscaling."""
    file = _file(tmp_path, "v.yaml", "stages.gate.autoscaling.enabled", None)
    for docs in [render(helm, "stages.gate.autoscaling.enabled=null"), render(helm, files=[file])]:
        scaled = _scaled_object(docs, "gate")
        assert scaled is not None
        (trigger, *_) = scaled["spec"]["triggers"]
        assert trigger["metadata"]["lagThreshold"] == "200"  # the gate's own, kept


# The chart's switches whose null Helm keeps as none: each read as false, without a word. Triton, the
# console, the topics Job, the monitors and the ServiceAccount were left out of the render, static
# membership off, and `automountServiceAccountToken:` rendered empty, which Kubernetes takes as true:
# every pod got an API token it was meant not to have.
SWITCHES = [
    "staticMembership",
    "serviceAccount.create",
    "serviceAccount.automountToken",
    "triton.enabled",
    "console.enabled",
    "topicsJob.enabled",
    "monitoring.podMonitors",
    "monitoring.prometheusRule",
]


@pytest.mark.parametrize("key", SWITCHES)
def test_a_switch_left_null_is_refused_naming_it(helm: str, tmp_path: Path, key: str) -> None:
    _null_refused_as_missing(helm, tmp_path, key)
