"""The Triton client checks the size of what a generation server answers, and its request digest.

skuforge's server refuses its backend's image of another size than asked (``backend_error:``); another
server may not, and the client stored and announced its answer as the variant drawn. The responses
here are tritonclient's own ``InferResult``, read from the JSON body Triton's HTTP endpoint sends.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import tritonclient.http

from services.generator.client import GeneratorFailed, variant_result
from services.generator.protocol import VariantRequest

SIZE = 8


def _variant(**changes: Any) -> VariantRequest:
    fields: dict[str, Any] = {
        "reference": np.zeros((4, 4, 3), np.uint8),
        "mask": np.full((4, 4), 255, np.uint8),
        "prompt": "a photo of sks can",
        "negative_prompt": "blurry",
        "seed": 7,
        "parameters_json": "{}",
        "adapter_id": None,
        "series": None,
        "size": SIZE,
        **changes,
    }
    return VariantRequest(**fields)


def _response(image_shape: tuple[int, ...], mask_shape: tuple[int, ...]) -> Any:
    """A Triton HTTP response body as the generation model's outputs, read by tritonclient."""

    def output(name: str, datatype: str, shape: tuple[int, ...], data: list[Any]) -> dict[str, Any]:
        return {"name": name, "datatype": datatype, "shape": list(shape), "data": data}

    body = {
        "model_name": "skuforge_generate_composite",
        "outputs": [
            output("image", "UINT8", image_shape, [128] * int(np.prod(image_shape))),
            output("expected_mask", "UINT8", mask_shape, [255] * int(np.prod(mask_shape))),
            output("parameters_used", "BYTES", (1, 1), ['{"scene": "shelf"}']),
            output("adapter_used", "BYTES", (1, 1), [""]),
            output("model_id", "BYTES", (1, 1), ["composite@1"]),
            output("error", "BYTES", (1, 1), [""]),
        ],
    }
    return tritonclient.http.InferResult.from_response_body(json.dumps(body).encode())


def test_an_answer_of_the_size_asked_is_the_variant_drawn() -> None:
    result = variant_result(_response((1, SIZE, SIZE, 3), (1, SIZE, SIZE)), _variant(), "composite")
    assert result.image.shape == (SIZE, SIZE, 3) and result.expected_mask.shape == (SIZE, SIZE)
    assert result.model_id == "composite@1" and result.adapter_id is None
    assert json.loads(result.parameters_json) == {"scene": "shelf"}


@pytest.mark.parametrize(
    ("image_shape", "mask_shape"),
    [((1, 4, 4, 3), (1, 4, 4)), ((1, SIZE, SIZE, 3), (1, 4, 4)), ((1, SIZE, 4, 3), (1, SIZE, 4))],
    ids=["both_smaller", "mask_smaller", "not_square"],
)
def test_an_answer_of_another_size_than_asked_fails_naming_both_sizes(
    image_shape: tuple[int, ...], mask_shape: tuple[int, ...]
) -> None:
    with pytest.raises(GeneratorFailed) as failed:
        variant_result(_response(image_shape, mask_shape), _variant(), "composite")
    message = str(failed.value)
    assert "x".join(map(str, image_shape)) in message and "x".join(map(str, mask_shape)) in message
    assert f"size {SIZE}" in message and "seed 7" in message


def test_requests_whose_texts_differ_only_in_where_a_nul_falls_have_different_digests() -> None:
    """The digest joined the text fields with NUL: a prompt "a\\0b" with a negative prompt "c" read as
    the prompt "a" with "b\\0c", so the client answered one variant with the image kept for the other.
    The schemas refuse control characters in a SKU's text, but a prompt is built from more than that."""
    one = _variant(prompt="a\0b", negative_prompt="c")
    other = _variant(prompt="a", negative_prompt="b\0c")
    assert one.digest != other.digest
    assert one.digest == _variant(prompt="a\0b", negative_prompt="c").digest
