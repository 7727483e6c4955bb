"""``skuforge evaluate``'s held-out photos (review 40): one picture re-encoded within one SKU's folder, a
chain of such copies; a copy of a store image whose row has no hash, and what such rows cost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.trainstore.evaluation import _without_copies_within_skus, training_photos
from shared.evaluation.experiment import Photo, encode_jpeg
from shared.store import FileStore
from shared.trainstore.dataset import plan_export
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
from tests.support.memory import peak_traced_bytes
from tests.support.trainstore import PREFIX


@pytest.fixture
def colour_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ManifestStore:
    """``fill_colour_store`` in a file store, which SKUFORGE_STORE_URI points at."""
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    return fill_colour_store(ManifestStore(FileStore(tmp_path / "store"), PREFIX))


@pytest.fixture
def heldout(tmp_path: Path) -> Path:
    """Two PNG photos per colour SKU."""
    root = tmp_path / "heldout"
    for index, (sku_id, rgb) in enumerate(COLOURS.items()):
        (root / sku_id).mkdir(parents=True)
        for n in range(2):
            colour_photo(rgb, 700 + 10 * index + n).save(root / sku_id / f"test-{n}.png")
    return root


def test_one_picture_re_encoded_within_one_sku_folder_is_scored_once_and_said(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Only byte copies were folded: the same picture as a PNG and a JPEG of it in one SKU's folder was
    # scored twice, weighing that photo double in the SKU's top-1 and the gain the export policy reads.
    shelf = shelf_photo(5)
    shelf.save(heldout / "SKU-RED" / "shelf.png")
    (heldout / "SKU-RED" / "shelf.jpg").write_bytes(encode_jpeg(shelf, quality=70))
    shelf_photo(6).save(heldout / "SKU-RED" / "other-shelf.png")  # another picture: scored
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 0
    said = " ".join(capsys.readouterr().out.split())
    red = heldout.absolute() / "SKU-RED"
    assert f"note: {red / 'shelf.png'} looks like a copy of {red / 'shelf.jpg'} (perceptual hash " in said
    assert "bits apart): scored once" in said
    assert "other-shelf" not in said
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["n_heldout"] == 8


def test_a_chain_of_copies_within_one_sku_folder_is_scored_once() -> None:
    # Folded pair by pair, nearest first: of a.png ~ b.png ~ c.png, with a and c 16 bits apart (over
    # the 12 of a copy), b was folded into a, and then (b, c) was passed over as "a copy of a copy
    # already left out", so c was scored beside a: one picture weighed double all the same.
    def photo(name: str) -> Photo:
        return Photo("SKU-RED", "real", name, name, lambda: b"")

    # A heldout_hash's 24 parts of 256 bits (each variant of the photo), here all alike: 0, 8, 16 bits set.
    def hashed(bits_set: int) -> bytes:
        return bytes([0xFF] * (bits_set // 8)).ljust(32, b"\0") * 24

    photos = [photo("c.png"), photo("a.png"), photo("b.png"), photo("other.png")]
    other = bytes(range(32)) * 24  # 80 bits and more from each
    hashes = [("a.png", hashed(0)), ("b.png", hashed(8)), ("c.png", hashed(16)), ("other.png", other)]
    kept, notes = _without_copies_within_skus(photos, hashes)
    assert [photo.name for photo in kept] == ["c.png", "other.png"]  # the first listed of the group
    assert notes == [
        "a.png looks like a copy of b.png (perceptual hash 8 of 256 bits apart): scored once, as c.png",
        "b.png looks like a copy of a.png (perceptual hash 8 of 256 bits apart): scored once, as c.png",
    ]


def test_store_rows_with_no_hash_are_hashed_from_their_bytes(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Rows written by hand may name an image with no sha256 (the schema takes them): each is read and
    # hashed, not compared as "None" (every such row one image) nor left out of the leakage check.
    for sku_id in colour_store.sku_ids():
        rows = colour_store.read_sku(sku_id).values()
        colour_store.append(sku_id, [row.model_copy(update={"image_sha256": None}) for row in rows])
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 0, capsys.readouterr().err
    stored = colour_store.read_sku("SKU-RED")["real-0"]
    copy = colour_store.store.get_bytes(colour_store.key(str(stored.image)))
    (heldout / "SKU-RED" / "copy.png").write_bytes(copy)
    assert cli_main(evaluate_args(heldout, tmp_path / "eval2", tmp_path)) == 2
    err = capsys.readouterr().err
    assert "copy.png" in err and str(stored.image) in err


def test_store_rows_with_no_hash_are_hashed_without_holding_their_bytes(colour_store: ManifestStore) -> None:
    # Each such row was read whole up front and its bytes held for the run, so memory grew with the
    # store; rows with a hash are read when used. Twelve objects of 1 MiB: at most a few held at once.
    object_bytes = 2**20
    rng = np.random.default_rng(0)
    rows = []
    for row in colour_store.read_sku("SKU-RED").values():
        colour_store.store.put_bytes(colour_store.key(str(row.image)), rng.bytes(object_bytes))
        rows.append(row.model_copy(update={"image_sha256": None}))
    colour_store.append("SKU-RED", rows)
    for sku_id in ["SKU-GREEN", "SKU-BLUE"]:
        sku_rows = colour_store.read_sku(sku_id).values()
        colour_store.append(sku_id, [row.model_copy(update={"image_sha256": None}) for row in sku_rows])
    plan = plan_export(colour_store.iter_rows(), max_synthetic_per_real=2)
    assert sum(len(c.real) + len(c.synthetic) for c in plan.classes if c.sku_id == "SKU-RED") == 6
    peak = peak_traced_bytes(lambda: training_photos(colour_store, plan))
    assert peak < 3 * object_bytes


def test_a_lost_object_of_a_row_with_no_hash_says_whose_it_is_and_what_to_do(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every SKU's images are checked for held-out copies (one may be filed under any SKU), and a row
    # with no hash is read for it: its object lost, evaluate stopped with a bare "object_missing: no
    # object at ...", not whose it was nor what to do, as dataset export says.
    row = colour_store.read_sku("SKU-EXTRA")["real-0"]
    colour_store.append("SKU-EXTRA", [row.model_copy(update={"image_sha256": None})])
    colour_store.store.delete(colour_store.key(str(row.image)))
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 2
    err = capsys.readouterr().err
    assert (
        "the image of SKU-EXTRA/real-0" in err
        and colour_store.store.uri_for(colour_store.key(str(row.image))) in err
    )
    assert "restore it" in err and "take photo real-0 out of SKU-EXTRA's folder" in err
