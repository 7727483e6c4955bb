"""Review 47 of ingest: what the warnings say of a cut-out that takes the place of its flattened copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from services.ingest import ingest
from shared.config import load_settings


def _sku(root: Path) -> Path:
    folder = root / "A"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(
        json.dumps({"sku_id": "A-1", "name": "Oat drink", "category": "carton"})
    )
    return folder


def _cut_out() -> Image.Image:
    """A red square on a transparent background: over white, the picture ``_flattened`` is."""
    cut_out = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
    cut_out.paste((200, 30, 30, 255), (20, 20, 76, 76))
    return cut_out


def _flattened() -> Image.Image:
    flattened = Image.new("RGB", (96, 96), (255, 255, 255))
    flattened.paste((200, 30, 30), (20, 20, 76, 76))
    return flattened


def _survey(batch: Path) -> tuple[list[tuple[str, int]], list[str]]:
    warnings: list[str] = []
    return ingest.survey_folders(batch, load_settings(), warn=warnings.append), warnings


def test_an_animated_cut_out_that_takes_its_flattened_copy_s_place_is_warned_of(tmp_path: Path) -> None:
    # The cut-out took the flattened file's place, but its frames were never noted: of its two frames
    # one was ingested without the warning every other animation gets.
    folder = _sku(tmp_path)
    _flattened().save(folder / "a-flattened.png")
    second = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
    second.paste((30, 30, 200, 255), (10, 10, 40, 40))
    _cut_out().save(folder / "b-cut-out.png", save_all=True, append_images=[second])
    assert Image.open(folder / "b-cut-out.png").n_frames == 2

    surveyed, warnings = _survey(tmp_path)
    assert surveyed == [("A-1", 1)]
    assert [w for w in warnings if "frames" in w] == [
        f"SKU A-1: {folder / 'b-cut-out.png'} holds 2 frames (an animation or a multi-page file); only the "
        "first is ingested (save each one meant as a photo of its own)"
    ], warnings


def test_a_multi_page_file_a_cut_out_took_the_place_of_is_not_said_to_be_ingested(tmp_path: Path) -> None:
    # "a-flattened.tiff holds 2 frames; only the first is ingested": none of it was, the cut-out was.
    folder = _sku(tmp_path)
    _flattened().save(folder / "a-flattened.tiff", save_all=True, append_images=[Image.new("RGB", (96, 96))])
    assert Image.open(folder / "a-flattened.tiff").n_frames == 2
    _cut_out().save(folder / "b-cut-out.png")

    surveyed, warnings = _survey(tmp_path)
    assert surveyed == [("A-1", 1)]
    assert not [w for w in warnings if "frames" in w], warnings
    assert any("a-flattened.tiff is the same picture as" in w and "b-cut-out.png" in w for w in warnings), (
        warnings
    )


def test_a_near_copy_is_said_to_look_like_the_cut_out_that_is_ingested(tmp_path: Path) -> None:
    # "a2-small.png looks like a resized or re-encoded copy of a-flattened.png; both are ingested":
    # a-flattened.png was not, the cut-out that took its place was.
    folder = _sku(tmp_path)
    y, x = np.mgrid[0:240, 0:320].astype(float)
    waves = 128 + 60 * np.sin(x / 7) + 60 * np.cos(y / 11 + x / 19)
    picture = np.stack([waves, waves[::-1], 255 - waves], -1).clip(0, 255).astype(np.uint8)
    alpha = np.zeros((240, 320), np.uint8)
    alpha[20:220, 30:290] = 255
    cut_out = Image.fromarray(np.dstack([picture, alpha]), "RGBA")
    flattened = Image.new("RGB", cut_out.size, (255, 255, 255))
    flattened.paste(cut_out, mask=cut_out.getchannel("A"))
    flattened.save(folder / "a-flattened.png")
    flattened.resize((160, 120)).save(folder / "a2-small.png")
    cut_out.save(folder / "b-cut-out.png")

    surveyed, warnings = _survey(tmp_path)
    assert surveyed == [("A-1", 2)]
    [near] = [w for w in warnings if "looks like" in w]
    assert f"looks like a resized or re-encoded copy of {folder / 'b-cut-out.png'};" in near, near
