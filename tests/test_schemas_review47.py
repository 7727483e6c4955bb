"""What review 47 left in the contract's text: a length refusal says characters, not items; the
captioner's text takes the character rule of the rest of the contract's text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from schemas import envelope, events
from schemas.common import Contract, ImageRef, SkuMetadata
from schemas.events import CaptionedPhoto, SkuCaptioned
from schemas.topics import ADAPTER_PUBLISHED, CORRECTION_RESOLVED, SKU_CAPTIONED
from services.lora_trainer.stage import PREFIX
from shared.bus import make_envelope, read_envelope
from shared.captioning.prompts import compose_caption, compose_tags, merge_sentence
from shared.store import FileStore
from tests.support.gate import matted_item, resolved
from tests.support.lora import _trainer
from tests.support.schemas import (
    adapter_envelope,
    captioned_envelope,
    committed_schema,
    refused_then_read_escaped,
)

# -- a text over its length is refused in characters ---------------------------------------------------


def _contracts() -> list[type[Contract]]:
    """Every contract model (the events', the envelope's and the value types they embed)."""
    assert envelope and events  # imported for their models
    found: list[type[Contract]] = []
    waiting = list(Contract.__subclasses__())
    while waiting:
        model = waiting.pop()
        if model not in found and "[" not in model.__name__:  # not Envelope[SkuIngested] and the like
            found.append(model)
            waiting.extend(model.__subclasses__())
    return found


def _max_length(schema: dict[str, Any]) -> tuple[int, bool] | None:
    """A property's string length bound, and whether it is a list's items' (None: not bounded text)."""
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "string" and "maxLength" in option:
            return option["maxLength"], False
        items = option.get("items", {})
        if items.get("type") == "string" and "maxLength" in items:
            return items["maxLength"], True
    return None


_BOUNDED_TEXT = [
    (model, name, bound)
    for model in _contracts()
    for name, schema in model.model_json_schema()["properties"].items()
    if (bound := _max_length(schema)) is not None
]


def test_every_bounded_text_of_the_contract_is_found() -> None:
    named = {f"{model.__name__}.{name}" for model, name, _ in _BOUNDED_TEXT}
    assert {"GateCheck.code", "CorrectionPending.reasons", "CorrectionResolved.reject_reason"} <= named


@pytest.mark.parametrize(
    ("model", "name", "bound"), _BOUNDED_TEXT, ids=[f"{m.__name__}.{n}" for m, n, _ in _BOUNDED_TEXT]
)
def test_a_text_over_its_length_is_refused_in_characters(
    model: type[Contract], name: str, bound: tuple[int, bool]
) -> None:
    # A length given after a text type's character rule (a check's code, a reason, an optional reject
    # reason) was pydantic's generic one: "Value should have at most 200 items after validation", read in a
    # dead letter's detail and a producer's error as a list's.
    limit, in_a_list = bound
    text = "x" * (limit + 1)
    with pytest.raises(ValidationError) as refused:
        model.model_validate({name: [text] if in_a_list else text})
    said = [error["msg"] for error in refused.value.errors() if error["loc"][:1] == (name,)]
    assert said and all("characters" in message and "items" not in message for message in said), said


# -- the captioner's text: one line that reads as written, escaped where an event already holds it ----

_IMAGE = ImageRef(uri="file:///store/p.png", sha256="0" * 64, bytes=10, width=8, height=8)


def _captioned_envelope() -> dict[str, Any]:
    """A sku.captioned as the captioner writes one (a usable photo and an unusable one), as JSON."""
    sku = SkuMetadata(sku_id="SKU-1", name="Cola", category="soda can")
    return captioned_envelope(
        sku,
        [
            CaptionedPhoto(
                photo_id="p0",
                image=_IMAGE,
                mask=_IMAGE,
                usable=True,
                caption=compose_caption(sku, ["red"], "can", "front view"),
                tags=compose_tags(sku, ["red"], "can", "front view"),
                colours=["red"],
                shape="can",
                view="front view",
            ),
            CaptionedPhoto(photo_id="p1", image=_IMAGE, usable=False, unusable_reason="blank_photo"),
        ],
    )


_CAPTIONER_TEXT: list[list[str | int]] = [
    ["payload", "photos", 0, "caption"],
    ["payload", "photos", 0, "tags", 0],
    ["payload", "photos", 0, "colours", 0],
    ["payload", "photos", 0, "view"],
    ["payload", "photos", 1, "unusable_reason"],
    ["payload", "instance_token"],
    ["payload", "class_noun"],
    ["payload", "instance_prompt"],
    ["payload", "class_prompt"],
    ["payload", "negative_prompt"],
]


def _put(written: dict[str, Any], path: list[str | int], text: str) -> None:
    node: Any = written
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = text


def _at(read: Any, path: list[str | int]) -> Any:
    for step in path:
        read = read[step]
    return read


@pytest.mark.parametrize(
    "path", _CAPTIONER_TEXT, ids=[".".join(map(str, path[1:])) for path in _CAPTIONER_TEXT]
)
@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("red\u202ecan", "bidirectional control character (U+202E at character 4)"),
        ("red\x1b[2J", "control character (U+001B at character 4)"),
        ("red\nforged line", "control character (U+000A at character 4)"),
        ("red\u2028second line", "line separator (U+2028 at character 4)"),
    ],
    ids=["override", "escape", "newline", "line_separator"],
)
def test_captioner_text_with_one_is_refused_to_a_producer_and_read_escaped_from_a_topic(
    path: list[str | int], text: str, named: str
) -> None:
    # They took any text: another producer's U+202E, terminal escape or newline went on into the
    # generator's prompts, the trainer's captions and the console's pages.
    written = _captioned_envelope()
    _put(written, path, text)

    with pytest.raises(ValidationError) as refused_model:
        SkuCaptioned.model_validate(written["payload"])
    assert named in str(refused_model.value) and text not in str(refused_model.value)
    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.Draft202012Validator(committed_schema(SKU_CAPTIONED)).validate(written)
    assert list(refused.value.absolute_path) == path

    # One already in the topic (or a dead letter) is read with the character escaped: dead-lettered, every
    # replay failed alike, and the SKU was never generated.
    read = read_envelope(SKU_CAPTIONED, json.dumps(written)).model_dump(mode="json")
    assert _at(read, path) == text.encode("unicode_escape").decode("ascii")


def test_what_the_captioner_writes_from_any_metadata_the_contract_takes_is_taken() -> None:
    # Its words are SkuMetadata's, which may hold line separators, joiners and directional marks, and a
    # VLM's sentence: single-spaced and cut into words, none of them is refused.
    sku = SkuMetadata(
        sku_id="SKU-1",
        name="Cola\u2028Zero \u200f\u05d7\u05ea",
        category="soda\u2029can",
        brand="क्\u200dष",
        series="Zero\u2028Series",
    )
    caption = compose_caption(sku, ["red", "white"], "can", "tilted front view")
    caption = merge_sentence(caption, "a can\u2028on a\u202e table\n\x1b[2J", ["red"], "can")
    photo = CaptionedPhoto(
        photo_id="p0",
        image=_IMAGE,
        usable=True,
        caption=caption,
        tags=compose_tags(sku, ["red", "white"], "can", "tilted front view"),
        colours=["red", "white"],
        view="tilted front view",
    )
    jsonschema.Draft202012Validator(committed_schema(SKU_CAPTIONED)).validate(
        captioned_envelope(sku, [photo])
    )


def test_a_series_request_the_trainer_stored_from_such_an_event_still_plans(tmp_path: Path) -> None:
    # The LoRA trainer keeps each sku.captioned it was sent as its series' request file and reads them all
    # at every plan: one written before the tightening, with a caption's newline, was skipped as unreadable
    # and its SKU left out of its series' adapter for good.
    store = FileStore(tmp_path)
    written = _captioned_envelope()["payload"]
    written["sku"]["series"] = "Cola"
    written["photos"][0]["caption"] = "a photo of a red soda can\nforged line"
    store.put_json(f"{PREFIX}/series/cola/SKU-1.json", written)
    trainer = _trainer(store)

    assert [job.series for job in trainer.plan()] == ["Cola"]
    (family,) = trainer.metrics.unreadable.collect()
    assert [sample.value for sample in family.samples if sample.labels["kind"] == "captioned"] == [0]


# -- who decided, and an adapter's series: the character rule of the text they come from ---------------


def _resolved_envelope(tmp_path: Path) -> dict[str, Any]:
    """A console's correction.resolved approving one render, as JSON."""
    matted = matted_item(FileStore(tmp_path / "store"), 1, 0)
    decision = resolved(FileStore(tmp_path / "store"), matted, "approve_expected")
    envelope = make_envelope(
        CORRECTION_RESOLVED,
        decision,
        event_id="f" * 32,
        sku_id=matted.generated.sku.sku_id,
        trace_id="t",
        producer="console",
    )
    return envelope.model_dump(mode="json")


_OVERRIDE = ("alice\u202eecila", "bidirectional control character (U+202E at character 6)")
_ESCAPE = ("alice\x1b[2J", "control character (U+001B at character 6)")
_NEWLINE = ("alice\nforged line", "control character (U+000A at character 6)")


@pytest.mark.parametrize(
    ("text", "named"),
    [*(_OVERRIDE, _ESCAPE, _NEWLINE), ("alice\u2028bob", "line separator (U+2028 at character 6)")],
    ids=["override", "escape", "newline", "line_separator"],
)
def test_a_reviewer_with_one_is_refused_to_a_producer_and_read_escaped_from_a_topic(
    tmp_path: Path, text: str, named: str
) -> None:
    # It took any text: another producer's U+202E or terminal escape went on to the console's audit and
    # pages and the trainstore's rows as who decided. The console writes ASCII login names, and an
    # annotator's printable characters after "labelstudio:".
    written = _resolved_envelope(tmp_path)
    written["payload"]["reviewer"] = text
    read = refused_then_read_escaped(CORRECTION_RESOLVED, written, ["reviewer"], text, named)
    assert read.reviewer == text.encode("unicode_escape").decode("ascii")


@pytest.mark.parametrize(
    ("text", "named"), [_OVERRIDE, _ESCAPE, _NEWLINE], ids=["override", "escape", "newline"]
)
def test_an_adapter_series_with_one_is_refused_to_a_producer_and_read_escaped_from_a_topic(
    text: str, named: str
) -> None:
    # It took any text, where the SKUs' series it names refuses these: another producer's went on to
    # `skuforge adapters list` and the generator's logs.
    written = adapter_envelope("Cola")
    written["payload"]["series"] = text
    read = refused_then_read_escaped(ADAPTER_PUBLISHED, written, ["series"], text, named)
    assert read.series == text.encode("unicode_escape").decode("ascii")


def test_every_series_a_sku_takes_an_adapter_takes() -> None:
    # The trainer copies a SKU's series as it is: a line separator, a joiner or a mark there is no refusal.
    series = "Zero\u2028Series क्\u200dष \u200f"
    SkuMetadata(sku_id="SKU-1", name="Cola", category="soda can", series=series)
    written = adapter_envelope(series)
    jsonschema.Draft202012Validator(committed_schema(ADAPTER_PUBLISHED)).validate(written)
    assert read_envelope(ADAPTER_PUBLISHED, json.dumps(written)).payload.series == series


def test_a_published_marker_the_trainer_stored_from_before_still_reads(tmp_path: Path) -> None:
    # The trainer keeps each adapter's event as its published/ marker and reads it back to count a
    # roll-back's publication: one with a series the contract refuses since would be an unreadable record.
    store = FileStore(tmp_path)
    written = adapter_envelope("Cola")["payload"]
    written["series"] = "Cola\x1b[2J"
    store.put_json(f"{PREFIX}/published/cola-0123456789ab.json", written)
    marker = _trainer(store)._marker(f"{PREFIX}/published/cola-0123456789ab.json")
    assert marker.series == "Cola\\x1b[2J"
