"""Ingest review fixes: every file of a SKU folder is read or named, a store failure points at the
store, a re-ingest that dropped a photo says so, case-only id clashes, BOM and blank metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from schemas.common import ObjectRef
from services.ingest import ingest
from services.ingest.ingest import IngestError, ingest_path, prepare_all
from shared.config import Settings, load_settings
from shared.errors import StoreMisconfigured, TransientError
from shared.store import FileStore
from skuforge_cli.main import main as cli_main
from tests.support.bus import file_store_uri, isolated_settings


def _sku(root: Path, folder: str, sku_id: str, colours: tuple[int, ...] = (10, 20), **metadata: str) -> Path:
    """A SKU folder with one 32x32 PNG per colour and a metadata.json (``metadata`` overrides fields)."""
    path = root / folder
    path.mkdir(parents=True)
    fields = {"sku_id": sku_id, "name": "Oat drink", "category": "carton", **metadata}
    (path / "metadata.json").write_text(json.dumps(fields))
    for index, colour in enumerate(colours):
        Image.new("RGB", (32, 32), (colour, 40, 80)).save(path / f"photo_{index}.png")
    return path


class _Publisher:
    """Stands in for Kafka: records what would be published, or fails as a broker does."""

    published: list[str] = []
    fail_with: Exception | None = None

    def __init__(self, settings: Settings, producer: str) -> None:
        pass

    def publish(self, topic: Any, payload: Any, *, sku_id: str, event_id: str, trace_id: str) -> Any:
        if self.fail_with is not None:
            raise self.fail_with
        self.published.append(sku_id)
        return SimpleNamespace(event_id=event_id)

    def close(self) -> None:
        pass


@pytest.fixture
def publisher(monkeypatch: pytest.MonkeyPatch) -> type[_Publisher]:
    monkeypatch.setattr(_Publisher, "published", [])
    monkeypatch.setattr(_Publisher, "fail_with", None)
    monkeypatch.setattr(ingest, "Publisher", _Publisher)
    return _Publisher


# Finding 1: photo names the decoder reads; everything else named, leftovers skipped.


def test_jfif_and_jpe_photos_are_read(tmp_path: Path) -> None:
    # Chrome saves JPEGs as .jfif and Windows as .jpe; they were skipped and the SKU went out short.
    folder = _sku(tmp_path, "A", "A-1", colours=(10,))
    Image.new("RGB", (32, 32), (0, 200, 0)).save(folder / "from-chrome.jfif", "JPEG")
    Image.new("RGB", (32, 32), (0, 0, 200)).save(folder / "from-windows.JPE", "JPEG")
    [sku] = prepare_all(tmp_path, load_settings())
    assert sorted(photo.original_filename for photo in sku.photos) == [
        "from-chrome.jfif",
        "from-windows.JPE",
        "photo_0.png",
    ]


def test_every_file_ingest_does_not_read_is_named_and_nothing_is_uploaded(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    publisher: type[_Publisher],
) -> None:
    # Before, a GIF, an AVIF, a photo in a subfolder and a broken link were skipped without a word.
    batch = tmp_path / "batch"
    folder = _sku(batch, "A", "A-1")
    Image.new("RGB", (32, 32), (1, 2, 3)).save(folder / "3.gif", "GIF")
    (folder / "4.avif").write_bytes(b"\x00\x00\x00\x1cftypavif")
    (folder / "angles").mkdir()
    Image.new("RGB", (32, 32), (4, 5, 6)).save(folder / "angles" / "5.jpg", "JPEG")
    os.symlink(tmp_path / "gone" / "6.jpg", folder / "6.jpg")
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    assert cli_main(["ingest", str(batch)]) == 2
    err = capsys.readouterr().err
    assert f"{folder / '3.gif'}: not a photo ingest reads (" in err
    assert f"{folder / '4.avif'}: not a photo ingest reads (" in err and "export it as JPEG or PNG" in err
    assert f"{folder / 'angles'}: a folder inside a SKU folder; nothing in it is read" in err
    assert f"{folder / '6.jpg'}: a link to {tmp_path / 'gone' / '6.jpg'}, which does not exist" in err
    assert "Traceback" not in err
    assert not (tmp_path / "store").exists(), "nothing may be uploaded for a refused folder"
    assert publisher.published == []


def test_what_desktops_leave_in_a_folder_is_skipped_not_named(tmp_path: Path) -> None:
    folder = _sku(tmp_path, "A", "A-1")
    for leftover in ("Thumbs.db", "desktop.ini", "Icon\r", ".DS_Store", "._photo_0.png"):
        (folder / leftover).write_bytes(b"\x00junk")
    (folder / "__MACOSX").mkdir()
    (folder / ".thumbnails").mkdir()
    [sku] = prepare_all(tmp_path, load_settings())
    assert [photo.original_filename for photo in sku.photos] == ["photo_0.png", "photo_1.png"]


# Finding 2: a store failure before anything is published names the store, not Kafka.


class _DownStore(FileStore):
    """A store that refuses every write, as S3 does with bad credentials or when unreachable."""

    def __init__(self, root: Path, error: TransientError) -> None:
        super().__init__(root)
        self.error = error

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectRef:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        TransientError("S3 unreachable for s3://bucket/incoming/A-1/x.png: Could not connect"),
        StoreMisconfigured("S3 refused s3://bucket/incoming/A-1/x.png: AccessDenied (HTTP 403)"),
    ],
)
def test_a_store_failure_before_publishing_points_at_the_store_not_kafka(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    publisher: type[_Publisher],
    error: TransientError,
) -> None:
    _sku(tmp_path / "batch", "A", "A-1")
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    monkeypatch.setattr(ingest, "open_store", lambda *args, **kwargs: _DownStore(tmp_path / "store", error))
    assert cli_main(["ingest", str(tmp_path / "batch")]) == 1
    err = capsys.readouterr().err
    assert str(error) in err and "SKUFORGE_STORE_URI" in err and "credentials" in err
    assert "Kafka" not in err
    assert err.count("\n") == 1 and publisher.published == []


def test_a_broker_failure_before_publishing_still_points_at_kafka(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    publisher: type[_Publisher],
) -> None:
    _sku(tmp_path / "batch", "A", "A-1")
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    publisher.fail_with = TransientError("broker not reachable")
    assert cli_main(["ingest", str(tmp_path / "batch")]) == 1
    err = capsys.readouterr().err
    assert "broker not reachable (is Kafka at SKUFORGE_KAFKA_BOOTSTRAP running?)" in err
    assert "SKUFORGE_STORE_URI" not in err


# Finding 3: a photo dropped from the folder stays in the store: say so.


def test_reingesting_a_sku_that_lost_a_photo_warns_that_it_stays(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    publisher: type[_Publisher],
) -> None:
    batch = tmp_path / "batch"
    folder = _sku(batch, "A", "A-1", colours=(10, 20, 30))
    _sku(batch, "B", "B-1")
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    store = FileStore(tmp_path / "store")
    assert cli_main(["ingest", str(batch)]) == 0
    assert "warning" not in capsys.readouterr().err, "a first ingest has nothing stale"
    stored_before = list(store.list_keys("incoming/A-1/"))
    assert len(stored_before) == 3

    (folder / "photo_1.png").unlink()
    (folder / "photo_2.png").unlink()
    assert cli_main(["ingest", str(batch)]) == 0, "a warning, not a refusal"
    err = capsys.readouterr().err
    assert err.count("warning:") == 1, err  # B-1 kept its photos: no warning for it
    assert (
        f"skuforge ingest: warning: SKU A-1: 2 photos from an earlier ingest (under incoming/A-1/) "
        f"are not in {folder}; ingest never removes a photo, so they and the images generated from "
        "them stay in the retraining store (--withdraw-missing takes them out)" in err
    )
    assert list(store.list_keys("incoming/A-1/")) == stored_before, "ingest removes no photo"
    assert publisher.published == ["A-1", "B-1", "A-1", "B-1"]


def test_ingest_path_hands_the_warning_to_its_caller(tmp_path: Path, publisher: type[_Publisher]) -> None:
    # skuforge demo and the benchmarks call ingest_path, not the CLI: warn= lets them show it their way.
    folder = _sku(tmp_path / "batch", "A", "A-1")
    settings = isolated_settings("localhost:1", file_store_uri(tmp_path / "store"))
    store = FileStore(tmp_path / "store")
    store.put_bytes("incoming/A-1/0123456789abcdef.png", b"an earlier photo", "image/png")
    warnings: list[str] = []
    ingest_path(tmp_path / "batch", settings, store=store, warn=warnings.append)
    assert warnings == [
        f"SKU A-1: 1 photo from an earlier ingest (under incoming/A-1/) is not in {folder}; ingest "
        "never removes a photo, so it and the images generated from it stay in the retraining store "
        "(--withdraw-missing takes it out)"
    ]


# Finding 4: SKU ids equal but for case.


def test_sku_ids_equal_but_for_case_are_refused_naming_both_folders(tmp_path: Path) -> None:
    first = _sku(tmp_path, "first", "ABC-1")
    second = _sku(tmp_path, "second", "abc-1", colours=(50,))
    with pytest.raises(IngestError) as refused:
        prepare_all(tmp_path, load_settings())
    message = str(refused.value)
    assert "nothing was ingested" in message
    assert f"{second}: sku_id 'abc-1' differs only in case from 'ABC-1' of {first}" in message


# Finding 5: a byte-order mark is no reason to refuse; a blank name or category is.


def test_metadata_with_a_utf8_byte_order_mark_is_read(tmp_path: Path) -> None:
    folder = _sku(tmp_path, "A", "A-1")
    metadata = folder / "metadata.json"
    metadata.write_bytes(b"\xef\xbb\xbf" + metadata.read_bytes())  # as Windows Notepad saves it
    [sku] = prepare_all(tmp_path, load_settings())
    assert sku.metadata.sku_id == "A-1"


@pytest.mark.parametrize("field", ["name", "category"])
def test_a_name_or_category_of_only_whitespace_is_refused(tmp_path: Path, field: str) -> None:
    folder = _sku(tmp_path, "A", "A-1", (10, 20), **{field: " \t "})
    with pytest.raises(IngestError) as refused:
        prepare_all(tmp_path, load_settings())
    assert f"{folder / 'metadata.json'}: {field}: is only whitespace; give the product's {field}" in str(
        refused.value
    )
