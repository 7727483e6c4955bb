"""The chart's quantities, held to what Kubernetes holds, and each request to its limit, at render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.helm import render, render_error, require_helm


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


def quantity_values(folder: Path, key: str, quantity: str) -> Path:
    """A values file giving key (e.g. triton.resources.requests.memory) the quantity as a string."""
    values = folder / "quantity.yaml"
    *parents, field = key.split(".")
    lines = [f"{'  ' * depth}{part}:" for depth, part in enumerate(parents)]
    values.write_text("\n".join(lines) + f'\n{"  " * len(parents)}{field}: "{quantity}"\n')
    return values


def resources_of(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == deployment]
    resources: dict[str, Any] = found["spec"]["template"]["spec"]["containers"][0]["resources"]
    return resources


# A key of each kind of quantity the chart renders: a stage's, Triton's and the console's resources, and
# the sizes of skuforge.texts (Triton's /dev/shm and model cache, the console's claim).
BYTES = [
    "stages.matting.resources.limits.memory",
    "triton.resources.requests.memory",
    "console.resources.limits.memory",
    "stageDefaults.resources.requests.ephemeral-storage",
    "triton.shmSize",
    "triton.modelCache.sizeLimit",
    "console.persistence.size",
]
# Past 2^63-1 bytes: the API server keeps each text, and reads its value into an int64 it overflows
# (1e999, 1e40, 10E), or cuts it to 2^63-1 (9Ei, and 8Ei, 2^63 itself).
PAST = ["1e999", "1e40", "10E", "9Ei", "8Ei", "9223372036854775808", "9223372036854775.808k"]


@pytest.mark.parametrize("key", BYTES)
def test_a_quantity_past_what_kubernetes_holds_is_refused_naming_its_key(
    helm: str, tmp_path: Path, key: str
) -> None:
    """`memory: 1e999` passed the chart's check (a quantity the API server parses) and went into the pod
    for the scheduler and the kubelet to read as another value."""
    for quantity in PAST:
        message = render_error(helm, files=[quantity_values(tmp_path, key, quantity)])
        assert f"{key}={quantity} is past the largest quantity Kubernetes holds (2^63-1 bytes" in message, (
            quantity,
            message,
        )


def test_a_quantity_up_to_what_kubernetes_holds_is_taken(helm: str, tmp_path: Path) -> None:
    """Up to 2^63-1 bytes, however written, and anything under 1n (rounded up to 1n) render as given."""
    taken = [
        ("limits", "9223372036854775807"),
        ("limits", "7Ei"),
        ("limits", "9.223372036854775807E"),
        ("limits", "9223372036854775807e0"),
        ("requests", "1e-30"),
    ]
    for part, quantity in taken:
        key = f"console.resources.{part}.memory"
        docs = render(helm, files=[quantity_values(tmp_path, key, quantity)])
        assert resources_of(docs, "rel-skuforge-console")[part]["memory"] == quantity


def test_a_cpu_past_what_kubernetes_holds_in_millicores_is_refused(helm: str, tmp_path: Path) -> None:
    """The kubelet reads cpu in millicores: 1e16 cores overflow them, 9223372036854775 do not."""
    key = "stageDefaults.resources.requests.cpu"
    for quantity in ["1e16", "9223372036854776", "9223372036854775808m"]:
        message = render_error(helm, files=[quantity_values(tmp_path, key, quantity)])
        assert f"{key}={quantity} is past the largest quantity Kubernetes holds (2^63-1 millicores" in message
    docs = render(helm, files=[quantity_values(tmp_path, key, "9223372036854775807m")])
    assert resources_of(docs, "rel-skuforge-gate")["requests"]["cpu"] == "9223372036854775807m"


MATTING = "stages.matting.resources"
# (values, the request over its limit, the limit), each as the message names it: the API server refuses
# such a pod at install.
OVER = [
    ([f"{MATTING}.requests.memory=4Gi"], f"{MATTING}.requests.memory=4Gi", f"{MATTING}.limits.memory=3Gi"),
    # 3222M is 3222000000 bytes, over 3Gi's 3221225472; 3221225473 by one byte.
    (
        [f"{MATTING}.requests.memory=3222M"],
        f"{MATTING}.requests.memory=3222M",
        f"{MATTING}.limits.memory=3Gi",
    ),
    (
        [f"{MATTING}.requests.memory=3221225473"],
        f"{MATTING}.requests.memory=3221225473",
        f"{MATTING}.limits.memory=3Gi",
    ),
    ([f"{MATTING}.limits.cpu=999m"], f"{MATTING}.requests.cpu=1", f"{MATTING}.limits.cpu=999m"),
    # The gate's own limit under stageDefaults' request: each named where it is set, also beside a
    # request of the gate's own.
    (
        ["stages.gate.resources.limits.memory=256Mi", "stages.gate.resources.requests.cpu=1"],
        "stageDefaults.resources.requests.memory=512Mi",
        "stages.gate.resources.limits.memory=256Mi",
    ),
    (
        ["stageDefaults.resources.requests.memory=3Gi"],
        "stageDefaults.resources.requests.memory=3Gi",
        "stageDefaults.resources.limits.memory=2Gi",
    ),
    (
        ["triton.resources.requests.memory=33Gi"],
        "triton.resources.requests.memory=33Gi",
        "triton.resources.limits.memory=32Gi",
    ),
    (
        ["console.resources.requests.cpu=1.5", "console.resources.limits.cpu=1"],
        "console.resources.requests.cpu=1.5",
        "console.resources.limits.cpu=1",
    ),
]


@pytest.mark.parametrize(("values", "over", "limit"), OVER)
def test_a_request_over_its_limit_is_refused_naming_both(
    helm: str, values: list[str], over: str, limit: str
) -> None:
    """`helm install` said OK to a memory request over its limit, and the API server refused the
    Deployment's pods (no pod, the ReplicaSet's FailedCreate event) long after."""
    message = render_error(helm, *values)
    assert f"{over} is over its limit ({limit})" in message, message


def test_a_request_up_to_its_limit_is_taken_whatever_its_units(helm: str) -> None:
    """Compared as values: 3221M, and 3221225472 (3Gi in bytes), are at most 3Gi; 1000m is 1, 1.5 is 1500m."""
    for request, limit in [("3221M", "3Gi"), ("3221225472", "3Gi"), ("3.221225472G", "3Gi")]:
        docs = render(
            helm,
            f"stages.matting.resources.requests.memory={request}",
            f"stages.matting.resources.limits.memory={limit}",
        )
        assert str(resources_of(docs, "rel-skuforge-matting")["requests"]["memory"]) == request
    for request, limit in [("1000m", "1"), ("1.5", "1500m"), ("0.5", "1")]:
        render(helm, f"console.resources.requests.cpu={request}", f"console.resources.limits.cpu={limit}")


HUGE = "hugepages-2Mi"


@pytest.mark.parametrize("owner", ["stages.matting", "triton", "console"])
def test_a_huge_pages_request_must_equal_its_limit(helm: str, owner: str) -> None:
    """Huge pages are not overcommitted: the API server refuses a request of them other than its limit,
    or without one, at install; the render took both."""
    message = render_error(helm, f"{owner}.resources.requests.{HUGE}=100Mi")
    limit = f"{owner}.resources.limits.{HUGE}"
    assert f"{owner}.resources.requests.{HUGE}=100Mi has no limit ({limit})" in message, message
    message = render_error(
        helm, f"{owner}.resources.requests.{HUGE}=100Mi", f"{owner}.resources.limits.{HUGE}=200Mi"
    )
    assert (
        f"{owner}.resources.requests.{HUGE}=100Mi is not its limit ({owner}.resources.limits.{HUGE}=200Mi)"
        in message
    ), message
    docs = render(
        helm, f"{owner}.resources.requests.{HUGE}=100Mi", f"{owner}.resources.limits.{HUGE}=104857600"
    )
    resources = resources_of(docs, f"rel-skuforge-{owner.split('.')[-1]}")
    assert (resources["requests"][HUGE], str(resources["limits"][HUGE])) == ("100Mi", "104857600")


def test_the_model_cache_requested_over_tritons_storage_limit_is_refused(helm: str) -> None:
    """Triton's ephemeral-storage request is the model cache's sizeLimit (20Gi) unless given: under a
    limit of 10Gi it rendered, and the API server refused the pod at install."""
    limit = "triton.resources.limits.ephemeral-storage"
    message = render_error(helm, f"{limit}=10Gi")
    assert (
        f"triton.modelCache.sizeLimit=20Gi is over {limit}=10Gi" in message
        and "triton.resources.requests.ephemeral-storage" in message
    ), message
    for given in ([f"{limit}=20Gi"], [f"{limit}=10Gi", "triton.resources.requests.ephemeral-storage=10Gi"]):
        docs = render(helm, *given)
        requests = resources_of(docs, "rel-skuforge-triton")["requests"]
        assert requests["ephemeral-storage"] == given[-1].split("=")[1]
