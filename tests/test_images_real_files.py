"""Photos as phones and desktops really write them: colour profiles, 48 MP JPEGs, HEIC named .jpg,
transparent cut-outs, 16-bit grey, sideways phone JPEGs beside their masks, macOS ``._`` files.

Each test builds its files here with PIL and numpy (ICC profiles included), nothing is downloaded.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageDraw, ImageFile

from shared.config import ConfigError
from shared.errors import ImageRejected
from shared.evaluation.leakage import LeakageError, check_no_near_duplicates, heldout_hash, perceptual_hash
from shared.images import decode_image, decode_mask, photo_as_stored, to_rgb
from shared.matting.session import MattingResult, u2net_preprocess

# --- helpers ---------------------------------------------------------------------------------


def save(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def rejected(data: bytes, **kwargs: Any) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, **kwargs)
    return info.value


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _tag_table(tags: list[tuple[bytes, bytes]]) -> tuple[bytes, int]:
    """An ICC tag table and its tags' data (each padded to 4 bytes); and the profile's size."""
    offset = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    return table + body, 128 + len(table) + len(body)


def icc_profile(
    device_class: bytes, colour_space: bytes, pcs: bytes, tags: list[tuple[bytes, bytes]]
) -> bytes:
    """A version 2 ICC profile with these tags; ``desc``, ``cprt`` and ``wtpt`` are added."""
    ascii_name = b"skuforge test profile\0"
    description = b"desc" + b"\0" * 4 + struct.pack(">I", len(ascii_name)) + ascii_name + b"\0" * 79
    white = b"XYZ " + b"\0" * 4 + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    tags = [(b"desc", description), (b"cprt", b"text\0\0\0\0none\0"), (b"wtpt", white), *tags]
    body, size = _tag_table(tags)
    header = (
        struct.pack(">I", size)
        + b"none"
        + struct.pack(">I", 0x02100000)
        + device_class
        + colour_space
        + pcs
        + b"\0" * 12
        + b"acsp"
        + b"\0" * 28  # platform, flags, device maker and model, attributes, rendering intent
        + white[8:]
        + b"\0" * 48
    )
    assert len(header) == 128
    return header + body


def matrix_profile(
    red: tuple[float, ...], green: tuple[float, ...], blue: tuple[float, ...], gamma: float
) -> bytes:
    """An RGB display profile: primaries (D50 XYZ) and one gamma, as Display P3 and Adobe RGB are."""
    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256))
    tags = [
        (name, b"XYZ " + b"\0" * 4 + b"".join(_s15(c) for c in xyz))
        for name, xyz in zip((b"rXYZ", b"gXYZ", b"bXYZ"), (red, green, blue), strict=True)
    ]
    return icc_profile(
        b"mntr", b"RGB ", b"XYZ ", [*tags, (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    )


# The primaries of Display P3 (an iPhone's default) and Adobe RGB, adapted to D50 as ICC wants them.
DISPLAY_P3 = matrix_profile(
    (0.5151, 0.2412, -0.0011), (0.2919, 0.6922, 0.0419), (0.1571, 0.0666, 0.7841), 2.2
)
ADOBE_RGB = matrix_profile((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446), 2.2)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def srgb_to(profile: bytes, pixels: np.ndarray) -> np.ndarray:
    """``pixels`` (sRGB) as the numbers a camera writes for them in ``profile``'s colour space."""
    source = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    target = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    converted = ImageCms.profileToProfile(Image.fromarray(pixels), source, target, outputMode="RGB")
    assert converted is not None
    return np.asarray(converted)


PATCHES = np.array(
    [
        [[220, 40, 30], [30, 120, 40], [40, 60, 200], [250, 140, 20]],
        [[128, 128, 128], [255, 255, 255], [0, 0, 0], [200, 180, 90]],
    ],
    dtype=np.uint8,
)


def patches(scale: int = 16) -> np.ndarray:
    """Eight flat colour patches, each ``scale`` pixels square (flat, so JPEG keeps their colour)."""
    return np.kron(PATCHES, np.ones((scale, scale, 1), dtype=np.uint8))


def patch_means(image: Image.Image, scale: int = 16) -> np.ndarray:
    """Each patch's mean colour, away from its edges."""
    pixels = np.asarray(image, dtype=np.float64)
    inner = slice(scale // 4, scale - scale // 4)
    return np.array(
        [
            [
                pixels[row * scale : (row + 1) * scale, col * scale : (col + 1) * scale][inner, inner].mean(
                    axis=(0, 1)
                )
                for col in range(4)
            ]
            for row in range(2)
        ]
    )


# --- 1. embedded colour profiles -------------------------------------------------------------


@pytest.mark.parametrize("profile", [DISPLAY_P3, ADOBE_RGB], ids=["display-p3", "adobe-rgb"])
def test_a_wide_gamut_photo_is_converted_to_srgb_by_its_profile(profile: bytes) -> None:
    # Before, the profile was ignored (and then dropped by the PNG): the red patch came out as the
    # camera's numbers, tens of levels off; a JPEG from an iPhone or an Adobe RGB camera looked dull.
    camera = srgb_to(profile, patches())
    assert np.abs(camera.astype(int) - patches()).max() > 30  # the numbers really differ
    for data in (
        save(Image.fromarray(camera), "JPEG", quality=95, icc_profile=profile),
        save(Image.fromarray(camera), "PNG", icc_profile=profile),
    ):
        image = decode_image(data)
        assert image.mode == "RGB"
        assert np.abs(patch_means(image) - PATCHES).max() <= 3


def test_an_srgb_profile_leaves_the_pixels_alone() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(
        np.asarray(decode_image(save(Image.fromarray(pixels), "PNG", icc_profile=SRGB))), pixels
    )


def test_a_profile_that_cannot_be_applied_keeps_the_pixels() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    grey_profile = icc_profile(
        b"mntr", b"GRAY", b"XYZ ", [(b"kTRC", b"curv" + b"\0" * 4 + struct.pack(">IH", 1, 563))]
    )
    for profile in (b"not an ICC profile at all", SRGB[:100], grey_profile):  # junk, truncated, not RGB
        image = decode_image(save(Image.fromarray(pixels), "PNG", icc_profile=profile))
        assert np.array_equal(np.asarray(image), pixels)


def test_transparent_pixels_of_a_profiled_cutout_still_go_over_white() -> None:
    camera = srgb_to(DISPLAY_P3, patches())
    rgba = np.dstack([camera, np.full(camera.shape[:2], 255, np.uint8)])
    rgba[:16, :16, 3] = 0  # the red patch transparent
    image = decode_image(save(Image.fromarray(rgba, "RGBA"), "PNG", icc_profile=DISPLAY_P3))
    means = patch_means(image)
    assert np.abs(means[0, 0] - 255).max() <= 1
    assert np.abs(means[0, 1:] - PATCHES[0, 1:]).max() <= 3


def grey_profile(gamma: float) -> bytes:
    """A greyscale display profile: one gamma curve (kTRC), as Gray Gamma 2.2 and scanners' are."""
    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256))
    return icc_profile(b"mntr", b"GRAY", b"XYZ ", [(b"kTRC", curve)])


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_grey_with_alpha_and_16_bit_grey_are_converted_by_their_grey_profile_as_8_bit_grey_is(
    fmt: str,
) -> None:
    # Before, only an 8-bit grey (L) photo went through its grey profile: the same photo saved with
    # an alpha channel (LA) or at 16 bits (I;16) kept its raw numbers, up to 73 levels darker here.
    linear = grey_profile(1.0)
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))
    as_grey = np.asarray(decode_image(save(Image.fromarray(ramp, "L"), fmt, icc_profile=linear)))
    assert np.abs(as_grey[..., 0].astype(int) - ramp).max() > 60  # the profile really moves them

    alpha = np.full(ramp.shape, 255, np.uint8)
    alpha[:4] = 0  # the top rows transparent
    with_alpha = decode_image(save(Image.fromarray(np.dstack([ramp, alpha]), "LA"), fmt, icc_profile=linear))
    pixels = np.asarray(with_alpha)
    assert np.array_equal(pixels[4:], as_grey[4:])
    assert (pixels[:4] == 255).all()  # transparent still goes over white

    sixteen = Image.fromarray(ramp.astype(np.uint16) * 257)
    assert sixteen.mode == "I;16"
    deep = np.asarray(decode_image(save(sixteen, fmt, icc_profile=linear)))
    assert np.abs(deep.astype(int) - as_grey).max() <= 1


def cmyk_profile(cyan_as_srgb: tuple[int, int, int]) -> bytes:
    """A CMYK press profile (lut8 A2B0 to Lab) that prints full cyan as ``cyan_as_srgb``, not as
    (0, 255, 255): what a real press profile does, and Pillow's own CMYK conversion cannot know."""
    to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    corners = []
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    naive = tuple(round(255 * (1 - ink) * (1 - k)) for ink in (c, m, y))
                    corners.append(cyan_as_srgb if (c, m, y, k) == (1, 0, 0, 0) else naive)
    lab = ImageCms.applyTransform(Image.fromarray(np.array([corners], dtype=np.uint8)), to_lab)
    assert lab is not None
    # Pillow's LAB holds a and b as signed bytes; the profile's 8-bit Lab, offset by 128.
    clut = np.asarray(lab, dtype=np.uint8).reshape(-1, 3).copy()
    clut[:, 1:] = (clut[:, 1:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    identity = bytes(range(256))
    lut = (
        b"mft1"
        + b"\0" * 4
        + bytes([4, 3, 2, 0])
        + b"".join(_s15(value) for value in (1, 0, 0, 0, 1, 0, 0, 0, 1))
        + identity * 4
        + clut.tobytes()
        + identity * 3
    )
    return icc_profile(b"prtr", b"CMYK", b"Lab ", [(b"A2B0", lut)])


def test_a_cmyk_jpeg_is_converted_through_its_profile() -> None:
    cyan = Image.new("CMYK", (32, 32), (255, 0, 0, 0))
    plain = np.asarray(decode_image(save(cyan, "JPEG", quality=95)), dtype=int).reshape(-1, 3).mean(axis=0)
    assert plain[0] < 15 and plain[1] > 240 and plain[2] > 240  # Pillow's own conversion: (0, 255, 255)
    profiled = save(cyan, "JPEG", quality=95, icc_profile=cmyk_profile((0, 160, 225)))
    colour = np.asarray(decode_image(profiled), dtype=int).reshape(-1, 3).mean(axis=0)
    assert np.abs(colour - (0, 160, 225)).max() <= 10, colour  # 8-bit Lab in the profile: a few levels


# --- 2. large phone photos -------------------------------------------------------------------


def product_photo(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.ellipse([width * 0.3, height * 0.2, width * 0.7, height * 0.8], fill=(220, 40, 30))
    return image


def test_a_jpeg_over_the_limit_is_decoded_scaled_down_to_fit() -> None:
    # Before: refused, "too_many_pixels ... limit". A 48 MP phone photo against the 40 MP default is
    # the same arithmetic as 800x600 against 200,000 pixels (1/2 would be 120,000).
    data = save(product_photo(800, 600), "JPEG", quality=90)
    image = decode_image(data, max_pixels=200_000)
    assert image.size == (400, 300)
    assert np.abs(np.asarray(image, dtype=int)[150, 200] - (220, 40, 30)).max() <= 8
    assert decode_image(data, max_pixels=40_000).size == (200, 150)  # 1/4
    assert decode_image(data, max_pixels=8_000).size == (100, 75)  # 1/8
    assert decode_image(data).size == (800, 600)  # within the limit: full size, as before
    # EXIF orientation is applied to the scaled-down photo as to a full one.
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = save(product_photo(800, 600), "JPEG", quality=90, exif=exif.tobytes())
    assert decode_image(turned, max_pixels=200_000).size == (300, 400)
    # What ingest stores is that smaller photo.
    stored, png = photo_as_stored(data, max_pixels=200_000)
    assert stored.size == Image.open(io.BytesIO(png)).size == (400, 300)


def test_too_many_pixels_names_the_setting_and_why_it_was_not_scaled() -> None:
    png = save(product_photo(800, 600), "PNG")
    refusal = rejected(png, max_pixels=200_000)
    assert refusal.reason == "too_many_pixels"
    assert "SKUFORGE_MAX_IMAGE_PIXELS" in str(refusal) and "200000" in str(refusal)
    assert "not JPEG" in str(refusal)
    # Even 1/8 of 800x600 (7,500 pixels) is more than 5,000.
    tiny_limit = rejected(save(product_photo(800, 600), "JPEG"), max_pixels=5_000)
    assert tiny_limit.reason == "too_many_pixels" and "1/8" in str(tiny_limit)
    # A progressive JPEG is not scaled: libjpeg holds the whole frame's coefficients whatever the scale.
    progressive = rejected(save(product_photo(800, 600), "JPEG", progressive=True), max_pixels=200_000)
    assert progressive.reason == "too_many_pixels" and "progressive" in str(progressive)
    # A mask is never scaled: it would no longer line up with its image.
    with pytest.raises(ImageRejected, match="SKUFORGE_MAX_IMAGE_PIXELS"):
        decode_mask(png, max_pixels=200_000)


def test_pillows_own_limit_is_named_as_pillows(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before, a limit of 10**9 refused a 12,000 px PNG as "limit 89478485": Pillow's, unnamed.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    png = save(product_photo(400, 300), "PNG")
    with pytest.warns(Image.DecompressionBombWarning):
        refusal = rejected(png, max_pixels=10**9)
    assert "Pillow" in str(refusal) and "MAX_IMAGE_PIXELS" in str(refusal) and "100000" in str(refusal)
    # Past twice Pillow's limit Pillow refuses at open; that is said too.
    refusal = rejected(save(product_photo(500, 500), "PNG"), max_pixels=10**9)
    assert refusal.reason == "too_many_pixels" and "Pillow's own decompression-bomb limit" in str(refusal)
    # A JPEG between the two is decoded scaled down under Pillow's limit.
    with pytest.warns(Image.DecompressionBombWarning):
        assert decode_image(save(product_photo(400, 300), "JPEG"), max_pixels=10**9).size == (200, 150)


def jpeg_claiming(width: int, height: int, *, progressive: bool = False) -> bytes:
    """A 64x48 JPEG whose frame header claims ``width`` x ``height``: a few KB that, decoded at the size
    it claims, would allocate ``3 * width * height`` bytes."""
    data = bytearray(save(product_photo(64, 48), "JPEG", progressive=progressive))
    marker = b"\xff\xc2" if progressive else b"\xff\xc0"
    frame = data.index(marker)
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def flat_jpeg(width: int, height: int) -> bytes:
    """A whole baseline JPEG of ``width`` x ``height`` mid grey, written without encoding its pixels:
    with the standard Huffman tables and 4:2:0, each 16x16 block (four Y, one Cb, one Cr: a DC change
    of 0 and end-of-block each) is the same 4 bytes."""
    small = save(Image.new("RGB", (16, 16), (128, 128, 128)), "JPEG", subsampling=2)
    frame = small.index(b"\xff\xc0")
    scan = small.index(b"\xff\xda")
    header = (
        small[:frame] + small[frame : frame + 5] + struct.pack(">HH", height, width) + small[frame + 9 : scan]
    )
    (length,) = struct.unpack(">H", small[scan + 2 : scan + 4])
    blocks = -(-width // 16) * -(-height // 16)
    return header + small[scan : scan + 2 + length] + b"\x28\xa2\x8a\x00" * blocks + b"\xff\xd9"


@pytest.fixture
def loaded_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of each image Pillow decodes the pixels of (``ImageFile.load``) during the test, in order."""
    loaded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def recording_load(self: ImageFile.ImageFile) -> Any:
        loaded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    return loaded


def test_a_jpeg_past_pillows_own_bomb_limit_is_decoded_scaled_down(
    loaded_sizes: list[tuple[int, int]],
) -> None:
    """A 200 MP phone photo (16320x12240) is past twice PIL.Image.MAX_IMAGE_PIXELS, where Image.open
    itself raises: it was refused as ``too_many_pixels`` before the scaled decode, at 1/4 well within
    the limit, could be asked for. Still only ever decoded within the limit."""
    assert Image.MAX_IMAGE_PIXELS is not None and 2 * Image.MAX_IMAGE_PIXELS < 16320 * 12240
    photo = flat_jpeg(16320, 12240)
    assert decode_image(photo).size == (4080, 3060)  # 1/2 is 50 MP, over the 40 MP default
    assert loaded_sizes and all(width * height <= 40_000_000 for width, height in loaded_sizes)
    # A progressive one is still refused from its header, and says why; a mask is never scaled.
    progressive = rejected(jpeg_claiming(16320, 12240, progressive=True))
    assert progressive.reason == "too_many_pixels" and "progressive" in str(progressive)
    with pytest.raises(ImageRejected) as mask:
        decode_mask(photo, allowed_formats=("JPEG",))
    assert mask.value.reason == "too_many_pixels"
    assert "Pillow's own decompression-bomb limit" in str(mask.value)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB but whose pixel data is one tiny row."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(16)))
        + chunk(b"IEND", b"")
    )


def test_an_icon_past_pillows_own_bomb_limit_at_load_is_refused_in_the_words_of_one_past_it_at_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ICNS file (a macOS icon, for a caller that allows the format) says its picture is 256x256
    and holds a PNG of any size, which Pillow checks against its decompression-bomb limit only when
    it loads the pixels. That refusal gave Pillow's words alone, not that the limit is Pillow's and
    that SKUFORGE_MAX_IMAGE_PIXELS cannot raise it, as the refusal of a file past it at open does."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    picture = png_claiming(500, 500)
    icon = b"ic08" + struct.pack(">I", 8 + len(picture)) + picture
    refusal = rejected(b"icns" + struct.pack(">I", 8 + len(icon)) + icon, allowed_formats=("ICNS",))
    at_open = rejected(picture, max_pixels=10**9)
    assert refusal.reason == at_open.reason == "too_many_pixels"
    assert str(refusal) == str(at_open)


def test_a_tiny_jpeg_claiming_a_huge_size_is_never_allocated_at_that_size(
    loaded_sizes: list[tuple[int, int]],
) -> None:
    # The decompression-bomb protection stays real with scaling: the decoder is only ever asked for an
    # image within the limit, and a file without the pixels it claims is refused.
    bomb = jpeg_claiming(8064, 6048)  # 48 MP claimed
    assert len(bomb) < 10_000
    assert rejected(bomb[:-2], max_pixels=1_000_000).reason == "truncated"  # no end-of-image marker
    # With its end-of-image marker libjpeg fills in what is missing (a grey picture): refused all the
    # same, having decoded within the limit.
    assert rejected(bomb, max_pixels=1_000_000).reason == "truncated"
    assert decode_image(flat_jpeg(8064, 6048), max_pixels=1_000_000).size == (1008, 756)
    assert loaded_sizes and all(width * height <= 1_000_000 for width, height in loaded_sizes)
    # A progressive one (whose coefficients libjpeg would hold at the full size) and a PNG are refused
    # from their headers, before anything is decoded.
    loaded_sizes.clear()
    assert (
        rejected(jpeg_claiming(8064, 6048, progressive=True), max_pixels=1_000_000).reason
        == "too_many_pixels"
    )
    assert rejected(png_claiming(8064, 6048), max_pixels=1_000_000).reason == "too_many_pixels"
    assert loaded_sizes == []


# --- 3. HEIC named .jpg ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "ftyp",
    [
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",  # an iPhone's
        b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heix",  # major brand mif1, HEIC compatible
        b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf",
    ],
)
def test_heic_heif_and_avif_are_named_with_what_to_do(ftyp: bytes) -> None:
    # Before: "not_an_image: bytes are not in any known image format" for an iPhone photo named .jpg.
    refusal = rejected(ftyp + bytes(2000))
    assert refusal.reason == "format_not_allowed"
    assert "HEIC/HEIF (or AVIF) is not supported: export the photo as JPEG or PNG" in str(refusal)


def test_a_heic_mask_is_told_to_be_exported_as_png() -> None:
    # An edited mask uploaded from an iPhone is HEIC. It was told "export the photo as JPEG or PNG":
    # a mask is no photo, and a JPEG mask is refused in turn (format_not_allowed).
    with pytest.raises(ImageRejected) as refused:
        decode_mask(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(2000))
    assert refused.value.reason == "format_not_allowed"
    assert refused.value.detail == "HEIC/HEIF (or AVIF) is not supported: export the mask as PNG"


def test_other_iso_bmff_files_stay_not_an_image() -> None:
    assert (
        rejected(b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00isommp41" + bytes(2000)).reason == "not_an_image"
    )


# --- 4. a transparent held-out cut-out and its copy in the store -----------------------------


def textured_cutout(side_px: int = 600) -> Image.Image:
    """A textured product on transparent pixels whose hidden colour is black (what cut-out tools write)."""
    rng = np.random.default_rng(7)
    texture = np.kron(
        rng.integers(0, 256, (side_px // 20, side_px // 20, 3), dtype=np.uint8),
        np.ones((20, 20, 1), np.uint8),
    )
    alpha = Image.new("L", (side_px, side_px), 0)
    ImageDraw.Draw(alpha).ellipse([side_px * 0.25, side_px * 0.15, side_px * 0.75, side_px * 0.85], fill=255)
    rgba = np.dstack([texture, np.asarray(alpha)])
    rgba[rgba[..., 3] == 0, :3] = 0
    return Image.fromarray(rgba, "RGBA")


def test_a_transparent_heldout_cutout_is_found_in_the_store() -> None:
    # Before, the held-out hash dropped alpha (the product on black) while ingest stores the product
    # on white: the copy in the store was not matched.
    heldout = textured_cutout()
    resized = heldout.resize((400, 400), Image.Resampling.LANCZOS)
    _, stored = photo_as_stored(save(resized, "PNG"))
    stored_hash = perceptual_hash(stored)
    held_hash = heldout_hash(save(heldout, "PNG"))
    assert stored_hash is not None and held_hash is not None
    with pytest.raises(LeakageError, match=r"store stored\.png looks like a copy of held-out cutout\.png"):
        check_no_near_duplicates([("cutout.png", held_hash)], store=[("stored.png", stored_hash)])


def test_a_palette_cutout_with_a_transparent_index_is_found_in_the_store() -> None:
    heldout = textured_cutout().convert("RGB").quantize(64)
    hidden = np.asarray(heldout)[0, 0]
    held_png = save(heldout, "PNG", transparency=int(hidden))
    _, stored = photo_as_stored(
        save(Image.open(io.BytesIO(held_png)).convert("RGBA").resize((400, 400)), "PNG")
    )
    held_hash, stored_hash = heldout_hash(held_png), perceptual_hash(stored)
    assert held_hash is not None and stored_hash is not None
    with pytest.raises(LeakageError):
        check_no_near_duplicates([("cutout.png", held_hash)], store=[("stored.png", stored_hash)])


@pytest.mark.parametrize("profile", [DISPLAY_P3, ADOBE_RGB], ids=["display-p3", "adobe-rgb"])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_profiled_heldout_photo_hashes_as_its_stored_copy(profile: bytes, fmt: str) -> None:
    # Before, the held-out hash ignored the profile that ingest applies: 5-10 bits from the stored
    # copy here, up to 27 on the iconic photos, against a near-copy threshold of 12. A JPEG is hashed
    # from its reduced decode, the copy from its whole pixels reduced: a bit or two of rounding.
    rng = np.random.default_rng(7)
    texture = np.kron(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8), np.ones((20, 20, 1), np.uint8))
    photo = save(Image.fromarray(texture), fmt, icc_profile=profile)
    _, stored = photo_as_stored(photo)
    held, copy = perceptual_hash(photo), perceptual_hash(stored)
    assert held is not None and copy is not None
    assert np.unpackbits(np.frombuffer(held, np.uint8) ^ np.frombuffer(copy, np.uint8)).sum() <= 2


def test_a_dark_16_bit_grey_heldout_photo_hashes_as_its_stored_copy() -> None:
    # Before, the held-out hash stretched 16-bit grey over its own maximum, where ingest scales it over
    # 0..65535: a dark scan (values up to 4000) read 23 bits from its stored copy.
    rng = np.random.default_rng(7)
    grey = np.kron(rng.integers(0, 4000, (30, 30)), np.ones((20, 20))).astype(np.uint16)
    photo = save(Image.fromarray(grey), "PNG")
    _, stored = photo_as_stored(photo)
    held, copy = perceptual_hash(photo), perceptual_hash(stored)
    assert held is not None and held == copy


# --- 5. matting takes any mode ---------------------------------------------------------------


def test_matting_preprocess_converts_16_bit_grey_and_alpha_as_decoding_does() -> None:
    # Before, convert("RGB") turned 16-bit grey white (values clipped at 255) and dropped alpha.
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 65535 // (64 * 64 - 1)).astype(np.uint16)
    grey16 = Image.fromarray(ramp)
    assert grey16.mode == "I;16"
    expected = decode_image(save(grey16, "PNG"))
    assert np.array_equal(u2net_preprocess([grey16], 64), u2net_preprocess([expected], 64))
    assert np.array_equal(np.asarray(to_rgb(grey16)), np.asarray(expected))

    cutout = textured_cutout(200)
    over_white = decode_image(save(cutout, "PNG"))
    assert np.array_equal(u2net_preprocess([cutout], 64), u2net_preprocess([over_white], 64))
    # The cut-out the result draws shows the same pixels as the decoded photo.
    mask = np.full((200, 200), 255, np.uint8)
    result = MattingResult(np.ones((200, 200), np.float32), mask, 1.0, 1.0)
    assert np.array_equal(np.asarray(result.cutout(cutout))[..., :3], np.asarray(over_white))
    assert np.asarray(result.cutout(grey16.resize((200, 200))))[..., :3].min() < 100


# --- 6. matting train --extra pairs ----------------------------------------------------------


def extra_folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    return root


def test_load_pairs_applies_exif_orientation_and_skips_macos_files(tmp_path: Path) -> None:
    from shared.arith.masks import mask_iou
    from shared.matting.train import load_pairs

    folder = extra_folder(tmp_path / "extra")
    # A phone photo stored landscape with EXIF orientation 6; its mask is drawn on it upright.
    upright = Image.new("RGB", (60, 80), (255, 255, 255))
    ImageDraw.Draw(upright).rectangle((0, 0, 59, 29), fill=(200, 30, 30))  # product across the top
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the sensor wrote: 80x60
    exif = Image.Exif()
    exif[0x0112] = 6
    (folder / "images" / "phone.jpg").write_bytes(save(stored, "JPEG", quality=95, exif=exif.tobytes()))
    mask = np.zeros((80, 60), np.uint8)
    mask[:30] = 255
    (folder / "masks" / "phone.png").write_bytes(save(Image.fromarray(mask), "PNG"))
    # What macOS leaves beside photos on a USB stick or in a zip.
    (folder / "images" / "._phone.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(100))
    (folder / "images" / "__MACOSX").mkdir()
    (folder / "images" / "__MACOSX" / "._phone.jpg").write_bytes(b"\x00\x05\x16\x07")

    images, masks = load_pairs(folder, 64)
    assert len(images) == 1
    # The photo's red top lines up with the mask's product: before, IoU 0.0 (a sideways photo).
    red = np.asarray(images[0], dtype=int)
    photo_product = np.where((red[..., 0] > 150) & (red[..., 1] < 100), np.uint8(255), np.uint8(0))
    assert mask_iou(photo_product, masks[0]) > 0.9


def test_load_pairs_reads_a_0_1_label_mask_by_its_labels(tmp_path: Path) -> None:
    from shared.matting.train import load_pairs

    folder = extra_folder(tmp_path / "extra")
    photo = np.full((64, 64, 3), 255, np.uint8)
    photo[16:48, 16:48] = (200, 30, 30)
    (folder / "images" / "tin.png").write_bytes(save(Image.fromarray(photo), "PNG"))
    labels = np.zeros((64, 64), np.uint8)
    labels[16:48, 16:48] = 1  # a segmentation dataset's class mask: 1 is the product
    (folder / "masks" / "tin.png").write_bytes(save(Image.fromarray(labels), "PNG"))

    _, masks = load_pairs(folder, 32)
    # Before, read by brightness, the mask was empty and the model was taught there was no product.
    assert int(np.count_nonzero(masks[0])) == 16 * 16


def test_load_pairs_refuses_an_empty_mask_and_a_colour_picture_as_mask(tmp_path: Path) -> None:
    # Both were taken silently: an all-background mask taught the model there was no product in the
    # photo, and a colour picture (the photo itself, saved as its mask) was read by its brightness.
    from shared.matting.train import load_pairs

    folder = extra_folder(tmp_path / "extra")
    photo = save(product_photo(40, 30), "PNG")
    drawn = np.zeros((30, 40), np.uint8)
    drawn[8:22, 10:30] = 255
    masks = {
        "good": Image.fromarray(drawn),
        "grey-rgb": Image.fromarray(drawn).convert("RGB"),  # a grey mask saved as RGB is still a mask
        "empty": Image.new("L", (40, 30)),
        "colour": product_photo(40, 30),
    }
    for name, mask in masks.items():
        (folder / "images" / f"{name}.png").write_bytes(photo)
        (folder / "masks" / f"{name}.png").write_bytes(save(mask, "PNG"))

    with pytest.raises(ConfigError) as info:
        load_pairs(folder, 32)
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == 2
    assert lines[0].startswith(str(folder / "masks" / "colour.png")) and "colour" in lines[0]
    assert lines[1].startswith(str(folder / "masks" / "empty.png")) and "no product" in lines[1]

    for name in ("colour", "empty"):
        (folder / "masks" / f"{name}.png").unlink()
        (folder / "images" / f"{name}.png").unlink()
    images, _ = load_pairs(folder, 32)
    assert len(images) == 2


def test_load_pairs_names_a_refused_file_before_the_synthetic_set_is_rendered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shared.matting.train as matting_train
    from skuforge_cli.main import main as cli_main

    folder = extra_folder(tmp_path / "extra")
    (folder / "images" / "good.png").write_bytes(save(product_photo(40, 30), "PNG"))
    (folder / "masks" / "good.png").write_bytes(save(Image.new("L", (30, 40)), "PNG"))  # the wrong size
    (folder / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (folder / "masks" / "broken.png").write_bytes(save(Image.new("L", (40, 30)), "PNG"))

    with pytest.raises(ConfigError) as info:
        matting_train.load_pairs(folder, 64)
    message = str(info.value)
    assert str(folder / "images" / "broken.jpg") in message and "refused" in message
    assert str(folder / "masks" / "good.png") in message and "30x40" in message and "40x30" in message

    def no_rendering(*args: object, **kwargs: object) -> None:
        raise AssertionError("the synthetic set was rendered before the pairs were checked")

    monkeypatch.setattr(matting_train, "render_training_set", no_rendering)
    out = tmp_path / "model.onnx"
    code = cli_main(
        [
            "matting",
            "train",
            "--extra",
            str(folder),
            "--steps",
            "1",
            "--batch",
            "2",
            "--train-images",
            "2",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "broken.jpg" in err and "Traceback" not in err


def test_evaluate_caches_the_stored_form_per_pixel_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large JPEG is stored reduced under a low pixel limit and whole under a high one: the cached
    answer of one limit must not stand for the other (nor one of the decode before profiles and
    reduction, whose cache folder had another name)."""
    from services.trainstore.evaluation import as_ingested
    from shared.evaluation.experiment import Photo
    from shared.images import photo_as_stored
    from shared.store import sha256_hex

    rng = np.random.default_rng(5)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (400, 600, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    photo = Photo("p.jpg", "real", str(tmp_path / "p.jpg"), sha256_hex(data), lambda: data)
    cache = tmp_path / "cache"
    stale = cache / "as-ingested-sha256" / photo.sha256
    stale.parent.mkdir(parents=True)
    stale.write_text("0" * 64 + "\n")  # what an earlier version might have cached

    answers = {}
    for limit in (100_000, 1_000_000):
        monkeypatch.setenv("SKUFORGE_MAX_IMAGE_PIXELS", str(limit))
        ((_, answers[limit]),) = as_ingested([photo], cache)
        assert answers[limit] == sha256_hex(photo_as_stored(data, max_pixels=limit)[1])
    assert answers[100_000] != answers[1_000_000]


def test_load_pairs_reads_every_photo_suffix_ingest_takes_and_names_other_files(tmp_path: Path) -> None:
    """A .tif or .jfif pair was skipped without a word, and with it any file not an image."""
    from shared.matting.train import load_pairs

    folder = extra_folder(tmp_path / "extra")
    for name, kind in (("scan.tif", "TIFF"), ("phone.jfif", "JPEG")):
        (folder / "images" / name).write_bytes(save(product_photo(40, 30), kind))
        (folder / "masks" / f"{Path(name).stem}.png").write_bytes(save(Image.new("L", (40, 30), 255), "PNG"))
    assert len(load_pairs(folder, 64)[0]) == 2
    (folder / "images" / "notes.txt").write_text("masks drawn by hand")
    with pytest.raises(ConfigError, match=r"notes\.txt: not an image training reads"):
        load_pairs(folder, 64)


def test_load_pairs_names_a_heic_image_with_what_to_do(tmp_path: Path) -> None:
    """A .heic image was refused as "not an image training reads", without ingest's advice."""
    from shared.matting.train import load_pairs

    folder = extra_folder(tmp_path / "extra")
    (folder / "images" / "IMG_0001.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    with pytest.raises(ConfigError) as refused:
        load_pairs(folder, 64)
    heic = folder / "images" / "IMG_0001.heic"
    assert f"{heic}: HEIC/HEIF is not read here; export it as JPEG or PNG" in str(refused.value)
