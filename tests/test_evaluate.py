"""``skuforge evaluate``: the five-condition experiment end to end on a small store, the leakage
refusals, and the experiment's arithmetic on classes whose look is known (solid colours)."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from services.ingest.ingest import prepare_sku
from services.trainstore.cli import evaluation_mismatches
from services.trainstore.evaluation import (
    EvaluateRefused,
    heldout_photos,
    heldout_sku_folders,
    scene_files,
    summary_lines,
)
from shared.config import load_settings
from shared.errors import ImageRejected
from shared.evaluation.backbone import BackboneSpec, FeatureCache, open_backbone
from shared.evaluation.experiment import (
    CONDITION_NAMES,
    CONDITIONS,
    EvaluationConfig,
    Featurizer,
    Photo,
    encode_jpeg,
    photo_from_bytes,
    run_evaluation,
)
from shared.evaluation.leakage import (
    LeakageError,
    check_no_near_duplicates,
    copy_hashes,
    heldout_hash,
    perceptual_hash,
)
from shared.evaluation.report import histogram, histogram_svg, render_report, thumbnail_data_uri
from shared.evaluation.tune import fit_predict_tuned, tail_features
from shared.images import encode_png
from shared.photos import PHOTO_FILE_SUFFIXES
from shared.store import FileStore, ObjectStore
from shared.trainstore.manifest import ManifestRow, ManifestStore, Source
from skuforge_cli.main import main as cli_main
from tests.support.evaluation import (  # noqa: F401 (one_torch_thread: autouse)
    COLOURS,
    TINY,
    colour_photo,
    evaluate_args,
    fill_colour_store,
    one_torch_thread,
    shelf_photo,
    store_photo,
)
from tests.support.memory import HUGE_FILE_BYTES, make_huge_and_unreadable
from tests.support.trainstore import PREFIX


@pytest.fixture
def colour_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ManifestStore:
    """``fill_colour_store`` in a file store, which SKUFORGE_STORE_URI points at."""
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    return fill_colour_store(ManifestStore(FileStore(tmp_path / "store"), PREFIX))


@pytest.fixture
def heldout(tmp_path: Path) -> Path:
    """3 JPEGs per colour SKU; one red one is green, so B' gets at least one wrong."""
    root = tmp_path / "heldout"
    for index, (sku_id, rgb) in enumerate(COLOURS.items()):
        (root / sku_id).mkdir(parents=True)
        for n in range(3):
            look = COLOURS["SKU-GREEN"] if (sku_id, n) == ("SKU-RED", 2) else rgb
            (root / sku_id / f"test-{n}.jpg").write_bytes(
                encode_jpeg(colour_photo(look, 500 + 10 * index + n))
            )
    (root / "SKU-RED" / "notes.txt").write_text("not a photo")
    return root


def test_evaluate_writes_all_five_conditions_a_report_and_feeds_the_export_policy(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    assert cli_main(evaluate_args(heldout, out, tmp_path)) == 0
    printed = capsys.readouterr().out
    document = json.loads((out / "evaluation.json").read_text())
    assert set(document["top1"]) == set(CONDITIONS)
    assert set(document["per_sku"]) == set(COLOURS)  # SKU-EXTRA has no held-out photo: not evaluated
    assert document["n_heldout"] == 9 and document["n_skus"] == 3
    assert document["train_counts"]["SKU-RED"] == {"real": 2, "synthetic": 4, "classic": 4}
    assert set(document["summary"]) >= {"gain_top1", "gain_over_classic_top1", "frac_skus_worse_by_10pt"}
    assert document["inputs"]["max_synthetic_per_real"] == 2
    # The green-looking red photo is the one B' gets wrong, and it is shown with its labels.
    assert [m["true"] for m in document["misclassified"]] == ["SKU-RED"]
    assert document["misclassified"][0]["name"].endswith("test-2.jpg")
    report = (out / "report.html").read_text()
    assert report.count("<svg") >= 3
    assert "data:image/jpeg;base64," in report and "SKU-GREEN" in report
    assert "note: 1 SKU(s) of the store have no held-out photos, not evaluated: SKU-EXTRA" in printed
    assert "notes.txt is not a photo" in printed
    for condition in CONDITIONS:
        assert f"\n{condition:<10} " in "\n" + printed
    assert "B-A " in printed and "B'-A' " in printed

    # The export reads the per-SKU gain: SKUs below --min-gain are exported without synthetic images.
    gains = document["gain"]
    threshold = max(gains.values()) + 0.01  # every evaluated SKU is below it
    code = cli_main(
        [
            "dataset",
            "export",
            str(tmp_path / "export"),
            "--format",
            "imagefolder",
            "--max-synthetic-per-real",
            "2",
            "--evaluation",
            str(out / "evaluation.json"),
            "--min-gain",
            str(threshold),
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    # The same store and policy as the evaluation measured: the one note is the test backbone's
    # (before, an evaluation by random weights steered the export without a word).
    assert [line for line in captured.err.splitlines() if line.startswith("note:")] == [
        f"note: --evaluation {out / 'evaluation.json'}: it measured with --backbone tiny (random "
        "weights, for tests): its gains are noise"
    ]
    for sku_id in COLOURS:
        assert not list((tmp_path / "export" / sku_id).glob("synthetic-*"))
        assert len(list((tmp_path / "export" / sku_id).glob("real-*"))) == 2
        line = next(line for line in printed.splitlines() if line.startswith(sku_id))
        assert "synthetic left out: B\u2212A" in line and "evaluation.json" in line
    # A SKU the evaluation did not measure is exported as usual.
    assert (tmp_path / "export" / "SKU-EXTRA" / "real-real-0.png").exists()
    assert "left out" not in next(line for line in printed.splitlines() if line.startswith("SKU-EXTRA"))
    # An export under another policy than the one measured is told so (its gains are of other sets).
    other = ["dataset", "export", str(tmp_path / "other"), "--format", "jsonl", "--max-synthetic-per-real"]
    assert cli_main([*other, "1", "--evaluation", str(out / "evaluation.json")]) == 0
    assert "it measured max_synthetic_per_real 2, this export uses 1" in capsys.readouterr().err
    # Images stored since the evaluation: the SKU's gain is of another training set, and that is said
    # (before, its synthetic images were left out by a measurement of 4 of them without a word).
    store_photo(colour_store, "SKU-RED", "real-2", "real", colour_photo(COLOURS["SKU-RED"], 777))
    later = ["dataset", "export", str(tmp_path / "later"), "--format", "jsonl", "--max-synthetic-per-real"]
    assert cli_main([*later, "2", "--evaluation", str(out / "evaluation.json")]) == 0
    assert (
        "the store changed since it was measured: SKU-RED (measured 2 real, 4 synthetic; now 3 and 4); "
        "their gains describe other training sets (run skuforge evaluate again)"
    ) in capsys.readouterr().err


def test_evaluate_says_on_stderr_what_it_is_doing_a_line_per_stage_and_sku(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # On a 3-SKU store it printed nothing for two minutes (leakage check, features, fits), as if hung.
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 0
    captured = capsys.readouterr()
    progress = [line for line in captured.err.splitlines() if line.startswith("skuforge evaluate: ")]
    said = "\n".join(progress)
    assert "checking 9 held-out photos of 3 SKUs for leakage into the store" in said
    for number, sku_id in enumerate(sorted(COLOURS), start=1):
        assert f"features of {sku_id} ({number}/3): 2 real, 4 synthetic, 4 classic augmentations" in said
    assert "features of 9 held-out photos" in said
    for number, condition in enumerate(CONDITIONS, start=1):
        assert f"fitting {condition} ({CONDITION_NAMES[condition]}), {number}/5" in said
    assert "accuracy against real photos per SKU: A and B at 1 to 2 (4 fits)" in said
    # A line per stage and SKU, not per image: the store has 18 images of these SKUs, 9 held out.
    assert len(progress) == 1 + 3 + 1 + 5 + 1, progress
    assert "skuforge evaluate: " not in captured.out  # stdout keeps the notes and the figures
    assert "B-A " in captured.out


def test_an_evaluation_of_skus_this_store_lacks_is_noted() -> None:
    evaluation = {"gain": {"SKU-RED": -0.2, "sku-red": -0.5, "SKU-PURPLE": 0.1}, "inputs": {"store": "s"}}
    notes = evaluation_mismatches(
        evaluation, store="s", max_synthetic_per_real=2, min_real=1, sku_ids={"SKU-RED", "SKU-BLUE"}
    )
    assert notes == [
        "it has gains of SKUs this store does not have ('SKU-PURPLE', 'sku-red'); they are not used"
    ]


def test_features_cached_from_an_earlier_decode_are_not_read(tmp_path: Path) -> None:
    """The decode began converting colour profiles to sRGB (and reducing large JPEGs); features cached
    by sha256 before that were read back for the same bytes, so a cached run and a fresh one differed."""
    from shared.evaluation.backbone import PIXELS_VERSION

    earlier = tmp_path / "features" / "tiny-abc-px32"
    earlier.mkdir(parents=True)
    np.save(earlier / f"{'a' * 64}.npy", np.ones(4, np.float32))  # the layout before versions
    cache = FeatureCache(tmp_path / "features")
    assert cache.get("tiny-abc-px32", "a" * 64) is None
    cache.put("tiny-abc-px32", "a" * 64, np.zeros(4, np.float32))
    stored = tmp_path / "features" / f"pixels-v{PIXELS_VERSION}" / "tiny-abc-px32" / f"{'a' * 64}.npy"
    assert stored.is_file() and not cache.get("tiny-abc-px32", "a" * 64).any()  # type: ignore[union-attr]


def test_evaluate_can_fine_tune_the_last_backbone_stages_and_refuses_too_many(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    tune = ["--tune-stages", "1", "--tune-epochs", "3"]
    assert cli_main(evaluate_args(heldout, out, tmp_path, *tune)) == 0
    document = json.loads((out / "evaluation.json").read_text())
    assert document["config"]["tune_stages"] == 1 and document["config"]["tune_epochs"] == 3
    assert document["config"]["tune_lr"] == 1e-4  # the default, when --tune-stages comes without it
    assert document["inputs"]["classifier"].startswith("the backbone's last 1 stage fine-tuned")
    assert "last 1 stage fine-tuned" in (out / "report.html").read_text()
    # Solid colours are easy for any classifier: only the green-looking red photo may be missed.
    assert document["top1"]["B'"] >= 8 / 9
    # The trunk's maps were cached beside the features, under their own name.
    assert list((tmp_path / "features").glob("pixels-v*/tiny-*-trunk1/*.npy"))
    capsys.readouterr()

    assert cli_main(evaluate_args(heldout, tmp_path / "eval3", tmp_path, "--tune-stages", "3")) == 2
    error = capsys.readouterr().err
    assert "--tune-stages 3: tiny has 3 stages; fine-tune 1 to 2 of them" in error
    assert not (tmp_path / "eval3").exists()


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--tune-epochs", "3"], "--tune-epochs sets"),
        (["--tune-lr", "0.001"], "--tune-lr sets"),
        (
            ["--tune-stages", "0", "--tune-epochs", "8", "--tune-lr", "0.001"],
            "--tune-epochs and --tune-lr set",
        ),
    ],
)
def test_tuning_options_without_tune_stages_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], named: str
) -> None:
    # They were ignored: the run was the frozen backbone's, and nothing said so.
    with pytest.raises(SystemExit) as exit_info:
        cli_main(evaluate_args(tmp_path / "heldout", tmp_path / "eval", tmp_path, *options))
    assert exit_info.value.code == 2
    assert f"{named} how the backbone's last stages are fine-tuned: give --tune-stages N" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "eval").exists()


def test_export_refuses_a_missing_or_foreign_evaluation_file(
    colour_store: ManifestStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["dataset", "export", str(tmp_path / "x"), "--format", "jsonl", "--max-synthetic-per-real", "1"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*base, "--evaluation", str(tmp_path / "nope.json")])
    assert exit_info.value.code == 2
    assert "nope.json: no such file" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"top1": {}}))
    with pytest.raises(SystemExit):
        cli_main([*base, "--evaluation", str(tmp_path / "other.json")])
    assert "has no per-SKU 'gain' object" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main([*base, "--min-gain", "0.1"])
    assert "--min-gain needs --evaluation" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main([*base, "--evaluation", str(tmp_path / "other.json"), "--min-gain", "nan"])
    assert "must be a finite number, got nan" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unknown_sku_folders_are_named(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (heldout / "SKU-NOPE").mkdir()
    (heldout / "SKU-NOPE" / "a.jpg").write_bytes(encode_jpeg(colour_photo((1, 2, 3), 1)))
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 2
    assert "SKUs the store does not have: 'SKU-NOPE' (store " in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_a_sku_folder_named_but_for_case_or_spaces_is_refused_naming_the_store_id(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder "SKU-BLUE " (a trailing space) was refused as "SKUs the store does not have: SKU-BLUE",
    the very id the store has, as it read; and "sku-green" as if no SKU were like it."""
    (heldout / "SKU-BLUE").rename(heldout / "SKU-BLUE ")
    (heldout / "SKU-GREEN").rename(heldout / "sku-green")
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 2
    err = capsys.readouterr().err
    assert (
        "SKUs the store does not have: 'SKU-BLUE ' (the store has 'SKU-BLUE'), 'sku-green' (the store" in err
    )
    assert "has 'SKU-GREEN') (store " in err and "folder names are SKU ids exactly" in err


def test_an_empty_folder_naming_a_sku_the_store_lacks_is_noted(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A mistyped folder not filled yet: before, it was left out without a word (the same folder with
    # a photo in it is refused), and the SKU meant was not evaluated.
    (heldout / "SKU-BLUE").rename(heldout / "SKU-BLEU")
    for photo in (heldout / "SKU-BLEU").iterdir():
        photo.unlink()
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 0
    printed = capsys.readouterr().out
    note = f"note: {heldout / 'SKU-BLEU'} has no photos, and the store has no SKU SKU-BLEU: not used"
    assert note in printed
    assert "have no held-out photos, not evaluated: SKU-BLUE, SKU-EXTRA" in printed  # the SKU meant


def test_what_ingest_leaves_out_quietly_is_left_out_quietly_here_too(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # shared/photos.py is the one answer for every reader of a folder of photos; the held-out reader
    # skipped hidden names only, and named an unzipped __MACOSX folder or a Thumbs.db in a note.
    (heldout / "__MACOSX" / "SKU-RED").mkdir(parents=True)
    (heldout / "__MACOSX" / "SKU-RED" / "._test-0.jpg").write_bytes(b"\x00\x05\x16\x07")
    (heldout / "SKU-RED" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (heldout / "SKU-GREEN" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 0
    printed = capsys.readouterr().out
    assert "notes.txt is not a photo" in printed  # a file of the user's is still named
    assert "__MACOSX" not in printed and "Thumbs.db" not in printed and "desktop.ini" not in printed


def test_help_and_usage_errors_answer_without_loading_torch_or_the_store() -> None:
    # The backbone needs torch (3 s to import here); a user asking for --help should not wait for it.
    code = (
        "import sys\n"
        "from skuforge_cli.main import main\n"
        "try:\n"
        "    main(['evaluate', '--help'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "assert 'torch' not in sys.modules and 'services.trainstore.evaluation' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--heldout DIR" in result.stdout


def test_without_torch_evaluate_says_what_to_install(tmp_path: Path) -> None:
    """The CPU image and `pip install 'skuforge[cpu]'` have no torch: a ModuleNotFoundError traceback."""
    args = evaluate_args(tmp_path / "heldout", tmp_path / "eval", tmp_path)
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as if not installed: its import raises ImportError\n"
        "from skuforge_cli.main import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "skuforge evaluate: needs torch" in result.stderr and "skuforge[evaluate]" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_backbone_it_cannot_tune_is_refused_before_the_photos_are_read(
    colour_store: ManifestStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found only after the leakage checks (a decode and a hash per held-out and store photo).
    args = evaluate_args(tmp_path / "not-there", tmp_path / "eval", tmp_path, "--tune-stages", "3")
    assert cli_main(args) == 2
    error = capsys.readouterr().err
    assert "--tune-stages 3: tiny has 3 stages" in error and "not a directory" not in error


def test_heldout_photos_are_the_formats_ingest_takes_and_other_files_are_noted(tmp_path: Path) -> None:
    sku = tmp_path / "SKU-RED"
    sku.mkdir()
    # .jfif (Chrome) and .jpe (Windows) are JPEGs ingest reads; they were noted "not a photo" here.
    formats = (
        ("a.jpg", "JPEG"),
        ("b.tif", "TIFF"),
        ("c.webp", "WEBP"),
        ("d.jfif", "JPEG"),
        ("e.JPE", "JPEG"),
    )
    for index, (name, fmt) in enumerate(formats):  # sizes apart: one picture twice is scored once
        Image.new("RGB", (8 + index, 8), COLOURS["SKU-RED"]).save(sku / name, format=fmt)
    (sku / "notes.txt").write_text("not a photo")
    # A hidden folder (a viewer's thumbnails, a notebook's checkpoints) is not the user's photos.
    (sku / ".thumbnails").mkdir()
    Image.new("RGB", (8, 8), COLOURS["SKU-RED"]).save(sku / ".thumbnails" / "a.jpg", format="JPEG")
    photos, notes = heldout_photos(tmp_path)
    assert sorted(Path(photo.name).name for photo in photos) == [
        "a.jpg",
        "b.tif",
        "c.webp",
        "d.jfif",
        "e.JPE",
    ]
    assert {photo.sku_id for photo in photos} == {"SKU-RED"}
    assert len(notes) == 1 and "notes.txt is not a photo" in notes[0]


def test_a_picture_twice_in_one_sku_folder_is_scored_once_and_a_malformed_header_is_refused(
    tmp_path: Path,
) -> None:
    """A re-download ("a (1).jpg") was scored twice, in the SKU's top-1 and the gains the export
    policy reads; a PNG whose header chunk is cut to length 0 was a ValueError traceback."""
    sku = tmp_path / "SKU-RED"
    sku.mkdir()
    Image.new("RGB", (8, 8), COLOURS["SKU-RED"]).save(sku / "a.jpg", format="JPEG")
    (sku / "a (1).jpg").write_bytes((sku / "a.jpg").read_bytes())
    photos, notes = heldout_photos(tmp_path)
    assert [Path(photo.name).name for photo in photos] == ["a (1).jpg"]
    assert notes == [f"{sku / 'a.jpg'} is the same picture as {sku / 'a (1).jpg'}: scored once"]
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    broken = bytearray(png.getvalue())
    broken[8:12] = b"\0\0\0\0"  # the IHDR chunk's length
    (sku / "b.png").write_bytes(bytes(broken))
    with pytest.raises(EvaluateRefused, match=r"b.png is not an image"):
        heldout_photos(tmp_path)


def test_photos_in_a_linked_sub_folder_are_held_out_once_and_a_link_loop_ends(tmp_path: Path) -> None:
    """os.walk did not follow links: a linked batch of photos was left out of the evaluation without
    a word, against the walker's own promise."""
    batch = tmp_path / "elsewhere" / "batch2"
    batch.mkdir(parents=True)
    Image.new("RGB", (9, 8), COLOURS["SKU-RED"]).save(batch / "b.jpg", format="JPEG")  # not a.jpg's bytes
    sku = tmp_path / "heldout" / "SKU-RED"
    sku.mkdir(parents=True)
    Image.new("RGB", (8, 8), COLOURS["SKU-RED"]).save(sku / "a.jpg", format="JPEG")
    (sku / "batch2").symlink_to(batch, target_is_directory=True)
    (sku / "again").symlink_to(batch, target_is_directory=True)  # the same folder twice: read once
    (batch / "loop").symlink_to(sku, target_is_directory=True)  # back up: a loop
    photos, _ = heldout_photos(tmp_path / "heldout")
    assert sorted(Path(photo.name).name for photo in photos) == ["a.jpg", "b.jpg"]
    # A link to another SKU's folder, or to the root, would hold that SKU's photos out twice.
    other = tmp_path / "heldout" / "SKU-BLUE"
    other.mkdir()
    Image.new("RGB", (8, 8), COLOURS["SKU-BLUE"]).save(other / "c.jpg", format="JPEG")
    (sku / "blue").symlink_to(other, target_is_directory=True)
    (sku / "all").symlink_to(tmp_path / "heldout", target_is_directory=True)
    photos, notes = heldout_photos(tmp_path / "heldout")
    assert sorted((photo.sku_id, Path(photo.name).name) for photo in photos) == [
        ("SKU-BLUE", "c.jpg"),
        ("SKU-RED", "a.jpg"),
        ("SKU-RED", "b.jpg"),
    ]
    assert sum("a link to another SKU's folder or the held-out root" in note for note in notes) == 2


def test_a_nas_thumbnail_folder_is_not_held_out_photos_and_is_noted(tmp_path: Path) -> None:
    """A Synology share keeps "@eaDir" in every folder, with a few resized copies of each photo: each
    held-out photo was scored again at every thumbnail size, and one beside the SKU folders was read
    as a SKU of its own ("@eaDir", which the store does not have)."""
    sku = tmp_path / "SKU-RED"
    sku.mkdir()
    Image.new("RGB", (64, 48), COLOURS["SKU-RED"]).save(sku / "a.jpg", format="JPEG")
    for folder in (sku / "@eaDir" / "a.jpg", tmp_path / "@eaDir" / "SKU-RED"):
        folder.mkdir(parents=True)
        for size in (16, 32):
            Image.new("RGB", (size, size * 3 // 4), COLOURS["SKU-RED"]).save(
                folder / f"SYNOPHOTO_THUMB_{size}.jpg", format="JPEG"
            )
    photos, notes = heldout_photos(tmp_path)
    assert [(photo.sku_id, Path(photo.name).name) for photo in photos] == [("SKU-RED", "a.jpg")]
    assert notes == [
        f"2 NAS thumbnail folder(s) (@eaDir) are not photos: not used: {tmp_path / '@eaDir'}, "
        f"{sku / '@eaDir'}"
    ]
    assert heldout_sku_folders(tmp_path) == ["SKU-RED"]


def test_a_heldout_file_over_the_byte_limit_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A held-out file was read whole before anything looked at it: a 3 GiB scan (or a video named .jpg)
    took 3 GiB of memory, to be refused by the byte limit ingest refuses it by, unread, after."""
    sku = tmp_path / "SKU-RED"
    sku.mkdir()
    Image.new("RGB", (8, 8), COLOURS["SKU-RED"]).save(sku / "a.jpg", format="JPEG")
    (sku / "scan.tif").touch()
    make_huge_and_unreadable(sku / "scan.tif", monkeypatch)
    limit = load_settings().max_image_bytes
    with pytest.raises(EvaluateRefused) as refused:
        heldout_photos(tmp_path)
    assert str(refused.value) == (
        f"held-out {sku / 'scan.tif'} cannot be used ({HUGE_FILE_BYTES} bytes; at most {limit} are allowed, "
        "SKUFORGE_MAX_IMAGE_BYTES); remove it or replace it"
    )


def test_a_pipe_named_like_a_photo_is_noted_as_what_it_is(tmp_path: Path) -> None:
    """A named pipe (or socket) in a SKU folder was noted as "a link to nothing", which it is not."""
    sku = tmp_path / "SKU-RED"
    sku.mkdir()
    Image.new("RGB", (8, 8), COLOURS["SKU-RED"]).save(sku / "a.jpg", format="JPEG")
    os.mkfifo(sku / "b.jpg")
    photos, notes = heldout_photos(tmp_path)
    assert [Path(photo.name).name for photo in photos] == ["a.jpg"]
    assert notes == [f"{sku / 'b.jpg'} is not a regular file (a pipe, socket or device): not used"]


def test_an_unreadable_heldout_photo_or_folder_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, an unreadable photo was a PermissionError traceback, and an unreadable SKU folder was
    skipped without a word (its photos missing from the evaluation). Root reads every file, so the
    refusals are raised here as the OS raises them for another user."""
    sku = tmp_path / "SKU-RED"
    (sku / "more").mkdir(parents=True)
    Image.new("RGB", (8, 8), COLOURS["SKU-RED"]).save(sku / "a.jpg", format="JPEG")
    (sku / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    photos, notes = heldout_photos(tmp_path)
    assert [Path(photo.name).name for photo in photos] == ["a.jpg"]
    assert notes == [f"{sku / 'gone.jpg'} is a link to nothing: not used"]

    real_open = Path.open

    def no_permission(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path.name == "a.jpg":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(Path, "open", no_permission)
        with pytest.raises(EvaluateRefused, match=r"held-out .*a\.jpg cannot be read \(Permission denied\)"):
            heldout_photos(tmp_path)

    real_scandir = os.scandir

    def unreadable_folder(path: object) -> object:
        if Path(str(path)).name == "more":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "scandir", unreadable_folder)
    with pytest.raises(EvaluateRefused, match=r"held-out folder .*more cannot be read \(Permission denied\)"):
        heldout_photos(tmp_path)


def test_a_photo_with_a_broken_exif_block_is_hashed_as_it_shows() -> None:
    """ImageOps.exif_transpose raises SyntaxError on an EXIF block that is no TIFF; the leakage check
    caught OSError and ValueError only, so one such held-out photo was a traceback."""
    buffer = io.BytesIO()
    colour_photo(COLOURS["SKU-RED"], 3, size_px=64).save(buffer, "PNG")
    plain = buffer.getvalue()
    body = b"garbage!"
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    broken = plain[:33] + chunk + plain[33:]  # after the signature and IHDR
    assert perceptual_hash(broken) == perceptual_hash(plain)
    assert heldout_hash(broken) == heldout_hash(plain)


def test_heldout_skus_the_policy_leaves_out_and_a_missing_folder_are_refused(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path, "--min-real", "3")) == 2
    err = capsys.readouterr().err
    assert "the export policy leaves out held-out SKU(s)" in err
    assert "SKU-RED: 2 real image(s), need at least 3" in err and "lower --min-real" in err
    assert cli_main(evaluate_args(tmp_path / "nowhere", tmp_path / "eval", tmp_path)) == 2
    assert "nowhere: not a directory" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def scene_library(tmp_path: Path) -> Path:
    """A scene library folder with one grey shelf photo (``shelves/aisle.jpg``)."""
    scenes = tmp_path / "scenes"
    (scenes / "shelves").mkdir(parents=True)
    Image.new("RGB", (64, 48), (90, 90, 90)).save(scenes / "shelves" / "aisle.jpg")
    return scenes


def test_a_heldout_photo_copied_into_the_scene_library_is_refused(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenes = scene_library(tmp_path)
    args = evaluate_args(heldout, tmp_path / "eval", tmp_path, "--scenes", f"file://{scenes}")
    shutil.copy(heldout / "SKU-BLUE" / "test-1.jpg", scenes / "shelves" / "renamed.png")
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "held-out photos must not be used for training or scenes" in err
    assert "renamed.png has the same content as held-out" in err and "test-1.jpg" in err
    assert not (tmp_path / "eval").exists()
    # Without the copy the same command runs.
    (scenes / "shelves" / "renamed.png").unlink()
    assert cli_main(args) == 0


def test_scene_files_are_hashed_once_per_cache_as_the_store_images_are(
    colour_store: ManifestStore,
    heldout: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Every run decoded and hashed every scene file again; the store's images' hashes were cached by
    # their sha256 in --cache-dir. The scene files' are now too (their bytes are still read: the
    # exact-copy check needs their sha256).
    import services.trainstore.evaluation as evaluation_module

    scenes = Path(__file__).resolve().parents[1] / "samples" / "grocerystore-scenes"
    args = evaluate_args(heldout, tmp_path / "eval", tmp_path, "--scenes", f"file://{scenes}")
    assert cli_main(args) == 0
    files, uncached, _notes = scene_files(f"file://{scenes}")
    assert len(files) == len(uncached) == 12  # the sample's photos, each with a hash

    def no_decoding(data: bytes) -> bytes | None:
        raise AssertionError("a scene file was decoded and hashed again")

    with monkeypatch.context() as patched:
        patched.setattr(evaluation_module, "copy_hashes", no_decoding)
        assert cli_main(args) == 0
        assert scene_files(f"file://{scenes}", tmp_path / "features") == (files, uncached, _notes)
    # A copy of a held-out photo among them is still refused: the exact check reads every file.
    capsys.readouterr()
    copy = tmp_path / "scenes"
    shutil.copytree(scenes, copy)
    shutil.copy(heldout / "SKU-BLUE" / "test-1.jpg", copy / "Banana" / "renamed.jpg")
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path, "--scenes", f"file://{copy}")) == 2
    assert "renamed.jpg has the same content as held-out" in capsys.readouterr().err


def test_scene_files_the_generator_skips_are_noted_not_a_traceback_or_a_refusal(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A backslash in a file name was a ValueError traceback; a dangling link a refusal that said the
    key 'resolves outside the store root'; a link loop a refusal that blamed the store URI and the Kafka
    bootstrap. The generator skips all three at load, so none can be in a scene."""
    scenes = scene_library(tmp_path)
    Image.new("RGB", (64, 48), (80, 80, 80)).save(scenes / "shelves" / "a\\b.jpg")
    (scenes / "shelves" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (scenes / "shelves" / "loop.jpg").symlink_to(scenes / "shelves" / "loop.jpg")
    args = evaluate_args(heldout, tmp_path / "eval", tmp_path, "--scenes", f"file://{scenes}")
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("note: scene file")]
    assert len(notes) == 3, out
    assert any("a\\\\b.jpg" in note and "backslash" in note for note in notes), notes
    assert any("gone.jpg not checked: unreadable" in note for note in notes), notes
    assert any("loop.jpg not checked: unreadable" in note for note in notes), notes


def test_a_scene_file_past_the_pixel_limit_is_noted_as_the_generator_skips_it_not_decoded(
    colour_store: ManifestStore,
    heldout: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The leakage hash decoded a scene file whole, past SKUFORGE_MAX_IMAGE_PIXELS (a 150 MP PNG in
    full: Pillow only warns below twice its own limit), though the generator refuses it at load."""
    monkeypatch.setenv("SKUFORGE_MAX_IMAGE_PIXELS", "2000000")
    scenes = scene_library(tmp_path)
    Image.new("RGB", (2000, 1001), (80, 80, 80)).save(scenes / "shelves" / "wide.png")
    args = evaluate_args(heldout, tmp_path / "eval", tmp_path, "--scenes", f"file://{scenes}")
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    wide = scenes / "shelves" / "wide.png"
    assert f"note: scene file {wide} not checked: too_many_pixels: 2000x1001 = 2002000 pixels" in out, out
    assert "(the generator skips it too)" in out


def test_the_scene_check_covers_the_files_the_scene_library_loads_and_no_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check read every file whole, whatever it was: a NAS's @eaDir thumbnails and macOS's hidden
    "._NAME" files, which the library leaves out, were checked (and a copy of a held-out photo there
    refused an evaluation it could not spoil), and a 3 GiB file was read into memory, though the
    library refuses it by its size, unread."""
    scenes = scene_library(tmp_path)
    shelf_photo(3).save(scenes / "shelves" / "aisle.jpg")  # one with a perceptual hash
    held = encode_jpeg(shelf_photo(1))
    thumbnails = scenes / "shelves" / "@eaDir" / "aisle.jpg"
    thumbnails.mkdir(parents=True)
    (thumbnails / "SYNOPHOTO_THUMB_XL.jpg").write_bytes(held)
    (scenes / "shelves" / "._aisle.jpg").write_bytes(held)
    (scenes / "README.txt").write_bytes(held)
    (scenes / "shelves" / "scan.jpg").touch()
    make_huge_and_unreadable(scenes / "shelves" / "scan.jpg", monkeypatch)
    os.mkfifo(scenes / "shelves" / "pipe.jpg")  # read, it waited for a writer: the check hung for good
    files, hashes, notes = scene_files(f"file://{scenes}")
    aisle = str(scenes / "shelves" / "aisle.jpg")
    assert [name for name, _ in files] == [aisle] and [name for name, _ in hashes] == [aisle]
    limit = load_settings().max_image_bytes
    assert sorted(notes) == sorted(
        [
            f"scene file {scenes / 'README.txt'} not checked: not_a_photo_suffix: .txt (scene photos are "
            f"{', '.join(sorted(PHOTO_FILE_SUFFIXES))}) (the generator skips it too)",
            f"scene file {scenes / 'shelves' / 'scan.jpg'} not checked: too_large_bytes: {HUGE_FILE_BYTES} "
            f"bytes; at most {limit} are allowed (the generator skips it too)",
            f"scene file {scenes / 'shelves' / 'pipe.jpg'} not checked: unreadable: not a regular file (a "
            "pipe, socket or device) (the generator skips it too)",
            "1 scene file(s) in NAS thumbnail folders (@eaDir) not checked: a NAS's copies of the photos, "
            "not scenes (the generator leaves them out too)",
        ]
    )


def test_a_heldout_photo_that_is_a_store_reference_is_refused(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same bytes stored as a real photo of a SKU that is not even evaluated: still a leak.
    photo = Image.open(heldout / "SKU-GREEN" / "test-0.jpg")
    photo.load()
    encoded = encode_png(photo)
    (heldout / "SKU-GREEN" / "test-0.png").write_bytes(encoded)
    (heldout / "SKU-GREEN" / "test-0.jpg").unlink()
    store_photo(colour_store, "SKU-EXTRA", "real-leak", "real", photo)
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 2
    err = capsys.readouterr().err
    assert "training " in err and "real-leak.png has the same content as held-out" in err
    assert not (tmp_path / "eval").exists()


def test_a_heldout_jpeg_that_was_ingested_is_refused(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The common leak: a JPEG given to `skuforge ingest` and also kept as held-out. Ingest stores it
    # decoded and re-encoded as PNG (the trainstore keeps that PNG), so its bytes never match the JPEG's.
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    metadata = {"sku_id": "SKU-RED", "name": "red", "category": "soda can", "brand": "b", "series": "s"}
    (shoot / "metadata.json").write_text(json.dumps(metadata))
    shutil.copy(heldout / "SKU-RED" / "test-0.jpg", shoot / "IMG_0001.jpg")
    # These colour photos are 48 px, below ingest's default smallest side.
    prepared, problems = prepare_sku(shoot, load_settings(min_photo_side_px=48))
    assert prepared is not None, problems
    (ingested,) = prepared.photos
    store_photo(colour_store, "SKU-RED", ingested.photo_id, "real", ingested.png)
    args = evaluate_args(heldout, tmp_path / "eval", tmp_path)
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert f"training {tmp_path}/store/{PREFIX}/images/SKU-RED/real/{ingested.photo_id}.png" in err
    assert "has the same content as held-out" in err and "SKU-RED/test-0.jpg (as ingest stores it)" in err
    assert not (tmp_path / "eval").exists()
    # A second run answers from the cache of what ingest would store, and refuses just the same.
    assert cli_main(args) == 2
    assert "SKU-RED/test-0.jpg (as ingest stores it)" in capsys.readouterr().err


def test_a_photo_that_does_not_decode_is_refused_by_name(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A held-out JPEG cut short (an interrupted copy): its header reads, its pixels do not.
    whole = (heldout / "SKU-BLUE" / "test-0.jpg").read_bytes()
    (heldout / "SKU-BLUE" / "cut.jpg").write_bytes(whole[: len(whole) * 8 // 10])
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 2
    err = capsys.readouterr().err
    assert "held-out " in err and "SKU-BLUE/cut.jpg cannot be used (truncated" in err
    (heldout / "SKU-BLUE" / "cut.jpg").unlink()
    # A PNG whose header declares 20000 x 20000 pixels: before, a DecompressionBombError traceback.
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    chunks = [(b"IHDR", header), (b"IDAT", zlib.compress(b"")), (b"IEND", b"")]
    huge = b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        for kind, data in chunks
    )
    (heldout / "SKU-BLUE" / "panorama.png").write_bytes(huge)
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 2
    err = capsys.readouterr().err
    assert "held-out " in err and "SKU-BLUE/panorama.png cannot be used (" in err and "400000000" in err
    (heldout / "SKU-BLUE" / "panorama.png").unlink()
    # A store image cut short, with a manifest sha256 that matches it: named too.
    png = encode_png(colour_photo(COLOURS["SKU-BLUE"], 77))
    store_photo(colour_store, "SKU-BLUE", "real-cut", "real", png[: len(png) * 8 // 10])
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 2
    err = capsys.readouterr().err
    assert "could not be used" in err and "SKU-BLUE/real/real-cut.png" in err
    assert not (tmp_path / "eval").exists()


def test_a_heldout_sku_without_a_usable_real_image_is_refused(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The captioner found the SKU's only photo unusable (no image kept); its synthetic image is pending.
    unusable = ManifestRow(
        item_id="p1", sku_id="SKU-GREY", category="soda can", source="real", status="unusable"
    )
    colour_store.append("SKU-GREY", [unusable])
    store_photo(colour_store, "SKU-GREY", "gen-0", "synthetic", colour_photo((120, 120, 120), 5), "pending")
    (heldout / "SKU-GREY").mkdir()
    (heldout / "SKU-GREY" / "a.jpg").write_bytes(encode_jpeg(colour_photo((120, 120, 120), 7)))
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 2
    err = capsys.readouterr().err
    assert "held-out SKU(s) with no usable real image in the store: SKU-GREY (the captioner found" in err
    assert not (tmp_path / "eval").exists()
    # Withdrawn: the hint was the same ("unusable or withdrawn, or there are none"); ingesting the
    # folder again is what brings such photos back.
    withdrawn = ManifestRow(
        item_id="p1", sku_id="SKU-GREY", category="soda can", source="real", status="withdrawn"
    )
    colour_store.append("SKU-GREY", [withdrawn])
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 2
    assert "SKU-GREY (its real photos were withdrawn: ingest its folder again" in capsys.readouterr().err


def test_a_single_heldout_sku_is_refused(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # With one SKU the classifiers have one answer to give, so every condition would score 100%.
    shutil.rmtree(heldout / "SKU-GREEN")
    shutil.rmtree(heldout / "SKU-BLUE")
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 2
    err = capsys.readouterr().err
    assert "only SKU-RED has held-out photos; at least 2 SKUs with held-out photos are needed" in err
    assert not (tmp_path / "eval").exists()


def test_the_notes_that_explain_too_few_heldout_skus_come_with_the_refusal(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An iPhone's held-out photos, HEIC, are not read: before, the refusal came alone, and the notes
    # that said why the SKU had no photos were never printed.
    shutil.rmtree(heldout / "SKU-GREEN")
    for photo in (heldout / "SKU-BLUE").iterdir():
        photo.rename(photo.with_suffix(".heic"))
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 2
    captured = capsys.readouterr()
    assert "only SKU-RED has held-out photos" in captured.err
    # Named with what to do, as ingest names it: before, a HEIC photo was "not a photo".
    heic = heldout / "SKU-BLUE" / "test-0.heic"
    assert f"note: {heic}: HEIC/HEIF is not read here; export it as JPEG or PNG (not used)" in captured.out
    assert f"{heic} is not a photo" not in captured.out
    assert "have no held-out photos, not evaluated: SKU-BLUE, SKU-EXTRA, SKU-GREEN" in captured.out
    assert not (tmp_path / "eval").exists()


def test_an_empty_malformed_or_fileless_scene_library_is_refused(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "$SKUFORGE_SCENES_URI" unset, a scheme no store reads, a mistyped folder: none may pass the check.
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exited:  # refused as the arguments are parsed
        cli_main(evaluate_args(heldout, out, tmp_path, "--scenes", ""))
    assert exited.value.code == 2
    assert "argument --scenes: the URI is empty (is SKUFORGE_SCENES_URI set?)" in capsys.readouterr().err
    assert cli_main(evaluate_args(heldout, out, tmp_path, "--scenes", "ftp://host/scenes")) == 2
    assert "--scenes ftp://host/scenes: unsupported object-store scheme 'ftp'" in capsys.readouterr().err
    missing = tmp_path / "no-such-scenes"
    assert cli_main(evaluate_args(heldout, out, tmp_path, "--scenes", f"file://{missing}")) == 2
    assert f"no files under {missing}; is it the scene library" in capsys.readouterr().err
    assert not out.exists()


def test_a_scene_library_of_only_files_the_generator_skips_is_refused_saying_so(tmp_path: Path) -> None:
    """Files the generator skips are not checked; a library of nothing else (an iPhone's HEIC photos, a
    NAS's thumbnails) holds no scene, as the generator says at start-up, and the check would pass on
    nothing: refused, naming what it holds, not as a library with "no files"."""
    scenes = tmp_path / "scenes"
    (scenes / "@eaDir" / "a.jpg").mkdir(parents=True)
    (scenes / "@eaDir" / "a.jpg" / "SYNOPHOTO_THUMB_S.jpg").write_bytes(encode_jpeg(shelf_photo(1)))
    (scenes / "a.heic").write_bytes(b"not read")
    with pytest.raises(EvaluateRefused) as refused:
        scene_files(f"file://{scenes}")
    assert str(refused.value) == (
        f"--scenes file://{scenes}: no scene photo the generator loads under {scenes} (1 file(s) it skips: "
        f"{scenes / 'a.heic'}: not_a_photo_suffix: .heic: HEIC/HEIF is not read here; export it as JPEG "
        "or PNG; 1 in NAS thumbnail folders); is it the scene library (SKUFORGE_SCENES_URI)?"
    )


def test_weights_files_that_do_not_load_are_refused_by_name(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    empty = tmp_path / "interrupted.pth"
    empty.write_bytes(b"")
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    for weights in (empty, tensor):
        lite0 = ["--backbone", "efficientnet-lite0", "--backbone-weights", str(weights)]
        assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path, *lite0)) == 2
        assert f"cannot load efficientnet-lite0 weights {weights} (" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_a_lite0_with_another_classifier_gives_the_same_features_and_wrong_keys_are_named(
    tmp_path: Path,
) -> None:
    """The ImageNet classifier is not part of the features: a Lite0 fine-tuned on 10 classes, or saved
    without its classifier, was refused by strict loading, and every wrong state dict read "Error(s)
    in loading state_dict for EfficientNet:" and nothing more."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from shared.evaluation.backbone import BackboneMissing, installed_lite0_weights

    state = torch.load(installed_lite0_weights(), weights_only=True)
    images = [colour_photo(rgb, seed) for seed, rgb in enumerate(COLOURS.values())]
    reference = open_backbone(BackboneSpec(image_px=64, device="cpu")).features(images)
    ten_classes = tmp_path / "ten-classes.pth"
    torch.save({**state, "_fc.weight": torch.zeros(10, 1280), "_fc.bias": torch.zeros(10)}, ten_classes)
    headless = tmp_path / "headless.pth"
    torch.save({key: value for key, value in state.items() if not key.startswith("_fc.")}, headless)
    for weights in (ten_classes, headless):
        backbone = open_backbone(BackboneSpec(image_px=64, weights=weights, device="cpu"))
        np.testing.assert_array_equal(backbone.features(images), reference)

    wrong = {
        "parallel.pth": (
            {f"module.{key}": value for key, value in state.items()},
            "Lite0 keys missing: 294 of 294 (such as _conv_stem.weight); keys that are not Lite0's: 296 "
            "(such as module._conv_stem.weight); saved from nn.DataParallel?",
        ),
        "wrapped.pth": ({"state_dict": state, "epoch": 3}, "is the state dict under 'state_dict'?"),
        "narrow.pth": (
            {**state, "_conv_stem.weight": torch.zeros(16, 3, 3, 3)},
            "keys of another shape: 1 (such as _conv_stem.weight (16, 3, 3, 3), not (32, 3, 3, 3))",
        ),
        "no-bn.pth": (
            {key: value for key, value in state.items() if key != "_bn1.running_mean"},
            "Lite0 keys missing: 1 of 294 (such as _bn1.running_mean)",
        ),
    }
    for name, (content, said) in wrong.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(BackboneMissing) as refused:
            open_backbone(BackboneSpec(weights=tmp_path / name, device="cpu"))
        assert f"cannot load efficientnet-lite0 weights {tmp_path / name} (" in str(refused.value)
        assert said in str(refused.value)


def test_an_out_that_is_a_file_is_refused_before_the_run(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    out.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(evaluate_args(heldout, out, tmp_path))
    assert exit_info.value.code == 2
    assert f"--out {out}: {out} is a file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "features").exists()  # refused before any photo was read
    assert out.read_text() == "not a folder"


@pytest.mark.parametrize("name", ["evaluation.json", "report.html"])
def test_an_out_whose_result_file_is_a_folder_is_refused_before_the_run(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    # Before: the whole run, then "Is a directory" (exit 1) when the result was written.
    out = tmp_path / "eval"
    (out / name).mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(evaluate_args(heldout, out, tmp_path))
    assert exit_info.value.code == 2
    assert f"--out {out}: {out / name} is a folder; it is where the run writes its {name}" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "features").exists()  # refused before any photo was read


def test_a_cache_dir_that_is_a_file_is_refused_before_the_run(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: a NotADirectoryError traceback once every held-out photo had been read.
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    args = evaluate_args(heldout, tmp_path / "eval", tmp_path)
    args[args.index("--cache-dir") + 1] = str(cache)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == 2
    assert f"--cache-dir {cache}: {cache} is a file, not a folder" in capsys.readouterr().err
    assert cache.read_text() == "not a folder"


def test_no_cache_with_a_cache_dir_is_refused_and_no_cache_alone_makes_none(
    colour_store: ManifestStore,
    heldout: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before: --no-cache won and the named --cache-dir was ignored without a word (its default was a
    # path, so a folder given could not be told from none given).
    with pytest.raises(SystemExit) as exit_info:
        cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path, "--no-cache"))
    assert exit_info.value.code == 2
    assert "argument --no-cache: not allowed with argument --cache-dir" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
    # --no-cache alone reads and writes no cache: not even the default folder is made.
    monkeypatch.chdir(tmp_path)
    args = evaluate_args(heldout, tmp_path / "eval", tmp_path, "--no-cache")
    del args[args.index("--cache-dir") : args.index("--cache-dir") + 2]
    assert cli_main(args) == 0
    assert (tmp_path / "eval" / "evaluation.json").is_file()
    assert not (tmp_path / "var").exists() and not (tmp_path / "features").exists()


def test_a_disk_that_fills_during_the_run_is_said_not_a_traceback(
    colour_store: ManifestStore,
    heldout: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The checks before the run cannot see a disk fill up during it: the feature cache's write was
    # an OSError traceback.
    import shared.evaluation.backbone as backbone_module

    def full(path: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(backbone_module.np, "save", full)
    out = tmp_path / "eval"
    assert cli_main(evaluate_args(heldout, out, tmp_path)) == 1
    err = capsys.readouterr().err
    assert f"skuforge evaluate: {tmp_path / 'features'}" in err and "No space left on device" in err
    assert f"{out / 'evaluation.json'} was not written" in err and "Traceback" not in err
    assert not (out / "evaluation.json").exists()


def test_a_failed_write_of_evaluation_json_leaves_the_earlier_report_beside_it(
    colour_store: ManifestStore,
    heldout: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # report.html was written first, in place: a disk that filled on evaluation.json left the new
    # report beside the earlier run's figures, which `dataset export --evaluation` goes on reading.
    import services.trainstore.evaluation as evaluation_module

    out = tmp_path / "eval"
    assert cli_main(evaluate_args(heldout, out, tmp_path)) == 0
    earlier = {name: (out / name).read_bytes() for name in ("evaluation.json", "report.html")}
    (heldout / "SKU-BLUE" / "test-0.jpg").unlink()  # another run: 8 held-out photos, not 9
    write = evaluation_module.write_atomically

    def full_on_the_results(path: Path, data: bytes) -> None:
        if path.name == "evaluation.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, data)

    monkeypatch.setattr(evaluation_module, "write_atomically", full_on_the_results)
    assert cli_main(evaluate_args(heldout, out, tmp_path)) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in ("evaluation.json", "report.html")} == earlier
    assert sorted(path.name for path in out.iterdir()) == ["evaluation.json", "report.html"]

    monkeypatch.setattr(evaluation_module, "write_atomically", write)
    assert cli_main(evaluate_args(heldout, out, tmp_path)) == 0
    assert json.loads((out / "evaluation.json").read_text())["n_heldout"] == 8
    assert "8 held-out photos" in (out / "report.html").read_text()


def test_a_misclassified_photo_removed_during_the_run_loses_its_thumbnail_not_the_run(
    colour_store: ManifestStore,
    heldout: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import services.trainstore.evaluation as evaluation_module

    run = evaluation_module.run_evaluation

    def then_removed(*args: Any, **kwargs: Any) -> Any:
        result = run(*args, **kwargs)
        (heldout / "SKU-RED" / "test-2.jpg").unlink()  # the photo B' gets wrong
        return result

    monkeypatch.setattr(evaluation_module, "run_evaluation", then_removed)
    out = tmp_path / "eval"
    assert cli_main(evaluate_args(heldout, out, tmp_path)) == 0
    assert "(photo not readable)" in (out / "report.html").read_text()
    document = json.loads((out / "evaluation.json").read_text())
    assert document["misclassified"][0]["name"].endswith("test-2.jpg")


def test_a_store_without_skus_is_named_as_such(
    heldout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A mistyped SKUFORGE_STORE_URI: before, the user was told to rename their held-out folders.
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'no-such-store'}")
    assert cli_main(evaluate_args(heldout, tmp_path / "eval", tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"the retraining store file://{tmp_path}/no-such-store/{PREFIX} has no SKUs" in err
    assert "SKUFORGE_STORE_URI" in err and "rename" not in err
    assert not (tmp_path / "eval").exists()


def test_a_heldout_folder_that_is_the_store_itself_is_refused(
    colour_store: ManifestStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Pointing --heldout at the store's own images: every photo is a training image, by path and content.
    images = tmp_path / "store" / PREFIX / "images"
    assert cli_main(evaluate_args(images, tmp_path / "eval", tmp_path)) == 2
    assert "has the same content as held-out" in capsys.readouterr().err


def test_evaluate_on_an_s3_store_refuses_a_heldout_photo_in_an_s3_scene_library(
    s3_store: ObjectStore,
    s3_endpoint: str,
    heldout: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fill_colour_store(ManifestStore(s3_store, PREFIX))
    monkeypatch.setenv("SKUFORGE_STORE_URI", s3_store.base_uri)
    monkeypatch.setenv("SKUFORGE_S3_ENDPOINT_URL", s3_endpoint)
    s3_store.put_bytes("scenes/shelves/aisle.png", encode_png(Image.new("RGB", (40, 30), (90, 90, 90))))
    s3_store.put_bytes("scenes/copy.jpg", (heldout / "SKU-RED" / "test-0.jpg").read_bytes())
    args = evaluate_args(heldout, tmp_path / "eval", tmp_path, "--scenes", f"{s3_store.base_uri}/scenes")
    assert cli_main(args) == 2
    assert f"scenes {s3_store.base_uri}/scenes/copy.jpg has the same content" in capsys.readouterr().err
    s3_store.delete("scenes/copy.jpg")
    assert cli_main(args) == 0
    document = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert set(document["top1"]) == set(CONDITIONS) and document["inputs"]["scenes"].startswith("s3://")


# --- the experiment on classes whose look is known ------------------------------------------------


def colour_photos(
    sku_id: str, source: Source, rgb: tuple[int, int, int], count: int, seed: int
) -> list[Photo]:
    return [
        photo_from_bytes(
            sku_id, source, f"{sku_id}/{source}-{seed}-{n}.png", encode_png(colour_photo(rgb, seed + n))
        )
        for n in range(count)
    ]


def shifted(skus: list[str], index: int, by: int) -> tuple[int, int, int]:
    return COLOURS[skus[(index + by) % len(skus)]]


def misleading_real_photos() -> tuple[list[Photo], list[Photo]]:
    """Training and held-out photos where each SKU's one real photo has the next SKU's colour."""
    skus = list(COLOURS)
    training, heldout = [], []
    for index, sku in enumerate(skus):
        training += colour_photos(sku, "real", shifted(skus, index, 1), 1, 10 * index)
        training += colour_photos(sku, "synthetic", COLOURS[sku], 6, 100 + 10 * index)
        heldout += colour_photos(sku, "real", COLOURS[sku], 4, 200 + 10 * index)
    return training, heldout


@pytest.fixture(scope="module")
def featurizer() -> Featurizer:
    return Featurizer(open_backbone(BackboneSpec(name="tiny", image_px=32)), FeatureCache(None))


def test_features_are_decoded_under_the_limits_ingest_used() -> None:
    """evaluate decoded every photo under the default limits: with SKUFORGE_MAX_IMAGE_PIXELS raised, a
    large PNG ingest had taken was refused after the checks, by a message naming the setting."""
    backbone = open_backbone(BackboneSpec(name="tiny", image_px=32))
    photo = colour_photos("SKU-RED", "real", COLOURS["SKU-RED"], 1, 0)[0]  # 48x48
    assert Featurizer(backbone, FeatureCache(None)).of([photo]).shape[0] == 1
    small_limit = Featurizer(backbone, FeatureCache(None), max_pixels=1_000)
    with pytest.raises(ImageRejected, match="1000") as info:
        small_limit.of([photo])
    # Named with the photo, the refusal kept the setting that passes it (it was rebuilt without).
    assert info.value.setting == "SKUFORGE_MAX_IMAGE_PIXELS"
    with pytest.raises(ImageRejected, match="1000") as info:
        small_limit.of_classic([photo], seed=0, size_px=32)
    assert info.value.setting == "SKUFORGE_MAX_IMAGE_PIXELS"


@pytest.mark.parametrize("tune_stages", [0, 1])
def test_the_same_inputs_give_the_same_result_cold_warm_or_uncached(tmp_path: Path, tune_stages: int) -> None:
    # Seeds are fixed: a figure that moved between two runs of the same inputs would be read as an
    # effect of the data. Noise photos, near chance, so that a draw that is not seeded (an unseeded
    # classic augmentation fails this) moves some prediction; the cache gives what a fresh run computes.
    rng = np.random.default_rng(0)

    def noise(sku: str, source: Source, count: int) -> list[Photo]:
        return [
            photo_from_bytes(
                sku,
                source,
                f"{sku}/{source}-{n}.png",
                encode_png(Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8))),
            )
            for n in range(count)
        ]

    training = [photo for sku in COLOURS for photo in [*noise(sku, "real", 3), *noise(sku, "synthetic", 4)]]
    heldout = [photo for sku in COLOURS for photo in noise(sku, "real", 8)]
    backbone = open_backbone(BackboneSpec(name="tiny", image_px=32))
    config = EvaluationConfig(seed=5, classic_px=32, tune_stages=tune_stages, tune_epochs=2)
    results = [
        dataclasses.asdict(
            run_evaluation(training, heldout, Featurizer(backbone, FeatureCache(cache)), config)
        )
        for cache in (tmp_path / "features", tmp_path / "features", None)  # cold, warm, none
    ]
    assert results[0] == results[1] == results[2]


def test_synthetic_images_that_look_like_the_test_photos_beat_misleading_real_ones(
    featurizer: Featurizer,
) -> None:
    # Each SKU's one real photo looks like the next SKU; its synthetic images look like itself, as
    # its held-out photos do. Real only (A, A') must then be wrong, and real + synthetic right.
    skus = list(COLOURS)
    training, heldout = misleading_real_photos()
    result = run_evaluation(
        training, heldout, featurizer, EvaluationConfig(seed=3, classic_px=32, real_weight=1.0)
    )
    assert result.top1["A"] <= 0.25 and result.top1["A'"] <= 0.25
    assert result.top1["B"] >= 0.9 and result.top1["C"] >= 0.9
    # B' also has classic augmentations of the misleading photos, as many as synthetic ones.
    assert result.top1["B'"] >= result.top1["A'"] + 0.4
    assert all(gain >= 0.5 for gain in result.gain.values()), result.gain
    assert result.frac_skus_worse_by_10pt == 0.0
    assert result.summary()["gain_over_classic_top1"] >= 0.5
    assert result.train_counts[skus[0]] == {"real": 1, "synthetic": 6, "classic": 6}
    # One real photo per SKU: no curve to draw, and the report says so instead of plotting.
    assert result.curve["real_per_sku"] == []
    assert "No curve" in render_report(result, lambda name: None)


def wrong_look_photos(*, real: int, held_out: int) -> tuple[list[Photo], list[Photo]]:
    """Each SKU's real and held-out photos in its colour, 8 synthetic ones in the next SKU's."""
    skus = list(COLOURS)
    training, heldout = [], []
    for index, sku in enumerate(skus):
        training += colour_photos(sku, "real", COLOURS[sku], real, 10 * index)
        training += colour_photos(sku, "synthetic", shifted(skus, index, 1), 8, 100 + 10 * index)
        heldout += colour_photos(sku, "real", COLOURS[sku], held_out, 200 + 10 * index)
    return training, heldout


def test_synthetic_images_of_the_wrong_look_hurt_and_are_counted(featurizer: Featurizer) -> None:
    # The mirror case: real photos are right, synthetic ones look like the next SKU and outnumber
    # them. B must fall below A, every SKU counts as hurt, C is wrong, and the curve is drawn.
    skus = list(COLOURS)
    training, heldout = wrong_look_photos(real=2, held_out=4)
    result = run_evaluation(
        training, heldout, featurizer, EvaluationConfig(seed=3, classic_px=32, real_weight=1.0)
    )
    assert result.top1["A"] >= 0.9
    assert result.top1["B"] <= 0.5 and result.top1["C"] <= 0.1
    assert all(gain <= -0.5 for gain in result.gain.values()), result.gain
    # B' still has the right-looking classic augmentations beside the wrong synthetic images, so
    # not every SKU need fall by 10 points there; most do, and the share counts exactly those.
    hurt = [sku for sku, gain in result.gain_over_classic.items() if gain <= -0.1]
    assert len(hurt) >= len(skus) / 2
    assert result.frac_skus_worse_by_10pt == round(len(hurt) / len(skus), 4)
    assert result.curve["real_per_sku"] == [1.0, 2.0]
    assert summary_lines(result)[-1].startswith("hurt most (B'-A'): SKU-")
    assert len(result.misclassified) == min(8, round((1 - result.top1["B'"]) * 12))
    page = render_report(result, lambda name: None, by_k=[("k1", result.summary()), ("k3", result.summary())])
    assert page.count("<svg") == 4 and "photo not readable" in page and ">k3<" in page


def test_a_sku_whose_synthetic_images_are_left_out_keeps_the_classic_augmentation_asked_for(
    featurizer: Featurizer,
) -> None:
    # The export policy's try (bench.augment --drop-synthetic-from) leaves a SKU's synthetic images out.
    # Its classic augmentation followed the synthetic count, so A' lost it too: the baseline fell with
    # the policy and B' - A' read part of that fall as skuforge's gain.
    config = EvaluationConfig(seed=3, classic_px=32, real_weight=1.0)
    training, heldout = wrong_look_photos(real=2, held_out=4)
    full = run_evaluation(training, heldout, featurizer, config)
    dropped = next(iter(COLOURS))
    kept = [photo for photo in training if not (photo.sku_id == dropped and photo.source == "synthetic")]
    policy = run_evaluation(kept, heldout, featurizer, config, classic_per_sku=dict.fromkeys(COLOURS, 8))
    assert policy.train_counts[dropped] == {"real": 2, "synthetic": 0, "classic": 8}
    # A and A' are the same classifiers as without the policy, per SKU too: only B, B' and C move.
    for condition in ("A", "A'"):
        assert policy.top1[condition] == full.top1[condition]
        assert {sku: v[condition] for sku, v in policy.per_sku.items()} == {
            sku: v[condition] for sku, v in full.per_sku.items()
        }
    # Without it, as many classic augmentations as synthetic images (skuforge evaluate's rule).
    assert run_evaluation(kept, heldout, featurizer, config).train_counts[dropped]["classic"] == 0


def test_the_report_escapes_sku_ids_and_photo_names(featurizer: Featurizer) -> None:
    # SKU ids and held-out file names are the user's: on the page they must be text, never markup.
    hostile = {sku: f"<script>alert('{sku}')</script>" for sku in COLOURS}
    training, heldout = wrong_look_photos(real=2, held_out=4)

    def renamed(photo: Photo) -> Photo:
        name = f"held/<img src=x onerror=alert(1)>/{photo.name}'\"<b>.png"
        return dataclasses.replace(photo, sku_id=hostile[photo.sku_id], name=name)

    result = run_evaluation(
        [dataclasses.replace(photo, sku_id=hostile[photo.sku_id]) for photo in training],
        [renamed(photo) for photo in heldout],
        featurizer,
        EvaluationConfig(seed=3, classic_px=32, real_weight=1.0),
    )
    assert result.misclassified  # the page shows true and predicted ids and the file names
    page = render_report(result, lambda name: encode_png(colour_photo((9, 9, 9), 1)))
    assert "<script" not in page and "<img src=x" not in page and "<b>.png" not in page
    assert "<b>&lt;script&gt;alert(&#x27;SKU-RED&#x27;)&lt;/script&gt;</b>" in page  # its true label
    assert "alt='held/&lt;img src=x onerror=alert(1)&gt;/" in page  # the thumbnail's full name
    assert "&#x27;&quot;&lt;b&gt;.png</small>" in page  # and the file name under it


def test_the_report_shows_a_held_out_photo_the_settings_let_through(featurizer: Featurizer) -> None:
    """The report's thumbnails are decoded under the limits the evaluation ran under: a 42-megapixel
    PNG that SKUFORGE_MAX_IMAGE_PIXELS=50000000 let through was "(photo not readable)" on the page."""
    buffer = io.BytesIO()
    Image.new("RGB", (7000, 6000), (200, 30, 30)).save(buffer, format="PNG", compress_level=1)
    large = buffer.getvalue()
    assert thumbnail_data_uri(large) is None  # over the default 40 megapixels
    roomy = (50_000_000, 50 * 2**20)
    assert (thumbnail_data_uri(large, limits=roomy) or "").startswith("data:image/jpeg;base64,")
    # render_report hands its limits to every thumbnail.
    # Synthetic images of the next SKU's look outnumber the real ones: B' gets photos wrong.
    training, heldout = wrong_look_photos(real=1, held_out=2)
    config = EvaluationConfig(seed=3, classic_px=32, real_weight=1.0)
    result = run_evaluation(training, heldout, featurizer, config)
    assert result.misclassified
    assert "photo not readable" in render_report(result, lambda name: large)
    page = render_report(result, lambda name: large, limits=roomy)
    assert "photo not readable" not in page and "data:image/jpeg;base64," in page


def test_the_report_shows_a_file_name_that_is_not_utf8(featurizer: Featurizer, tmp_path: Path) -> None:
    """A Latin-1 "café.jpg" reaches Python as a surrogate escape: writing the UTF-8 page raised
    UnicodeEncodeError after the whole run, and evaluation.json was never written."""
    training, heldout = wrong_look_photos(real=1, held_out=2)
    heldout = [
        dataclasses.replace(photo, name=f"/held/caf\udce9-{index}.jpg") for index, photo in enumerate(heldout)
    ]
    result = run_evaluation(
        training, heldout, featurizer, EvaluationConfig(seed=3, classic_px=32, real_weight=1.0)
    )
    assert result.misclassified
    page = render_report(result, lambda name: None)
    page.encode("utf-8")  # what writing it does: a lone surrogate raised UnicodeEncodeError
    assert "caf\ufffd-" in page


def test_one_heldout_photo_under_two_sku_ids_is_refused(tmp_path: Path) -> None:
    """A copy in the wrong folder (or a link from a renamed SKU's folder) was scored under both labels,
    one of them wrong whatever the classifier said."""
    for sku in ("SKU-RED", "SKU-BLUE"):
        (tmp_path / sku).mkdir()
        Image.new("RGB", (8, 8), COLOURS[sku]).save(tmp_path / sku / "own.png")
    Image.new("RGB", (9, 8), COLOURS["SKU-RED"]).save(tmp_path / "SKU-RED" / "shelf.png")
    assert len(heldout_photos(tmp_path)[0]) == 3
    shutil.copy(tmp_path / "SKU-RED" / "shelf.png", tmp_path / "SKU-BLUE" / "shelf-copy.png")
    with pytest.raises(
        EvaluateRefused, match=r"one held-out photo is in 2 SKU folders \(SKU-BLUE: .*shelf-copy"
    ):
        heldout_photos(tmp_path)


def test_a_tuned_tail_continues_the_frozen_trunk_and_trains_only_a_copy() -> None:
    backbone = open_backbone(BackboneSpec(name="tiny", image_px=32))
    images = [colour_photo(rgb, seed) for seed, rgb in enumerate(COLOURS.values())] * 2
    labels = np.array([0, 1, 2, 0, 1, 2], dtype=np.int64)
    maps = backbone.trunk_maps(images, 1)
    assert maps.shape[1:] == backbone.output_shape(1) == (32, 8, 8)
    tail = backbone.tail(1)
    # Trunk then tail is the whole backbone.
    np.testing.assert_allclose(tail_features(tail, maps), backbone.features(images), rtol=1e-5, atol=1e-6)
    frozen = [parameter.detach().clone() for parameter in backbone.stages.parameters()]
    predicted = fit_predict_tuned(maps, labels, maps, 3, tail, epochs=5, lr=1e-2, batch=2, seed=1)
    assert list(predicted) == list(labels)
    # The tail was trained; the backbone it was copied from was not.
    last = list(backbone.stages[-1].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(tail.parameters(), last, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(backbone.stages.parameters(), frozen, strict=True))
    with pytest.raises(ValueError, match="1 to 2 of the backbone's 3 stages, not 3"):
        backbone.tail(3)


def test_fine_tuned_classifiers_learn_from_synthetic_images_as_the_linear_ones_do(
    featurizer: Featurizer,
) -> None:
    # The misleading-real-photos case again, with the last stage fine-tuned: same verdicts.
    training, heldout = misleading_real_photos()
    config = EvaluationConfig(seed=3, classic_px=32, real_weight=1.0, tune_stages=1, tune_epochs=4)
    result = run_evaluation(training, heldout, featurizer, config)
    assert result.top1["A"] <= 0.25 and result.top1["A'"] <= 0.25
    assert result.top1["B"] >= 0.9 and result.top1["C"] >= 0.9
    assert result.summary()["gain_over_classic_top1"] >= 0.4


def test_classic_augmentations_are_never_smaller_than_the_backbone_input() -> None:
    """At --image-px 384 the augmentations of A' and B' were made at 256 px and upscaled to 384,
    while the real and synthetic images kept their detail: A' and B' lost by resolution alone."""
    backbone = open_backbone(BackboneSpec(name="tiny", image_px=64))
    seen: list[tuple[int, int]] = []
    features = backbone.features

    def recording(images: Sequence[Image.Image], batch: int = 32) -> npt.NDArray[np.float32]:
        seen.extend(image.size for image in images)
        return features(images, batch)

    backbone.features = recording  # type: ignore[method-assign]
    training, heldout = misleading_real_photos()
    config = EvaluationConfig(seed=3, classic_px=32, real_weight=1.0)
    result = run_evaluation(training, heldout, Featurizer(backbone, FeatureCache(None)), config)
    assert result.config["classic_px"] == 64  # what was used is what the result says
    classic = [size for size in seen if size != (48, 48)]  # the colour photos are 48 px
    assert classic and set(classic) == {(64, 64)}
    # A side above the backbone's is kept as asked.
    seen.clear()
    wider = dataclasses.replace(config, classic_px=80)
    run_evaluation(training, heldout, Featurizer(backbone, FeatureCache(None)), wider)
    assert {size for size in seen if size != (48, 48)} == {(80, 80)}


def test_histogram_bins_edges_and_range() -> None:
    assert histogram([-1.0, -0.05, 0.0, 0.1, 0.99, 1.0, 2.0], -1.0, 1.0, 20) == [
        1,
        *[0] * 8,
        1,
        1,
        1,
        *[0] * 7,
        2,
    ]
    # The page says so: a SKU that went from 0 to 100% is in the last bin, which holds its top edge.
    page = histogram_svg({"gain": [1.0, 0.95, 0.0]}, colours=["#000"], x_label="gain")
    assert "gain in [+0.9, +1.0]: 2 SKU(s)" in page and "gain in [+0.0, +0.1): 1 SKU(s)" in page


def test_perceptual_hash_sees_resized_copies_and_tells_photos_apart() -> None:
    original = shelf_photo(1)
    hash_of = {
        name: perceptual_hash(encode_jpeg(image) if name != "png" else encode_png(image))
        for name, image in {
            "jpeg": original,
            "png": original,
            "small": original.resize((120, 90), Image.Resampling.LANCZOS),
            "other": shelf_photo(2),
        }.items()
    }
    assert all(value is not None for value in hash_of.values())
    reference = np.frombuffer(hash_of["jpeg"] or b"", dtype=np.uint8)
    bits = {
        name: int(np.unpackbits(np.frombuffer(value or b"", dtype=np.uint8) ^ reference).sum())
        for name, value in hash_of.items()
    }
    assert reference.size == 32  # 256 bits
    assert bits["png"] <= 6 and bits["small"] <= 6 and bits["other"] > 40, bits
    # A 16-bit grey scan of the photo is the same photo (before, it was clipped to white: no hash).
    grey16 = Image.fromarray(np.asarray(original.convert("L"), dtype=np.uint16) * 257)
    assert grey16.mode.startswith("I;16")
    bits16 = np.unpackbits(
        np.frombuffer(perceptual_hash(encode_png(grey16)) or bytes(32), dtype=np.uint8) ^ reference
    )
    assert int(bits16.sum()) <= 12
    # A blank frame, or one that is mostly blank, has nothing to compare by: before, a red box and a
    # blue disc at the same place on white were 1 bit apart, a "copy". Bytes that are no image: no hash.
    assert perceptual_hash(encode_png(Image.new("RGB", (64, 64), (250, 250, 250)))) is None
    for shape in ("rectangle", "ellipse"):
        canvas = Image.new("RGB", (1000, 800), "white")
        getattr(ImageDraw.Draw(canvas), shape)(
            (400, 300, 600, 500), fill="red" if shape == "rectangle" else "blue"
        )
        assert perceptual_hash(encode_png(canvas)) is None, shape
    assert perceptual_hash(b"not an image") is None


def test_a_heldout_hash_also_sees_the_photo_mirrored() -> None:
    original = shelf_photo(1)
    held = heldout_hash(encode_jpeg(original))
    assert held is not None and held[:32] == perceptual_hash(encode_jpeg(original))
    flipped = ImageOps.mirror(original).resize((160, 120), Image.Resampling.LANCZOS)
    check_no_near_duplicates(
        [("held.jpg", held)], scenes=[("other.jpg", perceptual_hash(encode_jpeg(shelf_photo(2))) or b"")]
    )
    with pytest.raises(LeakageError, match=r"flipped.jpg looks like a copy of held-out held.jpg .*mirrored"):
        check_no_near_duplicates(
            [("held.jpg", held)], scenes=[("flipped.jpg", perceptual_hash(encode_jpeg(flipped)) or b"")]
        )
    with pytest.raises(ValueError, match="heldout_hash"):
        check_no_near_duplicates([("held.jpg", held[:32])], scenes=[])


def test_a_photo_with_detail_along_one_axis_only_is_still_checked() -> None:
    """Stripes: detail as shown, none turned a quarter (the hash compares left-right neighbours). One
    variant without detail dropped the whole part; with no plain border to fall back on, the photo had
    no held-out hash, and a plain resized copy of it went into training unseen."""
    rng = np.random.default_rng(5)
    columns = np.repeat(rng.integers(0, 256, size=32), 20).astype(np.uint8)
    stripes = Image.fromarray(np.tile(columns, (480, 1)), "L").convert("RGB")
    assert perceptual_hash(encode_png(stripes.rotate(90, expand=True))) is None  # that variant: no detail
    held = heldout_hash(encode_png(stripes))
    assert held is not None
    copy = perceptual_hash(encode_jpeg(stripes.resize((320, 240), Image.Resampling.LANCZOS)))
    assert copy is not None
    with pytest.raises(LeakageError, match=r"copy.jpg looks like a copy of held-out held.png .*resized"):
        check_no_near_duplicates([("held.png", held)], scenes=[("copy.jpg", copy)])


@pytest.mark.parametrize(
    ("bars", "colour"), [(1.08, "black"), (1.25, "black"), (1.25, "white"), (1.4, "black")]
)
def test_a_letterboxed_copy_of_a_heldout_photo_is_seen(bars: float, colour: str) -> None:
    """Plain bars added under a quarter of the frame: the copy was hashed by its frame, bars included,
    and passed (in-store photos with bars of 8% of their height read 8-33 bits from their originals). Its
    hashes now include the part inside the bars."""
    original = shelf_photo(1)
    held = heldout_hash(encode_jpeg(original))
    assert held is not None
    padded = ImageOps.pad(original, (320, round(240 * bars)), color=colour)
    copy = copy_hashes(encode_jpeg(padded))
    assert copy is not None
    with pytest.raises(LeakageError, match=r"padded.jpg looks like a copy of held-out held.jpg"):
        check_no_near_duplicates([("held.jpg", held)], scenes=[("padded.jpg", copy)])
    # Another photo, letterboxed the same way, is no copy.
    other = copy_hashes(encode_jpeg(ImageOps.pad(shelf_photo(2), (320, round(240 * bars)), color=colour)))
    check_no_near_duplicates([("held.jpg", held)], scenes=[("other.jpg", other or b"")])


def test_a_scene_letterboxed_from_a_heldout_photo_is_refused(
    colour_store: ManifestStore, heldout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenes = scene_library(tmp_path)
    held = shelf_photo(3)  # detail enough for a perceptual hash (the flat colour photos have none)
    (heldout / "SKU-BLUE" / "shelf.jpg").write_bytes(encode_jpeg(held))
    padded = ImageOps.pad(held, (held.width, round(held.height * 1.2)), color="black")
    (scenes / "shelves" / "wide.jpg").write_bytes(encode_jpeg(padded))
    args = evaluate_args(heldout, tmp_path / "eval", tmp_path, "--scenes", f"file://{scenes}")
    assert cli_main(args) == 2
    assert "wide.jpg looks like a copy of held-out" in capsys.readouterr().err


@pytest.mark.parametrize("angle", [90, 180, 270])
def test_a_heldout_hash_also_sees_the_photo_turned(angle: int) -> None:
    # A phone photo saved again without its EXIF orientation is the same photo turned a quarter or half
    # way; before, only as shown and mirrored were compared, and a turned copy passed.
    original = shelf_photo(1)
    held = heldout_hash(encode_jpeg(original))
    assert held is not None and held[:32] == perceptual_hash(encode_jpeg(original))
    turned = original.rotate(angle, expand=True)
    turned.thumbnail((200, 200))
    for copy in (turned, ImageOps.mirror(turned)):
        with pytest.raises(LeakageError, match=r"turned.jpg looks like a copy of held-out held.jpg .*turned"):
            check_no_near_duplicates(
                [("held.jpg", held)], scenes=[("turned.jpg", perceptual_hash(encode_jpeg(copy)) or b"")]
            )
    check_no_near_duplicates(
        [("held.jpg", held)],
        scenes=[("other.jpg", perceptual_hash(encode_jpeg(shelf_photo(2).rotate(angle))) or b"")],
    )


@pytest.mark.parametrize(
    ("where", "flip"), [("store", False), ("scenes", False), ("store", True), ("scenes", True)]
)
def test_a_resized_copy_of_a_heldout_photo_is_refused(
    colour_store: ManifestStore,
    heldout: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    where: str,
    flip: bool,
) -> None:
    # Before, only byte-identical copies (and ingest's own PNG of a photo) were caught: a held-out
    # photo shrunk for upload and ingested, or copied into the scenes, passed and inflated every figure.
    # A mirrored copy (the commonest augmentation) passed until 2026-12-02.
    (heldout / "SKU-BLUE" / "shelf.jpg").write_bytes(encode_jpeg(shelf_photo(3)))
    copy = shelf_photo(3).resize((160, 120), Image.Resampling.LANCZOS)
    if flip:
        copy = ImageOps.mirror(copy)
    scenes = tmp_path / "scenes"
    (scenes / "shelves").mkdir(parents=True)
    shelf_photo(4).save(scenes / "shelves" / "aisle.jpg")  # another photo: no refusal for it
    if where == "store":
        store_photo(colour_store, "SKU-BLUE", "real-small", "real", copy)
    else:
        copy.save(scenes / "shelves" / "small.jpg", quality=70)
    args = evaluate_args(heldout, tmp_path / "eval", tmp_path, "--scenes", f"file://{scenes}")
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    named = "real-small.png" if where == "store" else "small.jpg"
    assert f"{named} looks like a copy of held-out {heldout / 'SKU-BLUE' / 'shelf.jpg'}" in err, err
    assert "aisle.jpg" not in err
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--l2", "inf", "--l2: must be a number from 0 to 1e+06, got inf"),
        ("--l2", "-0.1", "--l2: must be a number from 0 to 1e+06, got -0.1"),
        ("--real-weight", "nan", "--real-weight: must be a number from 1e-06 to 1e+06, got nan"),
        ("--tune-lr", "inf", "--tune-lr: must be a number from 1e-09 to 1, got inf"),
        # A typo (80000 for 8) had no bound: the fine-tuning ran for days.
        ("--tune-epochs", "80000", "--tune-epochs: must be from 0 to 1000, got 80000"),
        ("--tune-epochs", "-1", "--tune-epochs: must be from 0 to 1000, got -1"),
        ("--seed", "-1", "--seed: must be from 0 to 9223372036854775807, got -1"),
        # Before, these ran the leakage checks and the feature extraction, then failed in a traceback
        # (torch.manual_seed overflow; L-BFGS "cannot be converted to type float"), or ran out of
        # memory (a 100000 px backbone input).
        ("--seed", str(2**64), "--seed: must be from 0 to 9223372036854775807"),
        ("--l2", "1e308", "--l2: must be a number from 0 to 1e+06, got 1e308"),
        ("--real-weight", "1e-300", "--real-weight: must be a number from 1e-06 to 1e+06"),
        ("--image-px", "100000", "--image-px: must be from 32 to 512, got 100000"),
        # EfficientNet-Lite0's last stages need 32 px: 16 to 31 were a torch traceback after the checks.
        ("--image-px", "24", "--image-px: must be from 32 to 512, got 24"),
        # Above 512 the decoded photo's centre square (at most 512 px) was only scaled up.
        ("--image-px", "640", "--image-px: must be from 32 to 512, got 640"),
    ],
)
def test_a_number_out_of_bounds_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    # Before, inf passed as an L2 weight or a learning rate: the run went on and meant nothing.
    with pytest.raises(SystemExit) as exit_info:
        cli_main(evaluate_args(tmp_path / "heldout", tmp_path / "eval", tmp_path, option, value))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_hash_cache_from_before_turned_copies_is_not_read_as_the_new_hashes(tmp_path: Path) -> None:
    # Held-out hashes grew from 512 to 2,048 bits; an --cache-dir filled before held 512-bit values
    # under the old kind's name, and reading them refused every later run (wrong length).
    from services.trainstore.evaluation import _cached_hash

    data = encode_jpeg(shelf_photo(1))
    old = tmp_path / "dhash256-mirrored" / "abc"
    old.parent.mkdir(parents=True)
    old.write_text(bytes(64).hex())
    value = _cached_hash(tmp_path, "abc", lambda: data, heldout=True)
    assert value == heldout_hash(data)


@pytest.mark.parametrize(
    "left", [b"", b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }"]
)
def test_a_cached_feature_file_cut_short_is_computed_again(tmp_path: Path, left: bytes) -> None:
    """The cache's file is renamed into place unsynced: after a power cut it can be empty or cut short,
    and every later run that needed it stopped in a traceback from numpy (EOFError, ValueError)."""
    backbone = open_backbone(BackboneSpec(name="tiny", image_px=32))
    photo = photo_from_bytes("SKU-RED", "real", "red.png", encode_png(Image.new("RGB", (32, 32), "red")))
    fresh = Featurizer(backbone, FeatureCache(None)).of([photo])
    cache = FeatureCache(tmp_path / "features")
    Featurizer(backbone, cache).of([photo])
    (stored,) = (tmp_path / "features").rglob("*.npy")
    stored.write_bytes(left)
    assert np.array_equal(Featurizer(backbone, cache).of([photo]), fresh)
    assert np.array_equal(np.load(stored), fresh[0])  # written again whole
