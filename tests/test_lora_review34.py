"""The LoRA trainer, review 34: a general job that failed for good stays remembered across a restart;
an adapter whose training prompts are longer than its event may carry is still published, as is a
general adapter whose SKU ids are more than one Kafka record holds; two photos whose SKU and photo ids
join to the same text are two items of a set.

Training is stubbed where what is trained is not the point (``stub_training``), so this file runs on
CPU in seconds.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from schemas.envelope import Envelope
from schemas.events import MAX_ADAPTER_SKUS, MAX_TAGS, MAX_TRAINING_PROMPT_CHARS, AdapterPublished
from schemas.topics import ADAPTER_PUBLISHED
from services.lora_trainer.stage import PREFIX, PublicationFailed, kafka_publisher, record_bytes
from shared.errors import TransientError
from shared.images import decode_image, encode_png, pixel_array
from shared.lora_training.dataset import TrainingRecipe, build_training_set, load_training_set
from shared.runtime import MAX_OUTPUT_RECORD_BYTES
from shared.store import FileStore, sha256_hex
from tests.support.bus import create_topics, file_store_uri, isolated_settings, read_topic
from tests.support.captioning import captioned_sku
from tests.support.lora import (
    CountingStore,
    gate_accepted,
    model_folder,
    one_photo_source,
    record,
    record_accepted_event,
    request_reads,
    served,
    trainer_on,
)


def _failed_general_job(tmp_path: Path, store: CountingStore) -> str:
    """A general job on three accepted images, each expired since (docs/diffusion.md), marked failed for
    good by a first trainer; its hash."""
    for variant in (0, 1, 2):
        accepted = gate_accepted(store, variant)
        record_accepted_event(store, accepted)
        store.delete(store.key_for(accepted.matted.generated.image.uri))  # expired (the lifecycle rule)
    trainer = trainer_on(
        store, model_folder(tmp_path, "m"), lora_class_images=0, lora_general_after_accepted=1
    )
    [job] = trainer.plan()
    assert trainer.run_pending() == []
    failed = json.loads(store.get_bytes(f"{PREFIX}/jobs/{job.sha256}/failed.json"))
    assert failed["reason"].startswith("object_missing")
    request_reads(store)
    return job.sha256


def test_a_general_job_failed_for_good_is_not_planned_again_after_a_restart(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """Remembered only in the process, the failure was forgotten at each restart (a redeploy, a node
    drained): the first poll planned the job again, reading every request file it picked (up to
    SKUFORGE_LORA_GENERAL_MAX_IMAGES) only to find its failed.json."""
    store = CountingStore(tmp_path / "store")
    sha256 = _failed_general_job(tmp_path, store)

    restarted = trainer_on(store, tmp_path / "m", lora_class_images=0, lora_general_after_accepted=1)
    assert restarted.plan() == [] and restarted.run_pending() == []
    assert request_reads(store) == []
    assert stub_training == []

    # Deleting failed.json is still how an operator retries it (docs/diffusion.md).
    store.delete(f"{PREFIX}/jobs/{sha256}/failed.json")
    [again] = restarted.plan()
    assert again.sha256 == sha256 and len(request_reads(store)) == 3


def test_a_general_job_failed_for_good_is_planned_again_by_a_trainer_of_another_recipe(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """A restart with another recipe (or model, or class folder) makes the same images another job, which
    has not failed: the remembered failure must not hold it back."""
    store = CountingStore(tmp_path / "store")
    sha256 = _failed_general_job(tmp_path, store)

    restarted = trainer_on(
        store, tmp_path / "m", lora_class_images=0, lora_general_after_accepted=1, lora_max_steps=400
    )
    [job] = restarted.plan()
    assert job.sha256 != sha256 and len(request_reads(store)) == 3


def test_a_new_accepted_image_after_a_restart_plans_a_new_general_job(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    store = CountingStore(tmp_path / "store")
    sha256 = _failed_general_job(tmp_path, store)

    restarted = trainer_on(store, tmp_path / "m", lora_class_images=0, lora_general_after_accepted=1)
    record_accepted_event(store, gate_accepted(store, 3))
    [new] = restarted.plan()
    assert new.sha256 != sha256 and new.accepted_count == 4
    assert [event.adapter_id for event in restarted.run_pending()] == [new.adapter_id]
    assert served(store, "any") == new.adapter_id


def test_a_failure_record_this_version_cannot_read_plans_the_job_once_and_is_written_again(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """``failed`` in general.json is only a memo: mangled (an edit, another release), the job is planned
    and found failed, as before the record, and the record is written anew; the schedule stays readable."""
    store = CountingStore(tmp_path / "store")
    sha256 = _failed_general_job(tmp_path, store)
    state = json.loads(store.get_bytes(f"{PREFIX}/general.json"))
    store.put_json(
        f"{PREFIX}/general.json", {**state, "failed": {**state["failed"], "job": "../published/x"}}
    )

    restarted = trainer_on(store, tmp_path / "m", lora_class_images=0, lora_general_after_accepted=1)
    [job] = restarted.plan()
    assert job.sha256 == sha256 and len(request_reads(store)) == 3
    assert restarted.run_pending() == [] and stub_training == []
    request_reads(store)  # run_pending planned it too, before the record was written again
    assert json.loads(store.get_bytes(f"{PREFIX}/general.json"))["failed"] == state["failed"]
    assert restarted.plan() == [] and request_reads(store) == []


def test_a_series_whose_training_prompt_is_longer_than_an_event_may_carry_is_published(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """A photo's tags go into its training prompt whole: a sku.captioned the schema takes (64 tags of 200
    characters) made a prompt of 13,000 characters, over AdapterPublished's 8,192. The adapter trained
    and was registered, then its event failed to build, at every poll for ever (only 'retried'), and
    the series never got an adapter.published."""
    store = FileStore(tmp_path / "store")
    captioned = captioned_sku(store, 1, usable_photos=1, series="cola")
    tags = [f"tag {index:02d} " + "x" * 190 for index in range(MAX_TAGS)]
    photo = captioned.photos[0].model_copy(update={"tags": tags})
    record(store, captioned.model_copy(update={"photos": [photo]}))
    published: list[AdapterPublished] = []
    trainer = trainer_on(store, model_folder(tmp_path, "m"), lora_class_images=0)
    trainer.publish = published.append

    [event] = trainer.run_pending()
    assert published == [event] and served(store) == event.adapter_id
    assert event.training_prompts and all(len(p) <= MAX_TRAINING_PROMPT_CHARS for p in event.training_prompts)
    assert event.training_prompts[0].startswith(captioned.instance_prompt)
    assert trainer.run_pending() == []  # published: nothing left to do


def test_a_general_adapter_of_more_sku_ids_than_a_kafka_record_holds_is_published(
    tmp_path: Path, stub_training: list[Path], kafka_bootstrap: str
) -> None:
    """SKUFORGE_LORA_GENERAL_MAX_IMAGES takes 50,000, one SKU each: 50,000 ids of 20 characters made a
    1.15 MB adapter.published the producer refused (MessageSizeTooLargeError, a TransientError). The
    adapter was registered, then its publish failed at every poll for ever, and the general job stayed
    under way, so new accepted images never started another. Its event names the first SKU ids that
    fit one record; the job's result.json keeps them all."""
    store = FileStore(tmp_path / "store")
    shared = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    create_topics(shared, ADAPTER_PUBLISHED, partitions=1)
    for variant in (0, 1, 2):
        record_accepted_event(store, gate_accepted(store, variant))
    trainer = trainer_on(
        store, model_folder(tmp_path, "m"), lora_class_images=0, lora_general_after_accepted=1
    )

    def broker_away(event: AdapterPublished) -> None:
        raise TransientError("broker away")

    trainer.publish = broker_away
    with pytest.raises(PublicationFailed, match="broker away"):
        trainer.run_pending()  # trained and registered; its result.json as a 50,000-image job writes it
    [job] = trainer.plan()
    result_key = f"{PREFIX}/jobs/{job.sha256}/result.json"
    sku_ids = sorted(f"SKU-{index:016d}" for index in range(MAX_ADAPTER_SKUS))
    store.put_json(result_key, {**json.loads(store.get_bytes(result_key)), "sku_ids": sku_ids})

    trainer.publish = kafka_publisher(shared)
    with pytest.raises(PublicationFailed) as skipped:  # the poll after a failed send skips its try
        trainer.run_pending()
    assert not skipped.value.tried
    [event] = trainer.run_pending()
    [envelope] = read_topic(kafka_bootstrap, shared.topic_name(ADAPTER_PUBLISHED), expect=1)
    on_kafka = Envelope[AdapterPublished].model_validate_json(envelope.value).payload
    assert on_kafka == event and event.adapter_id == job.adapter_id
    assert 40_000 < len(event.sku_ids) < MAX_ADAPTER_SKUS and event.sku_ids == sku_ids[: len(event.sku_ids)]
    assert record_bytes(event) <= MAX_OUTPUT_RECORD_BYTES
    assert json.loads(store.get_bytes(result_key))["sku_ids"] == sku_ids  # every one, kept
    assert served(store, "any") == job.adapter_id
    assert trainer.plan() == [] and trainer.run_pending() == []  # published, no longer under way
    record_accepted_event(store, gate_accepted(store, 3))
    [new] = trainer.plan()  # a new accepted image plans a new general job
    assert new.sha256 != job.sha256 and new.kind == "general"


def test_two_photos_whose_ids_join_to_the_same_text_are_two_items_of_the_set(tmp_path: Path) -> None:
    """An item's id was '<sku_id>-<photo_id>-<scene>', and both ids may hold '-': SKU 'A-1' photo 'front'
    and SKU 'A' photo '1-front' (one series, or the general set) were one id and one image key. The
    second photo overwrote the first, which was trained as the second (twice), and the set, its ids
    not unique, never loaded: every resume built it again."""
    store = FileStore(tmp_path / "store")
    first = one_photo_source(store)
    store.put_bytes(
        "inverted.png", inverted := encode_png(255 - pixel_array(decode_image(store.get_bytes("photo.png"))))
    )
    sources = [
        replace(first, sku_id="A-1", photo_id="front", composite=False),
        replace(
            first,
            sku_id="A",
            photo_id="1-front",
            image_uri=store.uri_for("inverted.png"),
            image_sha256=sha256_hex(inverted),
            composite=False,
        ),
    ]
    recipe = TrainingRecipe(resolution=64, scenes_per_photo=1, class_images=0)

    built = build_training_set(store, "set", "0" * 64, sources, recipe)

    first_item, second_item = built.instance_items
    assert first_item.item_id != second_item.item_id and first_item.image != second_item.image
    assert [item.sku_id for item in built.instance_items] == ["A-1", "A"]
    for item in built.instance_items:  # each image key holds its own photo, not the other's
        assert sha256_hex(store.get_bytes(item.image)) == item.sha256
    assert first_item.sha256 != second_item.sha256
    loaded = load_training_set(store, "set", "0" * 64)
    assert loaded is not None and loaded.items == built.items  # a resume reads it, not builds it again


def test_an_unambiguous_items_id_is_the_one_sets_always_had(tmp_path: Path) -> None:
    """A set built before keeps its ids; one built now names its items as before unless two collide."""
    store = FileStore(tmp_path / "store")
    source = replace(one_photo_source(store), composite=False)
    recipe = TrainingRecipe(resolution=64, scenes_per_photo=1, class_images=0)
    [item] = build_training_set(store, "set", "0" * 64, [source], recipe).instance_items
    assert item.item_id == "SKU-001-p1-000"
