"""The chart's pod resources, checked at render as the API server checks them."""

from __future__ import annotations

import pytest

from tests.support.helm import render_error, require_helm


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


RESOURCES = [
    "stageDefaults.resources",
    "stageDefaults.resources.limits",
    "stages.matting.resources",
    "stages.matting.resources.limits",
    "stages.matting.resources.requests",
    "triton.resources",
    "triton.resources.limits",
    "console.resources",
    "console.resources.limits",
]


@pytest.mark.parametrize("key", RESOURCES)
@pytest.mark.parametrize(("given", "shown"), [("=soon", "soon"), ("=3", "3"), ("[0]=1", "[1]")])
def test_resources_that_are_no_map_are_refused_naming_their_key(
    helm: str, key: str, given: str, shown: str
) -> None:
    """A stage's resources (or limits) given a string, list or number stopped the render with Go's
    "can't evaluate field limits in type string" (_helpers.tpl, naming no value), and Triton's limits or
    the console's resources went into the manifest for the API server to refuse at install."""
    message = render_error(helm, f"{key}{given}")
    assert f"{key}={shown} is no map" in message, message
