"""The flow's object keys (``shared/keys.py``): each key function writes the layout stored objects and
the docs already have, byte for byte, and ``sku_of`` reads its SKU back; the trainstore's check of an
event's objects (``other_sku_object``) asks ``sku_of``, so a folder a stage writes in is one it knows."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import pytest

from shared import keys
from shared.config import ConfigError, load_settings
from shared.store import FileStore
from shared.trainstore.settings import TrainstoreSettings
from tests.support.console import flagged_item

ROOT = Path(__file__).resolve().parents[1]

# Each key function with the key it wrote before it lived here (services' f-strings, docs/ops.md).
LAYOUT: dict[Callable[[str, str], str], str] = {
    keys.photo_key: "incoming/SKU-9/0123456789abcdef.png",
    keys.transparency_key: "masks/transparency/SKU-9/0123456789abcdef.png",
    keys.reference_mask_key: "masks/reference/SKU-9/0123456789abcdef.png",
    keys.generated_key: "generated/SKU-9/0123456789abcdef.png",
    keys.expected_mask_key: "masks/expected/SKU-9/0123456789abcdef.png",
    keys.predicted_mask_key: "masks/predicted/SKU-9/0123456789abcdef.png",
    keys.cutout_key: "cutouts/SKU-9/0123456789abcdef.png",
    keys.corrected_mask_key: "masks/corrected/SKU-9/0123456789abcdef.png",
}


def test_every_key_function_is_in_the_layout() -> None:
    # A key function added without its row here would have no byte-for-byte check.
    functions = {
        function
        for name, function in inspect.getmembers(keys, inspect.isfunction)
        if name.endswith("_key") and not name.startswith("_") and function.__module__ == keys.__name__
    }
    assert functions == set(LAYOUT)


@pytest.mark.parametrize(("key_function", "key"), LAYOUT.items(), ids=lambda v: getattr(v, "__name__", v))
def test_each_key_is_the_stored_layout_and_names_its_sku(
    key_function: Callable[[str, str], str], key: str
) -> None:
    assert key_function("SKU-9", "0123456789abcdef") == key
    assert keys.sku_of(key) == "SKU-9"
    # With the sha256 prefix the stages add (shared.store.digest_key), the SKU is the same.
    assert keys.sku_of(key.replace(".png", "-00112233aabbccdd.png")) == "SKU-9"


def test_every_folder_is_read_back_and_in_the_ops_table_of_prefixes() -> None:
    ops = (ROOT / "docs" / "ops.md").read_text(encoding="utf-8")
    for folder in keys.Folder:
        assert keys.sku_of(f"{folder.of('SKU-9')}x.png") == "SKU-9"
        # docs/ops.md says who writes and reads each prefix and how long it is needed (its lifecycle).
        assert f"`{folder}<sku>/`" in ops, folder


@pytest.mark.parametrize(
    "key",
    [
        "fixtures/gen-001-00/image.png",  # a test's or an operator's own object
        "trainstore/images/SKU-9/real/x.png",  # the retraining store's copy
        "masks/SKU-9/x.png",  # the retraining store's mask folder, at the store's root
        "generatedx/SKU-9/x.png",
    ],
)
def test_a_key_outside_the_flows_folders_names_no_sku(key: str) -> None:
    assert keys.sku_of(key) is None


@pytest.mark.parametrize(
    "key", ["generated/x.png", "incoming/0123456789abcdef.png", "cutouts/", "generated//x.png"]
)
def test_a_key_directly_in_a_flow_folder_says_it_has_no_sku_level(key: str) -> None:
    # Was read as the SKU "x.png" (or ""): the trainstore then refused "an object of SKU x.png".
    with pytest.raises(ValueError, match=r"directly in the flow's folder .*/, with no SKU folder"):
        keys.sku_of(key)


@pytest.mark.parametrize("prefix", ["generated/store", "masks/expected", "incoming", "cutouts/a/b"])
def test_a_trainstore_prefix_inside_a_flow_folder_fails_at_start_up(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/ops.md's lifecycle rule for the folder would expire the retraining store with it, and ingest
    # reads incoming/<x>/ as SKU x's photos.
    monkeypatch.setenv("SKUFORGE_TRAINSTORE_PREFIX", prefix)
    folder = next(folder for folder in keys.Folder if f"{prefix}/".startswith(folder.value))
    with pytest.raises(
        ConfigError, match=rf"SKUFORGE_TRAINSTORE_PREFIX: .*inside the flow's folder {folder}"
    ):
        load_settings(TrainstoreSettings)


@pytest.mark.parametrize("prefix", ["trainstore", "masks", "generatedx", "store/generated"])
def test_a_trainstore_prefix_beside_the_flow_folders_is_taken(prefix: str) -> None:
    assert load_settings(TrainstoreSettings, trainstore_prefix=prefix).trainstore_prefix == prefix


def test_the_console_tests_items_are_stored_under_their_skus_flow_folders(tmp_path: Path) -> None:
    # tests.support.console stored them under images/generated/ and photos/, keys no stage writes, so
    # the console's tests read objects laid out as nothing in the flow lays them out.
    store = FileStore(tmp_path / "store")
    for index in (0, 1):
        matted = flagged_item(store, index, sku_id="SKU-7").matted
        generated = matted.generated
        refs = {
            keys.Folder.GENERATED: generated.image,
            keys.Folder.EXPECTED_MASKS: generated.expected_mask,
            keys.Folder.PHOTOS: generated.reference_image,
            keys.Folder.REFERENCE_MASKS: generated.reference_mask,
            keys.Folder.PREDICTED_MASKS: matted.predicted_mask,
            keys.Folder.CUTOUTS: matted.cutout,
        }
        for folder, ref in refs.items():
            assert ref is not None
            key = store.key_for(ref.uri)
            assert key.startswith(folder.of("SKU-7")) and keys.sku_of(key) == "SKU-7", key
            store.read_verified(ref)  # a later item of the SKU replaced none of its objects
