"""A stopping generator stage sends Triton no new request: its stop waits for the requests in flight,
not for the whole batch (every variant of up to SKUFORGE_MAX_POLL_RECORDS SKUs, many waves)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.generator.client import TritonGenerator
from shared.errors import TransientError
from shared.generation.backend import GenerationRequest, RowOutcome
from tests.support.generation import triton_variant as variant
from tests.support.triton import PoisonedComposite, poisoned_triton

pytestmark = pytest.mark.slow


class HeldComposite(PoisonedComposite):
    """The composite backend, holding each batch it is given until ``release`` is set: the requests
    sent stay in flight while the test stops the stage. ``entered`` is set once one is held."""

    def __init__(self) -> None:
        super().__init__(failing=(), away=())
        self.entered, self.release = threading.Event(), threading.Event()

    def generate_many(self, requests: list[GenerationRequest]) -> list[RowOutcome]:
        self.entered.set()
        self.release.wait(120)  # bounded: a failing test must not hang Triton's stop
        return super().generate_many(requests)


def test_a_stop_mid_call_sends_no_new_request_and_gives_the_call_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight variants, two in flight at a time: the stage stops while the first are drawn. Before, the
    client sent the other six as the first answers came (four waves in all, each up to the timeout),
    and the stop waited for every one; now the requests in flight finish and the call raises a
    ``TransientError``, so the batch stays uncommitted, and a call made while stopping sends nothing."""
    backend, stop = HeldComposite(), threading.Event()
    with poisoned_triton(monkeypatch, backend) as (url, _):
        client = TritonGenerator(url, concurrency=2, stopping=stop.is_set)
        try:
            with ThreadPoolExecutor(max_workers=1) as caller:
                call = caller.submit(client.generate, "composite", [variant(seed) for seed in range(21, 29)])
                assert backend.entered.wait(120), "Triton was sent no request"
                stop.set()
                backend.release.set()
                gave_up = call.exception()
            drawn_at_the_stop = list(backend.painted)
            assert 1 <= len(drawn_at_the_stop) <= 2, drawn_at_the_stop  # those in flight, no new wave
            assert isinstance(gave_up, TransientError) and "stopping" in str(gave_up), gave_up
            with pytest.raises(TransientError, match="stopping"):
                client.generate("composite", [variant(31)])
        finally:
            backend.release.set()
            client.close()
    assert backend.painted == drawn_at_the_stop
