"""Review 48 of the chart: a map the templates read, left null (or given a non-map), is refused by
values.schema.json naming it, not by a Go nil-pointer error from deep inside a template."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.helm import render_error, require_helm, values_file


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


# The maps whose keys the templates read: each left null rendered no manifest but a "nil pointer
# evaluating interface {}.enabled" (or "nil is not a command", "wrong type for value") naming a
# template line, not the value.
MAPS = [
    "image",
    "serviceAccount",
    "kafka",
    "secret",
    "stageDefaults",
    "stages",
    "triton",
    "triton.image",
    "triton.ports",
    "triton.modelCache",
    "console",
    "console.service",
    "console.persistence",
    "topicsJob",
    "monitoring",
]


def _where(key: str) -> tuple[str, str]:
    """The schema's place of ``key``'s parent ("" at the top) and the key's own name."""
    *parents, name = key.split(".")
    return "".join(f"/{part}" for part in parents), name


def _file_error(helm: str, key: str, values: Path) -> str:
    """helm's message for the values file that gives ``key``: without the reviewers' or the model's
    --set where ``key`` is secret or triton (given into a null or a text, helm fails on the --set)."""
    top = key.split(".")[0]
    return render_error(helm, reviewers=top != "secret", model=top != "triton", files=[values])


@pytest.mark.parametrize("key", MAPS)
def test_a_map_left_null_is_refused_naming_it(helm: str, tmp_path: Path, key: str) -> None:
    """`topicsJob: null` in a values file (or `--set topicsJob=null`): helm drops the key, and the
    templates stopped on `<.Values.topicsJob.enabled>: nil pointer evaluating interface {}.enabled`."""
    values = values_file(tmp_path, key, None)
    where, name = _where(key)
    for message in [_file_error(helm, key, values), render_error(helm, f"{key}=null")]:
        assert "values don't meet the specifications of the schema" in message, message
        assert f"at '{where}': missing property '{name}'" in message, message
        assert "nil pointer" not in message, message


@pytest.mark.parametrize("key", MAPS)
def test_a_map_given_as_text_is_refused_naming_it(helm: str, tmp_path: Path, key: str) -> None:
    """`topicsJob: off` stopped on `can't evaluate field enabled in type interface {}`."""
    values = values_file(tmp_path, key, "off")
    message = _file_error(helm, key, values)
    where = "".join(f"/{part}" for part in key.split("."))
    assert f"at '{where}': got string, want object" in message, message


# The maps and lists the templates range over or render as they are: given text, each stopped the render
# on Go's "range can't iterate over off" or "can't evaluate field env in type string", or a YAML parse
# error in a manifest naming neither (`monitoring.labels: off`), or went into a manifest for the API
# server to refuse (`nodeSelector: off`). Null stays theirs: none.
NESTED = [
    "imagePullSecrets",
    "serviceAccount.annotations",
    "podAnnotations",
    "settings",
    "secret.values",
    "stageDefaults.image",
    "stageDefaults.env",
    "stageDefaults.nodeSelector",
    "stageDefaults.tolerations",
    "stageDefaults.affinity",
    "stageDefaults.autoscaling",
    "stages.matting",
    "stages.matting.image",
    "stages.matting.env",
    "stages.gate.tolerations",
    "stages.generator.autoscaling",
    "triton.nodeSelector",
    "triton.tolerations",
    "triton.affinity",
    "triton.env",
    "console.persistence.accessModes",
    "console.env",
    "monitoring.labels",
    "monitoring.ruleLabels",
    "podSecurityContext",
    "securityContext",
    "extraVolumes",
    "extraVolumeMounts",
]


@pytest.mark.parametrize("key", NESTED)
def test_a_nested_map_or_list_given_as_text_is_refused_naming_it(helm: str, tmp_path: Path, key: str) -> None:
    """`stages.matting: off` stopped on "can't evaluate field env in type string" in _helpers.tpl, naming
    neither the stage nor the value; the schema names where a map or list was given text."""
    values = values_file(tmp_path, key, "off")
    message = _file_error(helm, key, values)
    where = "".join(f"/{part}" for part in key.split("."))
    assert re.search(rf"at '{where}': got string, want (null or )?(object|array)", message), message
