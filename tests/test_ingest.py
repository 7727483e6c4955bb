"""Ingest: SKU folders → store → sku.ingested; bad folders refused whole with clear reasons."""

from __future__ import annotations

import errno
import gc
import json
import shutil
import weakref
from pathlib import Path

import pytest

from schemas.envelope import Envelope
from schemas.events import SkuIngested
from schemas.topics import ALL_TOPICS, SKU_INGESTED
from services.ingest import ingest
from services.ingest.ingest import IngestError, ingest_path, prepare_all
from shared.config import Settings, load_settings
from shared.store import open_store
from shared.synth import write_sku_folders
from skuforge_cli.main import main as cli_main
from tests.support.bus import create_topics, file_store_uri, isolated_settings, read_topic
from tests.support.memory import make_huge_and_unreadable


@pytest.fixture(scope="module")
def synth_skus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_sku_folders(out, skus=3, photos_per_sku=2, seed=7, size_px=128)
    return out / "skus"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_valid_folders_are_prepared(synth_skus: Path) -> None:
    prepared = prepare_all(synth_skus, load_settings())
    assert [sku.metadata.sku_id for sku in prepared] == ["SYN-7-0001", "SYN-7-0002", "SYN-7-0003"]
    assert all(len(sku.photos) == 2 for sku in prepared)
    # The same content always gives the same event id (re-ingesting is idempotent downstream).
    assert prepare_all(synth_skus, load_settings())[0].event_id == prepared[0].event_id


@pytest.mark.parametrize(
    ("sku_id", "message"),
    [
        ("../escape", "path separator"),
        ("a/b", "path separator"),
        ("x" * 65, "at most 64"),
        ("bad\u0007id", "control"),
    ],
)
def test_unsafe_sku_id_refuses_the_whole_batch(
    synth_skus: Path, tmp_path: Path, sku_id: str, message: str
) -> None:
    root = _copy(synth_skus, tmp_path / "skus")
    metadata_path = root / "SYN-7-0002" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["sku_id"] = sku_id
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(IngestError, match=message) as info:
        prepare_all(root, load_settings())
    assert "nothing was ingested" in str(info.value)


def test_unreadable_and_missing_parts_are_all_named(synth_skus: Path, tmp_path: Path) -> None:
    root = _copy(synth_skus, tmp_path / "skus")
    (root / "SYN-7-0001" / "photo_01.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "SYN-7-0002" / "metadata.json").unlink()
    for photo in (root / "SYN-7-0003").glob("*.png"):
        photo.unlink()
    with pytest.raises(IngestError) as info:
        prepare_all(root, load_settings())
    text = str(info.value)
    assert "photo_01.png: refused" in text
    assert "metadata.json: missing" in text
    assert "SYN-7-0003: no photos" in text


def test_hidden_files_are_not_photos(synth_skus: Path, tmp_path: Path) -> None:
    """macOS writes an invisible AppleDouble file ``._NAME`` beside each photo on a USB stick or a
    network share; like hidden folders, hidden files are not part of a SKU and must not refuse it."""
    root = _copy(synth_skus, tmp_path / "skus")
    folder = root / "SYN-7-0001"
    for photo in sorted(folder.glob("*.png")):
        (folder / f"._{photo.name}").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    prepared = prepare_all(root, load_settings(max_photos_per_sku=2))
    assert [len(sku.photos) for sku in prepared] == [2, 2, 2]
    assert all(not photo.original_filename.startswith(".") for sku in prepared for photo in sku.photos)


def test_a_macos_zip_resource_fork_folder_is_not_a_sku(synth_skus: Path, tmp_path: Path) -> None:
    """A zip made on a Mac unpacks with ``__MACOSX/`` beside the SKU folders (``._NAME`` per file);
    it is no SKU, and must not refuse the batch for want of a metadata.json."""
    root = _copy(synth_skus, tmp_path / "skus")
    forks = root / "__MACOSX" / "SYN-7-0001"
    forks.mkdir(parents=True)
    for photo in sorted((root / "SYN-7-0001").glob("*.png")):
        (forks / f"._{photo.name}").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    prepared = prepare_all(root, load_settings())
    assert [sku.metadata.sku_id for sku in prepared] == ["SYN-7-0001", "SYN-7-0002", "SYN-7-0003"]


def test_too_many_photos_and_duplicate_ids_are_refused(synth_skus: Path, tmp_path: Path) -> None:
    root = _copy(synth_skus, tmp_path / "skus")
    with pytest.raises(IngestError, match="at most 1"):
        prepare_all(root, load_settings(max_photos_per_sku=1))
    shutil.copytree(root / "SYN-7-0001", root / "copy-of-1")
    with pytest.raises(IngestError, match="also used by"):
        prepare_all(root, load_settings())


def test_cli_refusal_is_a_clear_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    assert cli_main(["ingest", str(tmp_path / "does-not-exist")]) == 2
    err = capsys.readouterr().err
    assert "not a directory" in err and "Traceback" not in err
    assert not (tmp_path / "store").exists(), "nothing may be uploaded when the input is refused"


def test_a_folder_that_cannot_be_listed_is_named_not_a_traceback(
    synth_skus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SKU or batch folder this user may not read was a PermissionError traceback (exit 1). Root
    lists every folder, so the refusal is raised here as the OS raises it for another user."""
    root = _copy(synth_skus, tmp_path / "skus")
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    real_iterdir = Path.iterdir
    locked = {root / "SYN-7-0002"}

    def iterdir(path: Path) -> object:
        if path in locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_iterdir(path)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(IngestError, match=r"SYN-7-0002: cannot be listed \(Permission denied\)"):
        prepare_all(root, load_settings())
    locked.add(root)
    assert cli_main(["ingest", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"{root}: cannot be listed (Permission denied)" in err and "Traceback" not in err
    assert not (tmp_path / "store").exists(), "nothing may be uploaded when the input is refused"


@pytest.mark.kafka
def test_ingest_publishes_one_event_per_sku_after_storing_photos(
    kafka_bootstrap: str, synth_skus: Path, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    create_topics(settings, SKU_INGESTED)
    event_ids = ingest_path(synth_skus, settings)
    records = read_topic(kafka_bootstrap, settings.topic_name(SKU_INGESTED), expect=3, timeout_s=30)
    assert len(records) == 3
    store = open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI")
    for record in records:
        event = Envelope[SkuIngested].model_validate_json(record.value)
        assert record.key.decode() == event.sku_id
        assert event.event_id in event_ids
        for photo in event.payload.photos:
            store.read_verified(photo.image)  # stored, and the checksum holds
            assert (photo.image.width, photo.image.height) == (128, 128)


@pytest.mark.kafka
def test_a_missing_topic_is_named_before_any_photo_is_uploaded(
    kafka_bootstrap: str, synth_skus: Path, tmp_path: Path
) -> None:
    # Was found at the first publish, after the uploads, as a 60 s metadata timeout asking whether
    # Kafka was running (it was).
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    with pytest.raises(IngestError, match=f"topic {settings.topic_name(SKU_INGESTED)} does not exist"):
        ingest_path(synth_skus, settings)
    store = tmp_path / "store"
    assert not store.exists() or not any(path.is_file() for path in store.rglob("*"))


@pytest.mark.kafka
def test_topics_create_makes_every_topic_and_dlq(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("SKUFORGE_TOPIC_NAMESPACE", "clitest.")
    assert cli_main(["topics", "create", "--partitions", "2"]) == 0
    created = json.loads(capsys.readouterr().out)["created"]
    # The passthrough stage's output too: README calls that stage the deployment smoke test, and
    # before, a cluster set up by `topics create` had no topic for it to write to (found in review).
    assert len(created) == 2 * (len(ALL_TOPICS) + 1)
    assert "clitest.passthrough.sku.ingested.v1" in created
    assert cli_main(["topics", "create", "--partitions", "2"]) == 0  # idempotent
    assert json.loads(capsys.readouterr().out)["created"] == []


def test_an_oversized_photo_is_refused_by_its_size_without_reading_it(
    synth_skus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _copy(synth_skus, tmp_path / "skus")
    huge = root / "SYN-7-0001" / "photo_01.png"
    make_huge_and_unreadable(huge, monkeypatch)
    with pytest.raises(IngestError, match=r"photo_01\.png: refused \(.*3221225472 bytes; at most"):
        prepare_all(root, load_settings())


def test_ingest_holds_one_skus_photos_at_a_time_and_a_bad_folder_publishes_nothing(
    synth_skus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, every SKU of the batch was decoded and kept as PNG in memory until all had passed: a
    # thousand phone photos are tens of gigabytes. Now each SKU's photos wait in a temporary folder on
    # disk; a bad folder still means nothing uploaded and no event (this one fails before Kafka).
    root = _copy(synth_skus, tmp_path / "skus")
    (root / "zz-broken").mkdir()
    (root / "zz-broken" / "metadata.json").write_text("{")
    alive: list[weakref.ref[ingest.PreparedSku]] = []
    most_alive = 0

    def prepare_and_count(folder: Path, settings: Settings) -> tuple[ingest.PreparedSku | None, list[str]]:
        nonlocal most_alive
        gc.collect()
        most_alive = max(most_alive, sum(ref() is not None for ref in alive))
        sku, problems = real_prepare(folder, settings)
        if sku is not None:
            alive.append(weakref.ref(sku))
        return sku, problems

    real_prepare = ingest.prepare_sku
    monkeypatch.setattr(ingest, "prepare_sku", prepare_and_count)
    settings = isolated_settings("localhost:1", file_store_uri(tmp_path / "store"))
    with pytest.raises(IngestError, match=r"(?s)nothing was ingested.*zz-broken"):
        ingest_path(root, settings)
    assert len(alive) == 3 and most_alive == 0, most_alive
    assert not (tmp_path / "store").exists()


def test_a_full_temporary_folder_is_a_clear_error_and_nothing_is_uploaded(
    synth_skus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The checked photos wait in TMPDIR; a full disk there was an OSError traceback.
    def disk_full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)  # where ingest writes only its spool
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    assert cli_main(["ingest", str(synth_skus)]) == 2
    err = capsys.readouterr().err
    assert "the checked photos could not be kept in" in err and "No space left on device" in err
    assert "TMPDIR" in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()


def test_survey_names_the_skus_and_their_photos_or_every_problem(synth_skus: Path, tmp_path: Path) -> None:
    # What skuforge demo shows before it starts, without holding the batch's photos.
    assert ingest.survey_folders(synth_skus, load_settings()) == [
        (sku.metadata.sku_id, len(sku.photos)) for sku in prepare_all(synth_skus, load_settings())
    ]
    root = _copy(synth_skus, tmp_path / "skus")
    shutil.copytree(root / "SYN-7-0001", root / "copy-of-1")
    with pytest.raises(IngestError, match="also used by"):
        ingest.survey_folders(root, load_settings())


def test_a_heic_photo_is_named_not_skipped(synth_skus: Path, tmp_path: Path) -> None:
    # Before, IMG_0001.HEIC (an iPhone's default) was skipped as "not a photo": the SKU went out a
    # photo short and nothing said so.
    batch = _copy(synth_skus, tmp_path / "batch")
    folder = sorted(p for p in batch.iterdir() if p.is_dir())[0]
    (folder / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    with pytest.raises(
        IngestError, match=r"IMG_0001.HEIC: HEIC/HEIF is not read here; export it as JPEG or PNG"
    ):
        prepare_all(batch, load_settings())


@pytest.mark.kafka
def test_a_file_name_that_is_not_utf8_is_kept_readable_and_a_failure_names_what_was_published(
    kafka_bootstrap: str, synth_skus: Path, tmp_path: Path
) -> None:
    # Before, a Latin-1 file name passed every check and then failed the event's schema after the
    # first SKU was published (a traceback); and a store or broker failure after the checks did not
    # say which SKUs had gone out.
    import os

    from services.ingest.ingest import IngestIncomplete
    from shared.store import FileStore

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    create_topics(settings, SKU_INGESTED)
    batch = _copy(synth_skus, tmp_path / "batch")
    folders = sorted(p for p in batch.iterdir() if p.is_dir())
    photo = sorted(folders[1].glob("*.png"))[0]
    os.rename(photo, os.path.join(os.fsencode(folders[1]), b"caf\xe9.png"))
    ids = [json.loads((folder / "metadata.json").read_text())["sku_id"] for folder in folders]

    class FailsOnTheThird(FileStore):
        def _write(self, key: str, data: bytes, content_type: str) -> None:
            if f"/{ids[2]}/" in key:
                raise OSError(28, "No space left on device")
            super()._write(key, data, content_type)

    with pytest.raises(IngestIncomplete) as stopped:
        ingest_path(batch, settings, store=FailsOnTheThird(tmp_path / "store"))
    message = str(stopped.value)
    assert "stopped after publishing 2 of 3 SKUs (OSError" in message
    assert f"published: {ids[0]}, {ids[1]}; not published: {ids[2]}" in message
    records = read_topic(kafka_bootstrap, settings.topic_name(SKU_INGESTED), expect=2, timeout_s=30)
    names = {
        photo.original_filename
        for record in records
        for photo in Envelope[SkuIngested].model_validate_json(record.value).payload.photos
    }
    assert "caf\ufffd.png" in names


def test_the_stored_photo_owners_are_the_photos_in_each_skus_incoming_folder(tmp_path: Path) -> None:
    # Read by the flow's layout (shared.keys): a stray object directly in incoming/ (no SKU folder,
    # which sku_of refuses to read as a SKU) or beside the photos is no SKU's photo, and stops nothing.
    store = open_store(file_store_uri(tmp_path / "store"), uri_from="the test")
    photo_id = "0123456789abcdef"
    for key in (
        f"incoming/A-1/{photo_id}.png",
        f"incoming/B-2/{photo_id}.png",
        f"incoming/{photo_id}.png",
        f"incoming/A-1/old/{photo_id[::-1]}.png",
        "incoming/A-1/notes.txt",
    ):
        store.put_bytes(key, b"png")
    assert ingest.stored_photo_owners(store) == {photo_id: {"A-1", "B-2"}}
