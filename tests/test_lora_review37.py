"""The LoRA trainer, review 37: a set's in-store photos are read from the store once each; a SKU whose
one-object photos are all refused when the set is built trains on its other in-store photos.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from services.lora_trainer.stage import _instance_sources
from shared.lora_training.dataset import (
    InstanceSource,
    TrainingRecipe,
    build_training_set,
    training_set_sha256,
)
from shared.store import FileStore
from tests.support.lora import SHELF_PHOTO_PX, on_the_shelf, shelf_disc

RECIPE = TrainingRecipe(resolution=128, scenes_per_photo=2, class_images=0)


class CountingReads(FileStore):
    """The real file store, counting the checked reads of each object (the set's photos and masks)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: Counter[str] = Counter()

    def read_checked(self, uri_or_key: str, sha256: str) -> bytes:
        self.reads[uri_or_key] += 1
        return super().read_checked(uri_or_key, sha256)


def item_photos(store: FileStore, sources: list[InstanceSource]) -> list[str]:
    """The photo id of each instance item of the set built from ``sources``, in the set's order."""
    sha = training_set_sha256(
        kind="general", series=None, base_model="m", model_digest="d", sources=sources, recipe=RECIPE
    )
    built = build_training_set(store, f"sets/{sha}", sha, sources, RECIPE)
    return [item.item_id.split("-")[-2] for item in built.instance_items]


def test_each_in_store_photo_and_mask_is_read_from_the_store_once(tmp_path: Path) -> None:
    """Picking the one-object photos read (and decoded) every in-store photo and mask of the set, then
    building it read the chosen ones again: twice the reads, and on S3 twice the transfer, of a set of up
    to 2000 photos."""
    store = CountingReads(tmp_path / "store")
    chain = shelf_disc(30, (80, 45)) | shelf_disc(30, (80, 95)) | shelf_disc(30, (80, 125))
    one_apple = shelf_disc(50, (80, 80))
    captioned = on_the_shelf(store, [chain, one_apple, one_apple])
    sources = _instance_sources(captioned, 0.7)

    assert item_photos(store, sources) == ["p1", "p1", "p2", "p2"]
    read = {uri for source in sources for uri in (source.image_uri, source.mask_uri)}
    assert set(store.reads) == read
    assert {uri: count for uri, count in store.reads.items() if count != 1} == {}


@pytest.mark.parametrize("one_object_first", [False, True], ids=["passed-over-first", "refused-first"])
def test_a_sku_whose_one_object_photos_are_refused_trains_on_its_other_in_store_photos(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, one_object_first: bool
) -> None:
    """The SKU's one photo of one object was refused when the set was built (here its mask is not the
    photo's size, which the compositor refuses); its other in-store photos had been passed over as not
    one object, so the SKU was left out of the set altogether. As ``one_object_photos`` takes every
    photo when none is one object, those are trained on (whether the set reached them before the
    refusal or after), and it is logged."""
    store = FileStore(tmp_path / "store")
    chain = shelf_disc(30, (80, 45)) | shelf_disc(30, (80, 95)) | shelf_disc(30, (80, 125))
    one_apple = shelf_disc(50, (80, 80))
    captioned = on_the_shelf(store, [one_apple, chain] if one_object_first else [chain, one_apple])
    small_mask = np.zeros((SHELF_PHOTO_PX - 40, SHELF_PHOTO_PX - 40), np.uint8)
    small_mask[20:100, 20:100] = 255
    refused_id = captioned.photos[0 if one_object_first else 1].photo_id
    refused = store.put_image(f"masks/shelf/{refused_id}-small.png", small_mask)
    photos = [
        photo.model_copy(update={"mask": refused}) if photo.photo_id == refused_id else photo
        for photo in captioned.photos
    ]

    with caplog.at_level(logging.INFO, logger="shared.lora_training.dataset"):
        trained = item_photos(store, _instance_sources(captioned.model_copy(update={"photos": photos}), 0.7))

    chain_id = "p1" if one_object_first else "p0"
    assert trained == [chain_id, chain_id]
    logged = [record.getMessage() for record in caplog.records]
    assert any("not one object are trained on" in message for message in logged), logged
