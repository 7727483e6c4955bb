"""``skuforge dataset export|stats`` at the edges a reviewer hit: OUT on another file system, a policy
that leaves no class, real photos the captioner found unusable, an image of an extreme aspect ratio,
and ``stats`` piped into ``head``."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared.store import FileStore
from shared.trainstore import dataset
from shared.trainstore.dataset import export_dataset
from shared.trainstore.manifest import ManifestRow, ManifestStore
from shared.trainstore.withdrawals import Withdrawals
from skuforge_cli.main import main as cli_main
from tests.support.signals import as_from_a_shell
from tests.support.trainstore import PREFIX, add_item, as_mount_point, dataset_cli_into_closed_pipe

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ["dataset", "export", "--format", "imagefolder", "--max-synthetic-per-real", "1"]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ManifestStore:
    """SKU-A: 2 real, 1 synthetic; SKU-B: 1 real; SKU-C: synthetic only; SKU-P: pending only.
    The CLI's store is this one."""
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    for index in range(2):
        add_item(manifests, "SKU-A", f"real-{index}", "real", "reference")
    add_item(manifests, "SKU-A", "gen-0", "synthetic", "accepted")
    add_item(manifests, "SKU-B", "real-0", "real", "reference")
    add_item(manifests, "SKU-C", "gen-0", "synthetic", "accepted")
    add_item(manifests, "SKU-P", "gen-0", "synthetic", "pending")
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    return manifests


# -- 1. OUT is a mount point --------------------------------------------------------------------


def test_an_export_into_an_empty_mount_point_stages_inside_it(
    store: ManifestStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: built beside OUT and renamed into it, across file systems: every export into a Docker
    # volume or NFS mount failed with "Invalid cross-device link" after doing all the work.
    out = tmp_path / "out"
    out.mkdir()
    as_mount_point(out, monkeypatch)
    assert cli_main([*EXPORT[:2], str(out), *EXPORT[2:]]) == 0, capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["SKU-A", "SKU-B", "export.json"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "store"]

    # Still all or nothing: a tampered object leaves the mount point as it was, empty.
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    as_mount_point(mounted, monkeypatch)
    key = store.key("images/SKU-B/real/real-0.png")
    store.store.put_bytes(key, store.store.get_bytes(key) + b"x")
    capsys.readouterr()
    assert cli_main([*EXPORT[:2], str(mounted), *EXPORT[2:]]) == 1
    assert "nothing was written" in capsys.readouterr().err
    assert list(mounted.iterdir()) == []


# -- 2. a policy that leaves no class -----------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "reasons"),
    [
        (
            ["--min-real", "10"],
            [
                "SKU-A: 2 real image(s), need at least 10",
                "SKU-B: 1 real image(s), need at least 10",
                "SKU-C: 0 real image(s), need at least 10",
                "SKU-P: no image to train on",
            ],
        ),
        (["--sku", "SKU-C"], ["SKU-C: 0 real image(s), need at least 1"]),
        (["--sku", "SKU-P"], ["SKU-P: no image to train on"]),
    ],
)
def test_an_export_that_leaves_no_class_is_refused_naming_why(
    store: ManifestStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    reasons: list[str],
) -> None:
    # Before: an empty training set and exit 0, so `export && train` went on with nothing.
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        cli_main([*EXPORT[:2], str(out), *EXPORT[2:], *options])
    assert exited.value.code == 2  # as the refusal of a store without SKUs
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert "nothing to export" in error
    for reason in reasons:
        assert reason in error
    assert not out.exists() and sorted(path.name for path in tmp_path.iterdir()) == ["store"]


# -- 3. stats counts unusable real photos -------------------------------------------------------


def test_stats_counts_the_real_photos_the_captioner_found_unusable(
    store: ManifestStore, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: 5 photos ingested, "real 2" and nothing saying where the other 3 went.
    for index in range(3):
        add_item(store, "SKU-B", f"blurry-{index}", "real", "unusable")
    assert cli_main(["dataset", "stats", "--json"]) == 0
    by_sku = {line["sku_id"]: line for line in map(json.loads, capsys.readouterr().out.splitlines())}
    assert (by_sku["SKU-B"]["real"], by_sku["SKU-B"]["unusable"]) == (1, 3)
    assert by_sku["SKU-A"]["unusable"] == 0

    assert cli_main(["dataset", "stats"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    columns = header.split()
    assert "unusable" in columns and "withdrawn" in columns
    table = {row.split()[0]: dict(zip(columns, row.split(), strict=True)) for row in rows[:-1]}
    assert (table["SKU-B"]["real"], table["SKU-B"]["unusable"]) == ("1", "3")


# -- 4. the long side is bounded ----------------------------------------------------------------


def _add_photo(manifests: ManifestStore, sku_id: str, item_id: str, height: int, width: int) -> None:
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    mask = np.full((height, width), 255, dtype=np.uint8)
    image_ref = manifests.store.put_image(manifests.key(f"images/{sku_id}/real/{item_id}.png"), image)
    mask_ref = manifests.store.put_image(manifests.key(f"masks/{sku_id}/{item_id}.png"), mask)
    row = ManifestRow(
        item_id=item_id,
        sku_id=sku_id,
        category="soda can",
        source="real",
        status="reference",
        image=f"images/{sku_id}/real/{item_id}.png",
        image_sha256=image_ref.sha256,
        mask=f"masks/{sku_id}/{item_id}.png",
        mask_sha256=mask_ref.sha256,
        width=width,
        height=height,
    )
    manifests.append(sku_id, [row])


def test_the_long_side_of_an_extreme_aspect_ratio_is_capped(
    store: ManifestStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: the shorter side went to --size whatever the other became: a 16 x 2000 strip exported
    # at 256 x 32000, and at --size 4096 needed ~6 GB (a MemoryError traceback, or the OOM killer).
    _add_photo(store, "SKU-S", "strip", 2000, 16)
    out = tmp_path / "out"
    args = ["dataset", "export", str(out), "--format", "jsonl", "--max-synthetic-per-real", "1"]
    assert cli_main([*args, "--sku", "SKU-S", "--size", "256"]) == 0
    (line,) = [json.loads(text) for text in (out / "dataset.jsonl").read_text().splitlines()]
    image, mask = Image.open(out / line["image"]), Image.open(out / line["mask"])
    assert image.size == mask.size == (8, 1024)  # the long side at 4 x 256; the aspect kept
    printed = capsys.readouterr().out
    assert "1 image(s) longer than 4:1 with the longer side at 1024 px" in printed
    assert json.loads((out / "export.json").read_text())["long_side_capped"] == 1

    # Photos of an ordinary shape are not touched: the shorter side at --size.
    _add_photo(store, "SKU-T", "tall", 400, 100)
    assert cli_main([*args[:2], str(tmp_path / "tall"), *args[3:], "--sku", "SKU-T", "--size", "64"]) == 0
    (line,) = [json.loads(text) for text in (tmp_path / "tall" / "dataset.jsonl").read_text().splitlines()]
    assert Image.open(tmp_path / "tall" / line["image"]).size == (64, 256)
    assert "longer than" not in capsys.readouterr().out


# -- 5. stats into a closed pipe ----------------------------------------------------------------


@pytest.mark.parametrize("as_json", [True, False])
def test_stats_into_a_closed_pipe_stops_quietly(store: ManifestStore, as_json: bool) -> None:
    # `skuforge dataset stats --json | head -1`: before, a BrokenPipeError traceback once head had gone.
    done = dataset_cli_into_closed_pipe("stats", *(["--json"] if as_json else []))
    assert done.stderr == ""
    assert done.returncode == 1


# -- a staging folder left by a killed export ---------------------------------------------------------


def _left_staging(out: Path) -> Path:
    """A staging folder as an export writing into ``out`` leaves it when SIGKILLed half-way: its owner
    file names a host and pid of another container (a new hostname, pid 1), and nobody locks it."""
    staging = out / ".partial-0123456789abcdef"
    (staging / "SKU-A").mkdir(parents=True)
    (staging / "SKU-A" / "real-0.png").write_bytes(b"half")
    (staging / ".skuforge-export-owner").write_text("4f2a9c1be7d0 1\n")
    return staging


def test_an_export_killed_half_way_does_not_block_the_next_one(
    store: ManifestStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """OUT (an empty mount) held the killed export's `.partial-*` folder, and every later export into
    it was refused as "not empty"."""
    out = tmp_path / "out"
    out.mkdir()
    _left_staging(out)
    assert cli_main([*EXPORT[:2], str(out), *EXPORT[2:]]) == 0, capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["SKU-A", "SKU-B", "export.json"]
    assert b"half" not in [path.read_bytes() for path in out.rglob("*.png")]
    # The synthetic images the cap left out, under a header that does not read as the long-side cap.
    assert capsys.readouterr().out.splitlines()[0].split() == ["class", "real", "synthetic", "left", "out"]


def test_a_staging_folder_an_export_still_writes_is_left_alone(
    store: ManifestStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Locked by a running export (here another process, which holds the lock until told to stop)."""
    out = tmp_path / "out"
    out.mkdir()
    staging = _left_staging(out)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX);"
            " print('locked', flush=True); sys.stdin.read()",
            str(staging / ".skuforge-export-owner"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit) as refused:
            cli_main([*EXPORT[:2], str(out), *EXPORT[2:]])
        assert refused.value.code == 2
        assert "not empty (.partial-0123456789abcdef: an export may be writing" in capsys.readouterr().err
        assert (staging / "SKU-A" / "real-0.png").read_bytes() == b"half"
    finally:
        holder.communicate("")
    # Its export is gone: the next one clears the way.
    assert cli_main([*EXPORT[:2], str(out), *EXPORT[2:]]) == 0
    assert not staging.exists()


def test_an_export_into_an_out_another_export_is_writing_beside_is_refused_at_once(
    store: ManifestStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """OUT does not exist yet and a running export stages it beside: before, the second export did
    the whole work too and failed at its last rename ("Directory not empty"), hours in."""
    out = tmp_path / "out"
    staging = tmp_path / f".out.partial-{'0123456789abcdef' * 2}"
    staging.mkdir()
    (staging / ".skuforge-export-owner").write_text("4f2a9c1be7d0 1\n")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX);"
            " print('locked', flush=True); sys.stdin.read()",
            str(staging / ".skuforge-export-owner"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit) as refused:
            cli_main([*EXPORT[:2], str(out), *EXPORT[2:]])
        assert refused.value.code == 2
        assert f"an export into {out} is running ({staging.name} beside it" in capsys.readouterr().err
        assert not out.exists() and sorted(path.name for path in tmp_path.glob(".out.partial-*")) == [
            staging.name
        ]
    finally:
        holder.communicate("")
    # Its export is gone: the next one clears the way.
    assert cli_main([*EXPORT[:2], str(out), *EXPORT[2:]]) == 0
    assert not staging.exists() and (out / "export.json").is_file()


@pytest.mark.parametrize("beside", [True, False], ids=["beside", "inside"])
def test_a_staging_folder_left_without_its_owner_file_blocks_no_export_for_long(
    store: ManifestStore, tmp_path: Path, capsys: pytest.CaptureFixture[str], beside: bool
) -> None:
    """An export removes its owner file just before its last rename (beside OUT), or its staging folder
    just after it (inside OUT), and makes it just after the folder: killed in that instant, it left a
    folder without one, which never counted as abandoned, and every later export into OUT was refused
    ("is running", "not empty") until someone removed it. Unchanged for minutes, it is abandoned."""
    out = tmp_path / "out"
    if not beside:
        out.mkdir()
    name = f"partial-{'0123456789abcdef' * 2}"
    staging = tmp_path / f".out.{name}" if beside else out / f".{name}"
    (staging / "SKU-A").mkdir(parents=True)
    (staging / "SKU-A" / "real-0.png").write_bytes(b"half")
    # Just left: the export may be renaming it into place this instant.
    with pytest.raises(SystemExit) as refused:
        cli_main([*EXPORT[:2], str(out), *EXPORT[2:]])
    assert refused.value.code == 2
    assert (".out." if beside else ".") + name in capsys.readouterr().err
    left_at = staging.stat().st_mtime - dataset.STAGING_UNOWNED_S - 1
    os.utime(staging, (left_at, left_at))
    assert cli_main([*EXPORT[:2], str(out), *EXPORT[2:]]) == 0, capsys.readouterr().err
    assert not staging.exists() and sorted(path.name for path in out.iterdir()) == [
        "SKU-A",
        "SKU-B",
        "export.json",
    ]
    assert b"half" not in [path.read_bytes() for path in out.rglob("*.png")]


def test_an_old_folder_named_like_a_staging_folder_but_not_of_an_export_is_left_alone(
    store: ManifestStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a folder of the name an export gives its staging folder is one: someone's own
    ``.out.partial-notes`` is neither removed nor taken for a running export."""
    out = tmp_path / "out"
    mine = tmp_path / ".out.partial-notes"
    mine.mkdir()
    os.utime(mine, (0, 0))
    assert cli_main([*EXPORT[:2], str(out), *EXPORT[2:]]) == 0, capsys.readouterr().err
    assert mine.is_dir()


@contextlib.contextmanager
def _locked(owner: Path) -> Iterator[None]:
    """``owner`` locked by another process (a running export's) while the block runs."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX);"
            " print('locked', flush=True); sys.stdin.read()",
            str(owner),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.communicate("")


def test_an_export_running_into_another_out_whose_name_goes_on_is_not_taken_for_one_into_out(
    store: ManifestStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``out.partial-v2`` stages beside itself as ``.out.partial-v2.partial-<uuid>``, which the glob of
    ``out``'s staging folders (``.out.partial-*``) matched: an export into ``out`` was refused as
    "running" while one into ``out.partial-v2`` ran."""
    other = tmp_path / f".out.partial-v2.partial-{'0123456789abcdef' * 2}"
    other.mkdir()
    (other / ".skuforge-export-owner").write_text("4f2a9c1be7d0 1\n")
    with _locked(other / ".skuforge-export-owner"):
        out = tmp_path / "out"
        assert cli_main([*EXPORT[:2], str(out), *EXPORT[2:]]) == 0, capsys.readouterr().err
        assert (out / "export.json").is_file() and other.is_dir()


def test_the_staging_folder_is_there_before_the_manifests_are_read(
    store: ManifestStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second export checks OUT while the first reads the store (minutes on S3): the first one's
    locked staging folder must already be there for it to see."""
    out = tmp_path / "out"
    seen: list[list[str]] = []
    iter_rows = ManifestStore.iter_rows

    def watched(self: ManifestStore, *args: Any, **kwargs: Any) -> Any:
        seen.append(sorted(path.name for path in tmp_path.glob(".out.partial-*/.skuforge-export-owner")))
        return iter_rows(self, *args, **kwargs)

    monkeypatch.setattr(ManifestStore, "iter_rows", watched)
    assert cli_main([*EXPORT[:2], str(out), *EXPORT[2:]]) == 0
    assert seen == [[".skuforge-export-owner"]]


def test_a_finished_export_leaves_no_owner_file(store: ManifestStore, tmp_path: Path) -> None:
    for out in (tmp_path / "new", tmp_path / "mounted"):
        if out.name == "mounted":
            out.mkdir()
        assert cli_main([*EXPORT[:2], str(out), *EXPORT[2:]]) == 0
        assert not list(out.rglob(".skuforge-export-owner"))
        assert not list(tmp_path.glob(".*partial*"))


def test_an_empty_out_folder_is_enough_when_the_folder_above_it_is_read_only(
    store: ManifestStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An existing empty OUT (a Docker volume in a read-only container) is where the export stages:
    before, the CLI refused it because the folder above it could not be written in."""
    import shared.argtypes

    read_only = tmp_path / "read-only"
    out = read_only / "out"
    out.mkdir(parents=True)
    mkstemp = shared.argtypes.tempfile.mkstemp

    def refused_above(*args: Any, **kwargs: Any) -> Any:
        if Path(kwargs["dir"]) == read_only:
            raise OSError(errno.EROFS, "Read-only file system")
        return mkstemp(*args, **kwargs)

    monkeypatch.setattr(shared.argtypes.tempfile, "mkstemp", refused_above)
    assert cli_main([*EXPORT[:2], str(out), *EXPORT[2:]]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["SKU-A", "SKU-B", "export.json"]


def after_the_plan(monkeypatch: pytest.MonkeyPatch, change: Callable[[ManifestStore], object]) -> None:
    """The store changes (``change``) once the export has read its rows, before it reads the images."""
    iter_rows = ManifestStore.iter_rows

    def then_the_store_changes(self: ManifestStore, *args: Any, **kwargs: Any) -> Any:
        yield from iter_rows(self, *args, **kwargs)
        change(self)

    monkeypatch.setattr(ManifestStore, "iter_rows", then_the_store_changes)


def test_a_real_photo_changed_during_the_export_lowers_the_synthetic_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cap is of the real images written: with one of two real photos withdrawn while the export
    ran, two synthetic images per real photo went out (the plan's cap counted the photo)."""
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    for index in range(2):
        add_item(manifests, "SKU-A", f"real-{index}", "real", "reference")
    for index in range(3):
        add_item(manifests, "SKU-A", f"gen-{index}", "synthetic", "accepted")
    after_the_plan(
        monkeypatch, lambda store: add_item(store, "SKU-A", "real-1", "real", "reference", size_px=64)
    )
    summary = export_dataset(manifests, tmp_path / "out", fmt="jsonl", max_synthetic_per_real=1)
    assert summary.classes == {"SKU-A": {"real": 1, "synthetic": 1, "dropped": 2}}
    lines = (tmp_path / "out" / "dataset.jsonl").read_text().splitlines()
    assert [json.loads(line)["source"] for line in lines] == ["real", "synthetic"]


def test_a_class_named_images_left_out_during_a_jsonl_export_takes_only_its_own_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A class left without real images is removed from the staging folder; for a SKU named
    ``images`` that was ``images/`` itself, every class's images, and the index named missing files."""
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    add_item(manifests, "A", "real-0", "real", "reference")
    add_item(manifests, "A", "gen-0", "synthetic", "accepted")
    add_item(manifests, "images", "real-0", "real", "reference")
    add_item(manifests, "images", "gen-0", "synthetic", "accepted")
    after_the_plan(
        monkeypatch, lambda store: add_item(store, "images", "real-0", "real", "reference", size_px=64)
    )
    summary = export_dataset(manifests, tmp_path / "out", fmt="jsonl", max_synthetic_per_real=1)
    assert list(summary.classes) == ["A"] and "images" in summary.skipped
    for line in (tmp_path / "out" / "dataset.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert all((tmp_path / "out" / record[key]).is_file() for key in ("image", "mask"))
    assert not (tmp_path / "out" / "images" / "images").exists()


# -- masks are read only by the format that writes them ---------------------------------------------


def test_an_imagefolder_export_does_not_need_the_masks_it_does_not_write(
    store: ManifestStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An imagefolder export writes no mask, yet read and checked every one: a mask lost from the store
    failed the whole export (exit 1), and every image cost two reads. A jsonl export, which writes the
    masks, still refuses a missing one."""
    store.store.delete(store.key("masks/SKU-A/real-0.png"))
    out = tmp_path / "out"
    assert cli_main([*EXPORT[:2], str(out), *EXPORT[2:]]) == 0
    assert sorted(path.name for path in (out / "SKU-A").iterdir()) == [
        "real-real-0.png",
        "real-real-1.png",
        "synthetic-gen-0.png",
    ]
    capsys.readouterr()
    jsonl = [*EXPORT[:2], str(tmp_path / "jsonl"), "--format", "jsonl", *EXPORT[4:]]
    assert cli_main(jsonl) == 1
    assert "masks/SKU-A/real-0.png" in capsys.readouterr().err
    assert not (tmp_path / "jsonl").exists()


def test_a_class_left_out_during_the_export_is_not_counted_in_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A class left without enough real images while the export ran is not in the training set, yet its
    strip still counted in ``long_side_capped`` and ``export.json`` still gave the evaluation's reason
    to leave out its synthetic images, as if it were exported."""
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    _add_photo(manifests, "SKU-S", "real-0", 2000, 16)  # a strip: its long side is capped
    add_item(manifests, "SKU-S", "real-1", "real", "reference")
    add_item(manifests, "SKU-S", "gen-0", "synthetic", "accepted")
    for index in range(2):
        add_item(manifests, "SKU-B", f"real-{index}", "real", "reference")
    after_the_plan(
        monkeypatch, lambda store: add_item(store, "SKU-S", "real-1", "real", "reference", size_px=64)
    )
    out = tmp_path / "out"
    summary = export_dataset(
        manifests,
        out,
        fmt="imagefolder",
        max_synthetic_per_real=1,
        min_real=2,
        no_synthetic={"SKU-S": "its synthetic images hurt it in evaluation.json"},
    )
    assert list(summary.classes) == ["SKU-B"] and "SKU-S" in summary.skipped
    written = json.loads((out / "export.json").read_text())
    assert written["long_side_capped"] == summary.long_side_capped == 0
    assert written["synthetic_left_out"] == summary.synthetic_left_out == {}
    assert written["changed_during_export"] == 1
    assert not any("longer than" in line for line in summary.lines())


def test_a_photo_withdrawn_after_its_image_was_copied_is_not_in_the_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A photo withdrawn while the export ran was left out only if its objects were gone when the export
    read them: one withdrawn after its image was copied (the export reading another class) went out in
    the training set, its owner's withdrawal notwithstanding."""
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    for index in range(2):
        add_item(manifests, "SKU-A", f"real-{index}", "real", "reference")
        add_item(manifests, "SKU-A", f"gen-{index}", "synthetic", "accepted")
    add_item(manifests, "SKU-B", "real-0", "real", "reference")
    read_checked = dataset.read_checked

    def withdrawn_meanwhile(store: ManifestStore, key: str | None, sha256: str | None) -> bytes:
        if key == "images/SKU-B/real/real-0.png":  # SKU-A's images are copied by now
            Withdrawals(store).withdraw("SKU-A", "soda can", ["real-1"], by="test")
        return read_checked(store, key, sha256)

    monkeypatch.setattr(dataset, "read_checked", withdrawn_meanwhile)
    out = tmp_path / "out"
    summary = export_dataset(manifests, out, fmt="imagefolder", max_synthetic_per_real=1)
    assert sorted(path.name for path in (out / "SKU-A").iterdir())[0] == "real-real-0.png"
    assert not (out / "SKU-A" / "real-real-1.png").exists()
    # The cap is of the real images left: one synthetic image per real one.
    assert summary.classes["SKU-A"] == {"real": 1, "synthetic": 1, "dropped": 1}
    assert len(list((out / "SKU-A").iterdir())) == 2 and summary.changed_during_export == 1
    assert json.loads((out / "export.json").read_text())["classes"]["SKU-A"]["real"] == 1


# Runs `skuforge ARGS...` with SKU-B's photo read only after the named pipe GATE is written to and
# closed: the export waits there, SKU-A staged, for the test to stop it. (The photo itself cannot be the
# pipe: the store refuses a pipe as no object since 4080ead, and the export then failed on its own, racing
# the test's SIGTERM into its clean-up.)
_STOPPED_READING = """
import sys
from shared.store import FileStore

gate, real_open = sys.argv[1], FileStore._open_object


def open_object(self, key):
    if key.endswith("images/SKU-B/real/real-0.png"):
        with open(gate, "rb") as waiting:
            waiting.read()
    return real_open(self, key)


FileStore._open_object = open_object
from skuforge_cli.main import main

sys.exit(main(sys.argv[2:]))
"""


def test_an_export_stopped_by_sigterm_half_way_leaves_nothing(store: ManifestStore, tmp_path: Path) -> None:
    """`kill`, `timeout`, a cancelled CI job or `docker stop` end an export with SIGTERM: before, it died
    where it stood, its staging folder (gigabytes, perhaps) left until the next export into the same OUT,
    and one stopped while moving its classes into an existing OUT left a training set without some."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    out = tmp_path / "out"
    export = subprocess.Popen(
        [sys.executable, "-c", _STOPPED_READING, str(gate), *EXPORT[:2], str(out), *EXPORT[2:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=os.environ,
        text=True,
    )
    with open(gate, "wb"):  # opens once the export opened it to read: SKU-A is staged by now
        assert list(tmp_path.glob(".out.partial-*/SKU-A/*"))
        export.send_signal(signal.SIGTERM)
        _, err = export.communicate(timeout=120)
    assert export.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


# Runs `skuforge SIGNAL OUT HOW ARGS...` with the export's clean-up signalled as it begins: the first
# shutil.rmtree of the staging folder (beside OUT) or of an entry moved into OUT sends the process SIGNAL,
# as `kill`, a second Ctrl-C or `docker stop` would, and then removes. HOW "moving" makes OUT behave as a
# mount point (the staging folder inside it, its entries moved in one by one, as as_mount_point does) and
# the move of its second entry fail (EIO); "reading" leaves the export to fail on its own.
_SIGNALLED_CLEANING_UP = """
import errno, os, shutil, signal, sys
from pathlib import Path

signum, out, moving = signal.Signals[sys.argv[1]], Path(sys.argv[2]).resolve(), sys.argv[3] == "moving"
real_rename, real_rmtree = os.rename, shutil.rmtree
moved_into_out, signalled = [], []


def inside(path):
    return Path(os.path.abspath(path)).is_relative_to(out)


def rename(src, dst, *args, **kwargs):
    if moving and inside(src) != inside(dst):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))
    if moving and Path(os.path.abspath(dst)).parent == out:
        if moved_into_out:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(src), None, str(dst))
        moved_into_out.append(dst)
    real_rename(src, dst, *args, **kwargs)


def rmtree(path, *args, **kwargs):
    if not signalled and Path(os.path.abspath(path)).parent in (out, out.parent):
        signalled.append(path)
        os.kill(os.getpid(), signum)
    real_rmtree(path, *args, **kwargs)


os.rename, shutil.rmtree = rename, rmtree
from skuforge_cli.main import main

sys.exit(main(sys.argv[4:]))
"""

_SIGNALS = [signal.SIGTERM, signal.SIGHUP, signal.SIGINT]


def _export_signalled_cleaning_up(signum: signal.Signals, out: Path, how: str) -> None:
    """Runs the export of ``_SIGNALLED_CLEANING_UP``, which must stop with ``signum``, saying so."""
    wrapper = [sys.executable, "-c", _SIGNALLED_CLEANING_UP, signum.name, str(out), how]
    result = subprocess.run(
        [*wrapper, *EXPORT[:2], str(out), *EXPORT[2:]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ,
        timeout=120,
        preexec_fn=as_from_a_shell,  # a CI runner under nohup, or in the background, ignores SIGHUP, SIGINT
    )
    assert result.returncode == 128 + signum, result.stderr
    stopped = "interrupted" if signum == signal.SIGINT else f"stopped by {signum.name}"
    assert f"skuforge dataset: {stopped}" in result.stderr


@pytest.mark.parametrize("signum", _SIGNALS, ids=[signum.name for signum in _SIGNALS])
def test_an_export_that_failed_and_is_stopped_while_cleaning_up_leaves_nothing(
    store: ManifestStore, tmp_path: Path, signum: signal.Signals
) -> None:
    """An export that failed (a tampered object) removes its staging folder and the folders it made for
    OUT: a SIGTERM, SIGHUP or Ctrl-C then stopped the removal where it stood, the staging folder
    (gigabytes, perhaps) left until the next export into the same OUT. It stops once the clean-up is done."""
    key = store.key("images/SKU-B/real/real-0.png")
    store.store.put_bytes(key, store.store.get_bytes(key) + b"x")
    _export_signalled_cleaning_up(signum, tmp_path / "new" / "out", "reading")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["store"]


@pytest.mark.parametrize("signum", _SIGNALS, ids=[signum.name for signum in _SIGNALS])
def test_an_export_that_failed_moving_and_is_stopped_while_taking_its_classes_out_leaves_out_empty(
    store: ManifestStore, tmp_path: Path, signum: signal.Signals
) -> None:
    """Into a mount point the classes are moved one by one; a move that failed takes those moved back out
    of OUT. A SIGTERM, SIGHUP or Ctrl-C then left them there: a training set without some classes and
    without export.json, and every later export into OUT refused as "not empty"."""
    out = tmp_path / "out"
    out.mkdir()
    _export_signalled_cleaning_up(signum, out, "moving")
    assert list(out.iterdir()) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "store"]


# -- killed while moving into an existing OUT ---------------------------------------------------------

# Runs `skuforge ARGS...` with a rename that SIGKILLs the process right after the first rename into OUT
# (or onto it) succeeds: a kill at the worst moment of the move. "mounted" makes OUT behave as a mount
# point, as as_mount_point does.
_KILLED_WHILE_MOVING = """
import errno, os, signal, sys
from pathlib import Path

out, mounted = Path(sys.argv[1]).resolve(), sys.argv[2] == "mounted"
real_rename = os.rename


def inside(path):
    return Path(os.path.abspath(path)).is_relative_to(out)


def rename(src, dst, *args, **kwargs):
    if mounted and inside(src) != inside(dst):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))
    real_rename(src, dst, *args, **kwargs)
    if Path(os.path.abspath(dst)) in (out, *[out / name for name in os.listdir(out)]):
        os.kill(os.getpid(), signal.SIGKILL)


os.rename = rename
from skuforge_cli.main import main

sys.exit(main(sys.argv[3:]))
"""


def _export_killed_while_moving(out: Path, mounted: bool) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLED_WHILE_MOVING,
            str(out),
            "mounted" if mounted else "plain",
            *EXPORT[:2],
            str(out),
            *EXPORT[2:],
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ,
        timeout=120,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr


def test_an_export_killed_while_moving_into_an_existing_out_leaves_it_empty_or_whole(
    store: ManifestStore, tmp_path: Path
) -> None:
    """An existing empty OUT was filled class by class: a SIGKILL between two moves left class folders
    without export.json, which ImageFolder reads as a (smaller) training set."""
    out = tmp_path / "out"
    out.mkdir()
    _export_killed_while_moving(out, mounted=False)
    assert sorted(path.name for path in out.iterdir()) in ([], ["SKU-A", "SKU-B", "export.json"])
    assert not list(tmp_path.glob(".out.partial-*/SKU-*"))


def test_the_export_after_one_killed_while_moving_into_a_mount_point_takes_the_moved_classes_out(
    store: ManifestStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Into a mount point the classes are moved one by one; a SIGKILL between two moves left some in OUT,
    and every later export into it was refused as "not empty", the half training set left there."""
    out = tmp_path / "out"
    out.mkdir()
    _export_killed_while_moving(out, mounted=True)
    assert "export.json" not in [path.name for path in out.iterdir()]  # killed half-way: not whole
    as_mount_point(out, monkeypatch)
    assert cli_main([*EXPORT[:2], str(out), *EXPORT[2:]]) == 0, capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["SKU-A", "SKU-B", "export.json"]


def test_an_export_into_the_working_folder_is_seen_there(
    store: ManifestStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mkdir out && cd out && skuforge dataset export .`: an OUT replaced by a rename would leave the
    shell in the folder replaced, empty, while the export is in a new folder of the same name."""
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    assert cli_main([*EXPORT[:2], ".", *EXPORT[2:]]) == 0
    assert sorted(os.listdir(".")) == ["SKU-A", "SKU-B", "export.json"]


def test_an_export_run_from_a_removed_folder_still_exports(
    store: ManifestStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether OUT is the working folder was asked of a working folder that no longer exists."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    out = tmp_path / "out"
    out.mkdir()
    export_dataset(store, out, fmt="imagefolder", max_synthetic_per_real=1)
    assert sorted(path.name for path in out.iterdir()) == ["SKU-A", "SKU-B", "export.json"]


# -- an empty OUT replaced keeps who may use it ----------------------------------------------------


def _posix_acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL as the kernel stores it in ``system.posix_acl_access``: version 2, then (tag, perm, id)."""
    undefined = 0xFFFFFFFF
    return (2).to_bytes(4, "little") + b"".join(
        tag.to_bytes(2, "little")
        + perm.to_bytes(2, "little")
        + (undefined if qualifier < 0 else qualifier).to_bytes(4, "little")
        for tag, perm, qualifier in entries
    )


def _another_group() -> int:
    """A group OUT can be given other than the exporter's own; skips where there is none."""
    team = 4242 if os.geteuid() == 0 else next((gid for gid in os.getgroups() if gid != os.getegid()), None)
    if team is None:
        pytest.skip("needs root or a second group to give OUT")
    return team


def test_an_empty_out_replaced_keeps_its_group_and_its_acl(store: ManifestStore, tmp_path: Path) -> None:
    """`mkdir out; chgrp team out; setfacl -m g:reviewers:rx out`, then an export: OUT was replaced by the
    staging folder with only its mode copied, so the team and the reviewers lost it (the folder's group
    became the exporter's, its ACL went)."""
    if not hasattr(os, "setxattr"):
        pytest.skip("extended attributes (POSIX ACLs) are Linux's")
    team = _another_group()
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, -1, team)
    # user::rwx, group::r-x, group reviewers (4343): r-x, mask::r-x, other::---
    acl = _posix_acl((0x01, 7, -1), (0x04, 5, -1), (0x08, 5, 4343), (0x10, 5, -1), (0x20, 0, -1))
    try:
        os.setxattr(out, "system.posix_acl_access", acl)
    except OSError as exc:
        pytest.skip(f"this file system takes no POSIX ACL ({exc.strerror})")
    before = out.stat()
    assert cli_main([*EXPORT[:2], str(out), *EXPORT[2:]]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["SKU-A", "SKU-B", "export.json"]
    after = out.stat()
    assert after.st_ino != before.st_ino  # replaced in one rename, as the docs say
    assert (after.st_gid, oct(after.st_mode)) == (team, oct(before.st_mode))
    assert os.getxattr(out, "system.posix_acl_access") == acl


def test_an_empty_out_whose_group_the_exporter_cannot_give_is_kept_and_filled(
    store: ManifestStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OUT of a group its owner is not in (an admin's `chgrp`): replacing it would lose that group, so the
    export stages inside it and moves its entries there, as into a mount point."""
    out = tmp_path / "out"
    out.mkdir()
    chown = os.chown

    def not_a_member(path: Any, uid: int, gid: int, **kwargs: Any) -> None:
        if gid != -1 and gid != os.stat(path).st_gid:  # as the kernel answers a user outside the group
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(path))
        chown(path, uid, gid, **kwargs)

    monkeypatch.setattr(os, "chown", not_a_member)
    chown(out, -1, _another_group())
    before = out.stat()
    assert cli_main([*EXPORT[:2], str(out), *EXPORT[2:]]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["SKU-A", "SKU-B", "export.json"]
    after = out.stat()
    assert (after.st_ino, after.st_gid) == (before.st_ino, before.st_gid)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "store"]


# -- OUT a freshly formatted volume: only its lost+found ---------------------------------------


@pytest.mark.parametrize("mounted", [True, False], ids=["mount-point", "plain-folder"])
@pytest.mark.parametrize("recovered", [[], ["#1234"]], ids=["empty", "holding-a-file"])
def test_an_out_holding_only_lost_and_found_is_exported_into_and_lost_and_found_left_as_it_was(
    store: ManifestStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    mounted: bool,
    recovered: list[str],
) -> None:
    """A freshly formatted volume (mkfs.ext4) mounted as OUT holds lost+found: it was refused as "not
    empty", so no export could go onto a new disk without removing the file system's own folder. In
    jsonl, where the classes are dataset.jsonl's labels (an imagefolder export is refused, below)."""
    out = tmp_path / "out"
    (out / "lost+found").mkdir(parents=True)
    for name in recovered:
        (out / "lost+found" / name).write_text("a block fsck found")
    if mounted:
        as_mount_point(out, monkeypatch)
    jsonl = ["dataset", "export", str(out), "--format", "jsonl", "--max-synthetic-per-real", "1"]
    assert cli_main(jsonl) == 0, capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == [
        "dataset.jsonl",
        "export.json",
        "images",
        "lost+found",
        "masks",
    ]
    assert sorted(path.name for path in (out / "lost+found").iterdir()) == recovered
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "store"]
    summary = json.loads((out / "export.json").read_text())
    assert sorted(summary["classes"]) == ["SKU-A", "SKU-B"]


@pytest.mark.parametrize("mounted", [True, False], ids=["mount-point", "plain-folder"])
def test_an_imagefolder_export_into_an_out_holding_lost_and_found_is_refused(
    store: ManifestStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    mounted: bool,
) -> None:
    """Every folder of an imagefolder export is a class to torchvision's ImageFolder: beside the SKUs'
    folders lost+found was one more, with no image (ImageFolder: "Found no valid file for the classes
    lost+found"; with allow_empty, a class of its own that moved the labels of the SKUs after it)."""
    out = tmp_path / "out"
    (out / "lost+found").mkdir(parents=True)
    if mounted:
        as_mount_point(out, monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*EXPORT[:2], str(out), *EXPORT[2:]])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "lost+found" in err and "would be read as a class" in err
    assert f"{out / 'train'}" in err and "--format jsonl" in err
    assert sorted(path.name for path in out.iterdir()) == ["lost+found"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "store"]
    # Into a folder inside it, as the refusal advises: every folder of OUT/train is a SKU.
    assert cli_main([*EXPORT[:2], str(out / "train"), *EXPORT[2:]]) == 0, capsys.readouterr().err
    assert sorted(path.name for path in (out / "train").iterdir() if path.is_dir()) == ["SKU-A", "SKU-B"]


@pytest.mark.parametrize("other", ["notes.txt", "lost+found.txt", "old-export"])
def test_an_out_holding_anything_beside_lost_and_found_is_still_refused(
    store: ManifestStore, tmp_path: Path, capsys: pytest.CaptureFixture[str], other: str
) -> None:
    out = tmp_path / "out"
    (out / "lost+found").mkdir(parents=True)
    if other == "old-export":
        (out / other).mkdir()
    else:
        (out / other).write_text("someone's")
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*EXPORT[:2], str(out), *EXPORT[2:]])
    assert exit_info.value.code == 2
    assert "is not empty" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == sorted(["lost+found", other])


def test_a_lost_and_found_that_is_a_file_is_not_a_file_systems_and_is_refused(
    store: ManifestStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "lost+found").write_text("not a file system's folder")
    with pytest.raises(SystemExit):
        cli_main([*EXPORT[:2], str(out), *EXPORT[2:]])
    assert "is not empty" in capsys.readouterr().err


# -- a refused export makes no folder -----------------------------------------------------------


@pytest.mark.parametrize(
    "refused_by",
    [["--sku", "SKU-TYPO"], ["--sku", "SKU-C"], ["--min-real", "5"]],
    ids=["unknown-sku", "no-real-image", "policy-leaves-nothing"],
)
def test_a_refused_export_leaves_no_folder_it_made_above_out(
    store: ManifestStore, tmp_path: Path, capsys: pytest.CaptureFixture[str], refused_by: list[str]
) -> None:
    """The folders above a new OUT were made before the store was read: an export refused for a
    mistyped --sku or a policy that leaves no class left them behind, empty."""
    (tmp_path / "exports").mkdir()  # there before: stays
    out = tmp_path / "exports" / "2026-12" / "run-1" / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*EXPORT[:2], str(out), *EXPORT[2:], *refused_by])
    assert exit_info.value.code == 2, capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["exports", "store"]
    assert list((tmp_path / "exports").iterdir()) == []
