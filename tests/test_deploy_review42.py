"""The chart's pod resources and GPU limits, checked at render as the API server checks them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.helm import GPU, GPU_TOLERATION, render, render_error, require_helm


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


def main_container(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == deployment]
    container: dict[str, Any] = found["spec"]["template"]["spec"]["containers"][0]
    return container


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


def gpu_values(folder: Path, owner: str, quantity: str) -> Path:
    """A values file giving owner (stages.matting or triton) the GPU limit as written (a quoted
    "1" is a string, as --set-string gives it)."""
    values = folder / "gpu.yaml"
    parts = [*owner.split("."), "resources", "limits"]
    lines = [f"{'  ' * depth}{part}:" for depth, part in enumerate(parts)]
    values.write_text("\n".join(lines) + f"\n{'  ' * len(parts)}{GPU}: {quantity}\n")
    return values


# What the API server takes for an extended resource: any quantity of a whole value, however written
# (its check is MilliValue() % 1000 == 0, pkg/apis/core/validation ValidateResourceQuantityValue).
TAKEN = {
    "1000m": 1,
    '"1"': 1,
    "2": 2,
    '"2.0"': 2,
    "0.002k": 2,
    "1Ki": 1024,
    "0.5Ki": 512,
    '"1e1"': 10,
    "0": 0,
    '"+1"': 1,
    '"1000000000n"': 1,
    '"2000000u"': 2,
}
REFUSED = ["1500m", "0.5", "1001m", "0.1Ki", "1e-1", "soon", "-1", "1 ", "true", "2147483648"]


@pytest.mark.parametrize("quantity", list(TAKEN))
def test_a_gpu_limit_the_api_server_takes_is_taken(helm: str, tmp_path: Path, quantity: str) -> None:
    """A stage's `1000m` GPUs, which the API server takes as 1, was refused at render as no whole
    number; the limit reaches the pod as written, and the stage runs the CUDA image where it is some."""
    for owner in ("stages.matting", "triton"):
        docs = render(helm, files=[gpu_values(tmp_path, owner, quantity)])
        pod = main_container(docs, f"rel-skuforge-{owner.split('.')[-1]}")
        assert str(pod["resources"]["limits"][GPU]) == quantity.strip('"')
        if owner != "triton":
            assert pod["image"].endswith("-cuda") == (TAKEN[quantity] > 0)


@pytest.mark.parametrize("quantity", REFUSED)
def test_a_gpu_limit_the_api_server_refuses_is_refused_naming_its_key(helm: str, quantity: str) -> None:
    """Triton's GPU limit went unchecked: `1500m`, `soon` or -1 rendered, and the API server refused
    the Deployment at install, naming a manifest's field, not the chart's key."""
    for owner in ("stages.matting", "triton"):
        message = render_error(helm, f"{owner}.resources.limits.nvidia\\.com/gpu={quantity}")
        assert f"{owner}.resources.limits.{GPU}={quantity} is no whole number of GPUs" in message, message


def quantity_values(folder: Path, key: str, quantity: str) -> Path:
    """A values file giving key (e.g. triton.resources.requests.memory) the quantity as a string."""
    values = folder / "quantity.yaml"
    *parents, field = key.split(".")
    lines = [f"{'  ' * depth}{part}:" for depth, part in enumerate(parents)]
    values.write_text("\n".join(lines) + f'\n{"  " * len(parents)}{field}: "{quantity}"\n')
    return values


QUANTITY_KEYS = {
    "stageDefaults.resources.requests.cpu": "rel-skuforge-gate",
    "stages.matting.resources.limits.memory": "rel-skuforge-matting",
    "triton.resources.requests.memory": "rel-skuforge-triton",
    "console.resources.limits.memory": "rel-skuforge-console",
}


@pytest.mark.parametrize("key", list(QUANTITY_KEYS))
def test_a_quantity_the_api_server_takes_reaches_the_pod(helm: str, tmp_path: Path, key: str) -> None:
    """Signs, decimals, exponents and SI suffixes, as the API server parses a resource.Quantity. A limit
    is given its request too (the same), as a request over its limit is refused."""
    *owner, part, field = key.split(".")
    for quantity in ["500m", "1.5", "2Gi", "1e3", "+1"]:
        request = [f"{'.'.join(owner)}.requests.{field}={quantity}"] if part == "limits" else []
        docs = render(helm, *request, files=[quantity_values(tmp_path, key, quantity)])
        assert main_container(docs, QUANTITY_KEYS[key])["resources"][part][field] == quantity


@pytest.mark.parametrize("key", list(QUANTITY_KEYS))
def test_a_quantity_the_api_server_refuses_is_refused_naming_its_key(helm: str, key: str) -> None:
    """A request or limit of `20GB` or `soon` rendered, and the API server refused the Deployment at
    install, naming a manifest's field, not the chart's key."""
    for quantity in ["20GB", "soon", "1..5", "true"]:
        message = render_error(helm, f"{key}={quantity}")
        assert f"{key}={quantity} is no Kubernetes quantity" in message, message


def test_a_size_with_the_sign_the_api_server_takes_is_taken(helm: str, tmp_path: Path) -> None:
    """`+4Gi` (and a size in n or u) parses as a resource.Quantity: the render refused it as no size."""
    for quantity in ["+4Gi", "4000000000000u"]:
        docs = render(helm, files=[quantity_values(tmp_path, "triton.shmSize", quantity)])
        (triton,) = [
            d for d in docs if d["metadata"]["name"] == "rel-skuforge-triton" and d["kind"] == "Deployment"
        ]
        (shm,) = [v for v in triton["spec"]["template"]["spec"]["volumes"] if v["name"] == "dshm"]
        assert shm["emptyDir"]["sizeLimit"] == quantity


# --set keys: the dots in nvidia.com escaped.
REQUEST = r"resources.requests.nvidia\.com/gpu"
LIMIT = r"resources.limits.nvidia\.com/gpu"


@pytest.mark.parametrize("owner", ["stages.matting", "triton"])
def test_a_gpu_request_must_equal_its_limit(helm: str, owner: str) -> None:
    """The API server refuses a request of an extended resource other than its limit, or without one
    (no overcommit); the render took both, and the Deployment was refused at install."""
    message = render_error(helm, f"{owner}.{REQUEST}=2", f"{owner}.{LIMIT}=1")
    assert (
        f"{owner}.resources.requests.{GPU}=2 is not its limit ({owner}.resources.limits.{GPU}=1)" in message
    )
    message = render_error(helm, f"{owner}.{REQUEST}=1", f"{owner}.{LIMIT}=null")
    assert f"{owner}.resources.requests.{GPU}=1 has no limit" in message, message
    message = render_error(helm, f"{owner}.{REQUEST}=soon", f"{owner}.{LIMIT}=1")
    assert f"{owner}.resources.requests.{GPU}=soon is no whole number of GPUs" in message, message
    docs = render(helm, f"{owner}.{REQUEST}=1000m", f"{owner}.{LIMIT}=1")
    pod = main_container(docs, f"rel-skuforge-{owner.split('.')[-1]}")
    assert pod["resources"]["requests"][GPU] == "1000m"
    assert pod["image"].endswith("-cuda")


def test_a_default_gpu_request_is_named_as_the_default(helm: str) -> None:
    """A stage without a limit of its own taking stageDefaults' request is told where the request is."""
    message = render_error(helm, f"stageDefaults.{REQUEST}=1")
    assert f"stageDefaults.resources.requests.{GPU}=1 has no limit" in message, message


def triton_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-skuforge-triton"
    ]
    spec: dict[str, Any] = found["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("none", ["null", "0"])
def test_triton_without_a_gpu_runs_the_cpu_image_off_the_gpu_nodes(helm: str, none: str) -> None:
    """Triton kept the CUDA image and the GPU toleration with no GPU (composite alone), where a stage
    drops both: the recipe in docs/deploy.md set the image's tag and emptied the tolerations by hand."""
    docs = render(helm, f"triton.{LIMIT}={none}", "image.tag=0.1.0")
    pod = triton_pod(docs)
    assert pod["containers"][0]["image"].endswith(":0.1.0")
    assert "tolerations" not in pod


def test_triton_with_a_gpu_keeps_its_own_tolerations_and_the_gpu_one(helm: str) -> None:
    """As a stage's: the GPU toleration is added to the listed ones, unless they list one for its key."""
    spot = {"key": "spot", "operator": "Exists"}
    pod = triton_pod(render(helm, "triton.tolerations[0].key=spot", "triton.tolerations[0].operator=Exists"))
    assert pod["tolerations"] == [spot, GPU_TOLERATION]
    assert pod["containers"][0]["image"].endswith("-cuda")
    own = {"key": GPU, "operator": "Equal", "value": "present", "effect": "NoSchedule"}
    given = [f"triton.tolerations[0].{field}={value}" for field, value in own.items()]
    assert triton_pod(render(helm, *given))["tolerations"] == [own]


def test_a_default_quantity_is_named_as_the_default(helm: str) -> None:
    """A stage with limits of its own took stageDefaults' bad quantity into them: the message named
    the stage's key, which the values never set."""
    own = [
        f"stages.{stage}.resources.limits.memory=1Gi"
        for stage in ("captioner", "generator", "gate", "trainstore")
    ]
    message = render_error(helm, *own, "stageDefaults.resources.limits.cpu=soon")
    assert "stageDefaults.resources.limits.cpu=soon is no Kubernetes quantity" in message, message


FPGA = "example.com/fpga"
FPGA_REQUEST = r"resources.requests.example\.com/fpga"
FPGA_LIMIT = r"resources.limits.example\.com/fpga"


@pytest.mark.parametrize("owner", ["stages.matting", "triton", "console"])
def test_any_extended_resource_request_must_equal_its_limit(helm: str, owner: str) -> None:
    """The API server refuses a request of any extended resource (a name with a domain outside
    kubernetes.io) other than its limit, or without one, and one of no whole value, as for GPUs; the
    render checked nvidia.com/gpu alone, and took an FPGA request of 1 under a limit of 2 for the API
    server to refuse at install."""
    message = render_error(helm, f"{owner}.{FPGA_REQUEST}=1", f"{owner}.{FPGA_LIMIT}=2")
    assert (
        f"{owner}.resources.requests.{FPGA}=1 is not its limit ({owner}.resources.limits.{FPGA}=2)" in message
    )
    message = render_error(helm, f"{owner}.{FPGA_REQUEST}=1")
    assert f"{owner}.resources.requests.{FPGA}=1 has no limit" in message, message
    message = render_error(helm, f"{owner}.{FPGA_LIMIT}=1500m")
    assert f"{owner}.resources.limits.{FPGA}=1500m is no whole number" in message, message
    docs = render(helm, f"{owner}.{FPGA_REQUEST}=1000m", f"{owner}.{FPGA_LIMIT}=1")
    resources = main_container(docs, f"rel-skuforge-{owner.split('.')[-1]}")["resources"]
    assert (resources["requests"][FPGA], resources["limits"][FPGA]) == ("1000m", 1)
    # A kubernetes.io resource is native: its request may be under its limit.
    render(
        helm,
        rf"{owner}.resources.requests.example\.kubernetes\.io/x=1",
        rf"{owner}.resources.limits.example\.kubernetes\.io/x=2",
    )
