"""A stopping generator stage sends Triton no new request: its stop waits for the requests in flight,
not for the whole batch (every variant of up to SKUFORGE_MAX_POLL_RECORDS SKUs, many waves)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from schemas.envelope import Envelope
from schemas.events import ImageGenerated
from schemas.topics import IMAGE_GENERATED, SKU_CAPTIONED
from services.generator.client import TritonGenerator
from services.generator.stage import build_stage
from shared.config import load_settings
from shared.errors import TransientError
from shared.generation.backend import GenerationRequest, RowOutcome
from shared.generation.settings import GenerationSettings
from shared.runtime import Stage
from tests.support.bus import (
    create_topics,
    file_store_uri,
    isolated_settings,
    produce,
    read_topic,
    record_count,
    running,
)
from tests.support.captioning import captioned_sku
from tests.support.generation import TRITON_SIZE_PX
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


def _stopped_mid_call(
    client: TritonGenerator, backend: HeldComposite, stop: threading.Event
) -> BaseException | None:
    """What a call for eight variants (seeds 21-28) raises when the stage stops while Triton holds its
    first requests."""
    with ThreadPoolExecutor(max_workers=1) as caller:
        call = caller.submit(client.generate, "composite", [variant(seed) for seed in range(21, 29)])
        assert backend.entered.wait(120), "Triton was sent no request"
        stop.set()
        backend.release.set()
        return call.exception()


def test_a_stop_mid_call_sends_no_new_request_and_gives_the_call_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight variants, two in flight at a time: the stage stops while the first are drawn. Before, the
    client sent the other six as the first answers came (four waves in all, each up to the timeout),
    and the stop waited for every one; now the requests in flight finish and the call raises a
    ``TransientError``, so the batch stays uncommitted, and a call made while stopping sends nothing."""
    backend, stop = HeldComposite(), threading.Event()
    with poisoned_triton(monkeypatch, backend) as (url, _):
        client = TritonGenerator(url, concurrency=2, stopping=stop.is_set)
        try:
            gave_up = _stopped_mid_call(client, backend, stop)
            drawn_at_the_stop = list(backend.painted)
            assert 1 <= len(drawn_at_the_stop) <= 2, drawn_at_the_stop  # those in flight, no new wave
            assert isinstance(gave_up, TransientError) and "stopping" in str(gave_up), gave_up
            with pytest.raises(TransientError, match="stopping"):
                client.generate("composite", [variant(31)])
        finally:
            backend.release.set()
            client.close()
    assert backend.painted == drawn_at_the_stop


def test_a_variant_that_fails_as_the_stage_stops_gives_the_call_up_as_the_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stage stops while Triton holds a variant it then fails on for real. Before, the call raised that
    ``GeneratorFailed``: the runtime logged a batch failure and ran each SKU alone, each given up at once
    at the stop. Now the call is given up as the stop (transient: the next owner draws that variant again)."""
    backend, stop = HeldComposite(), threading.Event()
    backend.failing = frozenset({21})
    with poisoned_triton(monkeypatch, backend) as (url, _):
        client = TritonGenerator(url, concurrency=2, stopping=stop.is_set)
        try:
            gave_up = _stopped_mid_call(client, backend, stop)
        finally:
            backend.release.set()
            client.close()
    assert isinstance(gave_up, TransientError) and "stopping" in str(gave_up), repr(gave_up)


@pytest.mark.kafka
def test_a_stage_stopped_mid_batch_commits_none_of_it_and_its_next_run_draws_every_image_once(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two SKUs of four variants in one batch, two requests in flight at a time, and the stage stops
    while Triton holds the first. Before, the stop drew all eight and committed the batch; now it gives
    the batch up: nothing produced, committed, dead-lettered or counted as a retry, and the next run (the
    same group) draws the eight images, each once."""
    backend = HeldComposite()
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    create_topics(settings, SKU_CAPTIONED, IMAGE_GENERATED, partitions=1)
    topic = settings.topic_name(IMAGE_GENERATED)
    with poisoned_triton(monkeypatch, backend) as (url, _):
        generation = load_settings(
            GenerationSettings,
            generation_triton_url=url,
            generation_variants_per_sku=4,
            generation_size_px=TRITON_SIZE_PX,
            generation_triton_concurrency=2,
        )
        stage = build_stage(settings=settings, generation=generation)
        skus = [captioned_sku(stage.store, index) for index in (1, 2)]
        produce(settings, SKU_CAPTIONED, skus)
        try:
            with running(stage):
                assert backend.entered.wait(120), "Triton was sent no request"
                stage.stop()
                backend.release.set()
        finally:
            backend.release.set()
        drawn_at_the_stop = list(backend.painted)
        assert 1 <= len(drawn_at_the_stop) <= 2, drawn_at_the_stop  # those in flight, no new wave
        # Given up, not retried: a stop that counted one set off the retry alerts at every rollout.
        assert _counted(stage, "skuforge_retries_total") == 0
        assert _counted(stage, "skuforge_messages_total", outcome="retry") == 0
        # Counted to the topics' ends, the stage stopped: read_topic(expect=0) could end before a record came.
        assert record_count(kafka_bootstrap, topic) == 0
        assert record_count(kafka_bootstrap, settings.dlq_name(SKU_CAPTIONED)) == 0

        with running(build_stage(settings=settings, generation=generation)):
            records = read_topic(kafka_bootstrap, topic, expect=8, timeout_s=120)
    events = [Envelope[ImageGenerated].model_validate_json(record.value) for record in records]
    assert len({event.event_id for event in events}) == len(events) == 8
    assert sorted((e.payload.sku.sku_id, e.payload.variant_index) for e in events) == sorted(
        (sku.sku.sku_id, index) for sku in skus for index in range(4)
    )


def _counted(stage: Stage, metric: str, **labels: str) -> float:
    """The sum of ``metric``'s samples in ``stage``'s registry whose labels include ``labels``."""
    return sum(
        sample.value
        for family in stage.metrics.registry.collect()
        for sample in family.samples
        if sample.name == metric and labels.items() <= sample.labels.items()
    )
