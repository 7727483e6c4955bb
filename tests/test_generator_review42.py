"""The Triton client: the model's metadata asked once, not every round, and again once a request to the
model failed (a model swapped under it still meets the same clear errors); a client that cannot be built
leaves nothing for Python to finalize with an error."""

from __future__ import annotations

import gc
import logging
from typing import Any

import pytest
import tritonclient.grpc
import tritonclient.http

from devstack.broker import free_port
from services.generator.client import GeneratorUnavailable, TritonGenerator
from services.generator.protocol import VariantRequest, VariantResult, model_name
from tests.support.generation import triton_variant as variant
from tests.support.polling import wait_for
from tests.support.triton import poisoned_triton


@pytest.fixture
def metadata_asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The models whose metadata a tritonclient (gRPC or HTTP) asked Triton for: the real request, counted."""
    asked: list[str] = []
    for module in (tritonclient.grpc, tritonclient.http):
        asking = module.InferenceServerClient.get_model_metadata

        def counted(client: Any, model: str, *args: Any, asking: Any = asking, **kwargs: Any) -> Any:
            asked.append(model)
            return asking(client, model, *args, **kwargs)

        monkeypatch.setattr(module.InferenceServerClient, "get_model_metadata", counted)
    return asked


def _answered(client: TritonGenerator, request: VariantRequest) -> VariantResult | GeneratorUnavailable:
    """``request``'s answer, or the error of a model not reached; the stage's retries of a Triton that
    restarted under the client (its connection to the one before is refused while gRPC reconnects)."""

    def attempt() -> VariantResult | GeneratorUnavailable | None:
        try:
            (answer,) = client.generate("composite", [request])
        except GeneratorUnavailable as exc:
            return None if exc.kind == "unavailable" else exc
        assert isinstance(answer, VariantResult), answer
        return answer

    answer = wait_for("an answer once Triton is back", attempt)
    assert answer is not None  # wait_for returns only a truthy one
    return answer


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_models_metadata_is_asked_once_not_every_round(
    monkeypatch: pytest.MonkeyPatch, metadata_asked: list[str], protocol: str
) -> None:
    """The client asks the model which optional inputs it declares. It asked before every round, one
    request more, and waited for, before any variant of the round was sent. What it learned is asked
    again once older than ``metadata_max_age_s`` (a model upgraded in place, no request failing)."""
    with poisoned_triton(monkeypatch, protocol=protocol) as (url, _):
        for max_age_s, rounds_asked in ((60.0, 1), (0.0, 5)):
            client = TritonGenerator(url, protocol=protocol, concurrency=2, metadata_max_age_s=max_age_s)
            try:
                for seed in range(20, 25):
                    answers = client.generate("composite", [variant(seed), variant(seed + 10)])
                    assert all(isinstance(answer, VariantResult) for answer in answers)
            finally:
                client.close()
            assert metadata_asked == [model_name("composite")] * rounds_asked, max_age_s
            metadata_asked.clear()


@pytest.mark.slow
def test_a_model_swapped_under_the_client_is_asked_about_again_once_a_request_fails(
    monkeypatch: pytest.MonkeyPatch, metadata_asked: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """What the client learned of a model stands until a request to it fails: an older model in its place
    refuses the optional input (sent again without it), and is asked about; a server that no longer
    serves it is told apart from Triton being away, as when the metadata was asked every round."""
    from services.generator import server as server_module

    port = free_port()
    client = TritonGenerator(f"127.0.0.1:{port}", timeout_s=30.0, concurrency=1)
    try:
        with poisoned_triton(monkeypatch, port=port):
            assert isinstance(_answered(client, variant(20)), VariantResult)
        with monkeypatch.context() as older, caplog.at_level(logging.WARNING):
            older.setattr(server_module, "OPTIONAL_INPUTS", ())  # an older skuforge: no own_names
            with poisoned_triton(monkeypatch, port=port):
                assert isinstance(_answered(client, variant(21)), VariantResult)
                assert isinstance(_answered(client, variant(22)), VariantResult)
                asked = len(metadata_asked)
                assert isinstance(_answered(client, variant(23)), VariantResult)
                assert isinstance(_answered(client, variant(24)), VariantResult)
        assert "does not declare own_names" in caplog.text  # asked again, after the swap
        assert len(metadata_asked) == asked  # and then not again while its requests are answered
        with poisoned_triton(monkeypatch, models=("diffusion",), port=port):  # composite served no more
            missing = _answered(client, variant(25))
    finally:
        client.close()
    assert isinstance(missing, GeneratorUnavailable) and missing.kind == "model_missing", missing
    assert f"does not serve {model_name('composite')}" in str(missing)
    assert client.last_call_ok is False


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_client_that_cannot_be_built_leaves_no_error_for_its_finalizer() -> None:
    """tritonclient's ``__del__`` closes what its ``__init__`` made: of one whose ``__init__`` raised (a
    port that is no number), it raised AttributeError, which Python can only print ("Exception ignored
    in"), once per worker that tried, beside the clear error the stage logs."""
    client = TritonGenerator("localhost:not-a-port", protocol="http", concurrency=1)
    try:
        with pytest.raises(ValueError, match="Port"):
            client.generate("composite", [])
    finally:
        client.close()
    gc.collect()  # the half-built client, held by the traceback until now
