"""``train --extra``: a mask is found by its image's name in any format ``decode_mask`` reads. Only
``masks/NAME.png`` was looked for: a ``.tif`` mask beside its photo was "no mask at masks/NAME.png",
and a JPEG one (a format no mask is read in) was reported missing, not refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from shared.config import ConfigError
from shared.matting.train import load_pairs


def _pair_folder(root: Path, mask_names: list[str]) -> Path:
    """An ``--extra`` folder with photo ``p.png`` and its mask saved under each of ``mask_names``."""
    folder = root / "extra"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    photo = Image.new("RGB", (40, 32), (255, 255, 255))
    ImageDraw.Draw(photo).rectangle((10, 8, 29, 23), fill=(200, 40, 30))
    photo.save(folder / "images" / "p.png")
    mask = Image.new("L", (40, 32), 0)
    ImageDraw.Draw(mask).rectangle((10, 8, 29, 23), fill=255)
    for name in mask_names:
        mask.save(folder / "masks" / name)
    return folder


@pytest.mark.parametrize("name", ["p.tif", "p.TIFF", "p.bmp", "p.webp"])
def test_a_mask_in_another_format_decode_mask_reads_is_used(tmp_path: Path, name: str) -> None:
    folder = _pair_folder(tmp_path, [name])
    if name == "p.webp":
        Image.open(folder / "masks" / name).save(folder / "masks" / name, lossless=True)
    _, masks = load_pairs(folder, 40)
    assert masks.shape == (1, 40, 40)
    assert np.count_nonzero(masks[0]) == pytest.approx(20 * 16 * 40 / 32, rel=0.1)


def test_a_jpeg_mask_is_refused_naming_the_names_looked_for(tmp_path: Path) -> None:
    folder = _pair_folder(tmp_path, ["p.jpg"])
    with pytest.raises(ConfigError) as info:
        load_pairs(folder, 32)
    masks = folder / "masks"
    assert str(info.value).splitlines()[1:] == [
        f"{folder / 'images' / 'p.png'}: no mask at {masks / 'p.png'} (or p.tif, p.tiff, p.bmp, p.webp); "
        f"{masks / 'p.jpg'} is in no format a mask is read in: save it as PNG"
    ]


def test_two_masks_of_one_image_are_refused(tmp_path: Path) -> None:
    folder = _pair_folder(tmp_path, ["p.png", "p.tif"])
    with pytest.raises(ConfigError) as info:
        load_pairs(folder, 32)
    masks = folder / "masks"
    assert str(info.value).splitlines()[1:] == [
        f"{folder / 'images' / 'p.png'}: more than one mask ({masks / 'p.png'}, {masks / 'p.tif'}); keep one"
    ]


def test_two_images_of_one_name_are_refused(tmp_path: Path) -> None:
    """``p.png`` and ``p.jpg`` were each paired with ``masks/p.png``, silently: one of them (or both) a
    photo the mask was not drawn on."""
    folder = _pair_folder(tmp_path, ["p.png"])
    images = folder / "images"
    Image.open(images / "p.png").save(images / "p.jpg")
    with pytest.raises(ConfigError) as info:
        load_pairs(folder, 32)
    assert str(info.value).splitlines()[1:] == [
        f"{images / 'p.jpg'}, {images / 'p.png'}: more than one image named p, for the one mask of that "
        "name; rename or remove all but one"
    ]
