"""Helpers for the contract's tests: the committed JSON Schemas and an envelope as our producers write it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from schemas.common import ImageRef, SkuMetadata
from schemas.events import AdapterPublished, CaptionedPhoto, SkuCaptioned, SkuIngested
from schemas.jsonschema import JSON_DIR
from schemas.topics import ADAPTER_PUBLISHED, SKU_CAPTIONED, SKU_INGESTED, Topic
from shared.bus import make_envelope, read_envelope
from shared.captioning.prompts import sku_prompts


def committed_schema(topic: Topic[Any]) -> dict[str, Any]:
    """The committed JSON Schema of ``topic``'s envelope (schemas/json/), as another producer reads it."""
    schema: dict[str, Any] = json.loads((JSON_DIR / f"{topic.name}.json").read_text())
    return schema


def ingested_envelope() -> dict[str, Any]:
    """A valid ``sku.ingested`` envelope as JSON, as our producers write it (one photo, SKU-1 "Cola")."""
    image = ImageRef(uri="file:///store/p.png", sha256="0" * 64, bytes=10, width=8, height=8)
    payload = SkuIngested(
        sku=SkuMetadata(sku_id="SKU-1", name="Cola", category="soda can"),
        photos=[{"photo_id": "p", "image": image, "original_filename": "p.png"}],
    )
    envelope = make_envelope(
        SKU_INGESTED, payload, event_id="c" * 32, sku_id="SKU-1", trace_id="t", producer="test"
    )
    return envelope.model_dump(mode="json")


def captioned_envelope(sku: SkuMetadata, photos: list[CaptionedPhoto]) -> dict[str, Any]:
    """A sku.captioned of ``photos`` as the attribute captioner writes one (``sku``'s prompts), as JSON."""
    prompts = sku_prompts(sku)
    payload = SkuCaptioned(
        sku=sku,
        photos=photos,
        instance_token=prompts.instance_token,
        class_noun=prompts.class_noun,
        instance_prompt=prompts.instance_prompt,
        class_prompt=prompts.class_prompt,
        negative_prompt=prompts.negative_prompt,
        captioner="attributes",
    )
    envelope = make_envelope(
        SKU_CAPTIONED, payload, event_id="d" * 32, sku_id=sku.sku_id, trace_id="t", producer="x"
    )
    return envelope.model_dump(mode="json")


def adapter_envelope(series: str = "Cola", training_prompts: Sequence[str] = ()) -> dict[str, Any]:
    """The LoRA trainer's adapter.published of a specialised adapter for ``series``, trained on
    ``training_prompts``, as JSON."""
    adapter = AdapterPublished(
        adapter_id="cola-0123456789ab",
        kind="specialized",
        series=series,
        base_model="sd15-inpaint",
        registry_uri="file:///registry/cola-0123456789ab",
        weights_sha256="0" * 64,
        training_set_sha256="1" * 64,
        sku_ids=["SKU-1"],
        instance_images=4,
        class_images=8,
        steps=100,
        training_prompts=list(training_prompts),
    )
    envelope = make_envelope(
        ADAPTER_PUBLISHED,
        adapter,
        event_id="a" * 32,
        sku_id=adapter.adapter_id,
        trace_id="t",
        producer="trainer",
    )
    return envelope.model_dump(mode="json")


def refused_then_read_escaped(
    topic: Topic[Any], written: dict[str, Any], path: list[str | int], text: str, named: str
) -> Any:
    """Assert that ``written`` (``topic``'s envelope as JSON, holding ``text`` at ``path`` in its payload)
    is refused to a producer, naming ``named`` and not echoing ``text``, and by the committed schema at
    that path; returns its payload as read from the topic (where ``text`` comes escaped)."""
    with pytest.raises(ValidationError) as refused_model:
        topic.payload.model_validate(written["payload"])
    assert named in str(refused_model.value) and text not in str(refused_model.value)
    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.Draft202012Validator(committed_schema(topic)).validate(written)
    assert list(refused.value.absolute_path) == ["payload", *path]
    return read_envelope(topic, json.dumps(written)).payload
