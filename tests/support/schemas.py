"""Helpers for the contract's tests: the committed JSON Schemas and an envelope as our producers write it."""

from __future__ import annotations

import json
from typing import Any

from schemas.common import ImageRef, SkuMetadata
from schemas.events import SkuIngested
from schemas.jsonschema import JSON_DIR
from schemas.topics import SKU_INGESTED, Topic
from shared.bus import make_envelope


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
