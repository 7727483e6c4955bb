"""The Triton client's metadata cache: an answer asked before a newer one never replaces it."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc

from devstack.broker import free_port
from services.generator import server as server_module
from services.generator.client import GeneratorUnavailable, TritonGenerator
from services.generator.protocol import VariantResult
from shared.errors import BadInput
from tests.support.generation import triton_variant as variant
from tests.support.polling import wait_for
from tests.support.triton import poisoned_triton


@pytest.mark.slow
def test_a_late_answer_from_the_model_swapped_out_does_not_replace_the_new_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call asks an older model which inputs it declares; before its answer lands, a newer model is
    swapped in and another call learns what it declares. The late answer overwrote the newer one, and
    every round until the next failure left out the newer model's optional input (own_names: scenes
    named like a SKU's series were not left out)."""
    first_answered, go = threading.Event(), threading.Event()
    asking = tritonclient.grpc.InferenceServerClient.get_model_metadata
    calls = 0

    def held_first(client: Any, model: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        answer = asking(client, model, *args, **kwargs)
        if calls == 1:  # the older model's answer, on its way while the model is swapped
            first_answered.set()
            go.wait(timeout=120)
        return answer

    inferring = tritonclient.grpc.InferenceServerClient.infer
    sent: list[list[str]] = []

    def recorded(client: Any, model: str, inputs: list[Any], *args: Any, **kwargs: Any) -> Any:
        sent.append([tensor.name() for tensor in inputs])
        return inferring(client, model, inputs, *args, **kwargs)

    monkeypatch.setattr(tritonclient.grpc.InferenceServerClient, "get_model_metadata", held_first)
    monkeypatch.setattr(tritonclient.grpc.InferenceServerClient, "infer", recorded)
    port = free_port()
    client = TritonGenerator(f"127.0.0.1:{port}", timeout_s=30.0, concurrency=2)
    late: list[object] = []
    # An empty mask is refused before any request: the late call sends nothing that could fail.
    late_call = threading.Thread(
        target=lambda: late.extend(client.generate("composite", [variant(20, mask=np.zeros((0, 0), bool))]))
    )
    try:
        with monkeypatch.context() as older:
            older.setattr(server_module, "OPTIONAL_INPUTS", ())  # an older skuforge: no own_names
            with poisoned_triton(monkeypatch, port=port):
                late_call.start()
                assert first_answered.wait(timeout=120)
        with poisoned_triton(monkeypatch, port=port):

            def answered(seed: int) -> bool:
                try:
                    (answer,) = client.generate("composite", [variant(seed)])
                except GeneratorUnavailable as exc:  # gRPC reconnecting to the new server
                    if exc.kind == "unavailable":
                        return False
                    raise
                assert isinstance(answer, VariantResult), answer
                return True

            wait_for("the new model's answer", lambda: answered(21))
            go.set()
            late_call.join()
            assert isinstance(late[0], BadInput), late
            sent.clear()
            assert answered(22)
    finally:
        go.set()
        client.close()
    assert sent and all("own_names" in names for names in sent), sent
