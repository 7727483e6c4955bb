"""``train --extra``: a mask file that is a TIFF with a reduced-size preview ahead of its page.

``decode_mask`` reads such a TIFF by its first page of its own, past the preview (c9eec2a), but the
check that a mask is no colour picture asked the preview's mode: a colour photo saved as its mask
behind a grey preview was taken as a mask, read by its brightness.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, TiffImagePlugin

from shared.config import ConfigError
from shared.matting.train import load_pairs


def _photo(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(image).ellipse([width * 0.3, height * 0.2, width * 0.7, height * 0.8], fill=(220, 40, 30))
    return image


def _behind_a_grey_preview(page: Image.Image) -> bytes:
    """A TIFF of ``page`` whose first page is its grey reduced-size preview (NewSubfileType 1)."""
    preview = page.convert("L").resize((page.width // 4, page.height // 4))
    buffer = io.BytesIO()
    with TiffImagePlugin.AppendingTiffWriter(buffer) as pages:
        for image, new_subfile_type in ((preview, 1), (page, 0)):
            image.save(pages, "TIFF", tiffinfo={254: new_subfile_type})
            pages.newFrame()
    return buffer.getvalue()


def test_a_colour_picture_behind_a_grey_preview_is_refused_as_a_mask(tmp_path: Path) -> None:
    folder = tmp_path / "extra"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    photo = _photo(40, 32)
    photo.save(folder / "images" / "p.png")
    (folder / "masks" / "p.png").write_bytes(_behind_a_grey_preview(photo))

    with pytest.raises(ConfigError) as info:
        load_pairs(folder, 32)
    assert str(info.value).splitlines()[1:] == [
        f"{folder / 'masks' / 'p.png'}: a colour picture, not a mask (white on black marks the product)"
    ]
