"""Review 47 of deploy/: the chart's values schema types its text values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.helm import render, render_error, require_helm, values_file


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


# The chart's values that are one piece of text (a name, a tag, a URI, a path); the sizes and durations
# the templates check themselves, naming what they take (tests/test_deploy_review40.py).
TEXT_KEYS = [
    "image.repository",
    "image.tag",
    "serviceAccount.name",
    "kafka.bootstrap",
    "kafka.kedaAuthenticationRef",
    "topicNamespace",
    "consumerGroupPrefix",
    "storeUri",
    "secret.existingSecret",
    "stageDefaults.image.tag",
    "stages.gate.image.tag",
    "triton.image.tag",
    "triton.modelCache.existingClaim",
    "triton.modelCache.mountPath",
    "console.persistence.existingClaim",
    "console.persistence.storageClass",
]


@pytest.mark.parametrize("key", TEXT_KEYS)
@pytest.mark.parametrize("given", [123, 1.10, {"name": "x"}, ["x"]])
def test_a_text_value_given_a_number_or_a_map_is_refused_naming_it(
    helm: str, tmp_path: Path, key: str, given: object
) -> None:
    """`image.repository: 123` failed later as a YAML parse error in console.yaml, `image.tag: 1.10` ran
    the image "skuforge:1.1" and `image.tag: {name: x}` "skuforge:map[name:x]", a numeric
    kedaAuthenticationRef or storageClass went to the API server as a number: the schema says where."""
    values = values_file(tmp_path, key, given)
    message = render_error(helm, files=[values])
    assert "values don't meet the specifications of the schema" in message, message
    where = "".join(f"/{part}" for part in key.split("."))
    assert re.search(rf"at '{where}': got \w+, want (null or )?string", message), message


@pytest.mark.parametrize("key", TEXT_KEYS)
def test_each_text_value_still_takes_text(helm: str, key: str) -> None:
    """The types refuse what is not text, and nothing that is."""
    fine = {"triton.modelCache.mountPath": "/var/cache/sf"}
    docs = render(helm, f"{key}={fine.get(key, 'sf-1')}")
    assert docs
