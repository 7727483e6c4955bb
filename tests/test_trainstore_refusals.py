"""What the trainstore refuses of an event on the event's own figures: before any object is read.

An image or mask the event says is over ``SKUFORGE_MAX_IMAGE_PIXELS`` or ``SKUFORGE_MAX_IMAGE_BYTES``
is dead-lettered as ``too_many_pixels`` or ``too_large_bytes`` without being read, as the gate does.
Before, only a photo stored without a mask was checked so: an image with a mask (every gate
acceptance, approval and masked reference photo) was read whole first, up to the size its reference
states, and the event was then blamed as misstating the image (``dimension_mismatch``,
``checksum_mismatch``) or, for an object that really is that large, held in memory to be refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schemas.common import ImageRef
from schemas.events import GateAccepted, SkuCaptioned
from schemas.topics import GATE_ACCEPTED, SKU_CAPTIONED, Topic
from shared.bus import make_envelope
from shared.errors import BadInput
from tests.support.gate import ReadRecordingStore, captioned, matted_item
from tests.support.trainstore import trainstore_stage

OVER_THE_LIMITS = [
    ({"width": 100_000, "height": 100_000}, "too_many_pixels"),
    ({"bytes": 10**12}, "too_large_bytes"),
]


def _over(ref: ImageRef, stated: dict[str, int]) -> ImageRef:
    return ref.model_copy(update=stated)


def _accepted(store: ReadRecordingStore, which: str, stated: dict[str, int]) -> GateAccepted:
    """A gate acceptance whose image or predicted mask (``which``) states the figures ``stated``."""
    matted = matted_item(store, 1, 0)
    if which == "image":
        image = _over(matted.generated.image, stated)
        matted = matted.model_copy(update={"generated": matted.generated.model_copy(update={"image": image})})
    else:
        matted = matted.model_copy(update={"predicted_mask": _over(matted.predicted_mask, stated)})
    return GateAccepted(matted=matted, iou=0.97, checks=[])


def _captioned(store: ReadRecordingStore, which: str, stated: dict[str, int]) -> SkuCaptioned:
    """The captioner's event whose first photo's image or mask (``which``) states ``stated``."""
    event = captioned(store, 1, photos=1)
    first = event.photos[0]
    over = _over(getattr(first, which), stated)
    return event.model_copy(update={"photos": [first.model_copy(update={which: over}), *event.photos[1:]]})


@pytest.mark.parametrize(("stated", "reason"), OVER_THE_LIMITS)
@pytest.mark.parametrize("which", ["image", "mask"])
@pytest.mark.parametrize("topic", [GATE_ACCEPTED, SKU_CAPTIONED], ids=lambda topic: topic.schema_name)
def test_an_image_or_mask_the_event_says_is_over_the_limits_is_refused_unread(
    tmp_path: Path, topic: Topic[Any], which: str, stated: dict[str, int], reason: str
) -> None:
    store = ReadRecordingStore(tmp_path / "store")
    _, manifests, writer, ctx = trainstore_stage(tmp_path, compact_after_parts=16, store=store)
    payload = (_accepted if topic is GATE_ACCEPTED else _captioned)(store, which, stated)
    event = make_envelope(topic, payload, event_id="a" * 32, sku_id="SKU-001", trace_id="t", producer="test")
    store.read.clear()

    with pytest.raises(BadInput) as refused:
        writer.handlers()[topic](event, ctx)

    assert refused.value.reason == reason, str(refused.value)
    assert store.read == []
    assert manifests.read_sku("SKU-001") == {}
