"""Generator review 47: a ``height_fraction`` that places the product under 2 px tall on the canvas is
refused at start (the setting) and per request (the composite backend), naming the knob and its least
value: it was taken, and every variant came out a speck, or was refused as "its mask is too thin or
scattered to place (check the reference mask)", sending the operator to the photos. And the chart sets
``SKUFORGE_MAX_IMAGE_PIXELS``/``_BYTES`` once for every pod: set for some alone, a later stage refused
what an earlier one took."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shared.config import ConfigError, load_settings
from shared.generation.backend import GenerationRequest
from shared.generation.composite import MIN_PRODUCT_HEIGHT_PX, CompositeBackend, CompositeError
from shared.generation.settings import GenerationSettings
from tests.support.generation import FLAT
from tests.support.helm import pod_env, render, render_error, require_helm


def _request(parameters: dict[str, Any], size: int) -> GenerationRequest:
    """A red square product 40 px tall on grey."""
    reference = np.full((60, 60, 3), 200, np.uint8)
    reference[10:50, 10:50] = (180, 40, 40)
    mask = np.zeros(reference.shape[:2], np.uint8)
    mask[10:50, 10:50] = 255
    return GenerationRequest(reference, mask, "", "", seed=1, n=1, parameters=parameters, size=size)


@pytest.mark.parametrize("height_fraction", [1e-9, 0.001, 0.003])
def test_a_product_under_the_least_height_is_refused_naming_the_knob(height_fraction: float) -> None:
    """1e-9 was refused blaming the reference mask; 0.001 drew a product of one pixel, served."""
    with pytest.raises(CompositeError, match=r"height_fraction .* at least 0\.0039") as refused:
        CompositeBackend().generate(_request({**FLAT, "height_fraction": height_fraction}, 512))
    assert "reference mask" not in str(refused.value)


def test_the_least_height_is_served() -> None:
    size = 512
    least = MIN_PRODUCT_HEIGHT_PX / size
    [sample] = CompositeBackend().generate(_request({**FLAT, "height_fraction": least}, size))
    rows = np.flatnonzero(sample.expected_mask.any(axis=1))
    assert len(rows) >= 1


@pytest.mark.parametrize("size", [64, 512])
def test_a_setting_under_the_least_height_is_refused_at_start(size: int) -> None:
    """Taken at start, and every SKU's variants refused (or specks) one by one at run time. The least
    depends on the canvas: 0.01 is 5 px at 512 px and under 1 px at 64."""
    fraction = 1.5 / size
    with pytest.raises(ConfigError, match=r"height_fraction") as refused:
        load_settings(
            GenerationSettings,
            generation_size_px=size,
            generation_parameters=f'{{"height_fraction": {fraction}}}',
        )
    assert f"{size} px" in str(refused.value)
    load_settings(
        GenerationSettings,
        generation_size_px=size,
        generation_parameters=f'{{"height_fraction": {MIN_PRODUCT_HEIGHT_PX / size}}}',
    )


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


@pytest.mark.parametrize("key", ["SKUFORGE_MAX_IMAGE_PIXELS", "SKUFORGE_MAX_IMAGE_BYTES"])
@pytest.mark.parametrize("source", ["stages.matting.env", "stageDefaults.env", "console.env", "triton.env"])
def test_an_image_limit_set_for_some_pods_alone_is_refused_at_render(
    helm: str, source: str, key: str
) -> None:
    """Each pod reads images under its own limit: set lower for the matting alone, the generator drew and
    stored what the matting then dead-lettered (``too_many_pixels``), a stage late; set for the stages
    alone, the console and the generator's Triton server took what the stages refuse. The render says
    to set it once, under ``settings``, which every pod reads."""
    message = render_error(helm, f"{source}.{key}=1000000")
    assert f"{source}.{key}" in message
    assert f"settings.{key}" in message and "every pod" in message


@pytest.mark.parametrize("key", ["SKUFORGE_MAX_IMAGE_PIXELS", "SKUFORGE_MAX_IMAGE_BYTES"])
def test_an_image_limit_under_settings_reaches_every_pod(helm: str, key: str) -> None:
    docs = render(helm, f"settings.{key}=1000000")
    deployments = [doc["metadata"]["name"] for doc in docs if doc["kind"] == "Deployment"]
    assert len(deployments) > 3
    for deployment in deployments:
        assert pod_env(docs, deployment)[key] == "1000000", deployment
