"""A product cut-out on a transparent background keeps its exact outline through ingest and the captioner.

Retail product images often come as PNG cut-outs. Ingest stores every photo over white; before, the
alpha was dropped there, and the captioner's matting model had to find the product again on white: a
white bottle's edges went with the background, and the generated images carried a white blob that the
gate accepted (its expected mask came from the same mask). Now ingest stores the transparency beside
the photo (``ReferencePhoto.mask``) and the captioner takes it as the reference mask.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from services.ingest.ingest import prepare_sku, upload_sku
from shared.config import load_settings
from shared.images import decode_mask, photo_and_transparency, photo_as_stored
from shared.observability import StageMetrics
from shared.store import FileStore
from shared.synth import make_product, render_photo
from tests.support.captioning import caption, context

SIDE = 320


def white_bottle(darkest: int = 225) -> tuple[bytes, npt.NDArray[np.bool_]]:
    """An RGBA cut-out of a white bottle (shading ``darkest``-255) on full transparency, and its outline."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    body = ((xx - 160) / 70.0) ** 2 + ((yy - 180) / 120.0) ** 2 <= 1.0
    neck = (abs(xx - 160) <= 18) & (yy >= 30) & (yy < 80)
    inside = body | neck
    rgba = np.zeros((SIDE, SIDE, 4), dtype=np.uint8)
    shade = (darkest + (255 - darkest) * (1 - abs(xx - 160) / 90.0).clip(0, 1)).astype(np.uint8)
    rgba[..., 0] = rgba[..., 1] = rgba[..., 2] = shade
    rgba[..., 3] = np.where(inside, 255, 0)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    return buffer.getvalue(), inside


def batch_images(metrics: StageMetrics, model: str) -> float:
    """How many images the stage gave ``model`` in all."""
    return sum(
        sample.value
        for family in metrics.registry.collect()
        if family.name == "skuforge_model_batch_size"
        for sample in family.samples
        if sample.name.endswith("_sum") and sample.labels.get("model") == model
    )


@pytest.mark.parametrize("darkest", [225, 250], ids=["shaded", "near-white"])
def test_a_cut_out_keeps_its_outline_from_ingest_to_the_reference_mask(tmp_path: Path, darkest: int) -> None:
    # Near-white (250-255) over white is one flat colour: it was refused as blank_photo before its
    # transparency, which says exactly where the product is, was looked at.
    cut_out, outline = white_bottle(darkest)
    folder = tmp_path / "batch" / "milk"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(
        json.dumps({"sku_id": "SKU-MILK", "name": "Milk bottle", "category": "bottle"})
    )
    (folder / "cutout.png").write_bytes(cut_out)
    opaque = render_photo(make_product(0, 2026), 0, 2026, size_px=256).image
    opaque.save(folder / "shelf.jpg", quality=92)
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri)

    sku, problems = prepare_sku(folder, settings)
    assert sku is not None, problems
    payload = upload_sku(sku, store)

    photos = {photo.original_filename: photo for photo in payload.photos}
    # The photo itself is stored as before (over white, same id); its transparency comes beside it.
    assert photos["cutout.png"].image.sha256 == _sha256(photo_as_stored(cut_out)[1])
    mask_ref = photos["cutout.png"].mask
    assert mask_ref is not None and mask_ref.uri.endswith(
        f"masks/transparency/SKU-MILK/{photos['cutout.png'].photo_id}-{mask_ref.sha256[:16]}.png"
    )
    assert np.array_equal(decode_mask(store.read_verified(mask_ref)) > 0, outline)
    assert photos["shelf.jpg"].mask is None

    ctx = context(store, settings)
    captioned = {photo.photo_id: photo for photo in caption(payload, ctx).photos}
    reference = captioned[photos["cutout.png"].photo_id]
    assert reference.usable and reference.mask is not None
    assert np.array_equal(decode_mask(store.read_verified(reference.mask)) > 0, outline)
    assert captioned[photos["shelf.jpg"].photo_id].usable
    assert batch_images(ctx.metrics, "matting") == 1, "only the photo without transparency is matted"


def test_a_cut_out_larger_than_the_working_size_keeps_its_exact_outline(tmp_path: Path) -> None:
    """Measured at 2048 px, its transparency mask was stored scaled back up from that: the outline
    moved (an ellipse of 4000 x 3000 px differed in thousands of pixels)."""
    width, height = 2400, 1800
    yy, xx = np.mgrid[0:height, 0:width]
    outline = ((xx - 1200) / 900.0) ** 2 + ((yy - 900) / 700.0) ** 2 <= 1.0
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, (40 + xx % 50).astype(np.uint8), 40
    rgba[..., 3] = np.where(outline, 255, 0)
    folder = tmp_path / "batch" / "tray"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(
        json.dumps({"sku_id": "SKU-TRAY", "name": "Tray", "category": "tray"})
    )
    Image.fromarray(rgba, "RGBA").save(folder / "cutout.png")
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri)
    sku, problems = prepare_sku(folder, settings)
    assert sku is not None, problems
    payload = upload_sku(sku, store)
    (reference,) = caption(payload, context(store, settings)).photos
    assert reference.usable and reference.mask is not None
    assert np.array_equal(decode_mask(store.read_verified(reference.mask)) > 0, outline)


def test_what_is_not_a_cut_out_has_no_transparency_mask() -> None:
    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return buffer.getvalue()

    opaque_rgba = Image.new("RGBA", (64, 64), (200, 30, 30, 255))
    all_clear = Image.new("RGBA", (64, 64), (200, 30, 30, 0))
    assert photo_and_transparency(png(opaque_rgba))[2] is None
    assert photo_and_transparency(png(all_clear))[2] is None
    assert photo_and_transparency(png(Image.new("RGB", (64, 64), (1, 2, 3))))[2] is None
    # A palette cut-out (transparent entry) and a colour-keyed RGB PNG are cut-outs too.
    palette = Image.new("P", (64, 64), 0)
    palette.putpalette([255, 255, 255, 200, 30, 30] + [0] * 762)
    palette.paste(1, (16, 16, 48, 48))
    palette.info["transparency"] = 0
    mask = photo_and_transparency(png(palette))[2]
    assert mask is not None and int((mask > 0).sum()) == 32 * 32


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
