"""What review 47 left in the contract's text, continued: a generated image's prompts, and an adapter's
training prompts, take the character rule of the captioner's text they are made of."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas.events import MAX_CAPTION_CHARS, MAX_PHRASE_CHARS, AdapterPublished, ImageGenerated
from schemas.topics import ADAPTER_PUBLISHED, IMAGE_GENERATED, SKU_CAPTIONED
from services.generator.stage import prompt_for
from services.lora_trainer.stage import PREFIX
from shared.bus import make_envelope, read_envelope
from shared.generation.adapters import AdapterRegistry
from shared.store import FileStore
from tests.support.gate import captioned, matted_item
from tests.support.lora import _trainer, gate_accepted, model_folder, record_accepted_event, trainer_on
from tests.support.schemas import adapter_envelope, refused_then_read_escaped

_REFUSED = [
    ("red\u202ecan", "bidirectional control character (U+202E at character 4)"),
    ("red\x1b[2J", "control character (U+001B at character 4)"),
    ("red\nforged line", "control character (U+000A at character 4)"),
    ("red\u2028second line", "line separator (U+2028 at character 4)"),
]
_REFUSED_IDS = ["override", "escape", "newline", "line_separator"]


def _generated_envelope(tmp_path: Path) -> dict[str, Any]:
    """An image.generated as the generator writes one, as JSON."""
    generated = matted_item(FileStore(tmp_path / "store"), 1, 0).generated
    envelope = make_envelope(
        IMAGE_GENERATED,
        generated,
        event_id="e" * 32,
        sku_id=generated.sku.sku_id,
        trace_id="t",
        producer="generator",
    )
    return envelope.model_dump(mode="json")


# -- a generated image's prompts: one line, escaped where an event already holds them -------------------


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
@pytest.mark.parametrize(("text", "named"), _REFUSED, ids=_REFUSED_IDS)
def test_a_generated_prompt_with_one_is_refused_to_a_producer_and_read_escaped_from_a_topic(
    tmp_path: Path, field: str, text: str, named: str
) -> None:
    # They took any text: another producer's U+202E, terminal escape or newline went on to the console's
    # pages, the trainstore's rows and the general adapter's training prompts.
    written = _generated_envelope(tmp_path)
    written["payload"][field] = text

    read = refused_then_read_escaped(IMAGE_GENERATED, written, [field], text, named)

    # One already in the topic (or a dead letter) is read with the character escaped, not dead-lettered.
    assert getattr(read, field) == text.encode("unicode_escape").decode("ascii")


def test_the_generator_writes_prompts_the_contract_takes_from_any_captioned_event_it_reads(
    tmp_path: Path,
) -> None:
    # Its prompt is the instance prompt, ", " and a photo's caption; its negative prompt the SKU's. A
    # sku.captioned from before the captioner's text was ruled is read escaped, and the longest the
    # contract takes fit: no image of it is refused.
    store = FileStore(tmp_path / "store")
    payload = captioned(store, 1)
    written = make_envelope(
        SKU_CAPTIONED, payload, event_id="c" * 32, sku_id=payload.sku.sku_id, trace_id="t", producer="x"
    ).model_dump(mode="json")
    written["payload"]["instance_prompt"] = "a photo of\u2028shs can".ljust(MAX_PHRASE_CHARS, "x")
    written["payload"]["negative_prompt"] = "blurry\n\x1b[2J".ljust(MAX_CAPTION_CHARS, "\u202e")
    for photo in written["payload"]["photos"]:
        photo["caption"] = "a red can\non a\u202e shelf".ljust(MAX_CAPTION_CHARS, "\u2029")
    read = read_envelope(SKU_CAPTIONED, json.dumps(written)).payload
    generated = _generated_envelope(tmp_path)["payload"]
    for photo in read.photos:
        made = ImageGenerated.model_validate(
            {**generated, "prompt": prompt_for(read, photo), "negative_prompt": read.negative_prompt}
        )
        assert made.prompt.startswith("a photo of\\u2028shs can") and "\\n" in made.prompt


# -- an adapter's training prompts: one line, escaped where an event or a stored record holds them -------


@pytest.mark.parametrize(("text", "named"), _REFUSED, ids=_REFUSED_IDS)
def test_a_training_prompt_with_one_is_refused_to_a_producer_and_read_escaped_from_a_topic(
    text: str, named: str
) -> None:
    # They took any text: another producer's U+202E, terminal escape or newline went on to
    # `skuforge adapters list` and the registry.
    written = adapter_envelope(training_prompts=["a photo of a can", "a photo of shs can, red"])
    written["payload"]["training_prompts"][1] = text

    read = refused_then_read_escaped(ADAPTER_PUBLISHED, written, ["training_prompts", 1], text, named)
    assert read.training_prompts[1] == text.encode("unicode_escape").decode("ascii")


def test_a_general_adapter_of_an_image_recorded_before_is_published_with_its_prompt_escaped(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    # The trainer keeps an accepted image's prompt in its accepted/ request, and a trained job's prompts in
    # its result.json (a roll-back publishes again from one): one stored before the tightening, with a
    # newline, would make an event the contract refuses, at every poll, and the general adapter never
    # published. It is written escaped, in the event and the registry alike.
    store = FileStore(tmp_path / "store")
    accepted = gate_accepted(store, 0)
    record_accepted_event(store, accepted)
    key = f"{PREFIX}/accepted/{accepted.matted.generated.item_id}.json"
    stored = json.loads(store.get_bytes(key))
    store.put_json(key, {**stored, "prompt": "a photo of sku1 soda can\nforged line\u202e"})
    published: list[AdapterPublished] = []
    trainer = trainer_on(
        store, model_folder(tmp_path, "m"), lora_class_images=0, lora_general_after_accepted=1
    )
    trainer.publish = published.append

    [event] = trainer.run_pending()
    assert published == [event]
    assert event.training_prompts == ["a photo of sku1 soda can\\nforged line\\u202e"]
    [registered] = AdapterRegistry(store).list()
    assert registered.training_prompts == event.training_prompts


def test_a_published_marker_with_such_a_training_prompt_still_reads(tmp_path: Path) -> None:
    # The trainer reads its published/ marker back to count a roll-back's publication: one stored with a
    # training prompt the contract refuses since would be an unreadable record.
    store = FileStore(tmp_path)
    marker = f"{PREFIX}/published/cola-0123456789ab.json"
    written = adapter_envelope(training_prompts=["a photo of a can", "a photo of shs can"])["payload"]
    written["training_prompts"][1] = "a photo of shs can\x1b[2J"
    store.put_json(marker, written)
    assert _trainer(store)._marker(marker).training_prompts[1] == "a photo of shs can\\x1b[2J"
