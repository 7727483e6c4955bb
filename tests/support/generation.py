"""Generators for the generator stage's tests: backends called in this process, no Triton server.

``InProcessGenerator`` draws each variant as the Triton client would have the server draw it; a
backend's refusal raises. ``RefusingGenerator`` returns a refusal as the client does instead, for the
tests of what the stage does with the variants a backend refuses. ``triton_request`` is a request as
PyTriton hands it to the Triton model (``services/generator/server.py:GenerationModel``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from services.generator.client import refusal
from services.generator.protocol import VariantRequest, VariantResult
from shared.errors import BadInput
from shared.generation.backend import GenerationBackend, GenerationRequest

SIZE = 64


def triton_request(seeds: list[int], *, series: str = "") -> dict[str, Any]:
    """One Triton request with a row per seed, as PyTriton hands it to the model (``series``: the
    adapter is chosen by it)."""
    rows = len(seeds)

    def text(value: str) -> np.ndarray:
        return np.array([[value.encode()]] * rows, dtype=object)

    mask = np.zeros((rows, SIZE, SIZE), np.uint8)
    mask[:, 16:48, 16:48] = 255
    return {
        "reference": np.full((rows, SIZE, SIZE, 3), 200, np.uint8),
        "mask": mask,
        "prompt": text("a can"),
        "negative_prompt": text(""),
        "seed": np.array([[seed] for seed in seeds], dtype=np.int64),
        "parameters": text("{}"),
        "adapter_id": text(""),
        "series": text(series),
        "size": np.full((rows, 1), SIZE, np.int32),
    }


def generation_request(variant: VariantRequest) -> GenerationRequest:
    """The backend's request for one variant, from the fields the Triton client sends."""
    return GenerationRequest(
        reference=variant.reference,
        mask=variant.mask,
        prompt=variant.prompt,
        negative_prompt=variant.negative_prompt,
        seed=variant.seed,
        n=1,
        parameters=json.loads(variant.parameters_json),
        adapter_id=variant.adapter_id,
        series=variant.series,
        size=variant.size,
    )


class InProcessGenerator:
    """Backends called in this process, as the Triton client would call the server."""

    def __init__(self, *backends: GenerationBackend) -> None:
        self.backends = {backend.name: backend for backend in backends}

    def generate(self, backend: str, variants: Sequence[VariantRequest]) -> list[VariantResult | BadInput]:
        """One result per variant, in the order of ``variants``."""
        served = self.backends[backend]
        return [self.draw(served, generation_request(variant)) for variant in variants]

    def forget(self, backend: str, variants: Sequence[VariantRequest]) -> None:
        """Nothing is kept between calls here (``TritonGenerator.forget``)."""

    def draw(self, served: GenerationBackend, request: GenerationRequest) -> VariantResult | BadInput:
        """The one sample ``served`` draws for ``request``."""
        sample = served.generate(request)[0]
        parameters = json.dumps(sample.parameters)
        return VariantResult(
            sample.image, sample.expected_mask, parameters, sample.adapter_id, served.model_id
        )


class RefusingGenerator(InProcessGenerator):
    """As ``InProcessGenerator``, but a variant a backend refuses comes back as the Triton client
    returns it (``refusal`` of the server's ``"<kind>: <message>"``)."""

    def draw(self, served: GenerationBackend, request: GenerationRequest) -> VariantResult | BadInput:
        try:
            return super().draw(served, request)
        except (ValueError, BadInput) as exc:
            kind = BadInput.__name__ if isinstance(exc, BadInput) else type(exc).__name__
            return refusal(f"{kind}: {exc}", f"{served.name} refused variant seed {request.seed}")
