"""``skuforge dataset sweep``: the retraining store's objects that no manifest row names, store-wide.

The trainstore stage sweeps an item's unnamed objects only when it replaces the item again, so those
of items never written again (a deletion cut short, a writer whose row lost) stayed in the bucket for
ever. The sweep deletes, with ``--delete`` (a dry run is the default), every SKU's objects no row names
that are ``SKUFORGE_TRAINSTORE_SWEEP_GRACE_S`` older than the SKU's newest manifest part, both times the
store's; on the file store and on S3 (moto's server).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.errors import TransientError
from shared.store import FileStore, ObjectStore, digest_key, sha256_hex
from shared.trainstore.manifest import ManifestStore
from skuforge_cli.main import main as cli_main
from tests.support.trainstore import PREFIX, add_item, dataset_cli_into_closed_pipe

ORPHAN_PNG = b"\x89PNG\r\n\x1a\n an earlier render"


def _orphan(manifests: ManifestStore, relative: str) -> str:
    """Put an object under ``relative`` (digest-named, as the stage names them) that no row names."""
    key = manifests.key(digest_key(relative, sha256_hex(ORPHAN_PNG)))
    manifests.store.put_bytes(key, ORPHAN_PNG, "image/png")
    return key


def _age(store: FileStore, key: str, days: float) -> None:
    """Make a file-store object written ``days`` before now (its modification time is the store's)."""
    when = (datetime.now(UTC) - timedelta(days=days)).timestamp()
    os.utime(store.root / key, (when, when))


def _keys(store: ObjectStore) -> set[str]:
    return set(store.list_keys(""))


@pytest.fixture
def file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FileStore:
    store = FileStore(tmp_path / "store")
    monkeypatch.setenv("SKUFORGE_STORE_URI", store.base_uri)
    monkeypatch.setenv("SKUFORGE_TRAINSTORE_PREFIX", PREFIX)
    monkeypatch.delenv("SKUFORGE_TRAINSTORE_SWEEP_GRACE_S", raising=False)
    return store


def test_sweep_deletes_only_unnamed_objects_older_than_the_grace_period_and_only_with_delete(
    file_store: FileStore, capsys: pytest.CaptureFixture[str]
) -> None:
    manifests = ManifestStore(file_store, PREFIX)
    named = add_item(manifests, "SKU-A", "syn-0", "synthetic", "accepted")
    old = _orphan(manifests, "images/SKU-A/synthetic/syn-1.png")
    old_mask = _orphan(manifests, "masks/SKU-A/syn-1.png")
    young = _orphan(manifests, "images/SKU-A/synthetic/syn-2.png")
    note = manifests.key("images/SKU-A/notes.txt")  # not of the trainstore's layout: not its to delete
    file_store.put_bytes(note, b"kept by hand")
    outside = "generated/SKU-A/syn-1.png"  # outside the retraining store's prefix
    file_store.put_bytes(outside, ORPHAN_PNG)
    # A SKU with objects but no manifest: nothing says which of them are named.
    unmanaged = _orphan(manifests, "images/SKU-Z/real/photo.png")
    for key in (old, old_mask, note, outside, unmanaged, manifests.key(str(named.image))):
        _age(file_store, key, days=2)  # the default grace period is one day
    before = _keys(file_store)

    assert cli_main(["dataset", "sweep"]) == 0  # a dry run by default
    out = capsys.readouterr().out
    assert _keys(file_store) == before
    assert f"SKU-A: would delete {file_store.uri_for(old)}" in out
    assert f"SKU-A: would delete {file_store.uri_for(old_mask)}" in out
    assert "SKU-A: 1 unnamed object younger than SKUFORGE_TRAINSTORE_SWEEP_GRACE_S (86400 s) kept" in out
    assert "SKU-Z: no manifest: its objects are left alone" in out
    assert "dry run: 2 objects of 1 SKU would be deleted; run again with --delete to delete them" in out
    for key in (young, note, outside, unmanaged, manifests.key(str(named.image))):
        assert file_store.uri_for(key) not in out

    assert cli_main(["dataset", "sweep", "--delete"]) == 0
    out = capsys.readouterr().out
    assert f"SKU-A: deleted {file_store.uri_for(old)}" in out
    assert "2 objects of 1 SKU deleted" in out
    assert _keys(file_store) == before - {old, old_mask}
    file_store.read_checked(manifests.key(str(named.image)), str(named.image_sha256))
    assert manifests.read_sku("SKU-A")["syn-0"] == named


def test_sweep_on_s3_measures_ages_by_the_stores_clock(
    s3_store: ObjectStore,
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The orphan is put before the SKU's manifest part, so by S3's LastModified it is no younger
    than the part: swept with a grace period of 0, kept with the default day, whatever this machine's
    clock says."""
    monkeypatch.setenv("SKUFORGE_STORE_URI", s3_store.base_uri)
    monkeypatch.setenv("SKUFORGE_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("SKUFORGE_TRAINSTORE_PREFIX", PREFIX)
    manifests = ManifestStore(s3_store, PREFIX)
    orphan = _orphan(manifests, "images/SKU-A/real/photo-1.png")
    named = add_item(manifests, "SKU-A", "photo-0", "real", "reference")
    before = _keys(s3_store)

    monkeypatch.delenv("SKUFORGE_TRAINSTORE_SWEEP_GRACE_S", raising=False)
    assert cli_main(["dataset", "sweep", "--delete"]) == 0
    out = capsys.readouterr().out
    assert "SKU-A: 1 unnamed object younger than" in out and "0 objects of 0 SKUs deleted" in out
    assert _keys(s3_store) == before

    monkeypatch.setenv("SKUFORGE_TRAINSTORE_SWEEP_GRACE_S", "0")
    assert cli_main(["dataset", "sweep"]) == 0
    assert f"SKU-A: would delete {s3_store.uri_for(orphan)}" in capsys.readouterr().out
    assert _keys(s3_store) == before

    assert cli_main(["dataset", "sweep", "--delete"]) == 0
    assert f"SKU-A: deleted {s3_store.uri_for(orphan)}" in capsys.readouterr().out
    assert _keys(s3_store) == before - {orphan}
    s3_store.read_checked(manifests.key(str(named.image)), str(named.image_sha256))
    s3_store.read_checked(manifests.key(str(named.mask)), str(named.mask_sha256))


def test_a_sku_whose_manifest_does_not_read_is_named_and_nothing_of_it_is_deleted(
    file_store: FileStore, capsys: pytest.CaptureFixture[str]
) -> None:
    manifests = ManifestStore(file_store, PREFIX)
    for sku_id in ("SKU-A", "SKU-B"):
        add_item(manifests, sku_id, "real-0", "real", "reference")
        _age(file_store, _orphan(manifests, f"images/{sku_id}/real/real-1.png"), days=2)
    [part] = file_store.list_keys(manifests.key("manifests/SKU-B/"))
    file_store.put_bytes(part, file_store.get_bytes(part).replace(b'"real"', b'"imaginary"'))
    before = _keys(file_store)

    assert cli_main(["dataset", "sweep", "--delete"]) == 1
    out, err = capsys.readouterr()
    assert "SKU 'SKU-B': manifest_unreadable" in err and "1 of 2 SKUs could not be read" in err
    assert "SKU-A: deleted" in out and "SKU-B" not in out
    [gone] = before - _keys(file_store)
    assert gone.startswith(manifests.key("images/SKU-A/"))


def test_ages_are_measured_against_the_skus_newest_manifest_part_not_this_machines_clock(
    file_store: FileStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """By this machine's clock the orphan is two days old, past the default day; but the SKU's manifest
    was last written three days ago, so by the store's times the orphan is newer than any row: it may
    be a writer's whose row is still on its way, and is kept until the SKU is written again."""
    manifests = ManifestStore(file_store, PREFIX)
    add_item(manifests, "SKU-A", "real-0", "real", "reference")
    orphan = _orphan(manifests, "images/SKU-A/real/real-1.png")
    _age(file_store, orphan, days=2)
    for key in file_store.list_keys(manifests.key("manifests/SKU-A/")):
        _age(file_store, key, days=3)
    before = _keys(file_store)

    assert cli_main(["dataset", "sweep", "--delete"]) == 0
    out = capsys.readouterr().out
    assert "SKU-A: 1 unnamed object younger than" in out and "0 objects of 0 SKUs deleted" in out
    assert _keys(file_store) == before

    add_item(manifests, "SKU-A", "real-2", "real", "reference")  # the SKU written again, now
    assert cli_main(["dataset", "sweep", "--delete"]) == 0
    assert f"SKU-A: deleted {file_store.uri_for(orphan)}" in capsys.readouterr().out
    assert orphan not in _keys(file_store)


def test_a_deletion_that_fails_names_its_sku_after_what_it_did_delete_and_the_others_are_swept(
    file_store: FileStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    manifests = ManifestStore(file_store, PREFIX)
    orphans = {}
    for sku_id in ("SKU-A", "SKU-B"):
        add_item(manifests, sku_id, "real-0", "real", "reference")
        orphans[sku_id] = [_orphan(manifests, f"images/{sku_id}/real/real-{n}.png") for n in (1, 2)]
        for key in orphans[sku_id]:
            _age(file_store, key, days=2)
    first, failing = orphans["SKU-A"]
    delete = FileStore._delete

    def unreachable_once(store: FileStore, key: str) -> None:
        if key == failing:
            raise TransientError(f"cannot delete {store.uri_for(key)}: the disk went away")
        delete(store, key)

    monkeypatch.setattr(FileStore, "_delete", unreachable_once)
    assert cli_main(["dataset", "sweep", "--delete"]) == 1
    out, err = capsys.readouterr()
    assert f"SKU-A: deleted {file_store.uri_for(first)}" in out
    assert f"SKU-A: deleted {file_store.uri_for(failing)}" not in out
    assert "3 objects of 2 SKUs deleted" in out
    assert f"SKU 'SKU-A': cannot delete {file_store.uri_for(failing)}" in err
    assert "1 of 2 SKUs could not be read (named above) and were not swept, or not wholly" in err
    left = _keys(file_store)
    assert failing in left and first not in left and not set(orphans["SKU-B"]) & left


def test_sweep_into_a_closed_pipe_stops_quietly(file_store: FileStore) -> None:
    """`skuforge dataset sweep | head -1`, as `stats` does: no BrokenPipeError traceback once head has
    gone, and exit 1."""
    manifests = ManifestStore(file_store, PREFIX)
    add_item(manifests, "SKU-A", "real-0", "real", "reference")
    orphan = _orphan(manifests, "images/SKU-A/real/real-1.png")
    _age(file_store, orphan, days=2)
    done = dataset_cli_into_closed_pipe("sweep")
    assert done.stderr == ""
    assert done.returncode == 1
    assert orphan in _keys(file_store)  # a dry run


def test_sweep_with_sku_sweeps_only_the_skus_named(
    file_store: FileStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """`skuforge dataset sweep` went through every SKU of the store: one SKU's leftovers could not be
    looked at, or deleted, without those of the whole store. SKU-AB shares SKU-A's name as a prefix."""
    manifests = ManifestStore(file_store, PREFIX)
    orphans = {}
    for sku_id in ("SKU-A", "SKU-AB", "SKU-B"):
        add_item(manifests, sku_id, "real-0", "real", "reference")
        orphans[sku_id] = _orphan(manifests, f"images/{sku_id}/real/real-1.png")
        _age(file_store, orphans[sku_id], days=2)
    for sku_id in ("SKU-Y", "SKU-Z"):  # objects but no manifest
        _orphan(manifests, f"images/{sku_id}/real/photo.png")
    before = _keys(file_store)

    assert cli_main(["dataset", "sweep", "--sku", "SKU-A"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"SKU-A: would delete {file_store.uri_for(orphans['SKU-A'])}",
        "dry run: 1 object of 1 SKU would be deleted; run again with --delete to delete them",
    ]
    assert _keys(file_store) == before

    assert cli_main(["dataset", "sweep", "--sku", "SKU-A", "--sku", "SKU-Z", "--delete"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"SKU-A: deleted {file_store.uri_for(orphans['SKU-A'])}",
        "SKU-Z: no manifest: its objects are left alone",
        "1 object of 1 SKU deleted",
    ]
    assert _keys(file_store) == before - {orphans["SKU-A"]}


@pytest.mark.parametrize("sku_id", ["SKU-NONE", "SKU-", "../SKU-A", "SKU-A/real", ""])
def test_sweep_with_a_sku_the_store_does_not_hold_is_refused_and_nothing_is_deleted(
    file_store: FileStore, capsys: pytest.CaptureFixture[str], sku_id: str
) -> None:
    manifests = ManifestStore(file_store, PREFIX)
    add_item(manifests, "SKU-A", "real-0", "real", "reference")
    _age(file_store, _orphan(manifests, "images/SKU-A/real/real-1.png"), days=2)
    before = _keys(file_store)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["dataset", "sweep", "--sku", "SKU-A", "--sku", sku_id, "--delete"])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert f"--sku {sku_id!r}:" in err and out == ""
    assert _keys(file_store) == before
