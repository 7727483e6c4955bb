"""``skuforge dataset export`` (review 41): the advice past a refused image reads the refusal's
``setting``, not its wording."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import shared.images
from shared.errors import ImageRejected
from shared.images import decode_image, decode_mask, refuse_too_many_pixels
from shared.store import FileStore
from shared.trainstore.dataset import export_dataset
from shared.trainstore.manifest import ManifestStore
from tests.support.trainstore import PREFIX, add_item


@pytest.fixture
def store(tmp_path: Path) -> ManifestStore:
    """Two SKUs of one real photo each (100 x 80), in a file store."""
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    add_item(manifests, "SKU-A", "real-0", "real", "reference")
    add_item(manifests, "SKU-B", "real-1", "real", "reference")
    return manifests


def test_an_image_past_pillows_limit_is_advised_no_setting_however_its_refusal_is_worded(
    store: ManifestStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The export looked for the words PAST_PILLOWS_LIMIT in the refusal: worded otherwise, an image no
    # setting passes was advised "export with a higher SKUFORGE_MAX_IMAGE_PIXELS".
    monkeypatch.setattr(shared.images, "PAST_PILLOWS_LIMIT", "Pillow's limit is its own")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # under the stored 100 x 80 images
    with pytest.raises(ImageRejected) as info:
        export_dataset(
            store, tmp_path / "export", fmt="imagefolder", max_synthetic_per_real=2, limits=(10**6, 2**20)
        )
    said = str(info.value)
    assert "the image of SKU-A/real-0: " in said and "Pillow's limit is its own" in said
    assert "take photo real-0 out of SKU-A's folder" in said and "a higher" not in said


def test_an_image_past_a_setting_stops_the_export_naming_that_setting(
    store: ManifestStore, tmp_path: Path
) -> None:
    # The export's refusal, rebuilt to say whose image it was and the ways past it, dropped the setting
    # of the refusal it rebuilt: a caller of export_dataset read None, as for an image no setting passes.
    with pytest.raises(ImageRejected) as info:
        export_dataset(
            store, tmp_path / "export", fmt="imagefolder", max_synthetic_per_real=2, limits=(5000, 2**20)
        )
    assert "export with a higher SKUFORGE_MAX_IMAGE_PIXELS" in str(info.value)
    assert info.value.setting == "SKUFORGE_MAX_IMAGE_PIXELS"


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _refusal(refuse: Callable[[], object]) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        refuse()
    return info.value


def test_a_refusal_names_the_setting_that_passes_it_and_none_past_pillows_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the export's advice reads: a refusal by our limits names the setting that raised lets the
    # image through; one past Pillow's own limit (at open, at load, or by the header) names none.
    data = _png(120, 100)
    assert _refusal(lambda: decode_image(data, max_pixels=10000)).setting == "SKUFORGE_MAX_IMAGE_PIXELS"
    assert _refusal(lambda: decode_mask(data, max_pixels=10000)).setting == "SKUFORGE_MAX_IMAGE_PIXELS"
    assert _refusal(lambda: decode_image(data, max_bytes=100)).setting == "SKUFORGE_MAX_IMAGE_BYTES"
    assert (
        _refusal(lambda: refuse_too_many_pixels(120, 100, 10000, "")).setting == "SKUFORGE_MAX_IMAGE_PIXELS"
    )
    assert _refusal(lambda: decode_image(b"not an image")).setting is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 8000)  # 12000 pixels: past it, not twice it
    for refuse in [
        lambda: decode_image(data, max_pixels=10000),  # past Pillow's limit, not twice it
        lambda: decode_image(data, max_pixels=100000),  # ours higher: capped at Pillow's
        lambda: refuse_too_many_pixels(120, 100, 1000, ""),
    ]:
        assert _refusal(refuse).setting is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # twice it: Pillow refuses at open
    assert _refusal(lambda: decode_image(data, max_pixels=1000)).setting is None
