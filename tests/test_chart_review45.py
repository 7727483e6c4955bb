"""Huge pages in a pod's resources, held at render to what the API server holds at install: a whole
number of pages, and beside a cpu or memory request or limit."""

from __future__ import annotations

import pytest

from tests.support.helm import render, render_error, require_helm

HUGE = "hugepages-2Mi"
OWNERS = ["stages.matting", "triton", "console"]


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


def huge_pages(owner: str, quantity: str, name: str = HUGE) -> list[str]:
    """--set values asking for quantity of name, as the limit and the request (which must be equal)."""
    return [f"{owner}.resources.limits.{name}={quantity}", f"{owner}.resources.requests.{name}={quantity}"]


@pytest.mark.parametrize("owner", OWNERS)
def test_huge_pages_that_are_no_whole_number_of_pages_are_refused(helm: str, owner: str) -> None:
    """3Mi of 2Mi pages rendered, and the API server refused the pod at install ('3Mi is not positive
    integer multiple of hugepages-2Mi'): helm install said OK and the Deployment made no pod."""
    for quantity in ["3Mi", "1", "2.5Mi", "2097153"]:
        message = render_error(helm, *huge_pages(owner, quantity))
        assert f"{owner}.resources.limits.{HUGE}={quantity} is no whole number of 2Mi pages" in message, (
            quantity,
            message,
        )
    message = render_error(
        helm, *huge_pages(owner, "1Gi", "hugepages-1Gi"), f"{owner}.resources.limits.{HUGE}=1Mi"
    )
    assert f"{owner}.resources.limits.{HUGE}=1Mi is no whole number of 2Mi pages" in message, message


@pytest.mark.parametrize("owner", OWNERS)
def test_huge_pages_of_a_whole_number_of_pages_render(helm: str, owner: str) -> None:
    """Compared as bytes, whatever the units: 4Mi, 4194304 and 4.194304M are each two 2Mi pages."""
    for quantity in ["4Mi", "4194304", "4.194304M", "0"]:
        docs = render(helm, *huge_pages(owner, quantity))
        (deployment,) = [
            d
            for d in docs
            if d["kind"] == "Deployment" and d["metadata"]["name"] == f"rel-skuforge-{owner.split('.')[-1]}"
        ]
        limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert str(limits[HUGE]) == quantity
    render(helm, *huge_pages(owner, "2Gi", "hugepages-1Gi"))


def test_a_huge_pages_name_that_names_no_page_size_is_refused(helm: str) -> None:
    """hugepages-big (or of no whole bytes) is no page size: the API server refuses any quantity of it."""
    for name in ["hugepages-big", "hugepages-0", "hugepages-1m"]:
        message = render_error(helm, *huge_pages("console", "2Mi", name))
        assert f"console.resources.limits.{name}=2Mi names no page size" in message, (name, message)


@pytest.mark.parametrize("owner", ["stages.matting", "console"])
def test_huge_pages_without_cpu_or_memory_are_refused(helm: str, owner: str) -> None:
    """The API server refuses a container whose huge pages come with no cpu or memory, in its requests or
    its limits ('HugePages require cpu or memory'); the render took it."""
    bare = [f"{owner}.resources.requests=null", f"{owner}.resources.limits.memory=null"]
    if owner.startswith("stages."):
        bare += ["stageDefaults.resources.requests=null", "stageDefaults.resources.limits.memory=null"]
    message = render_error(helm, *bare, f"{owner}.resources.limits.{HUGE}=2Mi")
    assert f"{owner}.resources.limits.{HUGE}=2Mi asks for huge pages with no cpu or memory" in message, (
        message
    )
    # A memory limit alone is enough.
    render(helm, *bare, f"{owner}.resources.limits.{HUGE}=2Mi", f"{owner}.resources.limits.memory=1Gi")
