"""SKUFORGE_GENERATION_TRITON_TIMEOUT_S bounds each request to Triton as a whole, over HTTP as over gRPC:
a stop waits for the requests in flight, so it is the bound of a stop too (docs/deploy.md)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait

import pytest

from services.generator.client import GeneratorUnavailable, TritonGenerator
from services.generator.protocol import VariantResult
from shared.errors import TransientError
from tests.support.generation import triton_variant as variant
from tests.support.triton import poisoned_triton, trickling_link

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("slowed", [b"POST ", b"GET "], ids=["inference", "metadata"])
def test_an_http_answer_trickling_in_slower_than_the_timeout_is_given_up_as_a_timeout(
    monkeypatch: pytest.MonkeyPatch, slowed: bytes
) -> None:
    """A real Triton behind a link that brings its answers a byte every half second: each read gets a
    byte well within the 2 s timeout, the answer would take hours. Before, the HTTP client's timeout was
    tritonclient's ``network_timeout``, one per socket operation, so the call (a model's metadata, asked
    at each call, or an inference) ran on past the timeout, and a stop waited for it past its grace."""
    caller = ThreadPoolExecutor(max_workers=1)  # one thread, one HTTP client: the same for both calls
    with poisoned_triton(monkeypatch, protocol="http") as (url, _):
        with trickling_link(url, slowed) as link:
            client = TritonGenerator(link.address, protocol="http", timeout_s=2.0, concurrency=1)
            call = caller.submit(client.generate, "composite", [variant(21)])
            ended, _ = wait([call], timeout=60)  # a ceiling far past the timeout, far below hours
            link.steady.set()
            again = caller.submit(client.generate, "composite", [variant(22)])
            wait([again], timeout=60)
        caller.shutdown(wait=True)  # the link hung up: a call still reading ends
        client.close()
    assert ended, "the call outlasted its 2 s timeout by a minute"
    gave_up = call.exception()
    assert isinstance(gave_up, GeneratorUnavailable) and gave_up.kind == "timeout", repr(gave_up)
    [drawn] = again.result()  # the connection cut off is let go: the client's next request is served
    assert isinstance(drawn, VariantResult), drawn


def test_a_stop_while_the_model_metadata_is_asked_sends_no_inference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call asks the model's metadata first (its optional inputs: a model upgraded under a running
    stage has new ones, under the same version 1, so no cache can tell). The stage stops while the
    metadata answer is on its way: no inference follows it, so a stop waits for that one request (up to
    the timeout), not for it and then a wave of inferences (up to twice the timeout)."""
    stop = threading.Event()
    with poisoned_triton(monkeypatch, protocol="http") as (url, served), trickling_link(url, b"GET ") as link:
        client = TritonGenerator(link.address, protocol="http", timeout_s=60.0, stopping=stop.is_set)
        try:
            with ThreadPoolExecutor(max_workers=1) as caller:
                call = caller.submit(client.generate, "composite", [variant(21), variant(22)])
                assert link.trickling.wait(60), "the model's metadata was not asked"
                stop.set()
                link.steady.set()  # the metadata answer comes whole now
                gave_up = call.exception(timeout=60)
        finally:
            client.close()
    assert isinstance(gave_up, TransientError) and "stopping" in str(gave_up), repr(gave_up)
    assert served.painted == []
