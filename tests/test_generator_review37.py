"""Generator review 37: a SKU of in-store photos only, on the real broker and the real Triton (PyTriton,
CPU, composite backend).

Of such a SKU only the photos whose cut-out is one object are drawn from (``one_object_photos``), and
the others' references were let go: a variant the model refused from every photo of one object was
left out, and one refused for every variant sent the whole SKU to the DLQ (``generation_refused``),
though its other in-store photos could give it, as ``one_object_photos`` takes them all when none is
one object.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from schemas.envelope import DeadLetter, Envelope
from schemas.events import ImageGenerated
from schemas.topics import IMAGE_GENERATED, SKU_CAPTIONED
from services.generator.stage import build_stage, variant_seed
from shared.arith.masks import solidity
from shared.config import load_settings
from shared.generation.backend import ONE_OBJECT_MIN_SOLIDITY
from shared.generation.settings import GenerationSettings
from tests.support.bus import (
    create_topics,
    file_store_uri,
    isolated_settings,
    produce,
    read_topic,
    record_count,
    running,
)
from tests.support.in_store import chain, hair, in_store, vee
from tests.support.triton import TritonServerProcess

VARIANTS = 3


@pytest.mark.kafka
@pytest.mark.slow
def test_a_variant_refused_from_every_photo_of_one_object_is_drawn_from_the_other_in_store_photos(
    kafka_bootstrap: str, tmp_path: Path, triton: TritonServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    assert solidity(hair()) >= ONE_OBJECT_MIN_SOLIDITY > max(solidity(chain()), solidity(vee()))
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    create_topics(settings, SKU_CAPTIONED, IMAGE_GENERATED)
    generation = load_settings(
        GenerationSettings,
        generation_triton_url=triton.grpc_url,
        generation_variants_per_sku=VARIANTS,
        generation_size_px=128,
        generation_triton_timeout_s=30.0,
    )
    stage = build_stage(settings=settings, generation=generation)
    # The photo of one object first, then after the one passed over; and among two passed over, one
    # refused too, whose variants go on to the other.
    skus = [
        in_store(stage.store, 31, [hair(), chain()]),
        in_store(stage.store, 32, [chain(), hair()]),
        in_store(stage.store, 33, [vee(), hair(), chain()]),
    ]
    chain_of = {skus[0].sku.sku_id: "p1", skus[1].sku.sku_id: "p0", skus[2].sku.sku_id: "p2"}
    produce(settings, SKU_CAPTIONED, skus)

    with caplog.at_level(logging.WARNING), running(stage):
        records = read_topic(
            kafka_bootstrap, settings.topic_name(IMAGE_GENERATED), expect=3 * VARIANTS, timeout_s=120
        )
    # The stage has stopped: a letter it wrote is in the topic, so reading as many as there are reads it.
    dlq = settings.dlq_name(SKU_CAPTIONED)
    letters = read_topic(kafka_bootstrap, dlq, expect=record_count(kafka_bootstrap, dlq), timeout_s=30)

    # Before, each SKU went to the DLQ, every variant refused from its one photo of one object.
    assert [DeadLetter.model_validate_json(record.value).reason for record in letters] == []
    generated = [Envelope[ImageGenerated].model_validate_json(record.value).payload for record in records]
    base_seed = generation.generation_seed
    assert sorted((g.sku.sku_id, g.variant_index, g.reference_photo_id, g.seed) for g in generated) == [
        (sku_id, index, photo_id, variant_seed(sku_id, photo_id, index, base_seed))
        for sku_id, photo_id in sorted(chain_of.items())
        for index in range(VARIANTS)
    ]
    said = [
        record
        for record in caplog.records
        if record.getMessage().startswith("in-store photos that are not one object drawn from")
    ]
    assert sorted((record.sku_id, record.photo_ids) for record in said) == [  # type: ignore[attr-defined]
        (sku_id, [photo_id]) for sku_id, photo_id in sorted(chain_of.items())
    ]
