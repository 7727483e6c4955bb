"""The Triton model callable (``GenerationModel``) on a stand-in backend: no Triton, no torch model.

What the stage would notice: a batch the GPU has no memory for is served row by row once the batch's
memory is freed, and a row that is out of memory even alone is the backend's failure (retried a few
times by the stage, then dead-lettered, so it cannot hold its partition for good); an
error raised inside the backend (a ``ValueError`` from torch included) is the backend's, and only the
project's own refusal (``BadInput``) is reported as the request's fault.
"""

from __future__ import annotations

import gc
import weakref
from dataclasses import replace
from typing import Any

import numpy as np

from services.generator.protocol import BACKEND_ERROR_PREFIX, BACKEND_UNAVAILABLE_PREFIX
from services.generator.server import GenerationModel, served_backends
from shared.errors import BadInput
from shared.generation.backend import GeneratedSample, GenerationRequest, RowOutcome
from shared.generation.settings import GenerationSettings
from tests.support.generation import SIZE, triton_request


class _Tensors:
    """Stands for what a failed pipeline call leaves in its frames (activations on the GPU)."""


class StandInBackend:
    """Serves any row; ``fail(rows)`` says what to raise for a call with those rows, if anything."""

    name = "stand-in"
    model_id = "stand-in@1"

    def __init__(self, fail: Any) -> None:
        self.fail = fail
        self.batch_tensors: weakref.ref[_Tensors] | None = None
        self.freed_before_alone: list[bool] = []

    def generate(self, request: GenerationRequest) -> list[GeneratedSample]:
        raise AssertionError("the server calls generate_many only")

    def generate_many(self, requests: list[GenerationRequest]) -> list[RowOutcome]:
        if len(requests) > 1:
            tensors = _Tensors()  # alive in this frame while the exception's traceback is
            self.batch_tensors = weakref.ref(tensors)
        else:
            self.freed_before_alone.append(self.batch_tensors is None or self.batch_tensors() is None)
        error = self.fail(requests)
        if error is not None:
            raise error
        return [
            [
                GeneratedSample(
                    image=np.full((SIZE, SIZE, 3), r.seed, np.uint8),
                    expected_mask=np.zeros((SIZE, SIZE), np.uint8),
                    parameters={"seed": r.seed},
                )
            ]
            for r in requests
        ]


def errors(answer: dict[str, np.ndarray]) -> list[str]:
    return [cell[0].decode() for cell in answer["error"]]


def test_a_batch_out_of_memory_is_served_row_by_row_after_its_memory_is_freed() -> None:
    # Before, the rows were served inside the `except` block: the failed batch's frames (its tensors)
    # stayed alive through every retry. A row out of memory even alone was `backend_unavailable`, which
    # the stage retries without limit: a row too big for the GPU held its partition for good.
    import torch

    def fail(requests: list[GenerationRequest]) -> Exception | None:
        if len(requests) > 1 or requests[0].seed == 13:
            return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return None

    backend = StandInBackend(fail)
    gc.disable()  # only the fix may free the batch's frames: no collection by chance meanwhile
    try:
        (answer,) = GenerationModel(backend)([triton_request([11, 13, 12])])
    finally:
        gc.enable()
    assert backend.freed_before_alone == [True, True, True]
    error = errors(answer)
    assert error[0] == error[2] == ""
    assert error[1].startswith(BACKEND_ERROR_PREFIX)
    assert "out of GPU memory even alone" in error[1] and "OutOfMemoryError" in error[1]
    assert answer["image"][0].max() == 11 and answer["image"][2].max() == 12


def test_a_value_error_inside_the_backend_is_its_own_fault_and_bad_input_the_requests() -> None:
    # Before, any ValueError the backend raised was the request's fault: `generation_refused`, straight
    # to the dead-letter topic, for a dtype mismatch inside torch.
    def fail(requests: list[GenerationRequest]) -> Exception | None:
        seeds = {r.seed for r in requests}
        if 13 in seeds:
            return ValueError("expected m1 and m2 to have the same dtype")
        if 17 in seeds:
            return BadInput("empty_mask", "the product mask has no product pixels")
        return None

    (answer,) = GenerationModel(StandInBackend(fail))([triton_request([11, 13, 17])])
    error = errors(answer)
    assert error[0] == ""
    assert error[1].startswith(BACKEND_ERROR_PREFIX) and "ValueError: expected m1 and m2" in error[1]
    assert error[2] == "BadInput: empty_mask: the product mask has no product pixels"  # refused


def test_a_refusal_of_a_bad_input_subclass_keeps_its_reason_for_the_client() -> None:
    """An adapter's weights gone (ObjectMissing) travelled as "ObjectMissing: ...", which the client
    read as generation_refused (permanent) instead of object_missing (replayable once they are back)."""
    from services.generator.client import refusal
    from shared.errors import ObjectMissing

    def fail(requests: list[GenerationRequest]) -> Exception | None:
        return ObjectMissing("s3://adapters/cola-1/weights.safetensors")

    (answer,) = GenerationModel(StandInBackend(fail))([triton_request([11])])
    (error,) = errors(answer)
    assert error.startswith("BadInput: object_missing: ")
    assert refusal(error, "diffusion refused variant seed 11").reason == "object_missing"


def test_a_store_away_is_unavailable_and_retried_but_a_row_out_of_memory_alone_is_not() -> None:
    import torch

    from shared.errors import TransientError

    def fail(requests: list[GenerationRequest]) -> Exception | None:
        seeds = {r.seed for r in requests}
        if 13 in seeds:
            return TransientError("adapter registry unreachable")
        if 17 in seeds:
            return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")
        return None

    (answer,) = GenerationModel(StandInBackend(fail))([triton_request([11, 13, 17])])
    error = errors(answer)
    assert error[0] == ""
    assert error[1].startswith(BACKEND_UNAVAILABLE_PREFIX) and "registry unreachable" in error[1]
    assert error[2].startswith(BACKEND_ERROR_PREFIX) and "40.00 GiB" in error[2]


def test_own_names_are_optional_and_a_malformed_list_refuses_only_its_row() -> None:
    seen: list[tuple[str, ...]] = []

    def record(requests: list[GenerationRequest]) -> Exception | None:
        seen.extend(r.own_names for r in requests)
        return None

    without = triton_request([11])  # an older stage sends no own_names
    (answer,) = GenerationModel(StandInBackend(record))([without])
    assert errors(answer) == [""] and seen == [()]

    seen.clear()
    given = triton_request([11, 12, 13])
    given["own_names"] = np.array(
        [[b'["Lemon", "Amalfi Lemons"]'], [b'{"not": "a list"}'], [b"not json"]], dtype=object
    )
    (answer,) = GenerationModel(StandInBackend(record))([given])
    error = errors(answer)
    assert error[0] == "" and seen == [("Lemon", "Amalfi Lemons")]
    assert error[1] == "ValueError: own_names must be a JSON list of strings"
    assert error[2].startswith("ValueError: own_names is not JSON")


def test_out_of_memory_alone_waits_while_another_process_holds_the_gpu(monkeypatch: Any) -> None:
    # Review: the LoRA trainer shares the GPU with the generator (deploy/gpu); a row out of memory
    # while it trains must wait for it, not be dead-lettered after a few quick retries.
    import torch

    def fail(requests: list[GenerationRequest]) -> Exception | None:
        return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    held = {"now": 0.15}  # CUDA contexts and Triton's pool: there from the start
    monkeypatch.setattr("services.generator.server.gpu_memory_held_by_others", lambda: held["now"])
    model = GenerationModel(StandInBackend(fail))
    for now, prefix in ((0.75, BACKEND_UNAVAILABLE_PREFIX), (0.2, BACKEND_ERROR_PREFIX)):
        held["now"] = now
        (answer,) = model([triton_request([11])])
        (error,) = errors(answer)
        assert error.startswith(prefix) and "out of GPU memory even alone" in error, now
        assert ("other processes took 60% of the GPU's memory" in error) == (now == 0.75), error


def test_a_request_for_a_size_no_model_paints_is_refused_alone_not_with_its_batch() -> None:
    # Before, a size below 1 (numpy: "negative dimensions"), a huge one (its zero images could not be
    # allocated) or rows asking for two sizes raised: Triton failed every request batched with it.
    good = triton_request([11])
    negative, huge, mixed = triton_request([12]), triton_request([13]), triton_request([14, 15])
    negative["size"][:] = -1
    huge["size"][:] = 2**31 - 1
    mixed["size"] = np.array([[SIZE], [2 * SIZE]], np.int32)
    answers = GenerationModel(StandInBackend(lambda requests: None))([good, negative, huge, mixed])
    assert errors(answers[0]) == [""] and answers[0]["image"].max() == 11
    assert errors(answers[1]) == ["ValueError: size must be from 1 to 2048 px, got -1"]
    assert errors(answers[2]) == [f"ValueError: size must be from 1 to 2048 px, got {2**31 - 1}"]
    assert (
        errors(answers[3])
        == ["ValueError: every row of one request must ask for the same size, got [64, 128]"] * 2
    )
    for answer in answers[1:]:
        # 1 x 1: PyTriton cannot send an empty tensor, and failed the batch on one
        assert answer["image"].shape[1:] == (1, 1, 3) and answer["expected_mask"].shape[1:] == (1, 1)


def test_json_nested_too_deeply_to_parse_refuses_its_row_not_the_batch() -> None:
    # Before, json.loads raised RecursionError (not a ValueError) on '[[[[...': Triton failed every
    # request of the batch, and the client read that as Triton unavailable, retried forever.
    request = triton_request([11, 12, 13])
    request["parameters"][1, 0] = b"[" * 8_000  # deeper than json reads, within the 8 KiB text limit
    request["own_names"] = np.array([[b"[]"], [b"[]"], [b"[" * 8_000]], dtype=object)
    (answer,) = GenerationModel(StandInBackend(lambda requests: None))([request])
    assert errors(answer) == [
        "",
        "ValueError: parameters are nested too deeply to read",
        "ValueError: own_names is nested too deeply to read",
    ]
    assert answer["image"][0].max() == 11


def test_both_backends_serve_every_seed_the_protocol_carries_and_refuse_the_same_others(
    tmp_path: Any,
) -> None:
    # The protocol's seed is an int64. The diffusion backend served any (seed % 2**64) while the
    # composite one refused a negative seed: a client of both met two rules for one tensor.
    from shared.config import load_settings
    from shared.generation.composite import CompositeBackend
    from shared.generation.diffusion import DiffusionBackend, DiffusionSettings
    from tests.support.adapters import RecordingPipe

    diffusion = DiffusionBackend(
        RecordingPipe(),
        model_id="m",
        registry=None,
        settings=load_settings(DiffusionSettings),
        cache_dir=tmp_path / "cache",
        device="cpu",  # type: ignore[arg-type]
    )
    seeds = [-1, -(2**63), 2**63 - 1, 11]
    for backend in (CompositeBackend(), diffusion):
        (answer,) = GenerationModel(backend)([triton_request(seeds)])
        assert errors(answer) == [""] * len(seeds), backend.name
        assert answer["image"].any(axis=(1, 2, 3)).all(), backend.name
        # What no int64 holds (a caller of the backend in Python) is refused alike, that row alone.
        good = GenerationModel(backend)._parse_request(triton_request([11]))[1][0]
        assert isinstance(good, GenerationRequest)
        outcomes = backend.generate_many([replace(good, seed=2**64), good])
        assert str(outcomes[0]) == f"seed must be from -2^63 to 2^63-1 (an int64), got {2**64}", backend.name
        assert isinstance(outcomes[1], list), outcomes[1]


def test_without_backend_flags_triton_serves_every_backend_the_mix_uses() -> None:
    """``skuforge serve generator`` with no ``--backend`` serves what the stage will ask for: each
    backend of the mix with a share, or the one backend when there is no mix."""
    mixed = GenerationSettings(
        generation_backend="composite", generation_backend_mix={"composite": 0.7, "diffusion": 0.3}
    )
    assert served_backends(None, mixed) == ["composite", "diffusion"]
    assert served_backends(None, GenerationSettings(generation_backend="composite")) == ["composite"]
    only = GenerationSettings(
        generation_backend="composite", generation_backend_mix={"composite": 1.0, "diffusion": 0}
    )
    assert served_backends(None, only) == ["composite"]
    assert served_backends(["diffusion"], mixed) == ["diffusion"]  # what the flags name, as before
