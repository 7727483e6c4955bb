"""The generator client, reviewed again: the text outputs of another server's answer that hold no text."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
import tritonclient.http

from services.generator.client import GeneratorFailed, read_answer
from services.generator.protocol import VariantResult
from shared.errors import BadInput
from tests.support.generation import answered_variant

SIZE = 8
MODEL = "skuforge_generator_composite"


def _answer(**texts: bytes | None) -> Any:
    """A Triton HTTP response of one row of the generation model, read by tritonclient as the client reads
    every answer; each text output in ``texts`` is sent as binary data (``None``: a 1x0 output)."""
    defaults: dict[str, bytes | None] = {
        "parameters_used": b"{}",
        "adapter_used": b"",
        "model_id": b"composite@1",
        "error": b"",
    }
    image, mask = [128] * (SIZE * SIZE * 3), [255] * (SIZE * SIZE)
    outputs: list[dict[str, Any]] = [
        {"name": "image", "datatype": "UINT8", "shape": [1, SIZE, SIZE, 3], "data": image},
        {"name": "expected_mask", "datatype": "UINT8", "shape": [1, SIZE, SIZE], "data": mask},
    ]
    binary = b""
    for name, text in {**defaults, **texts}.items():
        if text is None:
            outputs.append({"name": name, "datatype": "BYTES", "shape": [1, 0], "data": []})
            continue
        cell = struct.pack("<I", len(text)) + text
        sent = {"binary_data_size": len(cell)}
        outputs.append({"name": name, "datatype": "BYTES", "shape": [1, 1], "parameters": sent})
        binary += cell
    header = json.dumps({"model_name": MODEL, "outputs": outputs}).encode()
    return tritonclient.http.InferResult.from_response_body(header + binary, header_length=len(header))


@pytest.mark.parametrize("output", ["error", "parameters_used", "adapter_used", "model_id"])
@pytest.mark.parametrize("text", [None, b"\xff\xfe composite"], ids=["1x0", "not_utf8"])
def test_a_text_output_that_holds_no_text_fails_as_the_servers_fault(output: str, text: bytes | None) -> None:
    """Another server's answer with a text output of shape 1x0 or bytes that are no UTF-8 raised a bare
    IndexError / UnicodeDecodeError: not counted in skuforge_triton_errors_total, its letter naming neither
    the server nor its answer. It fails as the server's fault, as an image of another size does."""
    drawn = read_answer(_answer(), answered_variant(SIZE), MODEL)
    assert isinstance(drawn, VariantResult) and drawn.model_id == "composite@1"
    with pytest.raises(GeneratorFailed) as failed:
        read_answer(_answer(**{output: text}), answered_variant(SIZE), MODEL)
    message = str(failed.value)
    assert MODEL in message and "seed 7" in message and output in message, message


def test_a_refusal_in_the_error_output_is_still_a_refusal() -> None:
    """The error output read the same way: a backend's refusal still reaches the stage as BadInput."""
    refused = read_answer(
        _answer(error=b"BadInput: unknown_adapter: no adapter x"), answered_variant(SIZE), MODEL
    )
    assert isinstance(refused, BadInput) and refused.reason == "unknown_adapter"
