"""The pass-through stage holds its first photo to the limits every stage reads photos under."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from services.passthrough.stage import handle
from shared.config import Settings
from shared.errors import BadInput
from shared.store import FileStore
from tests.support.bus import ingested_envelope
from tests.support.captioning import context, photos_sku


def test_a_photo_over_the_byte_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """The stage read the photo whole whatever its size, where every other stage refuses one over
    SKUFORGE_MAX_IMAGE_BYTES by the event's figure (``too_large_bytes``); it forwarded the event."""
    store = FileStore(tmp_path / "store")
    payload = photos_sku(store, "SKU-001", {"front": Image.new("RGB", (64, 64), "red")})
    settings = Settings(max_image_bytes=payload.photos[0].image.bytes - 1)

    with pytest.raises(BadInput) as refused:
        handle(ingested_envelope(payload), context(store, settings))

    assert refused.value.reason == "too_large_bytes", refused.value
    assert list(store.list_keys("passthrough/")) == []
