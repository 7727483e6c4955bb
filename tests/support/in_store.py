"""In-store photos of a SKU whose masks are drawn shapes, for the tests of which cut-outs the generator
draws from (``one_object_photos``) and of what it does when the compositor refuses one.

``in_store`` puts a SKU's photos in a store (backgrounds below the generator's plain cut-off), each
photo's mask the given blobs; ``chain`` is one blob that is not one object, ``hair`` one object the
compositor refuses for every variant, ``vee`` one blob that is neither.
"""

from __future__ import annotations

import numpy as np

from schemas.events import SkuCaptioned
from shared.store import ObjectStore
from tests.support.captioning import captioned_sku

PHOTO_PX = 320


def disc(radius_px: int, centre: tuple[int, int]) -> np.ndarray:
    """Where a disc of ``radius_px`` at ``centre`` (row, column) lies in a photo."""
    rows, cols = np.mgrid[:PHOTO_PX, :PHOTO_PX]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius_px**2


def chain() -> np.ndarray:
    """Three apples in a row, touching: one blob, not one object."""
    return disc(50, (160, 60)) | disc(50, (160, 160)) | disc(50, (160, 260))


def hair() -> np.ndarray:
    """A diagonal line one pixel wide across the photo: one object (its own hull), and so thin that,
    drawn at the size of a product in the scene, it covers no pixel by half, which the compositor
    refuses for every variant."""
    mask = np.zeros((PHOTO_PX, PHOTO_PX), bool)
    along = np.arange(10, PHOTO_PX - 10)
    mask[along, along] = True
    return mask


def vee() -> np.ndarray:
    """Two such lines meeting at a point: one blob, not one object, and refused as the line is."""
    mask = np.zeros((PHOTO_PX, PHOTO_PX), bool)
    along = np.arange(150)
    mask[10 + along, 10 + along] = True
    mask[159 - along, 160 + along] = True
    return mask


def in_store(store: ObjectStore, index: int, blobs_by_photo: list[np.ndarray]) -> SkuCaptioned:
    """A SKU whose every photo is in a store (plain_background 0.2, below the generator's 0.7), each
    photo's mask the given blobs, the products red on a grey shelf."""
    captioned = captioned_sku(store, index, usable_photos=len(blobs_by_photo))
    sku_id = captioned.sku.sku_id
    photos = []
    for photo, blobs in zip(captioned.photos, blobs_by_photo, strict=True):
        pixels = np.full((PHOTO_PX, PHOTO_PX, 3), 110, np.uint8)
        pixels[blobs] = (200, 30, 30)
        image = store.put_image(f"images/{sku_id}/shelf/{photo.photo_id}.png", pixels)
        mask = store.put_image(f"masks/reference/{sku_id}/shelf/{photo.photo_id}.png", blobs)
        photos.append(photo.model_copy(update={"image": image, "mask": mask, "plain_background": 0.2}))
    return captioned.model_copy(update={"photos": photos})
