"""The captioner works on photos no longer than WORKING_SIDE_PX: ten full-size 40-megapixel photos of
one SKU, decoded and matted at once, took 2.7 GB (over the stage's 2 GiB pod limit: an OOM crash loop
on redelivery). The masks it stores still have each photo's own size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from schemas.common import SkuMetadata
from schemas.events import ReferencePhoto, SkuCaptioned, SkuIngested
from schemas.topics import SKU_INGESTED
from services.captioner.config import CaptionerSettings
from services.captioner.stage import WORKING_SIDE_PX, CaptionerModels, handle
from shared.bus import make_envelope
from shared.config import load_settings
from shared.images import decode_mask
from shared.store import FileStore
from shared.synth import make_product, render_photo
from tests.support.captioning import committed_session, context


class SizeRecordingSession:
    """The committed matting session, recording the size of every image it is given."""

    def __init__(self) -> None:
        self.session = committed_session()
        self.sizes: list[tuple[int, int]] = []

    def predict_each(self, images: Sequence[Image.Image]) -> Any:
        self.sizes += [image.size for image in images]
        return self.session.predict_each(images)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def test_a_large_photo_is_matted_at_the_working_size_and_its_mask_stored_at_its_own(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    spec = make_product(3, 11)
    small = np.asarray(render_photo(spec, 0, 11, 256).image)
    large = np.asarray(Image.fromarray(small).resize((3000, 2400), Image.Resampling.BILINEAR))
    references = [
        ReferencePhoto(
            photo_id=f"p{index}", image=store.put_image(f"in/p{index}.png", pixels), original_filename="x.png"
        )
        for index, pixels in enumerate([large, small])
    ]
    payload = SkuIngested(sku=SkuMetadata(**spec.metadata()), photos=references)
    event = make_envelope(
        SKU_INGESTED, payload, event_id="a" * 32, sku_id=spec.sku_id, trace_id="t", producer="test"
    )
    session = SizeRecordingSession()
    models = CaptionerModels(session=session, vlm=None, options=load_settings(CaptionerSettings))
    settings = load_settings(store_uri=store.base_uri)

    (emit,) = handle(event, context(store, settings), models=models)

    assert max(max(size) for size in session.sizes) <= WORKING_SIDE_PX
    assert session.sizes[1] == (256, 256)  # a photo within the working size is matted as it is
    assert isinstance(emit.payload, SkuCaptioned)
    large_entry, small_entry = emit.payload.photos
    assert large_entry.usable and small_entry.usable
    assert large_entry.mask is not None and small_entry.mask is not None
    mask = decode_mask(store.read_verified(large_entry.mask))
    assert mask.shape == (2400, 3000)
    # The mask of the large photo is the small one's, scaled: the same product, in the same place.
    small_mask = decode_mask(store.read_verified(small_entry.mask))
    scaled = np.asarray(Image.fromarray(small_mask).resize((3000, 2400), Image.Resampling.NEAREST))
    assert np.mean((mask >= 128) == (scaled >= 128)) > 0.97


class MaskReplacedAfterRead(FileStore):
    """A FileStore whose object under ``replaced_key`` is overwritten with other bytes once read: a
    cut-out's mask re-uploaded while its SKU is captioned."""

    replaced_key = ""
    mask_reads = 0

    def _read_at_most(self, key: str, max_bytes: int) -> bytes:
        return self._replaced_after(key, super()._read_at_most(key, max_bytes))

    def _read(self, key: str) -> bytes:
        return self._replaced_after(key, super()._read(key))

    def _replaced_after(self, key: str, data: bytes) -> bytes:
        if key == self.replaced_key:
            self.mask_reads += 1
            self._write(key, data + b"\0", "image/png")  # a PNG still, with other bytes
        return data


def test_a_cut_out_over_the_working_size_reads_its_mask_once(tmp_path: Path) -> None:
    """The transparency mask of a cut-out over WORKING_SIDE_PX was read a second time to be stored at
    full size; an object changed between the reads failed that read's checksum, and with it the whole
    SKU (every photo, to the DLQ) rather than the one photo. Read once, the SKU is captioned with the
    mask as first read."""
    width, height = 2400, 1800
    yy, xx = np.mgrid[0:height, 0:width]
    outline = ((xx - 1200) / 900.0) ** 2 + ((yy - 900) / 700.0) ** 2 <= 1.0
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 200, (40 + xx % 50).astype(np.uint8), 40
    store = MaskReplacedAfterRead(tmp_path / "store")
    mask = store.put_image("in/cut-mask.png", np.where(outline, np.uint8(255), np.uint8(0)))
    store.replaced_key = store.key_for(mask.uri)
    spec = make_product(3, 11)
    photo = ReferencePhoto(
        photo_id="cut", image=store.put_image("in/cut.png", pixels), mask=mask, original_filename="cut.png"
    )
    event = make_envelope(
        SKU_INGESTED,
        SkuIngested(sku=SkuMetadata(**spec.metadata()), photos=[photo]),
        event_id="b" * 32,
        sku_id=spec.sku_id,
        trace_id="t",
        producer="test",
    )
    models = CaptionerModels(
        session=committed_session(),
        vlm=None,
        options=load_settings(CaptionerSettings, captioner_use_gpu=False),
    )
    (emit,) = handle(event, context(store, load_settings(store_uri=store.base_uri)), models=models)
    assert isinstance(emit.payload, SkuCaptioned)
    (reference,) = emit.payload.photos
    assert reference.usable and reference.mask is not None
    assert np.array_equal(decode_mask(store.read_verified(reference.mask)) > 0, outline)
    assert store.mask_reads == 1
