"""``skuforge evaluate``'s held-out photos (review 39, loose ends): one picture re-encoded under two SKU
folders, a photo that changes during the run, an S3 ``--scenes`` that refuses the run."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import pytest
from PIL import Image

from services.trainstore.evaluation import EvaluateRefused, heldout_hashes, heldout_photos
from shared.evaluation.experiment import encode_jpeg
from shared.evaluation.leakage import LeakageError, check_no_near_duplicates, copy_hashes, heldout_hash
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
    assert "bucket name in SKUFORGE_STORE_URI" not in said, said


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
