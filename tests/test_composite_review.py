"""Composite backend review: the light's gain and gradient together must leave every corner lit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from schemas.events import ImageGenerated
from shared.generation.backend import GenerationRequest
from shared.generation.composite import MIN_LIGHT_LEVEL, CompositeBackend, CompositeError, _Plan


def _request(**parameters: object) -> GenerationRequest:
    reference = np.full((100, 60, 3), 200, np.uint8)
    reference[10:90, 10:50] = (180, 40, 40)
    mask = np.zeros((100, 60), np.uint8)
    mask[10:90, 10:50] = 255
    return GenerationRequest(reference, mask, "", "", seed=1, n=1, parameters=dict(parameters), size=128)


def test_dim_light_with_a_steep_gradient_is_refused_naming_both_knobs() -> None:
    # Each knob within its own range, together a negative light in the top-left corner: the product
    # came out black with a negative colour gain, and the event failed only after its PNGs were stored.
    dark_corner = _request(
        light_gain=0.6, light_gradient=1.0, light_angle_deg=45.0, pos_x=0.0, pos_y=0.0, height_fraction=0.3
    )
    with pytest.raises(CompositeError, match=r"light_gain 0\.6 with light_gradient 1\b"):
        CompositeBackend().generate(dark_corner)
    # The stage's path: a refused row, no sample (so no PNG) to store.
    [outcome] = CompositeBackend().generate_many([dark_corner])
    assert isinstance(outcome, CompositeError)


def test_the_dimmest_light_allowed_still_lights_the_product() -> None:
    gradient = 0.77  # 0.6 - 0.77 * sqrt(0.5) = 0.055: just above the floor at the worst angle
    assert 0.6 - gradient * math.sqrt(0.5) >= MIN_LIGHT_LEVEL
    sample = CompositeBackend().generate(
        _request(
            light_gain=0.6,
            light_gradient=gradient,
            light_angle_deg=45.0,
            pos_x=0.0,
            pos_y=0.0,
            height_fraction=0.3,
        )
    )[0]
    gain = tuple(sample.parameters["applied_colour_gain"])
    assert ImageGenerated._positive_gain(gain) == gain
    assert sample.image[sample.expected_mask > 0].max() > 0


def test_drawn_plans_never_come_near_the_light_floor() -> None:
    for seed in range(2000):
        plan = _Plan.draw(np.random.default_rng(seed))
        assert plan.light_gain - plan.light_gradient * math.sqrt(0.5) > 0.5
        assert plan.override({}) == plan
