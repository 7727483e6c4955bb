"""Manifests: rows merge by item id, compaction leaves one file per SKU and survives a crash."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.errors import BadInput
from shared.store import FileStore, ObjectStore
from shared.trainstore.loader import load_manifest
from shared.trainstore.manifest import (
    ManifestRow,
    ManifestStore,
    decode_columns,
    decode_rows,
    encode_columns,
    encode_rows,
    merge_rows,
    rows_to_columns,
)
from tests.support.trainstore import add_item, manifest_row, stored


def names(store: ObjectStore, sku_id: str) -> list[str]:
    """The SKU's manifest files, each part's 32-hex id written as <id>."""
    keys = store.list_keys(f"ts/manifests/{sku_id}/")
    return [re.sub(r"-[0-9a-f]{32}\.", "-<id>.", key.rsplit("/", 1)[1]) for key in keys]


@pytest.fixture
def manifests(tmp_path: Path) -> ManifestStore:
    return ManifestStore(FileStore(tmp_path), "ts")


def test_rows_round_trip_through_jsonl() -> None:
    rows = [manifest_row("b", iou=0.93, reasons=["x"]), manifest_row("a", caption="a can")]
    data = encode_rows(rows)
    assert data.count(b"\n") == 2
    assert decode_rows(data) == sorted(rows, key=lambda r: r.item_id)


def test_later_rows_win_but_pending_never_replaces_a_decision() -> None:
    merged = merge_rows(
        [
            manifest_row("a", "pending"),
            manifest_row("a", "approved"),
            manifest_row("a", "pending"),
            manifest_row("b", "pending"),
        ]
    )
    assert {k: v.status for k, v in merged.items()} == {"a": "approved", "b": "pending"}
    assert (
        merge_rows([manifest_row("a", "approved"), manifest_row("a", "rejected")])["a"].status == "rejected"
    )


def test_append_writes_only_what_is_new(manifests: ManifestStore) -> None:
    assert manifests.append("SKU-1", [manifest_row("a"), manifest_row("b")]) is not None
    assert (
        manifests.append("SKU-1", [manifest_row("a"), manifest_row("b")]) is None
    )  # redelivery: nothing written
    assert manifests.append("SKU-1", [manifest_row("a", "pending")]) is None  # would be ignored anyway
    assert manifests.append("SKU-1", [manifest_row("a"), manifest_row("c")]) is not None
    parts = list(manifests.store.list_keys("ts/manifests/SKU-1/"))
    assert len(parts) == 2
    assert sorted(manifests.read_sku("SKU-1")) == ["a", "b", "c"]


def test_compaction_leaves_one_file_with_every_row(manifests: ManifestStore) -> None:
    for index in range(5):
        manifests.append("SKU-1", [manifest_row(f"i{index}")])
    manifests.append("SKU-1", [manifest_row("i0", "rejected")])
    before = manifests.read_sku("SKU-1")
    assert not manifests.compact("SKU-1", min_deltas=7)  # not enough deltas yet
    assert manifests.compact("SKU-1", min_deltas=6)
    assert names(manifests.store, "SKU-1") == [
        "columns-c-0000000006-<id>.json",
        "part-c-0000000006-<id>.jsonl",
    ]
    assert manifests.read_sku("SKU-1") == before
    assert before["i0"].status == "rejected"
    # Appending after compaction continues the sequence.
    manifests.append("SKU-1", [manifest_row("i9")])
    assert len(manifests.read_sku("SKU-1")) == 6


def test_a_crash_during_compaction_loses_and_doubles_nothing(manifests: ManifestStore) -> None:
    for index in range(3):
        manifests.append("SKU-1", [manifest_row(f"i{index}")])
    store = manifests.store
    old_parts = {key: store.get_bytes(key) for key in store.list_keys("ts/manifests/SKU-1/")}
    manifests.compact("SKU-1")
    # Put the merged deltas back, as if the process died before deleting them.
    for key, data in old_parts.items():
        store.put_bytes(key, data)
    rows = manifests.read_sku("SKU-1")
    assert sorted(rows) == ["i0", "i1", "i2"]
    assert len(load_manifest(store, prefix="ts")) == 3
    manifests.append("SKU-1", [manifest_row("i3")])
    assert sorted(manifests.read_sku("SKU-1")) == ["i0", "i1", "i2", "i3"]


def test_a_second_writer_beside_a_compaction_loses_no_row(tmp_path: Path) -> None:
    # Two trainstore members may write one SKU at once (the assignor may split one partition number's
    # topics, a member past its poll interval still writes). Before, B numbered its delta 4 after
    # listing, A wrote its own delta 4 and compacted into part-c-4 deleting every part up to 4, then
    # B's delta 4 was skipped by readers and deleted by the next compaction: B's row lost for good,
    # its event already committed.
    a = ManifestStore(FileStore(tmp_path), "ts")
    for index in range(3):
        a.append("SKU-1", [manifest_row(f"i{index}")])

    class Interleaved(FileStore):
        fired = False

        def _write(self, key: str, data: bytes, content_type: str) -> None:
            if "part-d-" in key and not self.fired:  # B has listed and numbered its delta 4
                self.fired = True
                a.append("SKU-1", [manifest_row("from-a")])  # A's delta is number 4 too
                assert a.compact("SKU-1")  # part-c-4
            super()._write(key, data, content_type)

    b = ManifestStore(Interleaved(tmp_path), "ts")
    assert b.append("SKU-1", [manifest_row("from-b", "reference", source="real")]) is not None
    everything = ["from-a", "from-b", "i0", "i1", "i2"]
    assert sorted(a.read_sku("SKU-1")) == everything
    assert (
        sorted(r["item_id"] for r in load_manifest(a.store, prefix="ts", trainable_only=False)) == everything
    )
    assert a.compact("SKU-1")  # B's delta is merged now, and only then deleted
    assert names(a.store, "SKU-1") == ["columns-c-0000000004-<id>.json", "part-c-0000000004-<id>.jsonl"]
    assert sorted(a.read_sku("SKU-1")) == everything
    a.append("SKU-1", [manifest_row("later")])
    a.compact("SKU-1")
    assert sorted(a.read_sku("SKU-1")) == sorted([*everything, "later"])


class StaleLister(FileStore):
    """A second writer's view of the store: while ``hidden`` is set its listings lack those keys, as
    if it had listed before they were written (its next sequence number is then one already used)."""

    hidden: tuple[str, ...] = ()

    def _list(self, prefix: str) -> Iterator[str]:
        return (key for key in super()._list(prefix) if not any(part in key for part in self.hidden))


class PausedBeforeWrite(FileStore):
    """Runs ``meanwhile`` once, just before the first write of a key containing ``marker``: another
    writer's steps between this writer's read of the parts and its write."""

    def __init__(self, root: Path, marker: str, meanwhile: Callable[[], None]) -> None:
        super().__init__(root)
        self.marker, self.meanwhile, self.fired = marker, meanwhile, False

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        if self.marker in key and not self.fired:
            self.fired = True
            self.meanwhile()
        super()._write(key, data, content_type)


def test_two_compactions_of_one_number_keep_both_writers_rows(tmp_path: Path) -> None:
    # A reads deltas 1-4 to compact; meanwhile B, which listed before A's delta 4, numbers its own delta
    # 4, compacts everything into part 4 and deletes its delta. A then writes its part 4. When both parts
    # had one name, A's replaced B's, and B's row was gone for good (its event already committed).
    setup = ManifestStore(FileStore(tmp_path), "ts")
    for index in range(3):
        setup.append("SKU-1", [manifest_row(f"i{index}")])
    setup.append("SKU-1", [manifest_row("from-a")])
    b_store = StaleLister(tmp_path)
    b = ManifestStore(b_store, "ts")

    def b_writes_and_compacts() -> None:
        b_store.hidden = ("part-d-0000000004",)
        assert b.append("SKU-1", [manifest_row("from-b", "reference", source="real")]) is not None
        b_store.hidden = ()
        assert b.compact("SKU-1")

    a = ManifestStore(PausedBeforeWrite(tmp_path, "columns-c-", b_writes_and_compacts), "ts")
    assert a.compact("SKU-1")
    everything = ["from-a", "from-b", "i0", "i1", "i2"]
    assert sorted(a.read_sku("SKU-1")) == everything
    assert (
        sorted(r["item_id"] for r in load_manifest(a.store, prefix="ts", trainable_only=False)) == everything
    )
    assert a.compact("SKU-1")  # the two parts of number 4 become one
    assert len(list(a.store.list_keys("ts/manifests/SKU-1/part-"))) == 1
    assert sorted(a.read_sku("SKU-1")) == everything


def test_a_decision_written_beside_a_compaction_is_not_undone_by_it(tmp_path: Path) -> None:
    # X was accepted long ago (compacted part 1). A compacts parts 1-2; meanwhile B, which listed before
    # A's delta 2, approves a new render of X as its own delta 2. The compacted part holds X's older
    # row; it used to be read after B's delta 2 and replace it, and the next compaction made that final
    # (the export then failed on the image's checksum, or trained on a rejected item).
    setup = ManifestStore(FileStore(tmp_path), "ts")
    setup.append("SKU-1", [manifest_row("x", image_sha256="1" * 64)])
    assert setup.compact("SKU-1")
    setup.append("SKU-1", [manifest_row("i1")])
    b_store = StaleLister(tmp_path)
    b = ManifestStore(b_store, "ts")

    def b_approves_a_new_render() -> None:
        b_store.hidden = ("part-d-0000000002",)
        assert b.append("SKU-1", [manifest_row("x", "approved", image_sha256="2" * 64)]) is not None
        b_store.hidden = ()

    a = ManifestStore(PausedBeforeWrite(tmp_path, "columns-c-", b_approves_a_new_render), "ts")
    assert a.compact("SKU-1")
    assert a.read_sku("SKU-1")["x"].status == "approved"
    assert a.compact("SKU-1")
    current = a.read_sku("SKU-1")
    assert (current["x"].status, current["x"].image_sha256, sorted(current)) == (
        "approved",
        "2" * 64,
        ["i1", "x"],
    )
    (exported,) = (r for r in load_manifest(a.store, prefix="ts") if r["item_id"] == "x")
    assert exported["image_sha256"] == "2" * 64


def test_a_crash_after_compaction_keeps_the_latest_decision(manifests: ManifestStore) -> None:
    # The merged deltas come back (a crash before their deletion) and are read again: before the
    # compacted part, so an item rejected after it was accepted stays rejected.
    manifests.append("SKU-1", [manifest_row("i0")])
    manifests.append("SKU-1", [manifest_row("i0", "rejected")])
    store = manifests.store
    old_parts = {key: store.get_bytes(key) for key in store.list_keys("ts/manifests/SKU-1/")}
    manifests.compact("SKU-1")
    for key, data in old_parts.items():
        store.put_bytes(key, data)
    assert manifests.read_sku("SKU-1")["i0"].status == "rejected"
    assert manifests.compact("SKU-1")
    assert manifests.read_sku("SKU-1")["i0"].status == "rejected"
    assert len(list(store.list_keys("ts/manifests/SKU-1/part-"))) == 1


def test_load_manifest_is_the_same_compacted_or_not(manifests: ManifestStore) -> None:
    for sku in ("SKU-1", "SKU-2"):
        manifests.append(
            sku,
            [
                manifest_row(
                    "r", sku_id=sku, source="real", status="reference", image=f"images/{sku}/real/r.png"
                )
            ],
        )
        manifests.append(
            sku, [manifest_row("g", sku_id=sku, iou=0.97, image=f"images/{sku}/synthetic/g.png")]
        )
        manifests.append(sku, [manifest_row("p", "pending", sku_id=sku)])
    uncompacted = load_manifest(manifests.store, prefix="ts", trainable_only=False)
    for sku in ("SKU-1", "SKU-2"):
        manifests.compact(sku)
    compacted = load_manifest(manifests.store, prefix="ts", trainable_only=False)
    key = lambda r: (r["sku_id"], r["item_id"])  # noqa: E731
    assert sorted(uncompacted, key=key) == sorted(compacted, key=key)
    assert compacted == uncompacted  # same order too: by SKU, then item id
    # Without its columnar copy a compacted SKU is read from the JSONL part: same rows.
    for key_name in list(manifests.store.list_keys("ts/manifests/SKU-1/columns-")):
        manifests.store.delete(key_name)
    assert load_manifest(manifests.store, prefix="ts", trainable_only=False) == compacted
    trainable = load_manifest(manifests.store, prefix="ts")
    assert sorted(key(r) for r in trainable) == [
        ("SKU-1", "g"),
        ("SKU-1", "r"),
        ("SKU-2", "g"),
        ("SKU-2", "r"),
    ]
    first = next(r for r in trainable if key(r) == ("SKU-1", "r"))
    assert first["image_uri"] == manifests.store.uri_for("ts/images/SKU-1/real/r.png")
    assert first["mask_uri"] is None and first["caption"] == "" and first["iou"] is None
    assert (
        load_manifest(manifests.store, prefix="ts", sku_ids=["SKU-2"], trainable_only=False)[0]["sku_id"]
        == "SKU-2"
    )


def test_columnar_copy_round_trips_common_values_and_their_exceptions() -> None:
    rows = [manifest_row(f"g{index:02d}", iou=0.9 + index / 100, adapter_id="general") for index in range(19)]
    rows.append(manifest_row("p0", "reference", source="real", caption="the real photo"))
    decoded = decode_columns(encode_columns(rows))
    assert decoded == rows_to_columns(rows)
    assert decoded["status"].count("reference") == 1 and decoded["adapter_id"][-1] is None
    assert list(decoded) == list(ManifestRow.model_fields)


def test_a_compacted_part_of_the_older_layout_still_reads_and_compacts(manifests: ManifestStore) -> None:
    # Stores compacted before content-named parts hold part-c-<seq>.jsonl without stamps: its rows
    # count as written just before any delta of its number (as they were read before).
    store = manifests.store
    store.put_bytes(
        "ts/manifests/SKU-1/part-c-0000000003.jsonl",
        encode_rows([manifest_row("x"), manifest_row("y", "pending")]),
    )
    store.put_bytes(
        "ts/manifests/SKU-1/columns-c-0000000003.json",
        encode_columns([manifest_row("x"), manifest_row("y", "pending")]),
    )
    assert {k: v.status for k, v in manifests.read_sku("SKU-1").items()} == {"x": "accepted", "y": "pending"}
    assert [r["item_id"] for r in load_manifest(store, prefix="ts")] == ["x"]  # from the columnar copy
    manifests.append(
        "SKU-1", [manifest_row("x", "rejected"), manifest_row("z")]
    )  # number 4: newer than the old part
    assert manifests.compact("SKU-1")
    assert names(store, "SKU-1") == ["columns-c-0000000004-<id>.json", "part-c-0000000004-<id>.jsonl"]
    assert {k: v.status for k, v in manifests.read_sku("SKU-1").items()} == {
        "x": "rejected",
        "y": "pending",
        "z": "accepted",
    }


def test_load_manifest_refuses_a_store_without_skus_and_a_sku_it_does_not_have(
    manifests: ManifestStore,
) -> None:
    """Training code's entry point read a mistyped prefix, store or SKU id as an empty (or smaller)
    training set; the CLI commands refuse both."""
    manifests.append("SKU-1", [manifest_row("i0")])
    with pytest.raises(ValueError, match=r"retraining store .*/train-store/ has no SKUs"):
        load_manifest(manifests.store, prefix="train-store")
    with pytest.raises(ValueError, match="no SKU 'SKU-l' in the retraining store"):
        load_manifest(manifests.store, prefix="ts", sku_ids=["SKU-1", "SKU-l"])
    assert load_manifest(manifests.store, prefix="ts", sku_ids=["SKU-1"]).column("item_id") == ["i0"]


def test_a_file_under_manifests_that_is_no_manifest_part_is_not_a_sku(
    manifests: ManifestStore, tmp_path: Path
) -> None:
    """A file browser's .DS_Store (or a note, a backup folder) under manifests/ listed as a SKU:
    ``load_manifest`` then refused the whole store ("no SKU .DS_Store in the retraining store"), and
    ``dataset stats`` of a store with nothing else printed "0 SKUs" instead of naming the empty store."""
    manifests.append("SKU-1", [manifest_row("i0")])
    root = tmp_path / "ts" / "manifests"  # the fixture's file store
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "SKU-1" / ".DS_Store").write_bytes(b"\0")
    (root / "old").mkdir()
    (root / "old" / "notes.txt").write_text("moved SKU-0 away\n")
    assert manifests.sku_ids() == ["SKU-1"]
    assert load_manifest(manifests.store, prefix="ts").column("item_id") == ["i0"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # cut short (a copy interrupted, a full disk)
        lambda data: data.replace(b'"version":1', b'"version":2'),  # written by a newer version
        lambda data: b"[]",
    ],
)
def test_load_manifest_reads_the_jsonl_part_when_its_columnar_copy_does_not_read(
    manifests: ManifestStore, damage: Callable[[bytes], bytes]
) -> None:
    """The columnar copy is a cache of the compacted JSONL part; one that did not parse stopped training
    code with a JSONDecodeError (or a bare ValueError, AttributeError) though the part itself reads."""
    manifests.append(
        "SKU-1", [manifest_row("r", source="real", status="reference"), manifest_row("g", iou=0.97)]
    )
    manifests.compact("SKU-1")
    expected = load_manifest(manifests.store, prefix="ts")
    (columns_key,) = manifests.store.list_keys("ts/manifests/SKU-1/columns-")
    manifests.store.put_bytes(columns_key, damage(manifests.store.get_bytes(columns_key)))
    assert load_manifest(manifests.store, prefix="ts") == expected


def test_a_change_to_one_loaded_rows_reasons_reaches_no_other_row(manifests: ManifestStore) -> None:
    """The columnar copy writes a value most rows share once, and it parsed into one list repeated down
    the column: training code that added to one row's ``reasons`` added to every row's. Loaded, a
    list field is a tuple, compacted or not."""
    manifests.append(
        "SKU-1", [manifest_row(f"g{index:02d}", reasons=["iou_below_threshold"]) for index in range(20)]
    )
    uncompacted = load_manifest(manifests.store, prefix="ts")
    manifests.compact("SKU-1")
    loaded = load_manifest(manifests.store, prefix="ts")
    assert loaded == uncompacted
    with contextlib.suppress(AttributeError):  # a tuple has no append: nothing changes
        loaded[0]["reasons"].append("relabelled")
    assert loaded.column("reasons") == [("iou_below_threshold",)] * 20


@pytest.mark.parametrize("sku_id", ["../x", "..", ".", "SKU-1/../SKU-1", "a\\b"])
def test_load_manifest_names_an_unsafe_sku_id_as_one_it_does_not_have(
    manifests: ManifestStore, sku_id: str
) -> None:
    """An id no stored SKU can have, and that as a key prefix could leave the store, stopped training
    code with the object store's "prefix ... has a '..' segment" instead of the loader's own answer."""
    manifests.append("SKU-1", [manifest_row("i0")])
    with pytest.raises(ValueError, match=rf"^no SKU {re.escape(repr(sku_id))} in the retraining store "):
        load_manifest(manifests.store, prefix="ts", sku_ids=["SKU-1", sku_id])


def test_a_row_a_newer_version_wrote_reads_and_keeps_its_new_field(manifests: ManifestStore) -> None:
    """During a rolling upgrade old and new pods share one store; a row with a field the older one did
    not know (as ``produced_at`` once was) made the SKU ``manifest_unreadable`` to it: its events were
    dead-lettered and ``dataset stats``, ``export`` and ``load_manifest`` refused the store. The field is
    kept, not dropped, so the older pod's compaction does not take from the newer one what it decides by;
    a known field with a value that does not validate is still refused."""
    store = manifests.store
    manifests.append("SKU-1", [manifest_row("a")])
    newer = b'{"item_id":"b","sku_id":"SKU-1","category":"can","source":"synthetic","status":"accepted",'
    store.put_bytes(
        f"ts/manifests/SKU-1/part-d-0000000002-{'0' * 32}.jsonl",
        newer + b'"hue":{"name":"r\xc3\xa9d","rgb":[200,0,0]}}\n',
    )
    assert sorted(manifests.read_sku("SKU-1")) == ["a", "b"]
    assert load_manifest(store, prefix="ts").column("item_id") == ["a", "b"]
    assert manifests.compact("SKU-1")
    (part,) = store.list_keys("ts/manifests/SKU-1/part-c-")
    assert b'"hue":{"name":"r\xc3\xa9d","rgb":[200,0,0]}}\n' in store.get_bytes(part)
    assert load_manifest(store, prefix="ts").column("item_id") == ["a", "b"]
    with pytest.raises(ValidationError):  # what this version writes is still only what it knows
        manifest_row("c", hue="red")
    store.put_bytes(
        f"ts/manifests/SKU-1/part-d-0000000003-{'0' * 32}.jsonl", newer[:-1] + b',"iou":"high"}\n'
    )
    with pytest.raises(BadInput, match=r"manifest_unreadable: .*part-d-0000000003-.* \(iou: "):
        manifests.read_sku("SKU-1")


@pytest.mark.parametrize(("sku_id", "named"), [("", "''"), ("SKU-1 ", "'SKU-1 '")])
def test_load_manifest_quotes_the_sku_id_it_does_not_have(
    manifests: ManifestStore, sku_id: str, named: str
) -> None:
    """An empty id (a blank line of a SKU list) read "no SKU  in the retraining store", naming nothing,
    and one with a trailing space looked like a SKU the store has."""
    manifests.append("SKU-1", [manifest_row("i0")])
    with pytest.raises(ValueError, match=rf"^no SKU {re.escape(named)} in the retraining store "):
        load_manifest(manifests.store, prefix="ts", sku_ids=["SKU-1", sku_id])


def test_a_change_to_a_loaded_column_leaves_the_manifest_as_loaded(manifests: ManifestStore) -> None:
    """``column`` returned the manifest's own list: training code that relabelled or sorted the labels it
    got changed every row of the loaded manifest, and what any later reader of it saw."""
    manifests.append("SKU-1", [manifest_row("b"), manifest_row("a")])
    loaded = load_manifest(manifests.store, prefix="ts")
    labels = loaded.column("item_id")
    labels[0] = "relabelled"
    labels.sort(reverse=True)
    assert loaded.column("item_id") == ["a", "b"]
    assert [item["item_id"] for item in loaded] == ["a", "b"]


def test_deleting_an_items_objects_leaves_those_of_an_item_whose_id_is_its_own_and_16_hex(
    manifests: ManifestStore,
) -> None:
    """Ids come from events: ``p1`` and ``p1-0123456789abcdef`` are two items. The second's key of the
    layout before keys named their bytes (``p1-0123456789abcdef.png``) reads as a content key of the
    first (``p1-<sha256[:16]>.png``): deleting the first's objects deleted the second's image and mask,
    while its row still named them."""
    other = "p1-0123456789abcdef"
    add_item(manifests, "SKU-1", "p1", "real", "reference")
    kept = add_item(manifests, "SKU-1", other, "real", "reference")
    assert stored(manifests, "SKU-1", "p1", "real") == (
        [manifests.key("images/SKU-1/real/p1.png")],
        [manifests.key("masks/SKU-1/p1.png")],
    )
    manifests.append("SKU-1", [manifest_row("p1", "withdrawn", source="real")])
    manifests.delete_objects("SKU-1", [("real", "p1")])
    assert stored(manifests, "SKU-1", "p1", "real") == ([], [])
    assert stored(manifests, "SKU-1", other, "real") == (
        [manifests.key(str(kept.image))],
        [manifests.key(str(kept.mask))],
    )


def test_a_part_name_with_other_scripts_digits_is_no_part(manifests: ManifestStore) -> None:
    # \d matched any script's digits and int() read them: a stray file named with Arabic-Indic digits
    # was read as a part of sequence 1234567890, its rows merged in, and the next delta numbered after it.
    manifests.append("SKU-1", [manifest_row("a")])
    stray = "part-d-\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660-" + "0" * 32 + ".jsonl"
    for sku_id in ("SKU-1", "SKU-2"):
        manifests.store.put_bytes(f"ts/manifests/{sku_id}/{stray}", encode_rows([manifest_row("b")]))
    assert manifests.sku_ids() == ["SKU-1"]
    assert sorted(manifests.read_sku("SKU-1")) == ["a"]
    manifests.append("SKU-1", [manifest_row("c")])
    compacted, deltas = manifests.parts("SKU-1")
    assert (compacted, [seq for seq, _ in deltas]) == ([], [1, 2])
