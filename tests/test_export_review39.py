"""``skuforge dataset export`` with odd input (review 39): an empty path argument, one photo stored under
two SKUs, a lost mask."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.store import FileStore
from shared.trainstore.manifest import ManifestRow, ManifestStore
from skuforge_cli.main import main as cli_main
from tests.support.trainstore import PREFIX, add_item


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ManifestStore:
    """SKU-A: 1 real, 2 synthetic; in a file store SKUFORGE_STORE_URI points at."""
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    add_item(manifests, "SKU-A", "real-0", "real", "reference")
    for index in range(2):
        add_item(manifests, "SKU-A", f"gen-{index}", "synthetic", "accepted")
    return manifests


EXPORT = ["dataset", "export", "--format", "imagefolder", "--size", "64", "--max-synthetic-per-real", "2"]


def test_an_empty_out_is_a_usage_error_not_the_current_folder(
    store: ManifestStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `skuforge dataset export "$OUT"` with the variable unset exported into the current folder.
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*EXPORT, ""])
    assert exit_info.value.code == 2
    assert "argument out: the path is empty (an unset shell variable?)" in capsys.readouterr().err
    assert list((tmp_path / "cwd").iterdir()) == []


def test_an_empty_evaluation_is_a_usage_error_not_the_current_folders(
    store: ManifestStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--evaluation "$EVAL"` with the variable unset read the evaluation.json of the current folder, an
    # old one perhaps, and left out the synthetic images it named without a word of where it came from.
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "evaluation.json").write_text(json.dumps({"gain": {"SKU-A": -0.5}}))
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*EXPORT, "--evaluation", "", str(tmp_path / "export")])
    assert exit_info.value.code == 2
    assert "argument --evaluation: the path is empty (an unset shell variable?)" in capsys.readouterr().err
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("points", [-5, 12.5, -1.5])
def test_an_evaluation_whose_gains_are_no_fraction_of_top1_is_refused(
    store: ManifestStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    points: float,
) -> None:
    # --min-gain -5 is refused as points, not a fraction; a gain of -5 in the file (one edited by hand,
    # or written by another tool in points) was compared with --min-gain -0.10 as it stood, and
    # SKU-A's synthetic images were left out for a B-A of -5 points, half the threshold.
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({"gain": {"SKU-A": points}}))
    argv = [*EXPORT, "--evaluation", str(evaluation), "--min-gain", "-0.10", str(tmp_path / "export")]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 2
    said = f"gain of 'SKU-A' is {points!r}, not a fraction of top-1 between -1 and 1"
    assert said in capsys.readouterr().err
    assert not (tmp_path / "export").exists()


def _copy_photo(manifests: ManifestStore, row: ManifestRow, sku_id: str) -> None:
    """Store ``row``'s photo under ``sku_id`` too, as an ingest of a photo copied into two SKUs' folders."""
    image = f"images/{sku_id}/real/{row.item_id}.png"
    manifests.store.put_bytes(manifests.key(image), manifests.store.get_bytes(manifests.key(str(row.image))))
    manifests.append(sku_id, [row.model_copy(update={"sku_id": sku_id, "image": image, "mask": None})])


def test_a_photo_stored_under_two_skus_is_refused_naming_both(
    store: ManifestStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One picture exported into both classes: the same pixels taught as two products.
    add_item(store, "SKU-B", "real-1", "real", "reference")
    _copy_photo(store, store.read_sku("SKU-A")["real-0"], "SKU-B")
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*EXPORT, str(tmp_path / "export")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "photo real-0 is stored under SKU-A and SKU-B" in err
    assert "skuforge ingest --withdraw-missing" in err
    assert not (tmp_path / "export").exists()

    # Withdrawn from the SKU it is not of, it exports into the other alone.
    withdrawn = store.read_sku("SKU-B")["real-0"].model_copy(
        update={"status": "withdrawn", "image": None, "image_sha256": None}
    )
    store.append("SKU-B", [withdrawn])
    assert cli_main([*EXPORT, str(tmp_path / "export")]) == 0
    assert sorted(path.name for path in (tmp_path / "export" / "SKU-B").iterdir()) == ["real-real-1.png"]
    assert "real-real-0.png" in {path.name for path in (tmp_path / "export" / "SKU-A").iterdir()}


def test_a_jsonl_export_stopped_by_a_lost_mask_says_what_to_do(
    store: ManifestStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It said only "no object at ...; nothing was written": not that the other format reads no mask,
    # nor which SKU to leave out.
    store.store.delete(store.key("masks/SKU-A/real-0.png"))
    jsonl = [*EXPORT[:2], "--format", "jsonl", *EXPORT[4:]]
    assert cli_main([*jsonl, str(tmp_path / "export")]) == 1
    err = capsys.readouterr().err
    assert "masks/SKU-A/real-0.png: the mask of SKU-A/real-0" in err
    assert "restore it, export with --format imagefolder (which reads no mask), or leave SKU-A out" in err
    assert not (tmp_path / "export").exists()
    assert cli_main([*EXPORT, str(tmp_path / "export")]) == 0
