"""Dataset tools: stats, and export under the real:synthetic policy (every class real, synthetic capped)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from PIL import Image

from shared.errors import ChecksumMismatch, ObjectMissing
from shared.store import FileStore
from shared.trainstore.dataset import (
    ExportFit,
    export_dataset,
    plan_export,
    sku_stats,
    synthetic_left_out_by_evaluation,
)
from shared.trainstore.manifest import ManifestStore
from shared.trainstore.withdrawals import Withdrawals
from skuforge_cli.main import main as cli_main
from tests.support.trainstore import PREFIX, add_item, as_mount_point


@pytest.fixture
def small_store(tmp_path: Path) -> ManifestStore:
    """A: 2 real, 7 synthetic (+1 pending, +1 rejected); B: 1 real, 1 synthetic; C: synthetic only."""
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    for index in range(2):
        add_item(manifests, "SKU-A", f"real-{index}", "real", "reference")
    for index in range(6):
        add_item(manifests, "SKU-A", f"gen-{index}", "synthetic", "accepted")
    add_item(manifests, "SKU-A", "gen-approved", "synthetic", "approved")
    add_item(manifests, "SKU-A", "gen-pending", "synthetic", "pending")
    add_item(manifests, "SKU-A", "gen-rejected", "synthetic", "rejected")
    add_item(manifests, "SKU-B", "real-0", "real", "reference")
    add_item(manifests, "SKU-B", "gen-0", "synthetic", "accepted")
    for index in range(3):
        add_item(manifests, "SKU-C", f"gen-{index}", "synthetic", "accepted")
    return manifests


def test_plan_keeps_only_classes_with_real_images_and_caps_synthetic(small_store: ManifestStore) -> None:
    plan = plan_export(small_store.iter_rows(), max_synthetic_per_real=3)
    by_class = {c.sku_id: c for c in plan.classes}
    assert sorted(by_class) == ["SKU-A", "SKU-B"]
    assert plan.skipped == {"SKU-C": "0 real image(s), need at least 1"}
    assert len(by_class["SKU-A"].real) == 2
    assert len(by_class["SKU-A"].synthetic) == 6 and by_class["SKU-A"].synthetic_dropped == 1  # 7 trainable
    assert len(by_class["SKU-B"].synthetic) == 1
    # Pending and rejected items are never exported.
    exported = {row.item_id for c in plan.classes for row in c.synthetic}
    assert not exported & {"gen-pending", "gen-rejected"}
    # Same store, same selection.
    again = plan_export(small_store.iter_rows(), max_synthetic_per_real=3)
    assert [r.item_id for r in again.classes[0].synthetic] == [r.item_id for r in plan.classes[0].synthetic]


def test_a_sku_with_nothing_to_train_on_is_named_not_silently_left_out(small_store: ManifestStore) -> None:
    """Only SKUs with a trainable image reached the plan: one whose photos were all unusable, or whose
    images all wait for review, was in neither the classes nor the skipped list."""
    add_item(small_store, "SKU-D", "real-0", "real", "unusable")
    add_item(small_store, "SKU-D", "gen-0", "synthetic", "pending")
    add_item(small_store, "SKU-D", "gen-1", "synthetic", "pending")
    add_item(small_store, "SKU-E", "real-0", "real", "reference")
    plan = plan_export(
        small_store.iter_rows(), max_synthetic_per_real=3, withdrawn_photos={"SKU-E": {"real-0"}}
    )
    assert plan.skipped["SKU-D"] == "no image to train on (2 pending, 1 unusable)"
    # A withdrawal whose marker is written and whose row is not yet (the stage mends it on its next write).
    assert plan.skipped["SKU-E"] == "no image to train on (1 withdrawn)"
    assert list(plan.skipped) == sorted(plan.skipped)


def test_plan_min_real_and_zero_synthetic(small_store: ManifestStore) -> None:
    plan = plan_export(small_store.iter_rows(), max_synthetic_per_real=0, min_real=2)
    assert [c.sku_id for c in plan.classes] == ["SKU-A"]
    assert plan.classes[0].synthetic == []
    assert set(plan.skipped) == {"SKU-B", "SKU-C"}
    with pytest.raises(ValueError, match="every exported class needs real images"):
        plan_export([], max_synthetic_per_real=1, min_real=0)


def test_an_evaluation_leaves_out_synthetic_images_where_they_hurt(small_store: ManifestStore) -> None:
    evaluation = {"gain": {"SKU-A": -0.12, "SKU-B": 0.05, "SKU-GONE": -0.5}}
    left_out = synthetic_left_out_by_evaluation(evaluation, min_gain=0.0, source="run1/evaluation.json")
    # SKU-GONE is not in the store: harmless. The minus is a true minus sign, as the summary prints it.
    assert left_out == {
        "SKU-A": "B\u2212A \u22120.12 < 0.00 in run1/evaluation.json",
        "SKU-GONE": "B\u2212A \u22120.50 < 0.00 in run1/evaluation.json",
    }
    plan = plan_export(small_store.iter_rows(), max_synthetic_per_real=3, no_synthetic=left_out)
    by_class = {c.sku_id: c for c in plan.classes}
    assert by_class["SKU-A"].synthetic == [] and len(by_class["SKU-A"].real) == 2
    assert (
        by_class["SKU-A"].synthetic_dropped == 7 and by_class["SKU-A"].synthetic_left_out == left_out["SKU-A"]
    )
    assert len(by_class["SKU-B"].synthetic) == 1 and by_class["SKU-B"].synthetic_left_out == ""
    # A stricter threshold takes SKU-B's too; SKUs the evaluation did not measure keep theirs.
    assert set(synthetic_left_out_by_evaluation(evaluation, min_gain=0.1)) == {"SKU-A", "SKU-B", "SKU-GONE"}
    assert synthetic_left_out_by_evaluation({"gain": {}}, min_gain=0.0) == {}
    # A small loss, or one just under the threshold, printed as "-0.00 < 0.00" (read as false).
    close = {"gain": {"SKU-A": -0.0033, "SKU-B": 0.0951}}
    assert synthetic_left_out_by_evaluation(close, min_gain=0.0, source="e.json") == {
        "SKU-A": "B\u2212A \u22120.003 < 0.000 in e.json"
    }
    assert synthetic_left_out_by_evaluation(close, min_gain=0.0952, source="e.json")["SKU-B"] == (
        "B\u2212A 0.0951 < 0.0952 in e.json"
    )


def test_an_evaluation_that_saw_none_of_a_skus_synthetic_images_does_not_leave_them_out() -> None:
    # SKU-B's synthetic images were all pending when it was evaluated: its B - A (-0.67) is other
    # SKUs' synthetic images taking its held-out photos, which says nothing about its own (approved
    # since); leaving them out would punish SKU-B for SKU-A's images.
    evaluation = {
        "gain": {"SKU-A": -0.12, "SKU-B": -0.67},
        "train_counts": {
            "SKU-A": {"real": 2, "synthetic": 4, "classic": 4},
            "SKU-B": {"real": 2, "synthetic": 0, "classic": 0},
        },
    }
    assert set(synthetic_left_out_by_evaluation(evaluation, min_gain=0.0)) == {"SKU-A"}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"top1": {"A": 0.5}}, "has no per-SKU 'gain' object"),
        ([1, 2], "has no per-SKU 'gain' object"),
        ({"gain": {"SKU-A": "bad"}}, "gain of 'SKU-A' is 'bad', not a number"),
        ({"gain": {"SKU-A": True}}, "not a number"),
        # json.loads reads NaN and Infinity: NaN would keep every synthetic image, -Infinity drop them.
        ({"gain": {"SKU-A": float("nan")}}, "gain of 'SKU-A' is nan, not a number"),
        ({"gain": {"SKU-A": float("-inf")}}, "gain of 'SKU-A' is -inf, not a number"),
    ],
)
def test_an_unusable_evaluation_is_a_clear_error(document: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synthetic_left_out_by_evaluation(document, min_gain=0.0)  # type: ignore[arg-type]


def count_tree(out: Path) -> dict[str, dict[str, int]]:
    tree: dict[str, dict[str, int]] = {}
    for path in sorted(out.glob("*/*.png")):
        counts = tree.setdefault(path.parent.name, {"real": 0, "synthetic": 0})
        counts[path.name.split("-", 1)[0]] += 1
    return tree


def test_imagefolder_export_honours_the_policy(
    small_store: ManifestStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    out = tmp_path / "export"
    code = cli_main(
        [
            "dataset",
            "export",
            str(out),
            "--format",
            "imagefolder",
            "--size",
            "64",
            "--max-synthetic-per-real",
            "2",
        ]
    )
    assert code == 0
    tree = count_tree(out)
    assert tree == {"SKU-A": {"real": 2, "synthetic": 4}, "SKU-B": {"real": 1, "synthetic": 1}}
    for counts in tree.values():
        assert counts["real"] >= 1 and counts["synthetic"] <= 2 * counts["real"]
    # The stored images are 100 x 80: the shorter side goes to --size, nothing is padded.
    sizes = {Image.open(path).size for path in out.glob("*/*.png")}
    assert sizes == {(80, 64)}
    printed = capsys.readouterr().out
    assert "exported 2 classes, 3 real + 5 synthetic images" in printed
    assert "with the shorter side at 64 px" in printed
    assert "SKU-C" in printed and "skipped" in printed
    summary = json.loads((out / "export.json").read_text())
    assert summary["classes"]["SKU-A"] == {"real": 2, "synthetic": 4, "dropped": 3}


@pytest.mark.parametrize("points", ["-5", "5", "-1.5"])
def test_a_min_gain_in_points_is_refused_as_not_a_fraction(
    small_store: ManifestStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    points: str,
) -> None:
    """The docs quote gains in points; the gain is a fraction. ``--min-gain -5`` read as -500 points
    left nothing out, silently; -0.15 (-15 points) is what keeps SKU-A's B-A of -0.12."""
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({"gain": {"SKU-A": -0.12, "SKU-B": 0.05}}))
    base = ["dataset", "export", "--format", "imagefolder", "--size", "64", "--max-synthetic-per-real", "2"]
    base += ["--evaluation", str(evaluation)]
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*base, str(tmp_path / "refused"), "--min-gain", points])
    assert exit_info.value.code == 2
    fraction = "a fraction of top-1 between -1 and 1 (-0.05 for -5 points)"
    assert f"--min-gain: must be {fraction}, got {points}" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    assert cli_main([*base, str(tmp_path / "export"), "--min-gain", "-0.15"]) == 0
    assert count_tree(tmp_path / "export")["SKU-A"] == {"real": 2, "synthetic": 4}


def test_an_evaluation_folder_is_read_as_the_evaluation_json_in_it(
    small_store: ManifestStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``skuforge evaluate --out DIR`` writes DIR/evaluation.json; ``--evaluation DIR`` was refused as
    "not a readable JSON file ([Errno 21] Is a directory)". The folder's evaluation.json is read; a
    folder without one is refused, naming the file it looked for."""
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "evaluation.json").write_text(json.dumps({"gain": {"SKU-A": -0.12, "SKU-B": 0.05}}))
    argv = ["dataset", "export", "--format", "imagefolder", "--size", "64", "--max-synthetic-per-real", "2"]
    assert cli_main([*argv, "--evaluation", str(tmp_path / "eval"), str(tmp_path / "out")]) == 0
    assert count_tree(tmp_path / "out")["SKU-A"] == {"real": 2, "synthetic": 0}  # B-A < 0: left out
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exited:
        cli_main([*argv, "--evaluation", str(tmp_path / "empty"), str(tmp_path / "refused")])
    assert exited.value.code == 2
    [error] = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert error == (
        f"skuforge dataset export: error: --evaluation {tmp_path / 'empty'}: a folder with no "
        "evaluation.json in it (run skuforge evaluate --out DIR first)"
    )
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize(("fit", "size"), [("keep", (40, 32)), ("pad", (32, 32))])
def test_jsonl_export_writes_rows_images_and_masks(
    small_store: ManifestStore, tmp_path: Path, fit: ExportFit, size: tuple[int, int]
) -> None:
    out = tmp_path / "jsonl"
    summary = export_dataset(small_store, out, fmt="jsonl", size_px=32, fit=fit, max_synthetic_per_real=1)
    rows = [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]
    assert len(rows) == summary.real + summary.synthetic == 3 + 3
    assert {row["label"] for row in rows} == {"SKU-A", "SKU-B"}
    for row in rows:
        image = np.asarray(Image.open(out / row["image"]))
        assert image.shape[1::-1] == size
        # Padding (100 x 80 into a square) adds white rows above and below; keeping adds none.
        assert (image[0] == 255).all() == (fit == "pad")
        mask = np.asarray(Image.open(out / row["mask"]))
        assert mask.shape == image.shape[:2] and set(np.unique(mask)) <= {0, 255}


def test_an_unknown_fit_is_refused(small_store: ManifestStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown fit 'stretch'; expected one of keep, pad"):
        export_dataset(
            small_store,
            tmp_path / "x",
            fmt="jsonl",
            fit="stretch",  # type: ignore[arg-type]
            max_synthetic_per_real=1,
        )


def test_an_export_from_a_store_without_skus_is_refused_not_an_empty_training_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A mistyped SKUFORGE_STORE_URI reads as an empty store; before, this wrote a training set of no
    # class and exited 0. A store problem, not a usage error: one line and exit 1, as `stats` says it
    # (the full usage and exit 2 before).
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'no-such-store'}")
    out = tmp_path / "out"
    argv = ["dataset", "export", str(out), "--format", "imagefolder", "--max-synthetic-per-real", "2"]
    assert cli_main(argv) == 1
    assert capsys.readouterr().err == (
        f"skuforge dataset export: the retraining store file://{tmp_path}/no-such-store/{PREFIX} has no "
        "SKUs; is SKUFORGE_STORE_URI (and SKUFORGE_TRAINSTORE_PREFIX) the store the trainstore service "
        "writes?\n"
    )
    assert not out.exists()


def test_export_refuses_a_non_empty_directory_and_a_tampered_object(
    small_store: ManifestStore, tmp_path: Path
) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(FileExistsError):
        export_dataset(small_store, busy, fmt="imagefolder", max_synthetic_per_real=1)
    key = small_store.key("images/SKU-B/real/real-0.png")
    small_store.store.put_bytes(key, small_store.store.get_bytes(key) + b"x")
    with pytest.raises(ChecksumMismatch):
        export_dataset(small_store, tmp_path / "out", fmt="imagefolder", max_synthetic_per_real=1)


def test_an_item_the_live_store_changes_during_the_export_is_left_out_not_fatal(
    small_store: ManifestStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export reads the manifests, then the images, perhaps hours later. Before, an item rendered
    again (its object overwritten, its row updated) or a photo withdrawn meanwhile stopped the whole
    export with checksum_mismatch or object_missing, as if the store had been tampered with. A class
    left without real images is left out, as the policy leaves such a class out."""
    iter_rows = ManifestStore.iter_rows

    def then_the_store_changes(self: ManifestStore, *args: Any, **kwargs: Any) -> Any:
        yield from iter_rows(self, *args, **kwargs)
        add_item(self, "SKU-A", "gen-0", "synthetic", "accepted", size_px=64)  # rendered again
        add_item(self, "SKU-B", "real-0", "real", "reference", size_px=64)  # SKU-B's only real photo

    monkeypatch.setattr(ManifestStore, "iter_rows", then_the_store_changes)
    summary = export_dataset(small_store, tmp_path / "out", fmt="jsonl", max_synthetic_per_real=10)

    assert summary.changed_during_export == 2
    assert summary.classes == {"SKU-A": {"real": 2, "synthetic": 6, "dropped": 0}}
    assert "SKU-B" in summary.skipped and "changed while the export ran" in summary.skipped["SKU-B"]
    lines = [json.loads(line) for line in (tmp_path / "out" / "dataset.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and "gen-0" not in {line["item_id"] for line in lines}
    assert not (tmp_path / "out" / "images" / "SKU-B").exists()  # a class of synthetic images only: out
    assert any("left out: the store changed them" in line for line in summary.lines())


def test_a_photo_withdrawn_during_the_export_is_left_out_and_a_missing_object_still_stops_it(
    small_store: ManifestStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    by_sku = Withdrawals.by_sku

    def then_withdrawn(self: Withdrawals) -> Any:
        found = by_sku(self)  # read before the change: the plan still has the photo
        self.withdraw("SKU-A", "soda can", ["real-1"], by="test")  # its row withdrawn, its objects deleted
        return found

    monkeypatch.setattr(Withdrawals, "by_sku", then_withdrawn)
    summary = export_dataset(small_store, tmp_path / "out", fmt="imagefolder", max_synthetic_per_real=10)
    assert summary.changed_during_export == 1 and summary.classes["SKU-A"]["real"] == 1
    assert not (tmp_path / "out" / "SKU-A" / "real-real-1.png").exists()
    # An object gone while its row still names it is no change of the store's: it stops the export.
    monkeypatch.setattr(Withdrawals, "by_sku", by_sku)
    small_store.store.delete(small_store.key("images/SKU-B/real/real-0.png"))
    with pytest.raises(ObjectMissing):
        export_dataset(small_store, tmp_path / "again", fmt="imagefolder", max_synthetic_per_real=10)
    assert not (tmp_path / "again").exists()


def test_an_export_into_a_place_that_cannot_be_a_folder_is_a_clear_error(
    small_store: ManifestStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before, OUT under a file was a NotADirectoryError traceback, and a place mkdir refuses (/proc)
    # a FileNotFoundError traceback.
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            [
                "dataset",
                "export",
                str(tmp_path / "a-file" / "out"),
                "--format",
                "jsonl",
                "--max-synthetic-per-real",
                "1",
            ]
        )
    assert exit_info.value.code == 2
    assert f"{tmp_path / 'a-file'} is a file, not a folder" in capsys.readouterr().err
    # /proc is tried, not judged by its permission bits (which say yes to root): refused up front.
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            [
                "dataset",
                "export",
                "/proc/skuforge-export",
                "--format",
                "jsonl",
                "--max-synthetic-per-real",
                "1",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "OUT /proc/skuforge-export: cannot write in /proc (" in err and "Traceback" not in err


def test_stats_per_sku(
    small_store: ManifestStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stats = {s.sku_id: s for s in sku_stats(small_store.iter_rows())}
    a = stats["SKU-A"]
    assert (a.real, a.synthetic_accepted, a.synthetic_approved, a.pending, a.rejected) == (2, 6, 1, 1, 1)
    assert a.mean_iou == pytest.approx(0.95)
    assert (stats["SKU-C"].real, stats["SKU-C"].synthetic_accepted) == (0, 3)
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    assert cli_main(["dataset", "stats", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["sku_id"] for line in lines] == ["SKU-A", "SKU-B", "SKU-C"]
    assert lines[0]["pending"] == 1


def _refused_imagefolder_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *sku_ids: str
) -> tuple[ManifestStore, str]:
    """A store of one real photo per SKU id, exported as imagefolder: refused (exit 2), nothing
    written; returns the store and what the CLI said."""
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    for sku_id in sku_ids:
        add_item(manifests, sku_id, "real-0", "real", "reference")
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["dataset", "export", str(out), "--format", "imagefolder", "--max-synthetic-per-real", "1"])
    assert exit_info.value.code == 2 and not out.exists()
    return manifests, capsys.readouterr().err


def test_sku_ids_that_differ_only_in_case_are_refused_as_imagefolder_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As class folders "Milk" and "milk" merge into one class on macOS or Windows, where an export is
    # often copied to train: one SKU's images would silently carry the other's label.
    manifests, err = _refused_imagefolder_export(tmp_path, monkeypatch, capsys, "Milk", "milk", "Oats")
    assert "SKU ids that differ only in case: Milk and milk" in err and "--format jsonl" in err
    # One of them on its own, or jsonl (labels are strings there), is fine.
    export_dataset(
        manifests, tmp_path / "one", fmt="imagefolder", max_synthetic_per_real=2, sku_ids=["milk", "Oats"]
    )
    assert sorted(p.name for p in (tmp_path / "one").iterdir() if p.is_dir()) == ["Oats", "milk"]
    # jsonl keeps them apart where their images have file names of their own (the test below).


@pytest.mark.parametrize("size", ["1", "15", "4097", "100000"])
def test_a_size_out_of_range_is_refused_naming_the_flag_and_nothing_is_staged(
    size: str,
    small_store: ManifestStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before: --size 1 was refused naming the exporter's size_px; --size 100000 ran away, staging beside OUT.
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    argv = ["dataset", "export", str(tmp_path / "out"), "--format", "jsonl", "--max-synthetic-per-real", "1"]
    with pytest.raises(SystemExit) as exited:
        cli_main([*argv, "--size", size])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(f"argument --size: must be from 16 to 4096, got {size}\n") and "size_px" not in err
    assert [path.name for path in tmp_path.iterdir()] == ["store"]


def test_export_decodes_under_the_settings_limits(
    small_store: ManifestStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The stage stores images under SKUFORGE_MAX_IMAGE_PIXELS; export decoded them under the default
    40 MP, so a store the settings let take larger images could not be exported at all."""
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("SKUFORGE_TRAINSTORE_PREFIX", PREFIX)
    monkeypatch.setenv("SKUFORGE_MAX_IMAGE_PIXELS", "5000")  # under the stored 100 x 80 images
    monkeypatch.setenv("SKUFORGE_MIN_PHOTO_SIDE_PX", "32")
    argv = ["dataset", "export", "--format", "jsonl", "--max-synthetic-per-real", "1", str(tmp_path / "out")]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "too_many_pixels" in err
    # Among thousands of images, the one refused is named.
    assert f"file://{tmp_path / 'store'}/{PREFIX}/images/" in err and ".png: " in err
    assert not (tmp_path / "out").exists()


def test_into_a_mount_point_the_index_and_summary_are_moved_last(
    small_store: ManifestStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Moved one by one into an existing OUT (a mounted volume), dataset.jsonl and export.json went
    first: a kill between two renames left them beside images not yet moved, a set that looks whole."""
    out = tmp_path / "mounted"
    out.mkdir()
    as_mount_point(out, monkeypatch)
    moved: list[str] = []
    rename = Path.rename

    def recording(self: Path, target: Any) -> Any:
        if Path(target).parent == out:
            moved.append(Path(target).name)
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", recording)
    export_dataset(small_store, out, fmt="jsonl", size_px=32, max_synthetic_per_real=1)
    assert moved[-2:] == ["dataset.jsonl", "export.json"] and set(moved) >= {"images", "masks"}


def test_a_sku_id_named_like_the_summary_file_is_refused_as_an_imagefolder_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its class folder took export.json's place: the export failed at its very end ("Is a directory").
    manifests, err = _refused_imagefolder_export(tmp_path, monkeypatch, capsys, "Export.JSON", "Oats")
    assert "SKU id 'Export.JSON' is the name of the export's summary file (export.json)" in err
    assert "--format jsonl" in err
    # As jsonl its images are under images/, beside nothing of the export's own.
    export_dataset(manifests, tmp_path / "jsonl", fmt="jsonl", max_synthetic_per_real=1)
    assert (tmp_path / "jsonl" / "export.json").is_file()
    assert (tmp_path / "jsonl" / "images" / "Export.JSON").is_dir()


def test_an_export_of_a_blank_sku_id_names_it_quoted(
    small_store: ManifestStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--sku ""`` (an empty shell variable) and ``--sku "SKU-A "`` read "no SKU , SKU-A  in the store":
    neither id could be told from the message."""
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    out = tmp_path / "out"
    argv = ["dataset", "export", str(out), "--format", "jsonl", "--max-synthetic-per-real", "1"]
    with pytest.raises(SystemExit) as exited:
        cli_main([*argv, "--sku", "", "--sku", "SKU-A ", "--sku", "SKU-A"])
    assert exited.value.code == 2
    assert (
        "error: no SKU '', 'SKU-A ' in the store (skuforge dataset stats lists them)"
        in capsys.readouterr().err
    )
    assert not out.exists()


def test_an_export_of_some_skus_with_an_evaluation_reads_and_notes_only_those(
    small_store: ManifestStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With ``--evaluation``, the check that the store changed since it was measured planned every SKU of
    the store, not the ``--sku`` ones: ``--sku SKU-A`` was told SKU-B's gain was out of date, and a SKU not
    exported with an unreadable manifest part stopped the export (without ``--evaluation`` it went on)."""
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(
        json.dumps(
            {
                "gain": {"SKU-A": -0.12, "SKU-B": 0.05},
                "train_counts": {"SKU-A": {"real": 2, "synthetic": 4}, "SKU-B": {"real": 1, "synthetic": 0}},
                "inputs": {"max_synthetic_per_real": 2, "min_real": 1},
            }
        )
    )
    unreadable = (
        b'{"item_id":"x","sku_id":"SKU-C","category":"can","source":"real","status":"reference","iou":"high"}'
    )
    small_store.store.put_bytes(f"{PREFIX}/manifests/SKU-C/part-d-0000000099-{'0' * 32}.jsonl", unreadable)
    argv = ["dataset", "export", str(tmp_path / "out"), "--format", "imagefolder", "--size", "64"]
    argv += ["--max-synthetic-per-real", "2", "--evaluation", str(evaluation), "--sku", "SKU-A"]
    assert cli_main(argv) == 0
    assert "note:" not in capsys.readouterr().err
    assert count_tree(tmp_path / "out") == {"SKU-A": {"real": 2, "synthetic": 0}}  # B-A < 0: left out


def test_an_export_error_shows_the_export_usage_and_a_blank_evaluated_sku_id_quoted(
    small_store: ManifestStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A refusal of the export's own (a missing --evaluation file) printed the usage of `skuforge
    dataset` (stats, export, compact), not of `export`; and an evaluation's gain of a blank SKU id
    (a hand-edited file) was noted as "SKUs this store does not have ()", naming nothing."""
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    argv = ["dataset", "export", "--format", "jsonl", "--max-synthetic-per-real", "1", "--evaluation"]
    with pytest.raises(SystemExit) as exited:
        cli_main([*argv, str(tmp_path / "missing.json"), str(tmp_path / "out")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: skuforge dataset export ")
    assert "skuforge dataset export: error: --evaluation " in err and "no such file" in err
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({"gain": {"": 0.1, "SKU-A ": 0.2, "SKU-A": 0.0}, "inputs": {}}))
    assert cli_main([*argv, str(evaluation), str(tmp_path / "out")]) == 0
    assert "it has gains of SKUs this store does not have ('', 'SKU-A '); they are not used" in (
        capsys.readouterr().err
    )


def test_jsonl_images_of_case_twins_that_would_share_a_file_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Labels are strings in jsonl, but the images are files: images/Milk/real-front.png and
    # images/milk/real-front.png are one file on macOS or Windows, so one SKU's line named the other's image.
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    add_item(manifests, "Milk", "front", "real", "reference")
    add_item(manifests, "milk", "front", "real", "reference")
    add_item(manifests, "milk", "side", "real", "reference")
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["dataset", "export", str(out), "--format", "jsonl", "--max-synthetic-per-real", "1"])
    assert exit_info.value.code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "images/Milk/real-front.png and images/milk/real-front.png" in err and "--sku" in err
    # Case twins whose images have file names of their own are kept apart in jsonl.
    add_item(manifests, "Oat", "front", "real", "reference")
    add_item(manifests, "OAT", "back", "real", "reference")
    summary = export_dataset(
        manifests, tmp_path / "twins", fmt="jsonl", max_synthetic_per_real=1, sku_ids=["Oat", "OAT"]
    )
    assert sorted(summary.classes) == ["OAT", "Oat"]


@pytest.mark.parametrize("fmt", ["imagefolder", "jsonl"])
@pytest.mark.parametrize("sku_id", ["CON", "nul", "Com1.v2", "LPT0", "Milk."])
def test_a_sku_id_windows_cannot_hold_as_a_folder_is_refused(
    fmt: Literal["imagefolder", "jsonl"],
    sku_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Each SKU is a folder in both formats: Windows cannot make one named CON (COM1.v2 neither), and
    # makes "Milk." as "Milk": an export copied there to train failed half-way or renamed a class.
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    for sku in (sku_id, "CONSOLE"):
        add_item(manifests, sku, "real-0", "real", "reference")
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["dataset", "export", str(out), "--format", fmt, "--max-synthetic-per-real", "1"])
    assert exit_info.value.code == 2 and not out.exists()
    assert f"SKU id {sku_id!r} cannot be a folder name on Windows" in capsys.readouterr().err
    # A name that only starts like a reserved one is fine.
    summary = export_dataset(manifests, out, fmt=fmt, max_synthetic_per_real=1, sku_ids=["CONSOLE"])
    assert list(summary.classes) == ["CONSOLE"]


def test_export_help_states_the_min_real_default(capsys: pytest.CaptureFixture[str]) -> None:
    # Before: "classes with fewer real images are left out", without its default of 1.
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["dataset", "export", "--help"])
    assert exit_info.value.code == 0
    assert "classes with fewer real images are left out (default 1)" in " ".join(
        capsys.readouterr().out.split()
    )


@pytest.mark.parametrize(("fmt", "folder"), [("imagefolder", ""), ("jsonl", "images/")])
def test_images_of_one_sku_whose_item_ids_differ_only_in_case_are_refused(
    fmt: Literal["imagefolder", "jsonl"],
    folder: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Milk/real-Front.png and Milk/real-front.png are one file on macOS or Windows: the second image
    # written over the first, and the summary (and in jsonl, two lines) counting both.
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    for item_id in ("Front", "front", "side"):
        add_item(manifests, "Milk", item_id, "real", "reference")
    add_item(manifests, "Oats", "front", "real", "reference")
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["dataset", "export", str(out), "--format", fmt, "--max-synthetic-per-real", "1"])
    assert exit_info.value.code == 2 and not out.exists() and not list(tmp_path.glob(".out.partial-*"))
    err = capsys.readouterr().err
    assert f"{folder}Milk/real-Front.png and {folder}Milk/real-front.png" in err
    assert "leave out SKU 'Milk'" in err and "--sku" in err
    # The other SKUs export.
    summary = export_dataset(
        manifests, tmp_path / "oats", fmt=fmt, max_synthetic_per_real=1, sku_ids=["Oats"]
    )
    assert sorted(summary.classes) == ["Oats"]
