"""Review 46 of deploy/: what the chart's alerts say matches what they wait for."""

from __future__ import annotations

from typing import Any

import pytest

from shared.generation.backend import BACKEND_NAMES
from tests.support.helm import render, render_error, require_helm


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


def _alerts(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    rules = [doc for doc in docs if doc["kind"] == "PrometheusRule"]
    assert len(rules) == 1
    return {r["alert"]: r for group in rules[0]["spec"]["groups"] for r in group["rules"] if "alert" in r}


@pytest.mark.parametrize(("startup_s", "minutes"), [(300, 15), (1800, 30), (1801, 31)])
def test_triton_downs_summary_names_the_wait_the_chart_gives_it(
    helm: str, startup_s: int, minutes: int
) -> None:
    """The chart waits triton.startupSeconds (rounded up to minutes) before SkuforgeTritonDown fires where
    that is longer than 15 minutes, but its page still said "has not answered /metrics for 15 minutes"
    after 30: the on-call read a wait the alert does not have."""
    alert = _alerts(render(helm, f"triton.startupSeconds={startup_s}"))["SkuforgeTritonDown"]
    assert alert["for"] == f"{minutes}m"
    summary = alert["annotations"]["summary"]
    assert f"for {minutes} minutes" in summary, summary
    if minutes != 15:
        assert "15 minutes" not in summary, summary


# The chart's own names, which KEDA's triggers and the topics Job use as given, while the pods read a blank
# setting as unset (their default) and refuse one with spaces around it.
NAMES = ["kafka.bootstrap", "consumerGroupPrefix", "storeUri"]


@pytest.mark.parametrize("key", NAMES)
@pytest.mark.parametrize("given", ["", " ", "null"])
def test_a_blank_kafka_bootstrap_group_prefix_or_store_is_refused_at_render(
    helm: str, key: str, given: str
) -> None:
    """consumerGroupPrefix "" rendered KEDA's triggers on the lag of ".captioner", a group nobody consumes
    in, while the pods, reading the empty SKUFORGE_CONSUMER_GROUP_PREFIX as unset, ran in
    "skuforge.captioner"; a blank storeUri gave each pod its own folder (file://./var/store), the very
    failure the chart refuses a file:// store for; a blank kafka.bootstrap sent every pod to 127.0.0.1."""
    message = render_error(helm, f"{key}={given}")
    assert f"{key} is empty" in message, message


@pytest.mark.parametrize("key", NAMES)
def test_a_name_with_spaces_around_it_is_refused_at_render(helm: str, key: str) -> None:
    """The pods refuse it at start ("has spaces around it"), after helm install said OK."""
    message = render_error(helm, f"{key}=kafka:9092 ")
    assert f'{key}="kafka:9092 " has spaces around it' in message, message


def test_a_topic_namespace_kafka_would_refuse_is_refused_at_render(helm: str) -> None:
    """The pods refuse a topicNamespace outside Kafka's topic-name characters at start; the render said OK."""
    message = render_error(helm, "topicNamespace=shop/staging.")
    assert 'topicNamespace="shop/staging." holds characters Kafka refuses in a topic name' in message, message
    # null rendered KEDA's topics as "%!s(<nil>)sku.ingested.v1".
    assert "topicNamespace is null" in render_error(helm, "topicNamespace=null")
    # What Kafka takes renders, the empty namespace (the default) too.
    for given in ["staging.", "shop_1-x.", ""]:
        assert render(helm, f"topicNamespace={given}")


def test_triton_backends_are_checked_against_the_backends_skuforge_has(helm: str) -> None:
    """triton.backends={diffusio} rendered `serve generator --backend diffusio`, and told the generator
    stage to use "diffusio": Triton's pod exited at start on argparse's choice error and the generator
    stage on its setting, after helm install said OK. A name given alone (not a list) went through too."""
    message = render_error(helm, "triton.backends={diffusio}")
    assert (
        f'triton.backends: no such backend "diffusio"; the backends are {", ".join(BACKEND_NAMES)}' in message
    )
    message = render_error(helm, "triton.backends=composite")
    assert "triton.backends is a string, not a list: give a list ({composite})" in message, message
    # Every backend skuforge has renders, alone and together.
    for backends in ["{composite}", "{diffusion}", "{composite,diffusion}"]:
        assert render(helm, f"triton.backends={backends}")
