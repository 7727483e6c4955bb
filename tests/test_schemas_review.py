"""Contracts at the edges: the committed JSON Schemas refuse what the consumers dead-letter (a producer
not written in Python, validating against ``schemas/json/``, is told at once instead of finding its
events in a DLQ); a letter says which event and why; topic names stay within what Kafka takes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from schemas.common import MAX_MEDIA_TYPE_CHARS, MAX_URI_CHARS, SkuMetadata
from schemas.envelope import MAX_SCHEMA_NAME_CHARS, DeadLetter
from schemas.events import (
    MAX_CAPTION_CHARS,
    MAX_PHRASE_CHARS,
    AdapterPublished,
    SkuCaptioned,
    subject_sku_id,
)
from schemas.topics import (
    ADAPTER_PUBLISHED,
    ALL_TOPICS,
    DLQ_SUFFIX,
    IMAGE_GENERATED,
    PASSTHROUGH_OUT,
    SKU_CAPTIONED,
    SKU_INGESTED,
    Topic,
)
from services.generator.protocol import MAX_TEXT_BYTES
from services.generator.stage import prompt_for
from shared.bus import make_envelope, read_envelope
from shared.captioning.prompts import compose_caption, compose_tags, sku_prompts
from shared.config import ConfigError, load_settings
from shared.store import MAX_KEY_BYTES, open_store
from tests.support import gate
from tests.support.runtime import dead_letter_for
from tests.support.schemas import committed_schema, ingested_envelope


@pytest.mark.parametrize(
    ("field", "value"),
    [("schema_name", SKU_INGESTED.name), ("schema_name", "SkuIngested"), ("schema_version", 2)],
    ids=["the_topic_name", "the_payload_title", "a_newer_version"],
)
def test_the_topic_schema_refuses_a_header_its_consumers_dead_letter(
    tmp_path: Path, field: str, value: object
) -> None:
    """Before, ``schema_name`` was any string and ``schema_version`` any integer >= 1 in every topic's
    schema: an event naming its topic ("sku.ingested.v1", the schema's own x-topic) passed the schema
    and every consumer dead-lettered it (schema_mismatch)."""
    written = ingested_envelope() | {field: value}
    assert dead_letter_for(tmp_path, written).reason.startswith("schema_")  # mismatch, or unsupported

    schema = committed_schema(SKU_INGESTED)
    jsonschema.Draft202012Validator(schema).validate(ingested_envelope())  # what our producers write
    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.Draft202012Validator(schema).validate(written)
    assert list(refused.value.absolute_path) == [field]


@pytest.mark.parametrize("topic", ALL_TOPICS, ids=lambda topic: topic.name)
def test_every_topic_schema_names_the_schema_and_version_its_consumers_take(topic: Topic[Any]) -> None:
    properties = committed_schema(topic)["properties"]
    jsonschema.validate(topic.schema_name, properties["schema_name"])
    jsonschema.validate(topic.version, properties["schema_version"])
    for wrong_name in (topic.name, topic.schema_name + "x"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong_name, properties["schema_name"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(topic.version + 1, properties["schema_version"])


def test_a_letter_for_a_payload_that_does_not_validate_names_the_event_its_header_names(
    tmp_path: Path,
) -> None:
    """The commonest bad input, a readable envelope whose payload breaks its contract (no photos
    here), was dead-lettered with no event_id, sku_id or trace_id: ``skuforge dlq list`` showed
    "sku - event -" for every schema_invalid letter, so nobody could tell which SKU was refused."""
    written = ingested_envelope()
    written["payload"]["photos"] = []

    letter = dead_letter_for(tmp_path, written)
    assert letter.reason == "schema_invalid" and "photos" in letter.detail
    assert (letter.event_id, letter.sku_id, letter.trace_id) == ("c" * 32, "SKU-1", "t")


@pytest.mark.parametrize(
    ("change", "value"),
    [("event_id", "0b0e7bde-4b5d-4f7e-9d55-3a3e1c2f0a11"), ("trace_id", "t" * 128), ("sku_id", None)],
    ids=["a_uuid_event_id", "a_longer_trace_id", "no_sku_id"],
)
def test_a_newer_version_is_refused_as_such_even_when_its_envelope_changed_too(
    tmp_path: Path, change: str, value: object
) -> None:
    """docs/delivery.md: a breaking change of the envelope's own fields is a .v2 of every topic. Such an
    event on a v1 topic was dead-lettered as schema_invalid, since its header (read to find its
    version) no longer read as a v1 header; ``dlq list`` then called a newer producer a broken one."""
    written = ingested_envelope() | {"schema_version": 2, change: value}
    if value is None:
        del written[change]

    letter = dead_letter_for(tmp_path, written)
    assert letter.reason == "schema_version_unsupported"
    assert "v2" in letter.detail and "sku.ingested.v2" in letter.detail


def test_a_namespace_that_makes_a_topic_name_kafka_refuses_is_refused_at_start_up() -> None:
    """Kafka refuses a topic name over 249 characters. Any length of SKUFORGE_TOPIC_NAMESPACE was taken,
    and only the broker refused the names, once `skuforge topics create` asked for them; the settings
    now refuse it at start-up, naming the variable and the room there is."""
    names = [
        name for topic in (*ALL_TOPICS, PASSTHROUGH_OUT) for name in (topic.name, topic.name + DLQ_SUFFIX)
    ]
    room = 249 - max(len(name) for name in names)
    fitting = load_settings(topic_namespace="n" * room)
    assert max(len(fitting.dlq_name(topic)) for topic in (*ALL_TOPICS, PASSTHROUGH_OUT)) == 249
    with pytest.raises(ConfigError, match=f"SKUFORGE_TOPIC_NAMESPACE.*at most {room}.*249"):
        load_settings(topic_namespace="n" * (room + 1))


def test_a_time_without_an_offset_is_read_as_utc_and_written_with_one() -> None:
    """Envelopes took ``produced_at: "2024-05-01T12:00:00"`` and kept it naive: written out again (an
    embedded ``decided_at``, a replayed letter's ``failed_at``) it broke the committed schema's
    ``date-time``, and comparing it with an aware time raised. Refusing it would dead-letter events
    already accepted, so a time without an offset is read as UTC, the only zone skuforge writes."""
    written = ingested_envelope() | {"produced_at": "2024-05-01T12:00:00"}
    event = read_envelope(SKU_INGESTED, json.dumps(written))
    assert event.produced_at == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert event.produced_at < datetime.now(UTC)
    jsonschema.Draft202012Validator(
        committed_schema(SKU_INGESTED), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(event.model_dump(mode="json"))

    letter = DeadLetter(
        reason="not_json",
        error_class="JSONDecodeError",
        stage="review",
        original_topic=SKU_INGESTED.name,
        original_partition=0,
        original_offset=0,
        original_value_b64="",
        failed_at=datetime(2024, 5, 1, 12),
    )
    assert letter.failed_at == datetime(2024, 5, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize("field", ["final_loss", "parameters"])
def test_nan_or_infinity_in_an_event_is_dead_lettered_not_forwarded_as_null(
    tmp_path: Path, field: str
) -> None:
    """Python's JSON readers take NaN and Infinity, which JSON has not (no committed schema can say
    one): an adapter's ``final_loss`` or a generated image's ``parameters`` holding one was taken, and
    written out again as null, so the value was lost without a word. Now the event is a dead letter."""
    if field == "final_loss":
        topic: Topic[Any] = ADAPTER_PUBLISHED
        payload: BaseModel = AdapterPublished(
            adapter_id="general-0123456789ab",
            kind="general",
            base_model="sd-inpainting",
            registry_uri="file:///registry/general-0123456789ab",
            weights_sha256="0" * 64,
            training_set_sha256="1" * 64,
            instance_images=4,
            class_images=8,
            steps=100,
            final_loss=0.1,
        )
        sku_id = "general-0123456789ab"
    else:
        topic, payload = (
            IMAGE_GENERATED,
            gate.matted_item(open_store(f"file://{tmp_path}/in", uri_from="the test"), 1, 0).generated,
        )
        sku_id = payload.sku.sku_id
    written = make_envelope(
        topic, payload, event_id="c" * 32, sku_id=sku_id, trace_id="t", producer="test"
    ).model_dump(mode="json")
    written["payload"][field] = float("inf") if field == "final_loss" else {"scale": [1.0, float("nan")]}

    letter = dead_letter_for(tmp_path, written, topic)
    assert letter.reason == "schema_invalid" and field in letter.detail


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("trace_id", "t\n2026-12-05 ERROR trainstore: forged line"),
        ("trace_id", "t sku_id=SKU-OTHER"),
        ("producer", "p" * 100_000),
        ("producer", "console\r"),
    ],
    ids=["trace_id_newline", "trace_id_space", "producer_long", "producer_carriage_return"],
)
def test_a_trace_id_or_producer_that_would_forge_log_lines_is_dead_lettered_naming_the_field(
    tmp_path: Path, field: str, value: str
) -> None:
    """Before, ``producer`` had no length limit and ``trace_id`` took any character: both went unescaped
    into the text log format (``key=value``), so a producer could forge log lines or fields."""
    written = ingested_envelope() | {field: value}
    letter = dead_letter_for(tmp_path, written)
    assert letter.reason == "schema_invalid" and letter.detail.startswith(f"{field}: ")

    schema = committed_schema(SKU_INGESTED)
    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.Draft202012Validator(schema).validate(written)
    assert list(refused.value.absolute_path) == [field]


@pytest.mark.parametrize(
    ("topic", "where", "field"),
    [
        (SKU_CAPTIONED, (), "instance_prompt"),
        (SKU_CAPTIONED, (), "negative_prompt"),
        (SKU_CAPTIONED, ("photos", 0), "caption"),
        (IMAGE_GENERATED, (), "prompt"),
    ],
    ids=["instance_prompt", "negative_prompt", "caption", "generated_prompt"],
)
def test_oversized_free_text_is_dead_lettered_once_naming_the_field(
    tmp_path: Path, topic: Topic[Any], where: tuple[str | int, ...], field: str
) -> None:
    """Before, captions and prompts had no length limit but Kafka's record size: a sku.captioned with a
    100 kB caption was taken, and the generator's server refused each of its variants (text over 8 KiB)
    one by one. Now the event is refused once, when it is read, naming the field."""
    store = open_store(f"file://{tmp_path}/in", uri_from="the test")
    payload: BaseModel = (
        gate.captioned(store, 1) if topic is SKU_CAPTIONED else gate.matted_item(store, 1, 0).generated
    )
    written = make_envelope(
        topic, payload, event_id="c" * 32, sku_id=str(subject_sku_id(payload)), trace_id="t", producer="test"
    ).model_dump(mode="json")
    parent = written["payload"]
    for step in where:
        parent = parent[step]
    parent[field] = "a photo of a red soda can, " * 4_000

    letter = dead_letter_for(tmp_path, written, topic)
    assert letter.reason == "schema_invalid" and field in letter.detail

    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.Draft202012Validator(committed_schema(topic)).validate(written)
    assert list(refused.value.absolute_path) == ["payload", *where, field]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("payload", "photos", 0, "image", "uri"), "file:///store/" + "k/" * 50_000 + "p.png"),
        (("payload", "photos", 0, "image", "media_type"), "image/" + "x" * 100_000),
        (("schema_name",), "sku." * 25_000 + "ingested"),
    ],
    ids=["uri", "media_type", "schema_name"],
)
def test_an_oversized_uri_media_type_or_schema_name_is_dead_lettered_naming_the_field(
    tmp_path: Path, path: tuple[str | int, ...], value: str
) -> None:
    """Before, an object's uri and media type and the envelope's schema name took any length Kafka
    carries: a 100 kB uri was looked up in the store, and a 100 kB schema name was quoted whole in a
    ``schema_mismatch`` letter. Now each is refused when the event is read, naming the field."""
    written = ingested_envelope()
    parent: Any = written
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value

    letter = dead_letter_for(tmp_path, written)
    assert letter.reason == "schema_invalid" and letter.detail.startswith(".".join(map(str, path)))

    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.Draft202012Validator(committed_schema(SKU_INGESTED)).validate(written)
    assert tuple(refused.value.absolute_path) == path


def test_the_uri_and_media_type_bounds_are_far_above_what_a_store_writes() -> None:
    # A file store's root may be as long as a Linux path (PATH_MAX, 4,096 bytes), its keys MAX_KEY_BYTES.
    longest_uri = len("file://") + 4_096 + len("/") + MAX_KEY_BYTES
    assert longest_uri * 1.5 <= MAX_URI_CHARS
    assert len("image/png") * 20 <= MAX_MEDIA_TYPE_CHARS
    assert len(max((topic.schema_name for topic in ALL_TOPICS), key=len)) * 10 <= MAX_SCHEMA_NAME_CHARS


def test_what_the_captioner_writes_from_the_longest_metadata_stays_well_within_the_bounds() -> None:
    """The bounds on captions and prompts refuse only text no skuforge producer writes: from metadata at
    its own limits the template caption leaves half the bound to BLIP's sentence (200 tokens at most)."""
    sku = SkuMetadata(sku_id="S" * 64, name="N" * 200, category="c" * 100, brand="B" * 100, series="S" * 100)
    prompts = sku_prompts(sku)
    colours = ["light yellow"] * 8
    caption = compose_caption(sku, colours, "produce", "tilted three-quarter view")
    assert len(caption) <= MAX_CAPTION_CHARS // 2
    assert all(len(tag) <= MAX_PHRASE_CHARS for tag in compose_tags(sku, colours, "produce", "front"))
    assert max(map(len, (prompts.instance_prompt, prompts.class_prompt))) <= MAX_PHRASE_CHARS // 1.5
    assert len(prompts.negative_prompt) <= MAX_CAPTION_CHARS // 4


def test_a_sku_captioned_the_schema_takes_makes_prompts_the_generator_server_takes(tmp_path: Path) -> None:
    """The server refuses a text input over MAX_TEXT_BYTES variant by variant: a sku.captioned at its
    bounds, in 4-byte characters, still makes prompts it takes, so the schema is where one is refused."""
    data = gate.captioned(open_store(f"file://{tmp_path}", uri_from="the test"), 1).model_dump()
    data["instance_prompt"] = "\N{GRINNING FACE}" * MAX_PHRASE_CHARS
    data["negative_prompt"] = "\N{GRINNING FACE}" * MAX_CAPTION_CHARS
    data["photos"][0]["caption"] = "\N{GRINNING FACE}" * MAX_CAPTION_CHARS
    at_bounds = SkuCaptioned.model_validate(data)
    for text in (prompt_for(at_bounds, at_bounds.photos[0]), at_bounds.negative_prompt):
        assert len(text.encode()) <= MAX_TEXT_BYTES


@pytest.mark.parametrize("field", ["name", "category", "brand", "series"])
@pytest.mark.parametrize(
    "value",
    [
        "Cola\x00",
        "Cola \x1b[31mZero\x1b[0m",
        "Cola\nsku_id=SKU-OTHER",
        "Cola\tZero",
        "Cola\x85Zero",
        "Cola\x7f",
    ],
    ids=["nul", "escape", "newline", "tab", "c1_next_line", "delete"],
)
def test_a_control_character_in_sku_metadata_is_dead_lettered_naming_the_field(
    tmp_path: Path, field: str, value: str
) -> None:
    """Before, a SKU's name, category, brand and series took any character: a NUL, a terminal colour
    code or a newline went into captions, prompts, tags, logs and the console's pages. No skuforge
    producer writes one (nor do the GroceryStore classes the benches ingest)."""
    written = ingested_envelope()
    written["payload"]["sku"][field] = value

    letter = dead_letter_for(tmp_path, written)
    assert letter.reason == "schema_invalid" and letter.detail.startswith(f"payload.sku.{field}: ")
    assert "control character" in letter.detail

    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.Draft202012Validator(committed_schema(SKU_INGESTED)).validate(written)
    assert list(refused.value.absolute_path) == ["payload", "sku", field]


@pytest.mark.parametrize(
    "value", ['p\n{"forged": 1}.png', "p\x1b[2J.png", "p\x00.png"], ids=["newline", "escape", "nul"]
)
def test_a_control_character_in_a_photos_file_name_is_dead_lettered_naming_the_field(
    tmp_path: Path, value: str
) -> None:
    """A photo's ``original_filename`` took any character, as the SKU's name did before: a newline or a
    terminal escape went on into the console, the demo's report and log lines. ``skuforge ingest``
    escapes one in a file name on disk; any other producer's is refused."""
    written = ingested_envelope()
    written["payload"]["photos"][0]["original_filename"] = value

    letter = dead_letter_for(tmp_path, written)
    assert letter.reason == "schema_invalid"
    assert letter.detail.startswith("payload.photos.0.original_filename: ")
    assert "control character" in letter.detail

    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.Draft202012Validator(committed_schema(SKU_INGESTED)).validate(written)
    assert list(refused.value.absolute_path) == ["payload", "photos", 0, "original_filename"]


def test_sku_metadata_without_control_characters_is_taken_as_written() -> None:
    """Accents, non-breaking spaces and scripts other than Latin are text, not control characters."""
    sku = SkuMetadata(sku_id="SKU-1", name="Crème Fraîche\u00a0Léger", category="ヨーグルト", brand="Ōatly™")
    written = ingested_envelope()
    written["payload"]["sku"] = sku.model_dump(mode="json")
    jsonschema.Draft202012Validator(committed_schema(SKU_INGESTED)).validate(written)


@pytest.mark.parametrize(
    "where",
    [
        ("sku_id",),
        ("event_id",),
        ("trace_id",),
        ("payload", "sku", "sku_id"),
        ("payload", "sku", "name"),
        ("payload", "photos", 0, "image", "sha256"),
    ],
    ids=["sku_id", "event_id", "trace_id", "payload_sku_id", "name", "sha256"],
)
def test_a_trailing_newline_is_refused_by_the_model_and_the_committed_schema(where: tuple[Any, ...]) -> None:
    """Python's ``re``, which the jsonschema package uses, reads a pattern's ``$`` as matching before a
    final newline too: "sku-1\\n" passed ``^...$`` there, though ECMA-262 (JSON Schema's dialect) and the
    consumer's pydantic model refuse it, so a Python producer checked its event and had it dead-lettered."""
    written = ingested_envelope()
    *path, field = where
    parent = written
    for step in path:
        parent = parent[step]
    parent[field] += "\n"

    with pytest.raises(ValueError, match=str(field)):
        read_envelope(SKU_INGESTED, json.dumps(written))
    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.Draft202012Validator(committed_schema(SKU_INGESTED)).validate(written)
    assert list(refused.value.absolute_path) == list(where)


def test_the_sha256_pattern_is_written_once() -> None:
    """A field holding a sha256 is ``Sha256Hex``: the pattern was written out again in
    ``AdapterPublished`` and the registry's ``AdapterMetadata``, where a change to the type would not
    reach."""
    root = Path(__file__).resolve().parents[1]
    pattern = 'pattern=r"^[0-9a-f]{64}$"'
    written = [
        f"{path.relative_to(root)}:{number}"
        for folder in ("schemas", "shared", "services")
        for path in sorted((root / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern in line
    ]
    assert [place for place in written if not place.startswith("schemas/common.py:")] == [], written
