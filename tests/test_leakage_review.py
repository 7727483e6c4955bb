"""The perceptual-hash leakage check on product shots: a narrow product on a plain studio background.

Such a photo's whole frame is mostly blank, so its frame has too few informative neighbour steps for a
hash. Before, it got none and ``skuforge evaluate`` passed a resized copy of it in the store without a
word; and where the frame did hash, it said more about the product's outline than about its label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from shared.evaluation.experiment import encode_jpeg
from shared.evaluation.leakage import (
    NEAR_DUPLICATE_MAX_BITS,
    LeakageError,
    check_no_near_duplicates,
    copy_hashes,
    heldout_hash,
    perceptual_hash,
)
from shared.images import encode_png
from shared.store import FileStore
from shared.trainstore.manifest import ManifestStore
from skuforge_cli.main import main as cli_main
from tests.support.evaluation import (  # noqa: F401 (one_torch_thread: autouse)
    evaluate_args,
    fill_colour_store,
    one_torch_thread,
    store_photo,
)
from tests.support.trainstore import PREFIX


@pytest.fixture
def colour_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ManifestStore:
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    return fill_colour_store(ManifestStore(FileStore(tmp_path / "store"), PREFIX))


@pytest.fixture
def heldout(tmp_path: Path) -> Path:
    """Two SKUs with held-out photos (the least ``evaluate`` takes), none of them a copy of anything."""
    root = tmp_path / "heldout"
    for sku_id, seed in (("SKU-RED", 11), ("SKU-GREEN", 12)):
        (root / sku_id).mkdir(parents=True)
        (root / sku_id / "label.jpg").write_bytes(encode_jpeg(packshot(seed, 0.6, 0.9, size_px=400)))
    return root


def packshot(
    seed: int, width_share: float, height_share: float, *, size_px: int = 1200, centre_x: float = 0.5
) -> Image.Image:
    """A product on plain white, as a studio shoots it: a box ``width_share`` of the frame wide and
    ``height_share`` tall, centred at ``centre_x``, with a printed label (blocks of colour, a dark band
    with a logo) that ``seed`` chooses."""
    rng = np.random.default_rng(seed)
    canvas = np.full((size_px, size_px, 3), 255, dtype=np.uint8)
    width, height = int(size_px * width_share), int(size_px * height_share)
    blocks = rng.integers(0, 255, (height // 20 + 1, width // 20 + 1, 3), dtype=np.uint8)
    label = np.asarray(Image.fromarray(blocks).resize((width, height), Image.Resampling.BICUBIC))
    label = label.copy()
    band = int(rng.integers(height // 4, height // 2))
    label[band : band + height // 8] = rng.integers(0, 60, 3, dtype=np.uint8)
    logo = int(rng.integers(width // 8, width // 2))
    label[band : band + height // 8, logo : logo + width // 4] = 250
    x0, y0 = int(size_px * centre_x) - width // 2, (size_px - height) // 2
    canvas[y0 : y0 + height, x0 : x0 + width] = label
    return Image.fromarray(canvas)


def bits_apart(held: bytes, other: bytes) -> int:
    """The fewest bits between ``other`` and any of the held-out photo's variants, as
    ``check_no_near_duplicates`` compares them."""
    variants = np.frombuffer(held, dtype=np.uint8).reshape(-1, 32)
    return int(np.unpackbits(variants ^ np.frombuffer(other, dtype=np.uint8), axis=1).sum(axis=1).min())


NARROW = [(0.3, 0.6), (0.2, 0.5), (0.3, 0.9), (0.15, 0.8)]


@pytest.mark.parametrize(("width_share", "height_share"), NARROW)
def test_a_copy_of_a_narrow_packshot_is_caught(width_share: float, height_share: float) -> None:
    # Before, a product 30% of the frame wide and 60% tall gave no hash at all (too few informative
    # steps in the whole frame), and its resized copy passed.
    original = packshot(7, width_share, height_share)
    held = heldout_hash(encode_jpeg(original))
    assert held is not None
    copies = {
        "resized.png": encode_png(original.resize((600, 600), Image.Resampling.BICUBIC)),
        "small.jpg": encode_jpeg(original.resize((300, 300), Image.Resampling.LANCZOS), quality=60),
        "mirrored.jpg": encode_jpeg(ImageOps.mirror(original).resize((500, 500))),
        "turned.jpg": encode_jpeg(original.rotate(90).resize((400, 400))),
        # Letterboxed for an upload form that wants 3:2: more white, the same product.
        "padded.jpg": encode_jpeg(ImageOps.pad(original.resize((400, 400)), (600, 400), color="white")),
    }
    for name, data in copies.items():
        value = perceptual_hash(data)
        assert value is not None, name
        with pytest.raises(LeakageError, match=rf"{name} looks like a copy of held-out packshot.jpg"):
            check_no_near_duplicates([("packshot.jpg", held)], training=[(name, value)])


def test_different_narrow_packshots_are_not_copies() -> None:
    # Different products shot the same way (the same outline, the same place, or not): only the labels
    # tell them apart, and they must. Before, the frame's hash was mostly the product's outline.
    shots = {
        "original": packshot(20, 0.3, 0.6),
        "same outline": packshot(21, 0.3, 0.6),
        "moved left": packshot(22, 0.3, 0.6, centre_x=0.35),
        "taller": packshot(23, 0.25, 0.7),
        "wider": packshot(24, 0.5, 0.8),
        "tall and narrow": packshot(25, 0.3, 0.9),
        "tall and narrow too": packshot(26, 0.3, 0.9),
    }
    held = {name: heldout_hash(encode_jpeg(shot)) for name, shot in shots.items()}
    stored = {name: perceptual_hash(encode_png(shot.resize((600, 600)))) for name, shot in shots.items()}
    assert all(value is not None for value in [*held.values(), *stored.values()])
    for name, value in held.items():
        assert value is not None
        others = [(other, hashed or b"") for other, hashed in stored.items() if other != name]
        check_no_near_duplicates([(name, value)], training=others)
        nearest = min(bits_apart(value, hashed) for _, hashed in others)
        assert nearest > 2 * NEAR_DUPLICATE_MAX_BITS, (name, nearest)  # well clear of a copy


def test_a_resized_copy_of_a_narrow_heldout_packshot_in_the_store_is_refused(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The reviewer's repro: a 1200 px packshot held out, and a 600 px copy of it ingested as a real
    # photo of the same SKU. Before, evaluate ran (exit 0) without a word.
    shot = packshot(7, 0.3, 0.6)
    (heldout / "SKU-RED" / "packshot.jpg").write_bytes(encode_jpeg(shot))
    store_photo(colour_store, "SKU-RED", "copy-of-heldout", "real", shot.resize((600, 600)))
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"copy-of-heldout.png looks like a copy of held-out {heldout / 'SKU-RED' / 'packshot.jpg'}" in err
    assert not (tmp_path / "eval").exists()


def test_a_different_narrow_packshot_of_the_same_sku_is_not_refused(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (heldout / "SKU-RED" / "packshot.jpg").write_bytes(encode_jpeg(packshot(7, 0.3, 0.6)))
    store_photo(colour_store, "SKU-RED", "another-shot", "real", packshot(8, 0.3, 0.6, size_px=600))
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 0, capsys.readouterr().err
    assert (tmp_path / "eval" / "evaluation.json").is_file()


def plain_product(grey: int, size_px: int) -> Image.Image:
    """A small plain box on white: nothing a perceptual hash can compare by, cropped or not."""
    canvas = Image.new("RGB", (size_px, size_px), "white")
    side = size_px // 10
    canvas.paste((grey, grey, grey), (size_px // 2 - side, size_px // 2 - side, size_px // 2, size_px // 2))
    return canvas


def test_a_heldout_photo_without_a_hash_is_named_with_the_store_images_it_could_be(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, such a photo was left out of the comparison in silence.
    (heldout / "SKU-RED" / "plain.jpg").write_bytes(encode_jpeg(plain_product(90, 800)))
    assert perceptual_hash((heldout / "SKU-RED" / "plain.jpg").read_bytes()) is None
    store_photo(colour_store, "SKU-RED", "small-plain", "real", plain_product(90, 300))
    store_photo(colour_store, "SKU-GREEN", "green-plain", "real", plain_product(60, 300))
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "perceptual hash" in line]
    assert len(notes) == 2, notes
    assert notes[0].startswith("note: ") and str(heldout / "SKU-RED" / "plain.jpg") in notes[0]
    assert "label.jpg" not in notes[0]  # the packshots have a hash
    # The real images of that SKU without a hash either: where a resized copy of it could hide.
    assert "small-plain.png" in notes[1] and "green-plain.png" not in notes[1]


def test_hash_caches_of_the_frame_only_kinds_are_not_read(tmp_path: Path) -> None:
    # A --cache-dir filled before held whole-frame hashes of product shots (and 2,048-bit held-out
    # values): read as today's, they would hide the copies this change finds.
    from services.trainstore.evaluation import _cached_hash

    data = encode_jpeg(packshot(7, 0.5, 0.8))
    # Nor those of store images without the part inside plain bars (letterboxed copies passed).
    for kind, length in (("dhash256", 32), ("dhash256-mirrored-turned", 256), ("dhash256-content", 32)):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "abc").write_text(bytes(length).hex())
    assert _cached_hash(tmp_path, "abc", lambda: data) == copy_hashes(data)
    assert _cached_hash(tmp_path, "abc", lambda: data, heldout=True) == heldout_hash(data)
    # "No hash" is cached too: a plain photo is not decoded again on every run.
    plain = encode_png(plain_product(90, 300))
    assert _cached_hash(tmp_path, "plain", lambda: plain) is None
    assert _cached_hash(tmp_path, "plain", lambda: pytest.fail("decoded again")) is None


@pytest.mark.parametrize("max_bits", [0, 2, NEAR_DUPLICATE_MAX_BITS, 31, 40])
def test_the_near_duplicate_check_finds_every_pair_it_would_find_comparing_all(max_bits: int) -> None:
    """The check compares only pairs equal in one band of the hash (``_pairs_within``): it must find
    every pair within ``max_bits`` that comparing each with each finds, copies a few bits off a
    held-out variant and hashes sharing long runs of bits (a band's worth of equal bits) included."""
    from shared.evaluation.leakage import _pairs_within

    rng = np.random.default_rng(max_bits)
    held = rng.integers(0, 256, (40 * 16, 32), dtype=np.uint8)
    near = held[rng.integers(0, len(held), 150)].copy()
    for part in near:  # each a few bits off a held-out variant, around max_bits
        flipped = rng.choice(256, int(rng.integers(0, max_bits + 4)), replace=False)
        np.bitwise_xor.at(part, flipped // 8, (1 << (7 - flipped % 8)).astype(np.uint8))
    alike = rng.integers(0, 256, (60, 32), dtype=np.uint8)
    alike[:, 8:24] = held[0, 8:24]  # half their bits those of one variant, the rest random
    parts = np.concatenate([near, alike, rng.integers(0, 256, (50, 32), dtype=np.uint8)])

    all_distances = np.unpackbits(held[:, None, :] ^ parts[None, :, :], axis=2).sum(axis=2)
    expected = {
        (int(h), int(p), int(all_distances[h, p]))
        for h, p in zip(*np.nonzero(all_distances <= max_bits), strict=True)
    }
    found = set(zip(*(column.tolist() for column in _pairs_within(held, parts, max_bits)), strict=True))
    assert found == expected
    assert len(expected) >= 30  # the near copies are there to be found (a quarter of them, at least)
