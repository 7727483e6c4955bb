"""Contracts: committed JSON Schemas match the models; ids are safe; envelopes round-trip."""

from __future__ import annotations

import json

import jsonschema
import pytest
from pydantic import ValidationError

from schemas.common import ImageRef, SkuMetadata, check_safe_id
from schemas.envelope import Envelope, derive_id
from schemas.events import ImageGenerated, SkuIngested
from schemas.jsonschema import JSON_DIR, render_schemas
from schemas.topics import ALL_TOPICS, SKU_INGESTED, topic_by_name
from shared.bus import make_envelope, read_envelope, read_header


def test_committed_json_schemas_match_the_models() -> None:
    rendered = render_schemas()
    committed = {path.name: path.read_text() for path in JSON_DIR.glob("*.json")}
    stale = sorted(set(committed) ^ set(rendered))
    assert not stale, f"schemas/json out of date ({stale}): run `make schemas`"
    for name, text in rendered.items():
        assert committed[name] == text, f"schemas/json/{name} drifted from the model: run `make schemas`"


def test_every_topic_of_the_flow_is_versioned_and_has_a_schema() -> None:
    names = {topic.schema_name for topic in ALL_TOPICS}
    assert names == {
        "sku.ingested",
        "sku.captioned",
        "image.generated",
        "image.matted",
        "gate.accepted",
        "correction.pending",
        "correction.resolved",
        "adapter.published",
    }
    for topic in ALL_TOPICS:
        assert topic.name.endswith(f".v{topic.version}")
        assert (JSON_DIR / f"{topic.name}.json").is_file()
        assert topic_by_name(topic.name) is topic
    with pytest.raises(KeyError, match="known topics"):
        topic_by_name("nope.v1")


@pytest.mark.parametrize(
    ("sku_id", "why"),
    [
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        ("x" * 65, "at most 64"),
        ("bad\nid", "control characters"),
        ("", "empty"),
        ("-leading", "must start with"),
        ("sp ace", "contains ' ' .character 3."),
    ],
)
def test_unsafe_ids_are_refused_with_a_reason(sku_id: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_safe_id(sku_id)
    with pytest.raises(ValidationError):
        SkuMetadata(sku_id=sku_id, name="n", category="c")
    # The committed JSON Schema refuses it too: a producer validating against it accepted "a..b",
    # which the consumers then dead-lettered as schema_invalid.
    schema = json.loads((JSON_DIR / "sku.ingested.v1.json").read_text())
    id_schema = schema["$defs"]["SkuMetadata"]["properties"]["sku_id"]
    jsonschema.validate("SKU-0001", id_schema)  # the schema is the one for ids
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(sku_id, id_schema, format_checker=None)


def test_the_json_schema_bounds_a_colour_gain_as_the_model_does() -> None:
    schema = json.loads((JSON_DIR / "image.generated.v1.json").read_text())
    gain = schema["$defs"]["ImageGenerated"]["properties"]["colour_gain"]
    jsonschema.validate([1.0, 0.5, 15.9], gain)
    jsonschema.validate(None, gain)
    for refused in ([0.0, 1.0, 1.0], [1.0, 16.0, 1.0], [1.0, 1.0]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(refused, gain)


def test_a_generated_images_seed_is_an_int64_in_the_model_and_the_json_schema() -> None:
    # The Triton protocol carries an int64 and every backend refuses any other seed, but the contract
    # took any integer: an event could record a seed (2^64) that no backend could replay.
    image = {"uri": "file:///x.png", "sha256": "0" * 64, "bytes": 1, "width": 1, "height": 1}
    fields = {
        "item_id": "item-1",
        "sku": {"sku_id": "SKU-1", "name": "One", "category": "soda can"},
        "reference_photo_id": "p1",
        "reference_image": image,
        "reference_mask": image,
        "image": image,
        "expected_mask": image,
        "backend": "composite",
        "model_id": "synth",
        "variant_index": 0,
    }
    schema = json.loads((JSON_DIR / "image.generated.v1.json").read_text())
    seed_schema = schema["$defs"]["ImageGenerated"]["properties"]["seed"]
    for seed in (-(2**63), -1, 0, 2**63 - 1):
        assert ImageGenerated.model_validate({**fields, "seed": seed}).seed == seed
        jsonschema.validate(seed, seed_schema)
    for seed in (-(2**63) - 1, 2**63, 2**64):
        with pytest.raises(ValidationError, match="seed"):
            ImageGenerated.model_validate({**fields, "seed": seed})
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(seed, seed_schema)


def test_every_committed_schema_says_which_draft_it_is_written_in() -> None:
    # Undeclared, a validator defaulting to draft 7 ignored prefixItems and passed a gain of [0, 1, 1].
    for path in sorted(JSON_DIR.glob("*.json")):
        schema = json.loads(path.read_text())
        validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
        assert validator is jsonschema.Draft202012Validator, path.name
    generated = json.loads((JSON_DIR / "image.generated.v1.json").read_text())
    declared = {"$schema": generated["$schema"]}
    gain = generated["$defs"]["ImageGenerated"]["properties"]["colour_gain"] | declared
    validator = jsonschema.validators.validator_for(gain, default=jsonschema.Draft7Validator)
    assert not validator(gain).is_valid([0.0, 1.0, 1.0])


def test_safe_ids_pass() -> None:
    for sku_id in ["SKU-0001", "a", "x" * 64, "brand.line_v2"]:
        assert check_safe_id(sku_id) == sku_id


def test_envelope_round_trip_and_validation() -> None:
    image = ImageRef(uri="file:///s/a.png", sha256="0" * 64, bytes=10, width=4, height=3)
    payload = SkuIngested(
        sku=SkuMetadata(sku_id="SKU-1", name="Cola", category="soda can"),
        photos=[{"photo_id": "p1", "image": image, "original_filename": "a.png"}],
    )
    envelope = make_envelope(
        SKU_INGESTED, payload, event_id=derive_id("x"), sku_id="SKU-1", trace_id="t1", producer="test"
    )
    text = envelope.model_dump_json()
    again = Envelope[SkuIngested].model_validate_json(text)
    assert again == envelope
    assert json.loads(text)["schema_name"] == "sku.ingested"
    broken = json.loads(text)
    broken["payload"]["photos"] = []
    with pytest.raises(ValidationError, match="photos"):
        Envelope[SkuIngested].model_validate(broken)
    broken = json.loads(text)
    broken["surprise"] = 1
    with pytest.raises(ValidationError, match="Extra inputs"):
        Envelope[SkuIngested].model_validate(broken)
    with pytest.raises(TypeError, match="carries SkuIngested"):
        make_envelope(SKU_INGESTED, image, event_id=derive_id("x"), sku_id="S", trace_id="t", producer="p")


def test_derive_id_is_deterministic_and_separates_parts() -> None:
    assert derive_id("a", "b") == derive_id("a", "b")
    assert derive_id("a", "b") != derive_id("ab")
    assert len(derive_id("a")) == 32


def test_readers_ignore_unknown_fields_producers_refuse_them() -> None:
    """Tolerant reader, strict producer: an unknown field is dropped on read, refused on build."""
    image = ImageRef(uri="file:///s/a.png", sha256="0" * 64, bytes=10, width=4, height=3)
    payload = SkuIngested(
        sku=SkuMetadata(sku_id="SKU-1", name="Cola", category="soda can"),
        photos=[{"photo_id": "p1", "image": image, "original_filename": "a.png"}],
    )
    envelope = make_envelope(
        SKU_INGESTED, payload, event_id=derive_id("x"), sku_id="SKU-1", trace_id="t1", producer="test"
    )
    newer = envelope.model_dump(mode="json")
    newer["priority"] = "high"
    newer["payload"]["lighting"] = "studio"
    newer["payload"]["sku"]["gtin"] = "0123"
    again = read_envelope(SKU_INGESTED, json.dumps(newer))
    assert again == envelope  # the unknown fields are gone; the rest is intact and still frozen
    with pytest.raises(ValidationError, match="frozen"):
        again.sku_id = "SKU-2"  # type: ignore[misc]
    header = read_header(json.dumps(newer | {"schema_version": 2, "payload": "anything"}))
    assert (header.schema_name, header.schema_version) == ("sku.ingested", 2)
    # Everything else is still checked on read: a wrong type is not "unknown".
    newer["payload"]["photos"] = "front.png"
    with pytest.raises(ValidationError, match="photos"):
        read_envelope(SKU_INGESTED, json.dumps(newer))
    # Producers stay strict, and the committed schemas say so.
    with pytest.raises(ValidationError, match="Extra inputs"):
        SkuMetadata(sku_id="SKU-1", name="Cola", category="soda can", gtin="0123")  # type: ignore[call-arg]
    schema = json.loads((JSON_DIR / f"{SKU_INGESTED.name}.json").read_text())
    assert schema["additionalProperties"] is False
