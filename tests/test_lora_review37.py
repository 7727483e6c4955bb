"""The LoRA trainer, review 37: a set's in-store photos are read from the store once each."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from services.lora_trainer.stage import _instance_sources
from shared.lora_training.dataset import (
    InstanceSource,
    TrainingRecipe,
    build_training_set,
    training_set_sha256,
)
from shared.store import FileStore
from tests.support.lora import on_the_shelf, shelf_disc

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
