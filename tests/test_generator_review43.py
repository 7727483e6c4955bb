"""The Triton client's metadata cache: an answer asked before a newer one never replaces it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc

from devstack.broker import free_port
from services.generator import server as server_module
from services.generator.client import GeneratorUnavailable, TritonGenerator
from services.generator.protocol import VariantResult
from services.generator.stage import build_stage
from shared.config import ConfigError, load_settings
from shared.errors import BadInput
from shared.generation.settings import GenerationSettings
from tests.support.bus import file_store_uri, isolated_settings
from tests.support.cli import served_module_refusal
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


def test_how_long_the_models_metadata_is_trusted_is_a_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The client asks the model's metadata again a minute on; that minute was written in the client,
    the one Triton knob of the stage no SKUFORGE_* setting reached (a model upgraded in place, seen no
    sooner than it; or a Triton behind a slow link asked every minute regardless)."""
    monkeypatch.setenv("SKUFORGE_GENERATION_TRITON_METADATA_MAX_AGE_S", "-1")
    with pytest.raises(ConfigError, match="SKUFORGE_GENERATION_TRITON_METADATA_MAX_AGE_S"):
        load_settings(GenerationSettings)
    monkeypatch.setenv("SKUFORGE_GENERATION_TRITON_METADATA_MAX_AGE_S", "5")
    stage = build_stage(
        settings=isolated_settings("127.0.0.1:1", file_store_uri(tmp_path / "store")),
        generation=load_settings(GenerationSettings),
    )
    (route,) = stage._routes.values()
    assert route.handle_batch is not None
    client = route.handle_batch.keywords["generator"]  # type: ignore[attr-defined]
    try:
        assert client.metadata_max_age_s == 5.0
    finally:
        client.close()


def test_the_server_run_as_a_module_refuses_a_bad_setting_as_skuforge_serve_does_not_in_a_traceback() -> None:
    """``python -m services.generator.server`` (the flow's module for ``skuforge serve generator``) ran
    ``main`` bare: a bad setting ended in a traceback, where the command and every stage's module say
    what is wrong after their own name, naming the setting."""
    reason = served_module_refusal(
        "services.generator.server", "generator", SKUFORGE_GENERATION_SERVER_GRPC_PORT="0"
    )
    assert "SKUFORGE_GENERATION_SERVER_GRPC_PORT" in reason
