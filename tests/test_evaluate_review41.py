"""``skuforge evaluate`` (review 41): store rows with no sha256 read for their hash once a run; the note
of a chain of copies within one SKU's folder."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

import services.trainstore.evaluation
from services.trainstore.evaluation import (
    EvaluateRefused,
    _refuse_copies_under_two_skus,
    _without_copies_within_skus,
)
from shared.evaluation.experiment import Photo, encode_jpeg
from shared.evaluation.leakage import heldout_hash
from shared.images import encode_png
from shared.store import FileStore
from shared.trainstore.manifest import ManifestStore
from skuforge_cli.main import main as cli_main
from tests.support.evaluation import (  # noqa: F401 (one_torch_thread: autouse)
    COLOURS,
    colour_photo,
    evaluate_args,
    fill_colour_store,
    one_torch_thread,
    shelf_photo,
)
from tests.support.trainstore import PREFIX


class CountingStore(FileStore):
    """A file store that counts the reads of each key (each a GET on S3)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: Counter[str] = Counter()

    def _read(self, key: str) -> bytes:
        self.reads[key] += 1
        return super()._read(key)

    def _read_at_most(self, key: str, max_bytes: int) -> bytes:
        self.reads[key] += 1
        return super()._read_at_most(key, max_bytes)

    def _read_blocks(self, key: str) -> Iterator[bytes]:
        self.reads[key] += 1
        return super()._read_blocks(key)


def test_a_row_with_no_hash_is_read_for_its_hash_once_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A row of an evaluated SKU with no sha256 was streamed for its hash twice (for the training photos,
    # then for the leakage check), and, with no hash to cache it by, decoded for its perceptual hash on
    # every run: on S3 each a GET of the whole image, every run.
    store = CountingStore(tmp_path / "store")
    manifests = fill_colour_store(ManifestStore(store, PREFIX))
    monkeypatch.setattr(services.trainstore.evaluation, "open_manifests", lambda: manifests)
    hashless = manifests.read_sku("SKU-RED")["real-0"]
    manifests.append("SKU-RED", [hashless.model_copy(update={"image_sha256": None})])
    hashed = manifests.read_sku("SKU-RED")["real-1"]
    heldout = tmp_path / "heldout"
    for index, sku_id in enumerate(COLOURS):
        (heldout / sku_id).mkdir(parents=True)
        colour_photo(COLOURS[sku_id], 700 + 10 * index).save(heldout / sku_id / "test-0.png")
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 0, capsys.readouterr().err
    store.reads.clear()
    assert cli_main(evaluate_args(heldout, tmp_path / "eval2", tmp_path)) == 0, capsys.readouterr().err
    # Its features and hashes cached by its sha256 as the hashed row's are: one read more, for the hash.
    hashless_reads, hashed_reads = (store.reads[manifests.key(str(row.image))] for row in [hashless, hashed])
    assert hashless_reads == hashed_reads + 1


def test_a_chain_of_copies_is_noted_link_by_link_to_the_photo_scored() -> None:
    # Of a.png ~ b.png ~ c.png ~ d.png (each 8 bits from the next, the ends 24 apart), d's note read "d.png
    # looks like a copy of c.png ...: scored once, as a.png": not how d came to be a's copy, nor that c
    # was left out too.
    def hashed(bits_set: int) -> bytes:  # a heldout_hash's 24 parts of 256 bits, here all alike
        return bytes([0xFF] * (bits_set // 8)).ljust(32, b"\0") * 24

    names = ["a.png", "b.png", "c.png", "d.png"]
    photos = [Photo("SKU-RED", "real", name, name, lambda: b"") for name in names]
    kept, notes = _without_copies_within_skus(photos, [(name, hashed(8 * n)) for n, name in enumerate(names)])
    assert [photo.name for photo in kept] == ["a.png"]
    assert notes == [
        "b.png looks like a copy of a.png (perceptual hash 8 of 256 bits apart): scored once",
        "c.png looks like a copy of b.png (perceptual hash 8 of 256 bits apart), which looks like a copy of "
        "a.png (8 bits apart): scored once, as a.png",
        "d.png looks like a copy of c.png (perceptual hash 8 of 256 bits apart), which looks like a copy of "
        "b.png (8 bits apart), which looks like a copy of a.png (8 bits apart): scored once, as a.png",
    ]


def _shelf_and_copy(copy: Image.Image) -> dict[str, bytes]:
    """``heldout_hash`` of a shelf photo (a.png) and of a JPEG of ``copy``, made of it (b.jpg), by name."""
    hashes = {"a.png": heldout_hash(encode_png(shelf_photo(5))), "b.jpg": heldout_hash(encode_jpeg(copy))}
    return {name: value for name, value in hashes.items() if value is not None}


@pytest.mark.parametrize("hashed_first", ["a.png", "b.jpg"])
@pytest.mark.parametrize(
    ("listed", "how"),
    [
        (["a.png", "b.jpg"], "turned 90 degrees clockwise"),  # b.jpg is a.png turned so
        (["b.jpg", "a.png"], "turned 90 degrees counter-clockwise"),  # and a.png is b.jpg turned back
    ],
)
def test_a_turned_copy_within_one_sku_folder_is_noted_with_the_way_it_was_turned(
    listed: list[str], how: str, hashed_first: str
) -> None:
    # The note said the bits apart and nothing of how the copy differed, where ingest's warning of the
    # same copy says "turned" or "mirrored": a copy turned a quarter read as a plain re-encode.
    hashes = _shelf_and_copy(shelf_photo(5).transpose(Image.Transpose.ROTATE_270))
    photos = [Photo("SKU-RED", "real", name, name, lambda: b"") for name in listed]
    hashed = sorted(hashes.items(), key=lambda item: item[0] != hashed_first)
    kept, notes = _without_copies_within_skus(photos, hashed)
    like, copy = listed
    assert [photo.name for photo in kept] == [like]
    assert len(notes) == 1, notes
    assert re.fullmatch(
        rf"{re.escape(copy)} looks like a copy of {re.escape(like)} \({how}, perceptual hash \d+ of 256 bits "
        r"apart\): scored once",
        notes[0],
    ), notes


def test_a_mirrored_copy_in_two_sku_folders_is_refused_with_the_way_it_differs() -> None:
    hashes = _shelf_and_copy(shelf_photo(5).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    photos = [
        Photo(sku_id, "real", name, name, lambda: b"")
        for sku_id, name in [("SKU-RED", "a.png"), ("SKU-BLUE", "b.jpg")]
    ]
    with pytest.raises(
        EvaluateRefused,
        match=r"a\.png \(SKU-RED\) and b\.jpg \(SKU-BLUE\), the second mirrored, perceptual hash \d+ of 256 "
        r"bits apart;",
    ):
        _refuse_copies_under_two_skus(photos, list(hashes.items()))
