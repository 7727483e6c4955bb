"""Every stage that turns a decoded image into an array reads it a strip at a time (``pixel_array``):
the arrays are those ``np.asarray`` gave, and a big image does not cost several copies of itself."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

import shared.images
from services.generator.stage import _read_reference, crop_to_product
from services.lora_trainer.stage import _read_class_folder
from shared.config import Settings
from shared.generation.composite import CompositeBackend
from shared.generation.scenes import SceneLibrary
from shared.images import decode_image, decode_mask
from shared.lora_training.dataset import InstanceSource, TrainingRecipe, _scenes, square_image
from shared.lora_training.train import vae_pixels
from shared.matting.session import resize_confidence
from shared.matting.train import _is_colour_picture
from shared.observability import StageMetrics
from shared.runtime import Context
from shared.store import FileStore, sha256_hex
from tests.support.captioning import captioned_sku
from tests.support.memory import peak_traced_bytes


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _photo(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A photo of smooth colour (a small PNG, so the file does not weigh in the memory measured) with
    some noise on it (so an array that came out shifted or transposed would not match)."""
    rows, cols = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [rows * 255 // max(1, height - 1), cols * 255 // max(1, width - 1), (rows + cols) % 256], -1
    )
    rgb[::7, ::5] = np.random.default_rng(5).integers(0, 256, rgb[::7, ::5].shape)
    return Image.fromarray(rgb.astype(np.uint8), "RGB").convert(mode)


def _mask(width: int, height: int) -> bytes:
    values = np.zeros((height, width), dtype=np.uint8)
    values[height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = 255
    return _png(Image.fromarray(values, "L"))


@pytest.fixture
def small_strips(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strips of a few rows, so every image here is many strips, the last a short one."""
    monkeypatch.setattr(shared.images, "_STRIP_PIXELS", 2**12)


# --- generator: the reference photo -----------------------------------------------------------


def test_the_generators_reference_is_the_decoded_photo_cropped(tmp_path: Path, small_strips: None) -> None:
    store = FileStore(tmp_path / "store")
    captioned = captioned_sku(store, 1, usable_photos=1)
    photo = captioned.photos[0]
    ctx = Context("generator", store, Settings(), StageMetrics("generator"), logging.getLogger("test"))
    reference, mask, _ = _read_reference(photo, ctx, max_side_px=4096)
    assert photo.mask is not None
    expected_mask = np.where(decode_mask(store.read_verified(photo.mask)) >= 128, 255, 0).astype(np.uint8)
    decoded = np.asarray(decode_image(store.read_verified(photo.image)), dtype=np.uint8)
    expected_reference, expected_cropped_mask = crop_to_product(decoded, expected_mask)
    assert reference.dtype == np.uint8 and reference.shape == expected_reference.shape
    assert np.array_equal(reference, expected_reference)
    assert np.array_equal(mask, expected_cropped_mask)


# --- LoRA training set: the instance photos ----------------------------------------------------


def _instance(store: FileStore, photo: bytes, mask: bytes) -> InstanceSource:
    image_ref = store.put_bytes("photos/p.png", photo)
    mask_ref = store.put_bytes("masks/p.png", mask)
    return InstanceSource(
        sku_id="sku-1",
        photo_id="p",
        image_uri=image_ref.uri,
        image_sha256=image_ref.sha256,
        mask_uri=mask_ref.uri,
        mask_sha256=mask_ref.sha256,
        instance_prompt="a photo of sks can",
        class_noun="can",
        class_prompt="a photo of a can",
        composite=False,
    )


@pytest.mark.parametrize(("width", "height"), [(301, 203), (97, 311)])
def test_a_training_photo_is_the_decoded_photo_squared(
    tmp_path: Path, small_strips: None, width: int, height: int
) -> None:
    store = FileStore(tmp_path / "store")
    photo, mask = _png(_photo(width, height)), _mask(width, height)
    recipe = TrainingRecipe(resolution=64)
    scenes = _scenes(store, _instance(store, photo, mask), recipe, CompositeBackend(), 10**8, 2**26)
    [(image, square_mask, _)] = scenes
    assert np.array_equal(image, square_image(np.asarray(decode_image(photo), np.uint8), 64))
    assert np.array_equal(square_mask, square_image(decode_mask(mask), 64))


def test_a_big_training_photo_is_not_held_twice(tmp_path: Path, small_strips: None) -> None:
    # np.asarray of the decoded photo held it twice (Image.tobytes: its chunks and their join): six
    # bytes a pixel, where the photo's array is three and its mask one.
    side = 1500
    store = FileStore(tmp_path / "store")
    source = _instance(store, _png(_photo(side, side)), _mask(side, side))
    recipe = TrainingRecipe(resolution=64)
    peak = peak_traced_bytes(lambda: _scenes(store, source, recipe, CompositeBackend(), 10**8, 2**26))
    assert peak < 5 * side * side


# --- LoRA trainer: the class image folder ------------------------------------------------------


def _class_folder(root: Path, photo: Image.Image) -> Path:
    (root / "can").mkdir(parents=True)
    photo.save(root / "can" / "a.png")
    return root


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_a_class_image_and_its_digest_are_those_of_the_decoded_photo(
    tmp_path: Path, small_strips: None, mode: str
) -> None:
    photo = _photo(211, 157, mode)
    folder = _read_class_folder(
        str(_class_folder(tmp_path, photo)), 64, most=1, max_pixels=10**8, max_bytes=2**26
    )
    decoded = np.asarray(decode_image((tmp_path / "can" / "a.png").read_bytes()), np.uint8)
    assert folder.digests == {"can": [sha256_hex(decoded.tobytes())]}
    assert len(folder.images["can"]) == 1
    assert np.array_equal(folder.images["can"][0], square_image(decoded, 64))


def test_a_big_class_image_is_not_held_twice(tmp_path: Path, small_strips: None) -> None:
    # np.asarray held the photo twice as it was read, and its digest was taken of a tobytes copy.
    side = 1500
    root = _class_folder(tmp_path, _photo(side, side))
    peak = peak_traced_bytes(
        lambda: _read_class_folder(str(root), 64, most=1, max_pixels=10**8, max_bytes=2**26)
    )
    assert peak < 4.5 * side * side


# --- LoRA training loop: the pixels the VAE encodes ---------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_the_vae_pixels_are_the_decoded_image_scaled_to_minus_one_one(small_strips: None, mode: str) -> None:
    data = _png(_photo(131, 77, mode))
    expected = np.asarray(decode_image(data), dtype=np.float32) / 127.5 - 1.0
    pixels = vae_pixels(data)
    assert pixels.dtype == np.float32 and pixels.shape == expected.shape
    assert np.array_equal(pixels, expected)


# --- matting training: is a mask file a colour picture? ----------------------------------------


def _spread_share(data: bytes) -> float:
    pixels = np.asarray(decode_image(data), dtype=np.int16)
    return float(((pixels.max(axis=-1) - pixels.min(axis=-1)) > 32).mean())


@pytest.mark.parametrize("grey", [True, False])
def test_a_colour_picture_is_told_from_a_grey_mask_saved_as_rgb(small_strips: None, grey: bool) -> None:
    photo = _photo(123, 45)
    data = _png(photo.convert("L").convert("RGB") if grey else photo)
    assert _is_colour_picture(data) == (_spread_share(data) > 0.01)
    assert _is_colour_picture(data) is not grey


def test_telling_a_big_colour_picture_holds_little_more_than_it(small_strips: None) -> None:
    # np.asarray as int16 held the pixels as uint8 twice and as int16 once: four times the picture.
    side = 1200
    data = _png(_photo(side, side))
    assert peak_traced_bytes(lambda: _is_colour_picture(data)) < 2.5 * side * side * 3


# --- generator: the scene photos ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_a_scene_is_the_decoded_photo_shrunk(tmp_path: Path, small_strips: None, mode: str) -> None:
    data = _png(_photo(401, 263, mode))
    (tmp_path / "scenes").mkdir()
    (tmp_path / "scenes" / "shelf.png").write_bytes(data)
    library = SceneLibrary.load(FileStore(tmp_path / "scenes"), max_side_px=300)
    expected = decode_image(data)
    expected.thumbnail((300, 300), Image.Resampling.LANCZOS)
    pixels = library.get("shelf.png").pixels
    assert pixels.dtype == np.uint8
    assert np.array_equal(pixels, np.asarray(expected, dtype=np.uint8))


# --- matting: the confidence map at the image's size ---------------------------------------------


def _model_map() -> npt.NDArray[np.float32]:
    """A model's map: 96x96, min-max normalised into 0..1."""
    values = np.random.default_rng(9).random((96, 96))
    return ((values - values.min()) / (values.max() - values.min())).astype(np.float32)


@pytest.mark.parametrize("size", [(301, 203), (97, 311), (96, 96)])
def test_a_confidence_map_at_the_image_size_is_the_bilinear_resize_kept_in_0_1(
    small_strips: None, size: tuple[int, int]
) -> None:
    model_map = _model_map()
    expected = np.clip(
        np.asarray(Image.fromarray(model_map).resize(size, Image.Resampling.BILINEAR), dtype=np.float32),
        0.0,
        1.0,
    )
    confidence = resize_confidence(model_map, size)
    assert confidence.dtype == np.float32 and confidence.shape == (size[1], size[0])
    assert np.array_equal(confidence, expected)


def test_a_confidence_map_at_a_big_image_size_is_held_once(small_strips: None) -> None:
    # np.asarray of the resized map (Image.tobytes) and np.clip's copy held it twice at once: 8 bytes
    # a pixel for a 4-byte-a-pixel map, per 40 MP photo of a chunk being matted.
    model_map = _model_map()
    side = 1500
    assert peak_traced_bytes(lambda: resize_confidence(model_map, (side, side))) < 1.5 * side * side * 4
