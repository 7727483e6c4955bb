"""Trainstore, review 49: a SKU's columnar copy that is gone or does not read is written again.

A SKU with one compacted part and no deltas whose copy (``columns-c-*.json``) was lost, cut short or
written without a column every copy has was read from its JSONL part on every load (slower, and a
warning each time), and nothing wrote the copy again: ``compact`` had nothing to merge and returned
at once, so not even ``skuforge dataset compact`` mended it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.store import FileStore
from shared.trainstore.loader import load_manifest
from shared.trainstore.manifest import (
    _ADDED_SINCE_COLUMNS,
    ManifestRow,
    ManifestStore,
    decode_columns,
    encode_columns,
)
from skuforge_cli.main import main as cli_main
from tests.support.trainstore import PREFIX, manifest_row

SKU = "SKU-1"

# The fields of the first columnar copies (COLUMNS_VERSION 1): every copy has these columns.
FIRST_COLUMNS = frozenset(
    {
        "item_id",
        "sku_id",
        "category",
        "source",
        "status",
        "image",
        "mask",
        "width",
        "height",
        "caption",
        "iou",
        "reasons",
        "reviewed_by",
        "decision",
        "adapter_id",
        "seed",
        "backend",
        "reference_photo_id",
        "trace_id",
    }
)
# Fields added since whose default is not what rows written before them read as (none yet): a copy without
# their column does not read (``decode_columns``).
READ_FROM_PART: frozenset[str] = frozenset()


def _without_image_column(data: bytes) -> bytes:
    document = json.loads(data)
    for part in ("common", "columns"):
        document[part].pop("image", None)
    return json.dumps(document).encode()


def _with_a_short_column(data: bytes) -> bytes:
    document = json.loads(data)
    document["columns"]["item_id"].pop()
    return json.dumps(document).encode()


def _with_an_exception_before_the_first_row(data: bytes) -> bytes:
    document = json.loads(data)
    document["common"]["category"][1]["-1"] = "bottle"  # read as Python's index, the last row's
    return json.dumps(document).encode()


# What can happen to a copy: lost, cut short, missing a column every copy has, or with a column of fewer
# values than rows or a common value's exception at no row (another tool's, edited by hand).
DAMAGE: dict[str, Callable[[bytes], bytes | None]] = {
    "lost": lambda data: None,
    "cut short": lambda data: data[: len(data) // 2],
    "without a column": _without_image_column,
    "with a short column": _with_a_short_column,
    "with an exception at no row": _with_an_exception_before_the_first_row,
}


def _compacted_sku(root: Path) -> ManifestStore:
    """A store whose SKU has one compacted part (and its copy), no deltas."""
    manifests = ManifestStore(FileStore(root), PREFIX)
    rows = [
        manifest_row(item_id, image=f"images/{SKU}/synthetic/{item_id}.png", width=640, height=480)
        for item_id in ("a", "b", "c")
    ]
    manifests.append(SKU, rows[:2])
    manifests.append(SKU, rows[2:])
    assert manifests.compact(SKU)
    return manifests


def _only_part(manifests: ManifestStore) -> tuple[str, str]:
    """(compacted part, its columnar copy) of the SKU, the only part there."""
    compacted, deltas = manifests.parts(SKU)
    assert not deltas and len(compacted) == 1
    return compacted[0][1], manifests.columns_key(compacted[0][1])


def _damage(manifests: ManifestStore, damage: str) -> None:
    _, columns_key = _only_part(manifests)
    damaged = DAMAGE[damage](manifests.store.get_bytes(columns_key))
    if damaged is None:
        manifests.store.delete(columns_key)
    else:
        manifests.store.put_bytes(columns_key, damaged)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_compact_writes_a_broken_columnar_copy_again_and_leaves_its_part(tmp_path: Path, damage: str) -> None:
    manifests = _compacted_sku(tmp_path)
    expected = load_manifest(manifests.store, prefix=PREFIX, trainable_only=False)
    part_key, columns_key = _only_part(manifests)
    part_bytes = manifests.store.get_bytes(part_key)
    _damage(manifests, damage)

    assert manifests.compact(SKU)
    # Only the copy was written: the same part, byte for byte, beside it, and nothing else.
    assert _only_part(manifests) == (part_key, columns_key)
    assert manifests.store.get_bytes(part_key) == part_bytes
    assert sorted(manifests.store.list_keys(manifests.key(f"manifests/{SKU}/"))) == sorted(
        [part_key, columns_key]
    )
    rows = manifests.read_sku(SKU).values()
    assert decode_columns(manifests.store.get_bytes(columns_key)) == decode_columns(encode_columns(rows))
    assert load_manifest(manifests.store, prefix=PREFIX, trainable_only=False) == expected
    # Mended, there is nothing more to do.
    assert not manifests.compact(SKU)


def test_a_copy_with_a_column_shorter_than_its_rows_is_read_from_its_part(tmp_path: Path) -> None:
    """A column with fewer values than the copy's rows decoded, and ``load_manifest`` stopped with
    "zip() argument 2 is longer than argument 1", naming nothing; unstopped, its rows would have been
    out of step. The copy does not read now: its part is read, and ``compact`` writes it again."""
    manifests = _compacted_sku(tmp_path)
    expected = load_manifest(manifests.store, prefix=PREFIX)
    _damage(manifests, "with a short column")
    _, columns_key = _only_part(manifests)
    with pytest.raises(ValueError, match="item_id"):
        decode_columns(manifests.store.get_bytes(columns_key))
    assert load_manifest(manifests.store, prefix=PREFIX) == expected


def test_a_copy_with_a_common_values_exception_at_no_row_is_read_from_its_part(tmp_path: Path) -> None:
    """An exception at row "-1" of a common value decoded as the last row's value."""
    manifests = _compacted_sku(tmp_path)
    expected = load_manifest(manifests.store, prefix=PREFIX)
    _damage(manifests, "with an exception at no row")
    assert load_manifest(manifests.store, prefix=PREFIX) == expected


def test_compact_leaves_a_sound_columnar_copy_as_it_is(tmp_path: Path) -> None:
    manifests = _compacted_sku(tmp_path)
    listed = {key: manifests.store.get_bytes(key) for key in manifests.store.list_keys(PREFIX)}
    assert not manifests.compact(SKU)
    assert {key: manifests.store.get_bytes(key) for key in manifests.store.list_keys(PREFIX)} == listed


def test_the_stages_compaction_between_thresholds_leaves_the_copy_to_the_next_one(tmp_path: Path) -> None:
    """The stage compacts after each delta it writes, once there are ``min_deltas``: below that it
    neither merges nor reads the copy (a read per event). The next compaction writes a new one."""
    manifests = _compacted_sku(tmp_path)
    _damage(manifests, "cut short")
    manifests.append(SKU, [manifest_row("d")])
    assert not manifests.compact(SKU, min_deltas=2)
    manifests.append(SKU, [manifest_row("e")])
    assert manifests.compact(SKU, min_deltas=2)
    _, columns_key = _only_part(manifests)
    assert decode_columns(manifests.store.get_bytes(columns_key))["item_id"] == ["a", "b", "c", "d", "e"]


def test_dataset_compact_writes_a_lost_columnar_copy_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    manifests = _compacted_sku(tmp_path / "store")
    _damage(manifests, "lost")
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    assert cli_main(["dataset", "compact"]) == 0
    assert json.loads(capsys.readouterr().out) == {"compacted": [SKU], "unreadable": []}
    _, columns_key = _only_part(manifests)
    assert decode_columns(manifests.store.get_bytes(columns_key))["item_id"] == ["a", "b", "c"]


def test_the_loaders_warning_of_a_copy_that_does_not_read_says_what_mends_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifests = _compacted_sku(tmp_path)
    _damage(manifests, "cut short")
    _, columns_key = _only_part(manifests)
    with caplog.at_level(logging.WARNING, logger="shared.trainstore.loader"):
        load_manifest(manifests.store, prefix=PREFIX)
    (warning,) = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert manifests.store.uri_for(columns_key) in warning
    assert "skuforge dataset compact" in warning


def test_every_manifest_field_is_a_first_column_or_one_added_since() -> None:
    """A copy without a column of ``_ADDED_SINCE_COLUMNS`` loads it as its default; any other missing
    column makes the copy unreadable (``decode_columns``). A field added to ``ManifestRow`` has to be
    one or the other: every copy written before it lacks its column."""
    fields = set(ManifestRow.model_fields)
    undecided = fields - FIRST_COLUMNS - _ADDED_SINCE_COLUMNS - READ_FROM_PART
    assert not undecided, (
        f"ManifestRow fields {sorted(undecided)} are new: copies written before them have no such column. "
        "Add them to _ADDED_SINCE_COLUMNS in shared/trainstore/manifest.py: such a copy loads each as its "
        "default, as their rows written before read from the JSONL part. Only where that is not so (a "
        "validator derives the field from others) add it to READ_FROM_PART here instead: such a copy is "
        "read from its part then, and `skuforge dataset compact` writes it again."
    )
    assert not READ_FROM_PART & _ADDED_SINCE_COLUMNS
    assert not FIRST_COLUMNS & _ADDED_SINCE_COLUMNS
    assert fields >= FIRST_COLUMNS | _ADDED_SINCE_COLUMNS, "a column listed is no ManifestRow field"
    for name in _ADDED_SINCE_COLUMNS:
        assert not ManifestRow.model_fields[name].is_required(), f"{name} has no default to load"
