"""Where the flow's stages store an item's objects: a folder per kind of object, the SKU's id after it,
then the object's name (``generated/<sku_id>/<item_id>-<sha256[:16]>.png``; the stages add the sha256
prefix with ``shared.store.digest_key``).

Written once, for the producers and for the trainstore, which refuses an event's image or mask that
another SKU's folder holds (``other_sku_object``, by ``sku_of``): with a copy of the folders there, a
producer whose folder was renamed left that check without a word. docs/ops.md's table of prefixes says
who reads each folder and how long it is needed.
"""

from __future__ import annotations

from enum import StrEnum


class Folder(StrEnum):
    """A folder the flow writes an item's objects in, each SKU's under ``<folder><sku_id>/``."""

    PHOTOS = "incoming/"  # ingest: the SKU's photos
    TRANSPARENCY = "masks/transparency/"  # ingest: a cut-out photo's own alpha
    REFERENCE_MASKS = "masks/reference/"  # the captioner: where the product is in each photo
    GENERATED = "generated/"  # the generator: the images
    EXPECTED_MASKS = "masks/expected/"  # the generator: where the product's own pixels are
    PREDICTED_MASKS = "masks/predicted/"  # matting
    CUTOUTS = "cutouts/"  # matting: the image with the predicted mask as alpha
    CORRECTED_MASKS = "masks/corrected/"  # the console: a reviewer's mask

    def of(self, sku_id: str) -> str:
        """The folder's part for ``sku_id`` (what ingest lists): ``<folder><sku_id>/``."""
        return f"{self.value}{sku_id}/"


def _key(folder: Folder, sku_id: str, name: str) -> str:
    return f"{folder.of(sku_id)}{name}.png"


def photo_key(sku_id: str, photo_id: str) -> str:
    """A SKU's photo, as ingest stores it."""
    return _key(Folder.PHOTOS, sku_id, photo_id)


def transparency_key(sku_id: str, photo_id: str) -> str:
    """A photo's own transparency (its outline), as ingest stores it."""
    return _key(Folder.TRANSPARENCY, sku_id, photo_id)


def reference_mask_key(sku_id: str, photo_id: str) -> str:
    """The captioner's mask of a photo."""
    return _key(Folder.REFERENCE_MASKS, sku_id, photo_id)


def generated_key(sku_id: str, item_id: str) -> str:
    """A generated image."""
    return _key(Folder.GENERATED, sku_id, item_id)


def expected_mask_key(sku_id: str, item_id: str) -> str:
    """Where a generated image's product is, as the generator placed it."""
    return _key(Folder.EXPECTED_MASKS, sku_id, item_id)


def predicted_mask_key(sku_id: str, item_id: str) -> str:
    """Matting's mask of a generated image."""
    return _key(Folder.PREDICTED_MASKS, sku_id, item_id)


def cutout_key(sku_id: str, item_id: str) -> str:
    """A generated image with matting's mask as alpha."""
    return _key(Folder.CUTOUTS, sku_id, item_id)


def corrected_mask_key(sku_id: str, item_id: str) -> str:
    """A reviewer's mask of a generated image."""
    return _key(Folder.CORRECTED_MASKS, sku_id, item_id)


def folder_of(key: str) -> Folder | None:
    """The flow's folder that ``key`` (or a prefix ``key/``) is in; None for one outside them all."""
    return next((folder for folder in Folder if key.startswith(folder.value)), None)


def sku_of(key: str) -> str | None:
    """The SKU whose object ``key`` is, by the folder it is in; None for a key outside the flow's folders
    (a test's fixtures, an operator's own objects), which says nothing of its SKU.

    ``ValueError`` for a key directly in a flow folder (``generated/x.png``): no stage writes one, and
    its name is no SKU id, though read as one it looked like another SKU's object.
    """
    folder = folder_of(key)
    if folder is None:
        return None
    sku_id, sep, _ = key.removeprefix(folder.value).partition("/")
    if not (sku_id and sep):
        raise ValueError(
            f"{key} is directly in the flow's folder {folder}, with no SKU folder ({folder}<sku>/)"
        )
    return sku_id
