"""Ingest review 39: copies that are not byte-for-byte copies, and one photo in two SKU folders, are
named in a warning instead of being ingested without a word."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps, TiffImagePlugin

from services.ingest import ingest
from shared.config import load_settings
from shared.images import MAX_TIFF_PAGES
from tests.support.memory import peak_traced_bytes

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "grocerystore" / "GROCERY-OATLY-001"


def _picture(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A smooth, detailed picture (waves of a few colours): its perceptual hash says something, and a
    resized or re-encoded copy of it keeps that hash."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(float)
    a, b, c = np.random.default_rng(seed).uniform(5, 30, 3)
    value = 128 + 60 * np.sin(x / a) + 60 * np.cos(y / b + x / c)
    return Image.fromarray(np.stack([value, value[::-1], 255 - value], -1).clip(0, 255).astype(np.uint8))


def _sku(root: Path, folder: str, sku_id: str) -> Path:
    path = root / folder
    path.mkdir(parents=True)
    (path / "metadata.json").write_text(
        json.dumps({"sku_id": sku_id, "name": "Oat drink", "category": "carton"})
    )
    return path


def _survey(batch: Path) -> tuple[list[tuple[str, int]], list[str]]:
    warnings: list[str] = []
    return ingest.survey_folders(batch, load_settings(), warn=warnings.append), warnings


def test_a_resized_or_re_encoded_copy_of_a_photo_is_named_in_a_warning(tmp_path: Path) -> None:
    # The copy a chat app shrank or re-encoded has other bytes than IMG_1.png: it was ingested as a
    # second photo of the SKU without a word, though a byte-for-byte copy is named.
    folder = _sku(tmp_path, "A", "A-1")
    _picture(1).save(folder / "IMG_1.png")
    _picture(1).resize((160, 120)).save(folder / "IMG_1_small.png")
    _picture(1).save(folder / "IMG_1_chat.jpg", quality=60)
    _picture(2).save(folder / "IMG_2.png")
    surveyed, warnings = _survey(tmp_path)
    assert surveyed == [("A-1", 4)], "a warning, not a refusal: both are ingested"
    assert warnings == [
        f"SKU A-1: {folder / copy} looks like a resized or re-encoded copy of {folder / 'IMG_1.png'}; "
        "both are ingested, as two photos of the product (remove the copy if it is one)"
        for copy in ("IMG_1_chat.jpg", "IMG_1_small.png")
    ], warnings


def test_a_turned_or_mirrored_copy_of_a_photo_is_named_with_how_it_differs(tmp_path: Path) -> None:
    # The same shot added flipped, or saved again without its EXIF orientation, has a perceptual hash
    # of its own as shown: it was ingested without a word, a duplicate for the classifier, though
    # ``skuforge evaluate`` hashes the 8 orientations and finds it. The other two shots stay unnamed.
    folder = tmp_path / "oatly"
    shutil.copytree(SAMPLE, folder)
    with Image.open(folder / "Oatly-Oat-Milk_012.jpg") as opened:
        photo = ImageOps.exif_transpose(opened)
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
        folder / "Oatly-Oat-Milk_012_mirrored.jpg", quality=85
    )
    turned = photo.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise, shrunk as a chat app would
    turned.reduce(2).save(folder / "Oatly-Oat-Milk_012_turned.jpg", quality=60)
    surveyed, warnings = _survey(tmp_path)
    assert surveyed == [("GROCERY-OATLY-001", 5)], "a warning, not a refusal: both are ingested"
    assert warnings == [
        f"SKU GROCERY-OATLY-001: {folder / copy} looks like a copy of {folder / 'Oatly-Oat-Milk_012.jpg'} "
        f"({how}, perhaps resized or re-encoded); both are ingested, as two photos of the product (remove "
        "the copy if it is one)"
        for copy, how in (
            ("Oatly-Oat-Milk_012_mirrored.jpg", "mirrored"),
            ("Oatly-Oat-Milk_012_turned.jpg", "turned 90 degrees counter-clockwise"),
        )
    ], warnings


@pytest.mark.parametrize(
    ("turns", "how"),
    [
        ([Image.Transpose.ROTATE_90], "turned 90 degrees counter-clockwise"),
        ([Image.Transpose.ROTATE_270], "turned 90 degrees clockwise"),
        ([Image.Transpose.ROTATE_180], "turned 180 degrees"),
        (
            [Image.Transpose.ROTATE_90, Image.Transpose.FLIP_LEFT_RIGHT],
            "turned 90 degrees counter-clockwise and mirrored",
        ),
    ],
)
def test_a_turned_copy_is_named_with_the_way_it_was_turned(
    tmp_path: Path, turns: list[Image.Transpose], how: str
) -> None:
    # "turned 90 degrees" said neither way: it meant counter-clockwise, and a copy turned a quarter
    # clockwise read "turned 270 degrees", which its owner had to work out.
    folder = _sku(tmp_path, "A", "A-1")
    _picture(1).save(folder / "IMG_1.png")
    copy = _picture(1)
    for turn in turns:
        copy = copy.transpose(turn)
    copy.save(folder / "IMG_1_turned.png")
    assert _survey(tmp_path)[1] == [
        f"SKU A-1: {folder / 'IMG_1_turned.png'} looks like a copy of {folder / 'IMG_1.png'} ({how}, "
        "perhaps resized or re-encoded); both are ingested, as two photos of the product (remove the copy "
        "if it is one)"
    ]


def test_different_photos_of_one_product_are_not_taken_for_copies(tmp_path: Path) -> None:
    folder = _sku(tmp_path, "A", "A-1")
    for seed in range(4):
        _picture(seed).save(folder / f"IMG_{seed}.png")
    assert _survey(tmp_path) == ([("A-1", 4)], [])


def test_the_same_photo_in_two_sku_folders_is_named_in_a_warning(tmp_path: Path) -> None:
    # A photo copied into the wrong product's folder is one picture given as two products: each SKU
    # took it silently, and the retraining store held it under both classes.
    first, second = _sku(tmp_path, "oat", "OAT-1"), _sku(tmp_path, "soy", "SOY-1")
    _picture(1).save(first / "front.png")
    _picture(2).save(first / "back.png")
    _picture(3).save(second / "front.png")
    _picture(2).save(second / "side.png")
    surveyed, warnings = _survey(tmp_path)
    assert surveyed == [("OAT-1", 2), ("SOY-1", 2)]
    assert warnings == [
        f"SKU SOY-1: {second / 'side.png'} is the same picture as {first / 'back.png'} of SKU OAT-1; "
        "one photo given for two products is ingested for both (move it to its own product's folder)"
    ], warnings


def test_a_resized_or_turned_copy_of_another_skus_photo_is_named_in_a_warning(tmp_path: Path) -> None:
    # A photo of one product saved again, shrunk or turned, into another product's folder has other
    # bytes: only a byte-for-byte copy was named, and this one taught the classifier one product under
    # two labels without a word. The photos of three different products stay unnamed.
    samples = SAMPLE.parent
    folders = {
        "1-oatly": "GROCERY-OATLY-001",
        "2-papaya": "GROCERY-PAPAYA-001",
        "3-aubergine": "GROCERY-AUBERGINE-001",
    }
    for folder, sku in folders.items():
        shutil.copytree(samples / sku, tmp_path / folder)
    oatly, papaya, aubergine = (tmp_path / folder for folder in folders)
    original = oatly / "Oatly-Oat-Milk_012.jpg"
    with Image.open(original) as opened:
        photo = ImageOps.exif_transpose(opened)
    photo.reduce(2).save(papaya / "Papaya_small.jpg", quality=60)
    photo.transpose(Image.Transpose.ROTATE_90).save(aubergine / "turned.jpg", quality=85)
    surveyed, warnings = _survey(tmp_path)
    assert surveyed == [("GROCERY-OATLY-001", 3), ("GROCERY-PAPAYA-001", 4), ("GROCERY-AUBERGINE-001", 4)]
    assert warnings == [
        f"SKU GROCERY-PAPAYA-001: {papaya / 'Papaya_small.jpg'} looks like a resized or re-encoded copy of "
        f"{original} of SKU GROCERY-OATLY-001; one photo given for two products is ingested for both (move "
        "it to its own product's folder)",
        f"SKU GROCERY-AUBERGINE-001: {aubergine / 'turned.jpg'} looks like a copy of {original} of SKU "
        "GROCERY-OATLY-001 (turned 90 degrees counter-clockwise, perhaps resized or re-encoded), a copy of "
        f"{papaya / 'Papaya_small.jpg'} of SKU GROCERY-PAPAYA-001 (turned 90 degrees counter-clockwise, "
        "perhaps resized or re-encoded); one photo given for 3 products is ingested for each (move it to "
        "its own product's folder)",
    ], warnings


def test_a_copy_of_photos_of_several_other_skus_names_each_nearest_first(tmp_path: Path) -> None:
    # A photo copied into a folder from a batch where earlier products had it too named only the
    # nearest of them: the others, each one picture under two labels as well, went unsaid.
    def covered(side_px: int) -> Image.Image:  # the picture, its corner painted over: some bits off
        picture = _picture(1)
        ImageDraw.Draw(picture).rectangle((0, 0, side_px, side_px), fill=(128, 128, 128))
        return picture

    photos = {"1-far": covered(80), "2-mid": covered(60), "3-near": _picture(1), "4-close": covered(50)}
    for folder, picture in photos.items():
        picture.save(_sku(tmp_path, folder, folder.upper()) / "front.png")
    _picture(1).save(_sku(tmp_path, "5-new", "NEW") / "front.jpg", quality=90)
    surveyed, warnings = _survey(tmp_path)
    assert len(surveyed) == 5, "warnings, not a refusal"
    assert warnings[-1] == (
        f"SKU NEW: {tmp_path / '5-new' / 'front.jpg'} looks like a resized or re-encoded copy of "
        f"{tmp_path / '3-near' / 'front.png'} of SKU 3-NEAR, a resized or re-encoded copy of "
        f"{tmp_path / '4-close' / 'front.png'} of SKU 4-CLOSE, a resized or re-encoded copy of "
        f"{tmp_path / '2-mid' / 'front.png'} of SKU 2-MID, and photos of 1 more SKU; one photo given for 5 "
        "products is ingested for each (move it to its own product's folder)"
    ), warnings


def test_a_byte_for_byte_copy_of_photos_of_several_other_skus_names_each(tmp_path: Path) -> None:
    # The same bytes in four folders named only the first SKU with them ("given for two products"),
    # where a resized copy names every SKU it looks like: the third and fourth SKUs' labels went unsaid,
    # and so did a resized copy in an earlier folder.
    _picture(1).resize((160, 120)).save(_sku(tmp_path, "1-small", "1-SMALL") / "front.png")
    same = [_sku(tmp_path, folder, folder.upper()) / "front.png" for folder in ("2-a", "3-b", "4-c", "5-d")]
    for photo in same:
        _picture(1).save(photo)
    assert len({photo.read_bytes() for photo in same}) == 1
    surveyed, warnings = _survey(tmp_path)
    assert len(surveyed) == 5, "warnings, not a refusal"
    assert warnings[1] == (
        f"SKU 3-B: {same[1]} is the same picture as {same[0]} of SKU 2-A and looks like a resized or "
        f"re-encoded copy of {tmp_path / '1-small' / 'front.png'} of SKU 1-SMALL; one photo given for 3 "
        "products is ingested for each (move it to its own product's folder)"
    ), warnings
    assert warnings[-1] == (
        f"SKU 5-D: {same[3]} is the same picture as {same[0]} of SKU 2-A, the same picture as {same[1]} of "
        f"SKU 3-B, the same picture as {same[2]} of SKU 4-C, and photos of 1 more SKU; one photo given "
        "for 5 products is ingested for each (move it to its own product's folder)"
    ), warnings


def test_a_jpeg_past_pillows_own_pixel_limit_is_ingested(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ingest decodes such a JPEG scaled down; the copy check, which refused it, must not refuse the photo.
    folder = _sku(tmp_path, "A", "A-1")
    _picture(1, (400, 300)).save(folder / "IMG_1.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # twice that is under its 120,000 pixels
    assert _survey(tmp_path) == ([("A-1", 1)], [])


def test_an_optional_field_given_as_null_says_to_leave_it_out(tmp_path: Path) -> None:
    # A spreadsheet export or JSON.stringify writes an empty brand as null: "brand: Input should be a
    # valid string" did not say that the field may simply be left out.
    folder = _sku(tmp_path, "A", "A-1")
    _picture(1).save(folder / "IMG_1.png")
    (folder / "metadata.json").write_text(
        json.dumps({"sku_id": "A-1", "name": "Oat drink", "category": "carton", "brand": None})
    )
    with pytest.raises(ingest.IngestError) as refused:
        _survey(tmp_path)
    assert (
        f"{folder / 'metadata.json'}: brand: null; leave it out (it is optional) or give it as text"
        in str(refused.value)
    ), refused.value


def test_a_link_in_a_batch_back_to_the_batch_is_named_a_loop(tmp_path: Path) -> None:
    # It was told to "ingest it on its own (skuforge ingest .../loop)": the same batch again.
    _picture(1).save(_sku(tmp_path, "A", "A-1") / "IMG_1.png")
    (tmp_path / "loop").symlink_to(tmp_path)
    with pytest.raises(ingest.IngestError) as refused:
        _survey(tmp_path)
    assert str(refused.value).endswith(
        f"{tmp_path / 'loop'}: a link back to {tmp_path}, a folder it is in, so the batch would be "
        "read inside itself; remove the link"
    ), refused.value


def test_an_animation_or_a_multi_page_photo_is_named_with_its_frame_count(tmp_path: Path) -> None:
    # Only the first frame or page is ingested: the others were dropped without a word. A phone's
    # multi-picture JPEG (MPO: the photo and its preview) is one photo and says nothing.
    folder = _sku(tmp_path, "A", "A-1")
    _picture(1).save(folder / "spin.png", save_all=True, append_images=[_picture(2), _picture(3)])
    _picture(4).save(folder / "scan.tiff", save_all=True, append_images=[_picture(5)])
    _picture(7).save(folder / "spin.webp", save_all=True, append_images=[_picture(8)], lossless=True)
    _picture(6).save(
        folder / "phone.jpg", "MPO", save_all=True, append_images=[_picture(6).resize((160, 120))]
    )
    assert Image.open(folder / "phone.jpg").format == "MPO"
    surveyed, warnings = _survey(tmp_path)
    assert surveyed == [("A-1", 4)], "a warning, not a refusal"
    assert warnings == [
        f"SKU A-1: {folder / name} holds {frames} frames (an animation or a multi-page file); only the "
        "first is ingested (save each one meant as a photo of its own)"
        for name, frames in (("scan.tiff", 2), ("spin.png", 3), ("spin.webp", 2))
    ], warnings


def test_a_tiff_with_a_thumbnail_page_is_one_photo(tmp_path: Path) -> None:
    # Scanners and cameras put a reduced-size preview after the photo (NewSubfileType 1): it was
    # counted as a second page, and the photo named as a multi-page file with a page dropped.
    folder = _sku(tmp_path, "A", "A-1")
    with open(folder / "scan.tiff", "w+b") as file, TiffImagePlugin.AppendingTiffWriter(file) as pages:
        for page, new_subfile_type in ((_picture(4), 0), (_picture(4, (80, 60)), 1)):
            page.save(pages, "TIFF", tiffinfo={254: new_subfile_type})
            pages.newFrame()
    assert Image.open(folder / "scan.tiff").n_frames == 2
    assert _survey(tmp_path) == ([("A-1", 1)], [])


def test_a_tiff_with_a_transparency_mask_page_is_one_photo(tmp_path: Path) -> None:
    # A TIFF may carry the photo's cut-out as a 1-bit page after it (NewSubfileType 4, a transparency
    # mask for another page): it was counted as a second page, like the preview above.
    folder = _sku(tmp_path, "A", "A-1")
    mask = Image.new("1", (320, 240))
    mask.paste(1, (40, 30, 280, 210))
    with open(folder / "cutout.tiff", "w+b") as file, TiffImagePlugin.AppendingTiffWriter(file) as pages:
        for page, new_subfile_type in ((_picture(4), 0), (mask, 4)):
            page.save(pages, "TIFF", tiffinfo={254: new_subfile_type})
            pages.newFrame()
    assert Image.open(folder / "cutout.tiff").n_frames == 2
    assert _survey(tmp_path) == ([("A-1", 1)], [])


def test_a_big_png_is_hashed_for_copies_without_being_decoded_again(tmp_path: Path) -> None:
    # A PNG has no reduced decode: the copy check decoded it whole a second time, and measured its
    # plain border on that, 8-byte floats a pixel, while the first decode was still held.
    folder = _sku(tmp_path, "A", "A-1")
    side = 2000
    shot = Image.new("RGB", (side, side), "white")  # a product on white: its border is measured
    shot.paste(_picture(1, (side // 2, side // 2)), (side // 4, side // 4))
    shot.save(folder / "IMG_1.png")
    peak = peak_traced_bytes(lambda: _survey(tmp_path))
    assert peak < side * side, f"{peak} bytes at once, more than the photo as 8-bit grey"


def test_a_tiff_of_more_pages_than_are_walked_is_refused_with_the_folder_s_other_problems(
    tmp_path: Path,
) -> None:
    # Counting its pages for the warning above walked every page, slower with each (30,000 did not end in
    # 300 s); now the count stops at MAX_TIFF_PAGES and the photo is refused like any other.
    folder = _sku(tmp_path, "A", "A-1")
    tiny = Image.new("L", (1, 1))
    with open(folder / "scan.tiff", "w+b") as file, TiffImagePlugin.AppendingTiffWriter(file) as pages:
        for page, new_subfile_type in ((_picture(4), 0), *[(tiny, 1)] * MAX_TIFF_PAGES):
            page.save(pages, "TIFF", tiffinfo={254: new_subfile_type})
            pages.newFrame()
    with pytest.raises(ingest.IngestError, match=r"scan.tiff: refused \(too_many_pages: TIFF has more than"):
        _survey(tmp_path)
