"""Real photos through ingest, the captioner and the trainstore, without Kafka.

The committed sample (``samples/grocerystore/``, GroceryStoreDataset photos) must stay something
``skuforge ingest`` takes; and a phone photo that was dead-lettered before (``no_usable_photo``: the
mask covered 0.3% of the photo) must reach the retraining store, upright, with a mask on the product.
The handlers are called directly, as the stages call them; the Kafka wiring is tests/test_e2e.py's.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import ExifTags, Image

from devstack.demo.demo import SAMPLE_SKUS
from schemas.envelope import Envelope, derive_id
from schemas.events import SkuCaptioned
from schemas.topics import SKU_CAPTIONED, SKU_INGESTED
from services.captioner.config import CaptionerSettings
from services.captioner.stage import handle, open_models
from services.ingest.ingest import prepare_all, upload_sku
from services.trainstore.stage import Trainstore
from shared.arith.masks import mask_iou
from shared.bus import make_envelope
from shared.config import load_settings
from shared.errors import BadInput
from shared.images import decode_image, decode_mask
from shared.store import FileStore
from shared.trainstore.manifest import ManifestStore
from shared.trainstore.settings import TrainstoreSettings
from tests.support.captioning import context

PHONE_SIZE_PX = (768, 1024)  # an upright phone photo, 3:4
ORIENTATION_ROTATE_90_CW = 6  # EXIF: turn the stored pixels 90 degrees clockwise to show them


def test_the_committed_sample_is_three_real_skus_of_three_small_photos() -> None:
    prepared = prepare_all(SAMPLE_SKUS, load_settings())
    assert [sku.metadata.sku_id for sku in prepared] == [
        "GROCERY-AUBERGINE-001",
        "GROCERY-OATLY-001",
        "GROCERY-PAPAYA-001",
    ]
    for sku in prepared:
        assert len(sku.photos) == 3
        assert all(max(photo.width, photo.height) <= 348 for photo in sku.photos)
        assert sum(1 for photo in sku.photos if "_Iconic" in photo.original_filename) == 1
        # Every photo's origin is written down next to the licence.
        readme = (SAMPLE_SKUS / "README.md").read_text(encoding="utf-8")
        assert all(f"{sku.folder.name}/{photo.original_filename}" in readme for photo in sku.photos)
    assert "MIT License" in (SAMPLE_SKUS / "LICENSE").read_text(encoding="utf-8")


def upright_phone_photo(catalogue_photo: Path) -> tuple[Image.Image, npt.NDArray[np.bool_]]:
    """The catalogue photo as an upright 3:4 phone shot on its own plain background, and where the
    product is in it (every pixel unlike the background: the background is one flat colour)."""
    product = Image.open(catalogue_photo).convert("RGB")
    pixels = np.asarray(product)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    red, green, blue = (int(v) for v in np.median(border, axis=0))
    background = (red, green, blue)
    scale = 0.9 * min(PHONE_SIZE_PX[0] / product.width, PHONE_SIZE_PX[1] / product.height)
    product = product.resize((round(product.width * scale), round(product.height * scale)), Image.LANCZOS)
    photo = Image.new("RGB", PHONE_SIZE_PX, background)
    photo.paste(product, ((photo.width - product.width) // 2, (photo.height - product.height) // 2))
    distance = np.abs(np.asarray(photo, dtype=np.int16) - np.array(background, dtype=np.int16)).max(axis=-1)
    return photo, distance > 40


def as_phone_jpeg(upright: Image.Image) -> bytes:
    """What a phone held upright writes: the sensor's landscape pixels plus EXIF orientation 6."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = ORIENTATION_ROTATE_90_CW
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=92, exif=exif)
    return buffer.getvalue()


@pytest.mark.slow
def test_a_rotated_phone_photo_of_a_plain_product_reaches_the_retraining_store(tmp_path: Path) -> None:
    upright, product_region = upright_phone_photo(
        SAMPLE_SKUS / "GROCERY-AUBERGINE-001" / "Aubergine_Iconic.jpg"
    )
    folder = tmp_path / "skus" / "phone"
    folder.mkdir(parents=True)
    metadata = json.loads((SAMPLE_SKUS / "GROCERY-AUBERGINE-001" / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**metadata, "sku_id": "PHONE-AUBERGINE-001"}))
    (folder / "IMG_0001.jpg").write_bytes(as_phone_jpeg(upright))
    assert Image.open(folder / "IMG_0001.jpg").size == (PHONE_SIZE_PX[1], PHONE_SIZE_PX[0])  # landscape

    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri)
    (sku,) = prepare_all(folder, settings)
    ingested = make_envelope(
        SKU_INGESTED,
        upload_sku(sku, store),
        event_id=sku.event_id,
        sku_id=sku.metadata.sku_id,
        trace_id="phone",
        producer="ingest",
    )
    (photo,) = ingested.payload.photos
    assert (photo.image.width, photo.image.height) == PHONE_SIZE_PX  # stored upright

    # The default matting model, as `skuforge run captioner` opens it.
    models = open_models(load_settings(CaptionerSettings, captioner_use_gpu=False), settings, store)
    ctx = context(store, settings)
    try:
        (emit,) = handle(ingested, ctx, models=models)
    except BadInput as refusal:  # the stage would send the SKU to the DLQ
        pytest.fail(f"dead-lettered as {refusal.reason}: {refusal.detail}")
    assert emit.topic == SKU_CAPTIONED and isinstance(emit.payload, SkuCaptioned)
    captioned: Envelope[SkuCaptioned] = make_envelope(
        SKU_CAPTIONED,
        emit.payload,
        event_id=derive_id("captioner", ingested.event_id),
        sku_id=sku.metadata.sku_id,
        trace_id="phone",
        producer="captioner",
    )

    trainstore = load_settings(TrainstoreSettings)
    manifests = ManifestStore(store, trainstore.trainstore_prefix)
    Trainstore(manifests, trainstore.trainstore_compact_after_parts).captioned(captioned, ctx)

    (row,) = manifests.iter_rows([sku.metadata.sku_id])
    assert (row.source, row.status, row.reasons) == ("real", "reference", [])
    assert row.image and row.mask
    stored = decode_image(store.get_bytes(manifests.key(row.image)))
    mask = decode_mask(store.get_bytes(manifests.key(row.mask))) > 0
    assert stored.size == PHONE_SIZE_PX
    assert np.abs(np.asarray(stored, dtype=np.int16) - np.asarray(upright, dtype=np.int16)).mean() < 4
    # The mask is on the product of the upright photo: the background is plain, so the truth is known.
    assert mask_iou(mask, product_region) >= 0.9, (
        f"mask covers {mask.mean():.1%} of the photo, the product {product_region.mean():.1%}; "
        f"IoU {mask_iou(mask, product_region):.3f}"
    )
