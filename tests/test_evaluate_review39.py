"""``skuforge evaluate`` with odd input (review 39): an empty path argument, a cache entry cut short;
and its held-out photos' loose ends: one picture re-encoded under two SKU folders, a photo that
changes during the run, an S3 ``--scenes`` that refuses the run; (review 40) one picture re-encoded
within one SKU's folder, a chain of such copies, store rows with no sha256."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

from services.ingest.ingest import prepare_sku
from services.trainstore.evaluation import (
    EvaluateRefused,
    _without_copies_within_skus,
    heldout_hashes,
    heldout_photos,
    streamed_sha256s,
    training_photos,
)
from shared.config import load_settings
from shared.evaluation.experiment import Photo, encode_jpeg
from shared.evaluation.leakage import LeakageError, check_no_near_duplicates, copy_hashes, heldout_hash
from shared.images import encode_png
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
    store_photo,
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


@pytest.mark.parametrize("option", ["--heldout", "--out", "--cache-dir"])
def test_an_empty_path_is_a_usage_error_not_the_current_folder(
    colour_store: ManifestStore,
    heldout: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: str,
) -> None:
    # `--out "$EVAL"` with the variable unset is Path(""), the current folder: the run wrote its
    # evaluation.json and report.html wherever the user stood, --cache-dir filled it with cache
    # folders, and --heldout took its folders for SKU folders.
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    argv = evaluate_args(heldout, tmp_path / "eval", tmp_path)
    argv[argv.index(option) + 1] = ""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 2
    assert f"argument {option}: the path is empty (an unset shell variable?)" in capsys.readouterr().err
    assert list((tmp_path / "cwd").iterdir()) == []


# The perceptual-hash cache's folders, named by the pixel limit too (services/trainstore/evaluation.py).
_HASH_KINDS = (
    "dhash256-frame-content-bars-past-blend-mirrored-turned-each",
    "dhash256-content-frame-bars-cut-past-blend",
)


def _cut_short(cache: Path, kind: str, left: str) -> int:
    """Cut every entry of ``cache``'s ``kind`` folder short to ``left``; how many there were."""
    entries = [path for path in (cache / kind).iterdir() if path.is_file()]
    for path in entries:
        path.write_text(left)
    return len(entries)


@pytest.mark.parametrize("left", ["", "9f86d0", "not hex\n"])
def test_a_cached_as_ingested_answer_cut_short_is_computed_again_and_the_leak_still_refused(
    colour_store: ManifestStore,
    heldout: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    left: str,
) -> None:
    # The cache of the sha256 each held-out photo would be stored under was read as it stood: an entry
    # cut short or damaged matched no store image, and a photo that had been ingested was trained on
    # and scored without a word (a flat photo has no perceptual hash to catch it instead).
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    metadata = {"sku_id": "SKU-RED", "name": "red", "category": "soda can", "brand": "b", "series": "s"}
    (shoot / "metadata.json").write_text(json.dumps(metadata))
    (heldout / "SKU-RED" / "test-0.png").unlink()
    flat = Image.new("RGB", (48, 48), COLOURS["SKU-RED"])  # no perceptual hash: exact copies only
    (heldout / "SKU-RED" / "test-0.jpg").write_bytes(encode_jpeg(flat))
    shutil.copy(heldout / "SKU-RED" / "test-0.jpg", shoot / "IMG_0001.jpg")
    prepared, problems = prepare_sku(shoot, load_settings(min_photo_side_px=48))
    assert prepared is not None, problems
    (ingested,) = prepared.photos
    store_photo(colour_store, "SKU-RED", ingested.photo_id, "real", ingested.png)
    args = evaluate_args(heldout, tmp_path / "eval", tmp_path)
    assert cli_main(args) == 2
    assert "SKU-RED/test-0.jpg (as ingest stores it)" in capsys.readouterr().err
    kind = next(
        path.name for path in (tmp_path / "features").iterdir() if path.name.startswith("as-ingested")
    )
    assert _cut_short(tmp_path / "features", kind, left) > 0
    assert cli_main(args) == 2
    assert "SKU-RED/test-0.jpg (as ingest stores it)" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("left", ["", "abc", "0" * 64])
def test_a_cached_perceptual_hash_cut_short_is_computed_again_not_a_traceback(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, left: str
) -> None:
    # An entry of the wrong length stopped every later run in a ValueError traceback from the
    # comparison ("hashes are 256-bit parts"), and one that was not hex in one from bytes.fromhex.
    args = evaluate_args(heldout, tmp_path / "eval", tmp_path)
    assert cli_main(args) == 0
    expected = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    kinds = [f"{kind}-max{load_settings().max_image_pixels}" for kind in _HASH_KINDS]
    for kind in kinds:
        assert _cut_short(tmp_path / "features", kind, left) > 0
    assert cli_main(args) == 0
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text()) == expected
    # Written again whole: an empty entry ("" where "\n" means "no hash") had made a photo's copies
    # pass unchecked.
    for kind in kinds:
        assert all(path.read_text().endswith("\n") for path in (tmp_path / "features" / kind).iterdir())


def test_help_states_the_min_real_default(capsys: pytest.CaptureFixture[str]) -> None:
    # "as dataset export: SKUs with fewer real images are left out", without its default of 1, which
    # `dataset export --help` states.
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    assert "SKUs with fewer real images are left out (default 1;" in " ".join(capsys.readouterr().out.split())


def test_a_folder_named_like_another_sku_inside_a_sku_folder_is_refused(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A SKU folder dropped into another's (a slip in a file manager) was read as photos of the outer
    # SKU: green photos scored as SKU-RED, its top-1 and gain and the policy built on them skewed without
    # a word. Sub-folders with other names (a shoot's dates) are still read.
    (heldout / "SKU-RED" / "2026-12").mkdir()
    colour_photo(COLOURS["SKU-RED"], 790).save(heldout / "SKU-RED" / "2026-12" / "shelf.png")
    args = evaluate_args(heldout, tmp_path / "eval", tmp_path)
    assert cli_main(args) == 0
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["n_heldout"] == 7
    (heldout / "SKU-RED" / "SKU-GREEN").mkdir()
    colour_photo(COLOURS["SKU-GREEN"], 791).save(heldout / "SKU-RED" / "SKU-GREEN" / "more.png")
    capsys.readouterr()
    assert cli_main([*args[:4], str(tmp_path / "refused"), *args[5:]]) == 2
    assert (
        f"held-out folder {heldout / 'SKU-RED' / 'SKU-GREEN'} is inside SKU-RED's but named like the store's "
        "SKU SKU-GREEN" in capsys.readouterr().err
    )
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("per_real", ["0", "2"])
def test_an_evaluation_with_no_synthetic_image_to_measure_says_so(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    heldout: Path,
    capsys: pytest.CaptureFixture[str],
    per_real: str,
) -> None:
    # Before the generator has filled the store (or with --max-synthetic-per-real 0), B trained on A's
    # images and C on none: "B-A +0.000" read as "the synthetic images do not help" when none was there.
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    for index, (sku_id, rgb) in enumerate(COLOURS.items()):
        store_photo(manifests, sku_id, "real-0", "real", colour_photo(rgb, 100 * index))
    args = evaluate_args(heldout, tmp_path / "eval", tmp_path, "--max-synthetic-per-real", per_real)
    assert cli_main(args) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert (
        "note: none of the 3 evaluated SKUs has a synthetic image in the export (--max-synthetic-per-real "
        f"{per_real}): B trains on A's images and C on none, so every gain reads 0" in said
    )


def test_one_picture_re_encoded_under_two_sku_folders_is_refused_naming_both(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Only byte-identical copies were refused: the same picture as a PNG in one SKU's folder and a JPEG
    # in another's was scored under both labels, one of them wrong whatever the classifier said.
    shelf = shelf_photo(5)
    shelf.save(heldout / "SKU-RED" / "shelf.png")
    (heldout / "SKU-GREEN" / "shelf.jpg").write_bytes(encode_jpeg(shelf, quality=70))
    shelf_photo(6).save(heldout / "SKU-BLUE" / "other-shelf.png")  # another picture: no copy
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 2
    said = capsys.readouterr().err
    assert f"{heldout / 'SKU-GREEN' / 'shelf.jpg'} (SKU-GREEN)" in said, said
    assert f"{heldout / 'SKU-RED' / 'shelf.png'} (SKU-RED)" in said, said
    assert "other-shelf" not in said
    assert not (tmp_path / "eval").exists()
    (heldout / "SKU-GREEN" / "shelf.jpg").unlink()
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 0


def test_a_photo_changed_after_it_was_listed_is_refused_not_cached_under_its_old_sha256(
    heldout: Path, tmp_path: Path
) -> None:
    # Listed (and its sha256 taken), then read again for each use: a file rewritten in between (a sync
    # still running) had its new bytes' hash and features cached under the old bytes' sha256, and every
    # later run on the old bytes read them.
    photo_path = heldout / "SKU-RED" / "shelf.png"
    shelf_photo(5).save(photo_path)
    photos, _ = heldout_photos(heldout)
    shelf_photo(6).save(photo_path)
    cache = tmp_path / "cache"
    with pytest.raises(EvaluateRefused, match=f"held-out {photo_path} changed"):
        heldout_hashes(photos, cache)
    (photo,) = [photo for photo in photos if photo.name == str(photo_path.absolute())]
    assert not [path for path in cache.rglob(photo.sha256)]


def test_a_photo_grown_past_the_size_limit_after_it_was_listed_is_refused_by_its_size(
    heldout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Listing refuses a file over SKUFORGE_MAX_IMAGE_BYTES unread; a re-read did not, so a file that grew
    # in between (a sync still running) was read whole, then refused as changed.
    photo_path = heldout / "SKU-RED" / "shelf.png"
    shelf_photo(5).save(photo_path)
    limit = max(path.stat().st_size for path in heldout.rglob("*.png"))
    monkeypatch.setenv("SKUFORGE_MAX_IMAGE_BYTES", str(limit))
    photos, _ = heldout_photos(heldout)
    photo_path.write_bytes(photo_path.read_bytes() + bytes(2**25))

    def refused() -> None:
        with pytest.raises(
            EvaluateRefused, match=f"held-out {photo_path} cannot be used .*SKUFORGE_MAX_IMAGE_BYTES"
        ):
            heldout_hashes(photos, tmp_path / "cache")

    assert peak_traced_bytes(refused) < 2**24  # not its 32 MiB read whole


def test_an_s3_scenes_uri_that_refuses_the_run_names_the_option_not_the_store_setting(
    colour_store: ManifestStore,
    heldout: Path,
    tmp_path: Path,
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The error blamed "the bucket name in SKUFORGE_STORE_URI", a file store here.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to fall back on
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it caches the credentials it found before
    monkeypatch.setenv("SKUFORGE_S3_ENDPOINT_URL", s3_endpoint)
    scenes = f"s3://scenes-{uuid.uuid4().hex[:12]}/library"
    args = evaluate_args(heldout, tmp_path / "eval", tmp_path, "--scenes", scenes)
    assert cli_main(args) == 1  # the deployment's fault, as the store's own
    said = capsys.readouterr().err
    assert f"no usable S3 credentials for {scenes}" in said, said
    assert "the bucket name in --scenes" in said, said
    assert "SKUFORGE_STORE_URI" not in said, said  # nor the hint after it


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0)])
def test_a_held_out_photo_padded_to_a_square_is_a_copy_of_the_store_photo_it_pads(
    colour: tuple[int, int, int],
) -> None:
    # Store images were hashed inside plain bars too, held-out photos were not: a held-out photo
    # letterboxed to a square (white or black bars) read 13-24 bits from the store photo it pads and
    # passed.
    photo = shelf_photo(7, (240, 320))
    padded = Image.new("RGB", (320, 320), colour)
    padded.paste(photo, (40, 0))
    padded.thumbnail((256, 256))
    held = heldout_hash(encode_jpeg(padded, quality=80))
    stored = copy_hashes(encode_png(photo))
    assert held is not None and stored is not None
    with pytest.raises(LeakageError, match=r"looks like a copy of held-out padded\.jpg"):
        check_no_near_duplicates([("padded.jpg", held)], training=[("stored.png", stored)])


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
        "a.png looks like a copy of b.png (perceptual hash 8 of 256 bits apart), which looks like a copy of "
        "c.png (8 bits apart): scored once, as c.png",
        "b.png looks like a copy of c.png (perceptual hash 8 of 256 bits apart): scored once",
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
    peak = peak_traced_bytes(
        lambda: training_photos(colour_store, plan, streamed_sha256s(colour_store, colour_store.iter_rows()))
    )
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
