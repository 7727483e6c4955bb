"""Generator review 35: a model Triton has in its repository but cannot serve yet, on a real PyTriton.

A model that failed to load, or is still loading, has no version ready: Triton answers NOT_FOUND
("has no available versions"), as for a model it does not have at all. The client counted it as
``model_missing`` already (not ``unavailable``, Triton being away), but its message sent the operator
to the stage's backend settings, which were right: the cause is in Triton's log.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient

from devstack.broker import free_port
from services.generator.client import GeneratorUnavailable, TritonGenerator
from shared.errors import TransientError
from tests.support.generation import triton_variant

pytestmark = pytest.mark.slow

MODEL = "skuforge_generator_composite"


@contextmanager
def composite_triton() -> Iterator[tuple[str, str, Any]]:
    """``skuforge serve generator --backend composite``'s server, in this process: its gRPC and HTTP
    addresses and the PyTriton ``Triton`` (its access token opens the model-repository API the server
    restricts)."""
    from services.generator import server as server_module
    from shared.config import Settings
    from shared.generation.settings import GenerationSettings

    generation = GenerationSettings(
        generation_server_address="127.0.0.1",
        generation_server_http_port=free_port(),
        generation_server_grpc_port=free_port(),
        generation_server_metrics_port=free_port(),
    )
    # A short workspace: PyTriton's sockets live under it, and AF_UNIX paths are limited to 108 bytes.
    workspace = str(Path(tempfile.mkdtemp(prefix="tw", dir="/tmp")) / "w")
    triton = server_module.build_triton(generation, ["composite"], shared=Settings(), workspace=workspace)
    triton.run()
    try:
        yield (
            f"127.0.0.1:{generation.generation_server_grpc_port}",
            f"127.0.0.1:{generation.generation_server_http_port}",
            triton,
        )
    finally:
        triton.stop()


def test_a_model_in_the_repository_with_no_version_ready_says_to_read_tritons_log() -> None:
    raised: dict[str, GeneratorUnavailable] = {}
    reached: dict[str, bool] = {}
    with composite_triton() as (grpc_url, http_url, triton):
        # Unloaded, the model is left as a failed load leaves it (and, with no version ready yet, as a
        # load under way): in Triton's repository, state UNAVAILABLE.
        token = triton._security_config.access_token
        repository = grpcclient.InferenceServerClient(grpc_url)
        repository.unload_model(MODEL, headers={"triton-grpc-protocol-triton-access-token": token})
        repository.close()
        for protocol, url in (("grpc", grpc_url), ("http", http_url)):
            client = TritonGenerator(url, protocol=protocol, timeout_s=30.0, concurrency=1)
            try:
                with pytest.raises(GeneratorUnavailable) as caught:
                    client.generate("composite", [triton_variant(1)])
            finally:
                client.close()
            raised[url], reached[url] = caught.value, client.last_call_ok
    for url, error in raised.items():
        assert error.kind == "model_missing"  # Triton is up: not "unavailable", Triton being away
        message = str(error)
        assert f"Triton at {url} has {MODEL} but no version of it ready" in message, message
        assert "still loading, or it failed to load" in message and "Triton's log" in message, message
        assert "SKUFORGE_GENERATION_BACKEND_MIX" not in message, message  # the stage's settings are right
        assert isinstance(error, TransientError)  # retried: a load that ends finds the input uncommitted
        assert reached[url] is False  # the stage is not ready
