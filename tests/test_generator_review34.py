"""Generator review 34: what the stage counts and what its Triton client holds, on a real PyTriton server.

A refused variant was counted at every attempt of its batch, so a batch retried after a transient fault
counted its refusals again; the client's ``close`` stopped its workers but left their Triton clients open.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.generator.client import GeneratorUnavailable, TritonGenerator
from services.generator.stage import GeneratorMetrics, handle_batch, variant_seed
from tests.support.captioning import captioned_sku
from tests.support.generation import (
    arrange_generator,
    captioned_event,
    speckles,
    triton_variant,
    with_mask,
)
from tests.support.triton import PoisonedComposite, TritonServerProcess, poisoned_triton

pytestmark = pytest.mark.slow


def test_a_refusal_is_counted_once_per_committed_input_though_its_batch_was_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # p1's speckled mask is refused by the compositor (variant 1); its redraw from p0 finds the store the
    # model reads away, so the batch is retried. The retry answered the refusal from what the client kept,
    # and counted it again: skuforge_triton_errors_total{kind="refused"} read 2 for one refused variant.
    store, ctx, generation = arrange_generator(tmp_path, variants_per_sku=4, size_px=128)
    captioned = with_mask(store, captioned_sku(store, 3), "p1", speckles())
    event = captioned_event(captioned, "speckled", "retried")
    redraw = variant_seed(captioned.sku.sku_id, "p0", 1, generation.generation_seed)
    metrics = GeneratorMetrics(CollectorRegistry(), ["skuforge_generator_composite"])
    refused = metrics.triton_errors.labels("skuforge_generator_composite", "refused")
    with poisoned_triton(monkeypatch, PoisonedComposite(failing=(), away={redraw})) as (url, backend):
        client = TritonGenerator(url, concurrency=4)
        try:
            with pytest.raises(GeneratorUnavailable):
                handle_batch([event], ctx, generator=client, generation=generation, metrics=metrics)
            ctx._take_actions(event)  # the runtime drops the actions of an attempt it retries
            backend.away = frozenset()  # the store is back
            [outputs] = handle_batch([event], ctx, generator=client, generation=generation, metrics=metrics)
        finally:
            client.close()
    assert isinstance(outputs, list) and len(outputs) == 4, outputs
    assert redraw in backend.painted  # the variant p1 could not give was drawn from p0 on the retry
    assert refused._value.get() == 0  # nothing counted before the input is committed
    for action in ctx._take_actions(event):  # as the runtime does once the input is committed
        action()
    assert refused._value.get() == 1


def test_closing_the_client_closes_its_workers_triton_clients(triton: TritonServerProcess) -> None:
    # close() stopped the worker threads and left each one's Triton client open: over HTTP, gevent's
    # hub and a connection, 4 descriptors a worker, for every client a process opened and closed.
    def open_call_close() -> None:
        client = TritonGenerator(triton.http_url, protocol="http", concurrency=4)
        try:
            client.generate("composite", [triton_variant(index) for index in range(4)])
        finally:
            client.close()

    open_call_close()  # tritonclient's and gevent's own first-use state
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(10):
        open_call_close()
    gc.collect()
    after = len(os.listdir("/proc/self/fd"))
    assert after - before < 8, f"{after - before} descriptors more after 10 clients were opened and closed"
