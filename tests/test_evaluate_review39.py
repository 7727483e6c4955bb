"""``skuforge evaluate`` with odd input (review 39): an empty path argument, a cache entry cut short."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from services.ingest.ingest import prepare_sku
from shared.config import load_settings
from shared.evaluation.experiment import encode_jpeg
from shared.store import FileStore
from shared.trainstore.manifest import ManifestStore
from skuforge_cli.main import main as cli_main
from tests.support.evaluation import (  # noqa: F401 (one_torch_thread: autouse)
    COLOURS,
    colour_photo,
    evaluate_args,
    fill_colour_store,
    one_torch_thread,
    store_photo,
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
_HASH_KINDS = ("dhash256-frame-content-bars-mirrored-turned-each", "dhash256-content-frame-bars-cut")


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
