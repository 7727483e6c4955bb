"""Ingest review fixes: every file of a SKU folder is read or named, a store failure points at the
store, a re-ingest that dropped a photo says so, case-only id clashes, BOM and blank metadata; a photo
too small to use, every photo of a folder over the limit checked, photos beside the SKU folders named."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from schemas.common import ObjectRef
from schemas.envelope import derive_id
from services.ingest import ingest
from services.ingest.ingest import IngestError, ingest_path, prepare_all
from shared.config import Settings, load_settings
from shared.errors import BadInput, StoreMisconfigured, TransientError
from shared.store import FileStore
from skuforge_cli.main import main as cli_main
from tests.support.bus import file_store_uri, isolated_settings
from tests.support.memory import make_huge_and_unreadable
from tests.support.signals import HELD_IN_THE_CONNECTION, Ready, silent_broker, stopped

ROOT = Path(__file__).resolve().parents[1]


def _sku(root: Path, folder: str, sku_id: str, colours: tuple[int, ...] = (10, 20), **metadata: str) -> Path:
    """A SKU folder with one 64x64 PNG per colour (the smallest photo ingest takes by default) and a
    metadata.json (``metadata`` overrides fields)."""
    path = root / folder
    path.mkdir(parents=True)
    fields = {"sku_id": sku_id, "name": "Oat drink", "category": "carton", **metadata}
    (path / "metadata.json").write_text(json.dumps(fields))
    for index, colour in enumerate(colours):
        Image.new("RGB", (64, 64), (colour, 40, 80)).save(path / f"photo_{index}.png")
    return path


def _refusal(root: Path, settings: Settings | None = None) -> str:
    """What the IngestError says that prepare_all raises for the SKU folders under ``root``."""
    with pytest.raises(IngestError) as refused:
        prepare_all(root, settings or load_settings())
    return str(refused.value)


@contextmanager
def _ingest_env_with_a_silent_broker(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """A batch of one SKU at ``tmp_path / "batch"``, and the environment for an ingest of it whose broker
    accepts and never answers, so ingest waits on it with its photos spooled; yields the environment
    and its TMPDIR."""
    _sku(tmp_path / "batch", "A", "A-1")
    spool_root = tmp_path / "tmp"
    spool_root.mkdir()
    with silent_broker() as bootstrap:
        yield (
            {
                **os.environ,
                "TMPDIR": str(spool_root),
                "SKUFORGE_STORE_URI": file_store_uri(tmp_path / "store"),
                "SKUFORGE_KAFKA_BOOTSTRAP": bootstrap,
            },
            spool_root,
        )


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
    monkeypatch.setattr(ingest, "listed_topics", lambda settings, client_id="": _EveryTopic())
    return _Publisher


class _EveryTopic:
    """The cluster's topic list, as far as the stand-in broker is concerned: every topic exists."""

    def __contains__(self, topic: object) -> bool:
        return True


# Finding 1: photo names the decoder reads; everything else named, leftovers skipped.


def test_jfif_and_jpe_photos_are_read(tmp_path: Path) -> None:
    # Chrome saves JPEGs as .jfif and Windows as .jpe; they were skipped and the SKU went out short.
    folder = _sku(tmp_path, "A", "A-1", colours=(10,))
    Image.new("RGB", (64, 64), (0, 200, 0)).save(folder / "from-chrome.jfif", "JPEG")
    Image.new("RGB", (64, 64), (0, 0, 200)).save(folder / "from-windows.JPE", "JPEG")
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
    Image.new("RGB", (64, 64), (1, 2, 3)).save(folder / "3.gif", "GIF")
    (folder / "4.avif").write_bytes(b"\x00\x00\x00\x1cftypavif")
    (folder / "angles").mkdir()
    Image.new("RGB", (64, 64), (4, 5, 6)).save(folder / "angles" / "5.jpg", "JPEG")
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


def test_a_nas_thumbnail_folder_is_left_out_with_one_note_not_a_refusal(tmp_path: Path) -> None:
    """A Synology NAS keeps "@eaDir" (resized copies of each photo) in every folder it shares, and a
    copy of the share (rsync, NFS) brings them along: the batch was refused, "a folder inside a SKU
    folder" for each SKU and "metadata.json: missing" for the one beside the SKU folders. They are left
    out, as ``skuforge evaluate`` leaves them out, with one note for the batch."""
    # Compared casefolded, as evaluate compares them.
    for folder, sku_id, name, colours in (("A", "A-1", "@eaDir", (10, 20)), ("B", "B-1", "@EADIR", (50, 60))):
        thumbnails = _sku(tmp_path, folder, sku_id, colours) / name / "photo_0.png"
        thumbnails.mkdir(parents=True)
        Image.new("RGB", (64, 64), "red").save(thumbnails / "SYNOPHOTO_THUMB_M.jpg")
    (tmp_path / "@eaDir" / "A").mkdir(parents=True)
    notes: list[str] = []
    surveyed = ingest.survey_folders(tmp_path, load_settings(), warn=notes.append)
    assert surveyed == [("A-1", 2), ("B-1", 2)]
    assert notes == [
        "3 NAS thumbnail folder(s) (@EADIR, @eaDir) hold the copies a NAS makes, not photos: not "
        f"ingested: {tmp_path / '@eaDir'}, {tmp_path / 'A' / '@eaDir'}, {tmp_path / 'B' / '@EADIR'}"
    ]
    [sku] = prepare_all(tmp_path / "A", load_settings())
    assert [photo.original_filename for photo in sku.photos] == ["photo_0.png", "photo_1.png"]


# Finding 2: a store failure before anything is published names the store, not Kafka.


class _DownStore(FileStore):
    """A store that refuses every write, as S3 does with bad credentials or when unreachable."""

    def __init__(self, root: Path, error: Exception) -> None:
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
    monkeypatch.setattr(
        ingest, "open_settings_store", lambda _settings: _DownStore(tmp_path / "store", error)
    )
    assert cli_main(["ingest", str(tmp_path / "batch")]) == 1
    err = capsys.readouterr().err
    assert str(error) in err and "SKUFORGE_STORE_URI" in err and "credentials" in err
    assert "Kafka" not in err
    assert err.count("\n") == 1 and publisher.published == []


def test_a_store_refusal_does_not_advise_a_rerun_alone(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    publisher: type[_Publisher],
) -> None:
    """A refusal (a FileStore whose incoming/ is a link: unsafe_key) comes back on every run, yet the
    message said "Run the same command again to finish"."""
    _sku(tmp_path / "batch", "A", "A-1")
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    refusal = BadInput("unsafe_key", "incoming/A-1 is a link out of the store's folder")
    monkeypatch.setattr(
        ingest, "open_settings_store", lambda _settings: _DownStore(tmp_path / "store", refusal)
    )
    assert cli_main(["ingest", str(tmp_path / "batch")]) == 1
    err = capsys.readouterr().err
    assert "incoming/A-1 is a link out of the store's folder" in err
    assert "The store refused it, so a rerun alone will not finish: fix what it names, then run" in err


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
    _sku(batch, "B", "B-1", colours=(50, 60))  # photos of its own: one in two SKUs is warned of
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
        f"are not in {folder} now (a file removed or edited; or decoded differently since, after a "
        "change of SKUFORGE_MAX_IMAGE_PIXELS or an upgrade, when the same files are there); ingest "
        "never removes a photo, so they and the images generated from them stay in the retraining "
        "store (--withdraw-missing takes them out)" in err
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
        f"SKU A-1: 1 photo from an earlier ingest (under incoming/A-1/) is not in {folder} now (a file "
        "removed or edited; or decoded differently since, after a change of SKUFORGE_MAX_IMAGE_PIXELS or "
        "an upgrade, when the same files are there); ingest never removes a photo, so it and the images "
        "generated from it stay in the retraining store (--withdraw-missing takes it out)"
    ]


# Finding 4: SKU ids equal but for case.


def test_sku_ids_equal_but_for_case_are_refused_naming_both_folders(tmp_path: Path) -> None:
    first = _sku(tmp_path, "first", "ABC-1")
    second = _sku(tmp_path, "second", "abc-1", colours=(50,))
    message = _refusal(tmp_path)
    assert "nothing was ingested" in message
    assert f"{second}: sku_id 'abc-1' differs only in case from 'ABC-1' of {first}" in message


def test_a_duplicate_sku_id_is_named_though_its_first_folder_has_other_problems(tmp_path: Path) -> None:
    """Named only on the run after the first folder's photo was fixed: one more round trip."""
    first = _sku(tmp_path, "first", "ABC-1")
    (first / "photo_9.png").write_bytes(b"not a picture")
    second = _sku(tmp_path, "second", "ABC-1", colours=(50,))
    message = _refusal(tmp_path)
    assert f"{first / 'photo_9.png'}" in message
    assert f"{second}: sku_id 'ABC-1' is also used by {first}" in message


# Finding 5: a byte-order mark is no reason to refuse; a blank name or category is.


def test_metadata_with_a_utf8_byte_order_mark_is_read(tmp_path: Path) -> None:
    folder = _sku(tmp_path, "A", "A-1")
    metadata = folder / "metadata.json"
    metadata.write_bytes(b"\xef\xbb\xbf" + metadata.read_bytes())  # as Windows Notepad saves it
    [sku] = prepare_all(tmp_path, load_settings())
    assert sku.metadata.sku_id == "A-1"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_metadata_saved_as_utf16_or_utf32_with_its_mark_is_read(tmp_path: Path, encoding: str) -> None:
    """PowerShell 5.1's `>` writes UTF-16 LE with a mark: "Invalid JSON at line 1 column 1"."""
    folder = _sku(tmp_path, "A", "A-1", name="Smör")
    metadata = folder / "metadata.json"
    text = metadata.read_text()
    metadata.write_bytes(
        ("\ufeff" + text).encode(encoding) if encoding.endswith("-be") else text.encode(encoding)
    )
    [sku] = prepare_all(tmp_path, load_settings())
    assert sku.metadata.sku_id == "A-1" and sku.metadata.name == "Smör"
    metadata.write_bytes(b"\xff\xfe{\x00\x00\xd8")  # a UTF-16 mark, then a lone surrogate
    with pytest.raises(IngestError, match=r"not readable as its byte-order mark says.*save it as UTF-8"):
        prepare_all(tmp_path, load_settings())


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_metadata_saved_as_utf16_or_utf32_without_a_mark_is_read(tmp_path: Path, encoding: str) -> None:
    """Node's writeFileSync(..., "utf16le"), Java's UTF_16LE and Python's "utf-16-le" write no mark;
    JSON's first characters are ASCII, so the NULs beside them say the encoding (RFC 4627). Refused
    before as "Invalid JSON: key must be a string at line 1 column 2", of a file an editor shows whole."""
    folder = _sku(tmp_path, "A", "A-1", name="Smör")
    metadata = folder / "metadata.json"
    metadata.write_bytes(metadata.read_text().encode(encoding))
    [sku] = prepare_all(tmp_path, load_settings())
    assert sku.metadata.sku_id == "A-1" and sku.metadata.name == "Smör"


def test_a_photo_whose_stored_png_is_over_the_byte_limit_is_refused_at_ingest(tmp_path: Path) -> None:
    """Only the file was held to SKUFORGE_MAX_IMAGE_BYTES: a JPEG of a few MB can be a PNG over it,
    which ingest stored and every stage then refused (the SKU dead-lettered as no_usable_photo)."""
    import numpy as np

    folder = _sku(tmp_path, "A", "A-1", (10,))
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noisy.jpg", quality=60)
    jpeg_size = (folder / "noisy.jpg").stat().st_size
    limit = 2 * jpeg_size  # the file passes; its PNG (about 360 kB of noise) does not
    message = _refusal(tmp_path, load_settings(max_image_bytes=limit))
    assert f"{folder / 'noisy.jpg'}: refused" in message
    assert "stored as PNG it would be" in message and "SKUFORGE_MAX_IMAGE_BYTES" in message


@pytest.mark.parametrize("field", ["name", "category"])
def test_a_name_or_category_of_only_whitespace_is_refused(tmp_path: Path, field: str) -> None:
    # A tab is a control character, refused as one (below); a no-break space is whitespace.
    folder = _sku(tmp_path, "A", "A-1", (10, 20), **{field: " \u00a0 "})
    message = _refusal(tmp_path)
    blank_problem = f"{field}: is only whitespace or invisible characters; give the product's {field}"
    assert f"{folder / 'metadata.json'}: {blank_problem}" in message


@pytest.mark.parametrize("field", ["name", "category"])
@pytest.mark.parametrize("blank", ["\u200b", "\ufeff", " \u2060\u200d "])
def test_a_name_or_category_of_only_invisible_characters_is_refused(
    tmp_path: Path, field: str, blank: str
) -> None:
    # A zero-width space, a byte-order mark or a word joiner (a spreadsheet's "empty" cell) shows
    # nothing, as whitespace shows nothing; it is not whitespace to str.strip, and was ingested as the
    # product's name or category, which captions and prompts were then made of.
    folder = _sku(tmp_path, "A", "A-1", (10, 20), **{field: blank})
    message = _refusal(tmp_path)
    blank_problem = f"{field}: is only whitespace or invisible characters; give the product's {field}"
    assert f"{folder / 'metadata.json'}: {blank_problem}" in message


@pytest.mark.parametrize("field", ["name", "category", "brand", "series"])
def test_a_control_character_in_the_metadata_is_one_line_naming_the_field(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    publisher: type[_Publisher],
    field: str,
) -> None:
    """Before, a NUL, a terminal escape or a newline in metadata.json went on into captions, prompts,
    logs and the console. The problem is one line naming the field; the escape is named, not echoed
    (nor is the value, which holds a newline)."""
    batch = tmp_path / "batch"
    folder = _sku(batch, "A", "A-1", (10, 20), **{field: "Oat\x1b[2J\ndrink"})
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    assert cli_main(["ingest", str(batch)]) == 2
    err = capsys.readouterr().err
    [problem] = [line for line in err.splitlines() if "metadata.json" in line]
    assert f"{folder / 'metadata.json'}: {field}: " in problem and "U+001B" in problem
    assert "\x1b" not in err and "drink" not in err, err
    assert publisher.published == [] and not (tmp_path / "store").exists()


# Finding 6: a photo too small to caption, cut out or learn from is refused, naming its size.


def test_a_photo_smaller_than_the_minimum_side_is_refused_naming_its_size_and_the_setting(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    publisher: type[_Publisher],
) -> None:
    # Before, a 2x2 or 8x8 photo went all the way to the training store as flat quads of colour; and a
    # 20000x64 strip passed (its shorter side is 64 px), though the captioner, at 2048 px on the longer
    # side where that side is 7 px, marks it too_small: its owner heard of it only from a dead letter.
    batch = tmp_path / "batch"
    folder = _sku(batch, "A", "A-1", colours=(10,))  # 64x64: the smallest side accepted by default
    Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / "tiny.png")
    Image.new("RGB", (300, 2), (30, 200, 30)).save(folder / "strip.jpg", "JPEG")
    Image.new("RGB", (20000, 64), (30, 30, 200)).save(folder / "long.png")
    Image.new("RGB", (2048, 64), (200, 200, 30)).save(folder / "not-scaled.png")  # 64 px at 2048: taken
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    assert cli_main(["ingest", str(batch)]) == 2
    err = capsys.readouterr().err
    assert (
        f"{folder / 'tiny.png'}: refused (too_small: 8x8 px; the shorter side must be at least 64 px "
        "(SKUFORGE_MIN_PHOTO_SIDE_PX))" in err
    )
    assert f"{folder / 'strip.jpg'}: refused (too_small: 300x2 px;" in err
    [long_line] = [line for line in err.splitlines() if "long.png" in line]
    assert long_line.endswith(
        f"{folder / 'long.png'}: refused (too_small: 20000x64 px, masked at most 2048 px long: its "
        "shorter side would be 7 px; it must be at least 64 px there (SKUFORGE_MIN_PHOTO_SIDE_PX): crop it)"
    ), long_line
    assert "photo_0.png" not in err and "not-scaled.png" not in err and publisher.published == []
    assert not (tmp_path / "store").exists()

    monkeypatch.setenv("SKUFORGE_MIN_PHOTO_SIDE_PX", "2")  # the setting decides
    [sku] = prepare_all(batch, load_settings())
    assert sorted(photo.original_filename for photo in sku.photos) == [
        "long.png",
        "not-scaled.png",
        "photo_0.png",
        "strip.jpg",
        "tiny.png",
    ]


# Finding 7: a folder with too many photos has every photo checked, one at a time.


def test_a_folder_over_the_photo_limit_names_every_other_problem_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, only "13 photos; at most 10" came back: the corrupt photo_9 (sorted after photo_11) and
    # the tiny photo, past the tenth, were never read, so each fix-and-rerun found the next problem.
    folder = _sku(tmp_path, "A", "A-1", colours=tuple(range(10, 130, 10)))  # photo_0 .. photo_11
    (folder / "photo_9.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.new("RGB", (4, 4), (1, 2, 3)).save(folder / "z-tiny.png")
    decoded: list[weakref.ref[Image.Image]] = []
    most_alive = 0
    real_decode = ingest.photo_and_transparency

    def decode_and_count(data: bytes, **limits: Any) -> tuple[Image.Image, bytes, object]:
        nonlocal most_alive
        gc.collect()
        most_alive = max(most_alive, sum(ref() is not None for ref in decoded))
        image, png, transparency = real_decode(data, **limits)
        decoded.append(weakref.ref(image))
        return image, png, transparency

    monkeypatch.setattr(ingest, "photo_and_transparency", decode_and_count)
    message = _refusal(tmp_path, load_settings(max_photos_per_sku=10))
    # 11: the photos ingest could take (the corrupt and the tiny one are refused by name).
    assert f"{folder}: 11 photos; at most 10 (SKUFORGE_MAX_PHOTOS_PER_SKU) are accepted" in message
    assert f"{folder / 'photo_9.png'}: refused (" in message
    assert f"{folder / 'z-tiny.png'}: refused (too_small: 4x4 px" in message
    assert "every photo was checked" in message
    assert len(decoded) == 12, "every file that decodes was decoded"
    assert most_alive <= 1, f"{most_alive} decoded photos held at once: one at a time"


def test_a_copy_of_a_photo_does_not_count_towards_the_limit(tmp_path: Path) -> None:
    """Copies are ingested once, but each file counted: 10 photos and a copy of one were refused."""
    folder = _sku(tmp_path, "A", "A-1", colours=tuple(range(10, 110, 10)))  # photo_0 .. photo_9
    (folder / "photo_0 copy.png").write_bytes((folder / "photo_0.png").read_bytes())
    (sku,) = prepare_all(tmp_path, load_settings(max_photos_per_sku=10))
    assert len(sku.photos) == 10
    Image.new("RGB", (64, 64), (250, 40, 80)).save(folder / "photo_10.png")
    with pytest.raises(IngestError, match="11 photos; at most 10"):
        prepare_all(tmp_path, load_settings(max_photos_per_sku=10))


# Finding 8: a photo lying beside the SKU folders belongs to no SKU: say so, ingest the rest.


@pytest.fixture
def batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A batch folder with one SKU folder (A-1), and the store the CLI ingests into."""
    _sku(tmp_path / "batch", "A", "A-1")
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    return tmp_path / "batch"


def test_a_photo_beside_the_sku_folders_is_named_in_a_warning_and_the_rest_ingested(
    batch: Path, capsys: pytest.CaptureFixture[str], publisher: type[_Publisher]
) -> None:
    Image.new("RGB", (64, 64), (9, 9, 9)).save(batch / "loose_photo.jpg", "JPEG")
    (batch / "IMG_0002.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (batch / "notes.txt").write_text("not a photo: no warning")
    (batch / "._loose_photo.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS's, hidden: no warning
    assert cli_main(["ingest", str(batch)]) == 0, "a warning, not a refusal"
    err = capsys.readouterr().err
    assert (
        f"skuforge ingest: warning: 2 photo(s) in {batch} itself belong to no SKU and are not ingested "
        "(IMG_0002.HEIC, loose_photo.jpg); move each into its SKU's folder" in err
    ), err
    assert "notes.txt" not in err and "._loose" not in err
    assert publisher.published == ["A-1"]

    warnings: list[str] = []
    assert ingest.survey_folders(batch, load_settings(), warn=warnings.append) == [("A-1", 2)]
    assert len(warnings) == 1 and "loose_photo.jpg" in warnings[0]


def test_a_folder_of_photos_without_sku_folders_says_they_need_one(tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp_path / "a.jpg", "JPEG")
    with pytest.raises(IngestError, match=r"no SKU folders .* found; its 1 photo\(s\) need a SKU folder"):
        prepare_all(tmp_path, load_settings())


def test_a_metadata_file_named_in_another_case_is_named_not_skipped_unseen(tmp_path: Path) -> None:
    # Metadata.json was skipped as if it were the metadata file, then reported as "metadata.json:
    # missing"; a single SKU folder holding only it was "no SKU folders ... give this folder one".
    folder = _sku(tmp_path / "batch", "oat", "OAT-1")
    (folder / "metadata.json").rename(folder / "Metadata.json")
    with pytest.raises(IngestError, match=r"its Metadata\.json must be named exactly metadata\.json"):
        prepare_all(folder, load_settings())
    with pytest.raises(IngestError) as raised:
        prepare_all(tmp_path / "batch", load_settings())
    assert "Metadata.json: the SKU's metadata must be named exactly metadata.json; rename it" in str(
        raised.value
    )


def test_metadata_json_under_another_case_on_a_case_insensitive_disk_is_the_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On macOS and Windows "Metadata.json" is the file metadata.json names: read as the metadata, it
    # must not also be refused as a misnamed one. Emulated here: the listing shows the name in another case.
    folder = _sku(tmp_path / "batch", "oat", "OAT-1")
    listed = ingest._listed

    def listing_in_another_case(path: Path) -> list[Path]:
        return [p.with_name("Metadata.json") if p.name == "metadata.json" else p for p in listed(path)]

    monkeypatch.setattr(ingest, "_listed", listing_in_another_case)
    monkeypatch.setattr(ingest, "_same_file", lambda one, other: one.name.casefold() == other.name.casefold())
    (prepared,) = prepare_all(folder, load_settings())
    assert prepared.metadata.sku_id == "OAT-1"


@pytest.mark.timeout(60)
def test_a_metadata_json_that_is_no_file_is_named_for_what_it_is(tmp_path: Path) -> None:
    """A dangling link or a folder named metadata.json made a SKU folder look like a batch: its photos
    were "loose" and it had "no SKU folders ... must be named exactly metadata.json". A pipe hung
    ingest for good (read_bytes waits for a writer)."""
    folder = _sku(tmp_path, "oat", "OAT-1")
    (folder / "metadata.json").unlink()
    (folder / "metadata.json").symlink_to(tmp_path / "moved.json")
    with pytest.raises(IngestError) as raised:
        prepare_all(folder, load_settings())
    message = str(raised.value)
    assert f"metadata.json: a link to {tmp_path / 'moved.json'}, which does not exist" in message
    assert "no SKU folders" not in message and "belong to no SKU" not in message
    assert ingest.loose_photos(folder) == []

    (folder / "metadata.json").unlink()
    (folder / "metadata.json").mkdir()
    with pytest.raises(IngestError, match=r"oat/metadata\.json: cannot be read \(Is a directory\)"):
        prepare_all(folder, load_settings())

    (folder / "metadata.json").rmdir()
    os.mkfifo(folder / "metadata.json")
    for path in (folder, tmp_path):  # the SKU folder, and the batch holding it
        with pytest.raises(IngestError, match=r"metadata\.json: not a regular file \(a pipe, socket or dev"):
            prepare_all(path, load_settings())


def test_ctrl_c_during_ingest_is_one_line_and_exit_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Was a traceback out of whatever PIL or the producer was doing at the time.
    _sku(tmp_path / "batch", "A", "A-1")
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))

    def interrupted(*args: Any, **kwargs: Any) -> list[str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(ingest, "ingest_path", interrupted)
    assert cli_main(["ingest", str(tmp_path / "batch")]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "run the same command again" in err


def test_a_sku_folder_link_that_leads_nowhere_and_an_archive_are_named_in_warnings(
    batch: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], publisher: type[_Publisher]
) -> None:
    # An unmounted share's link or a zipped SKU folder was dropped without a word: the batch read as
    # if it had no such SKU.
    (batch / "B").symlink_to(tmp_path / "nas" / "B")
    (batch / "C.zip").write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    assert cli_main(["ingest", str(batch)]) == 0, "warnings, not a refusal"
    err = capsys.readouterr().err
    assert f"1 link(s) in {batch} lead nowhere" in err and ": B" in err
    assert f"1 archive(s) in {batch} are not opened and not ingested: C.zip" in err
    assert publisher.published == ["A-1"]


def test_renaming_a_photo_keeps_the_event_id(tmp_path: Path) -> None:
    # The id was derived from the photos in file-name order: a rename alone made a new event, and the
    # stack generated the whole SKU again (4 more console items in the reviewer's run).
    settings = load_settings(store_uri=file_store_uri(tmp_path / "store"))
    folder = _sku(tmp_path / "batch", "A", "A-1")
    [before] = prepare_all(tmp_path / "batch", settings)
    (folder / "photo_0.png").rename(folder / "z_renamed.png")
    [after] = prepare_all(tmp_path / "batch", settings)
    assert [photo.photo_id for photo in after.photos] != [photo.photo_id for photo in before.photos]
    assert after.event_id == before.event_id


def test_a_fully_transparent_photo_is_refused_naming_it(tmp_path: Path) -> None:
    # An empty layer exported as PNG was stored as plain white and reported ingested; the captioner
    # then found nothing, and a SKU of only such photos was dead-lettered as no_usable_photo.
    folder = _sku(tmp_path / "batch", "A", "A-1")
    Image.new("RGBA", (96, 96), (255, 0, 0, 0)).save(folder / "empty_layer.png")
    with pytest.raises(
        IngestError, match=r"empty_layer.png: refused \(blank_photo: every pixel is transparent"
    ):
        prepare_all(tmp_path / "batch", load_settings(store_uri=file_store_uri(tmp_path / "store")))


def test_a_batch_given_one_level_too_high_says_which_folder_to_ingest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `skuforge synth --out var/synth` writes its SKU folders to var/synth/skus; `skuforge ingest
    # var/synth` said "move its photos into var/synth/skus" of each SKU folder: every product's photos
    # in one folder. A SKU folder inside a SKU folder got the same advice.
    batch = tmp_path / "synth" / "skus"
    _sku(batch, "A", "A-1")
    _sku(batch, "B", "B-1")
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    assert cli_main(["ingest", str(tmp_path / "synth")]) == 2
    err = capsys.readouterr().err
    assert (
        f"{batch}: holds SKU folders (A, B) but is not one itself (no metadata.json): ingest it on its "
        f"own (skuforge ingest {batch}), or move them up beside it" in err
    )
    assert "move its photos" not in err and "metadata.json: missing" not in err
    assert not (tmp_path / "store").exists()

    outer = _sku(tmp_path / "nested", "outer", "O-1")
    _sku(outer, "inner", "I-1", colours=(50,))
    message = _refusal(outer)
    assert (
        f"{outer / 'inner'}: a SKU folder (it has a metadata.json) inside the SKU folder {outer}; "
        f"nothing in it is read: move it out, beside {outer}" in message
    )
    assert "move its photos" not in message


def test_synths_own_out_folder_ingested_says_which_folder_to_ingest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`skuforge ingest var/synth`, README's own example of the mistake: synth's masks/ beside skus/
    was named first, five lines on a missing metadata.json and subfolders, and the line saying to
    ingest var/synth/skus came last."""
    out = tmp_path / "synth"
    assert (
        cli_main(
            [
                "synth",
                "--out",
                str(out),
                "--skus",
                "2",
                "--photos-per-sku",
                "1",
                "--seed",
                "1",
                "--size",
                "64",
            ]
        )
        == 0
    )
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    capsys.readouterr()
    assert cli_main(["ingest", str(out)]) == 2
    problems = capsys.readouterr().err.splitlines()[1:]
    assert problems[0].strip().startswith(f"{out / 'skus'}: holds SKU folders (SYN-1-0001, SYN-1-0002)")
    assert any(line.strip().startswith(f"{out / 'masks'}:") for line in problems[1:])  # still named
    assert not (tmp_path / "store").exists()


def test_metadata_saved_as_windows_1252_says_to_save_it_as_utf8(tmp_path: Path) -> None:
    # Notepad's "ANSI" writes "Café" as Windows-1252: refused as "(file): Invalid JSON: invalid unicode
    # code point", which did not say that the encoding was the fault, nor the fix.
    folder = _sku(tmp_path, "A", "A-1")
    metadata = folder / "metadata.json"
    metadata.write_bytes('{"sku_id": "A-1",\r\n "name": "Café", "category": "carton"}'.encode("cp1252"))
    message = _refusal(tmp_path)
    assert (
        f"{metadata}: not UTF-8 (byte 0xe9 at line 2 column 14; saved as Windows-1252 or Latin-1?); "
        "save it as UTF-8" in message
    )


def _stopped(command: list[str], env: dict[str, str], stop: signal.Signals, once: Ready) -> str:
    """Runs the ingest ``command`` as a shell would, sends it ``stop`` once it is ready (``once``), and
    gives what it wrote to stderr; fails unless it ended by that signal within 20 s."""
    ended = stopped(
        command,
        [(once, stop)],
        lost=f"{stop.name} was lost: ingest still ran 20 s later, waiting on the broker",
        env=env,
        cwd=ROOT,
    )
    assert ended.returncode == 128 + stop, ended.err
    return ended.err


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_ingest_removes_the_checked_photos_and_says_so(
    tmp_path: Path, stop: signal.Signals
) -> None:
    # `kill`, `timeout` or an SSH session that dropped ended ingest where it stood: the checked photos,
    # tens of gigabytes as PNG for a large batch, stayed in TMPDIR, and nothing was said.
    with _ingest_env_with_a_silent_broker(tmp_path) as (env, spool_root):

        def spooled(run: subprocess.Popen[str]) -> None:
            deadline = time.monotonic() + 60
            while not any(spool_root.glob("skuforge-ingest-*/*.png")):
                assert run.poll() is None and time.monotonic() < deadline, "ingest never spooled a photo"
                time.sleep(0.05)

        command = [sys.executable, "-m", "skuforge_cli", "ingest", str(tmp_path / "batch")]
        err = _stopped(command, env, stop, once=spooled)
    assert list(spool_root.iterdir()) == [], "the checked photos were left in TMPDIR"
    assert err.count("\n") == 1 and f"skuforge ingest: stopped by {stop.name};" in err
    assert "run the same command again" in err


# kafka-python's producer bootstraps by running its event loop on the calling thread, and the loop logs
# and drops whatever a task raises, KeyboardInterrupt included. This ingest holds the loop inside the
# task that makes the connection (as a slow DNS lookup there does) and says so; the stop then comes.
INGEST_HELD_IN_THE_CONNECTION = (
    HELD_IN_THE_CONNECTION
    + """
from skuforge_cli.main import main
sys.exit(main(["ingest", sys.argv[1]]))
"""
)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_while_kafka_connects_stops_ingest(tmp_path: Path, stop: signal.Signals) -> None:
    # The stop was lost: ingest waited out kafka-python's 30 s bootstrap and said "cannot reach Kafka"
    # (exit 1), or carried on with a broker that answered; ~1 run in 5 of the test above, under load.
    with _ingest_env_with_a_silent_broker(tmp_path) as (env, spool_root):
        command = [sys.executable, "-c", INGEST_HELD_IN_THE_CONNECTION, str(tmp_path / "batch")]
        err = _stopped(command, env, stop, once="connecting")
    assert list(spool_root.iterdir()) == [], "the checked photos were left in TMPDIR"
    how = "interrupted" if stop == signal.SIGINT else f"stopped by {stop.name}"
    assert err.count("\n") == 1 and f"skuforge ingest: {how};" in err, err


@pytest.mark.parametrize(
    ("argument", "said"),
    [
        ("", "argument path: the path is empty (an unset shell variable?); give a folder"),
        ("s3://bucket/skus", "s3:/bucket/skus: not a directory; ingest reads a local folder: copy the SKU"),
        ("missing", "missing: not a directory (it does not exist)"),
        ("skus.zip", "skus.zip: not a directory; it is an archive: unpack it and ingest the folder it holds"),
    ],
)
def test_a_path_that_is_no_folder_says_what_it_is(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argument: str,
    said: str,
) -> None:
    # An empty argument (`skuforge ingest "$SKUS"`, the variable unset) was the current folder: ingested
    # if it held SKU folders, else every file in it named. A zip, an s3:// URI and a mistyped name were
    # all just "not a directory".
    _sku(tmp_path, "A", "A-1")
    (tmp_path / "skus.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", "localhost:1")
    status: int | str | None
    try:
        status = cli_main(["ingest", argument])
    except SystemExit as refused:  # argparse refuses the argument itself
        status = refused.code
    assert status == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()


def test_a_batch_folder_that_can_be_listed_but_not_entered_is_named_not_a_traceback(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    publisher: type[_Publisher],
) -> None:
    """`chmod -R 644 batch`: its entries can be listed but not looked at. Ingest's warning of links
    and archives in the batch folder looked at each and was a PermissionError traceback (exit 1),
    before the check that names the folder. Root looks at anything, so the refusal is raised here as
    the OS raises it for another user: for every path inside the batch folder."""
    batch = tmp_path / "batch"
    _sku(batch, "A", "A-1")
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    real_stat, real_lstat = os.stat, os.lstat

    def searched(real: Any) -> Any:
        def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            if Path(os.fsdecode(path)).parent == batch:
                raise PermissionError(13, "Permission denied", os.fsdecode(path))
            return real(path, *args, **kwargs)

        return stat

    monkeypatch.setattr(os, "stat", searched(real_stat))
    monkeypatch.setattr(os, "lstat", searched(real_lstat))
    assert cli_main(["ingest", str(batch)]) == 2
    err = capsys.readouterr().err
    assert f"{batch / 'A'}: cannot be read (Permission denied); check its permissions" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert publisher.published == []


def test_a_field_given_twice_in_metadata_is_named_not_the_last_one_taken(tmp_path: Path) -> None:
    # {"sku_id": "A-1", ..., "sku_id": "A-2"} (a line pasted in, the old one left) was ingested as A-2:
    # the parser keeps the last value, and nothing said that the file had two.
    folder = _sku(tmp_path, "A", "A-1")
    metadata = folder / "metadata.json"
    metadata.write_text('{"sku_id": "A-1", "name": "Oat drink", "category": "carton", "sku_id": "A-2"}')
    message = _refusal(tmp_path)
    assert f"{metadata}: sku_id: given 2 times ('A-1', 'A-2'); keep one" in message
    metadata.write_text('{"sku_id": "A-1", "name": "Oat drink", "category": "carton", "brand": ""}')
    [sku] = prepare_all(tmp_path, load_settings())
    assert sku.metadata.sku_id == "A-1"


def test_a_huge_metadata_file_is_refused_by_its_size_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As photos are refused by their size before they are read, metadata.json was read whole, whatever
    # its size: a multi-gigabyte file saved under that name (an export, a log) filled the memory.
    folder = _sku(tmp_path, "A", "A-1")
    metadata = folder / "metadata.json"
    make_huge_and_unreadable(metadata, monkeypatch)
    message = _refusal(tmp_path)
    assert (
        f"{metadata}: 3221225472 bytes; a SKU's metadata (sku_id, name, category, brand, series) is a "
        "few hundred, at most 1048576 are read: is it the right file?" in message
    )


def test_a_broker_that_cannot_be_reached_is_told_what_to_check_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The first thing a new user meets read "cannot reach Kafka at localhost:9092 (...); is it running?
    # (`make kafka-up`, or set SKUFORGE_KAFKA_BOOTSTRAP) (is Kafka at SKUFORGE_KAFKA_BOOTSTRAP running?)";
    # over SASL, "...; if it is, check SASL_SSL ..." and then the question again.
    from kafka.errors import KafkaTimeoutError

    from shared.bus import unreachable

    _sku(tmp_path / "batch", "A", "A-1")
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))

    class NoBroker:
        def __init__(self, settings: Settings, producer: str) -> None:
            # What shared.bus.Publisher raises when no broker answers its bootstrap.
            no_broker = KafkaTimeoutError("Unable to bootstrap")
            raise TransientError(unreachable(settings, no_broker, client_id=f"skuforge-{producer}"))

    monkeypatch.setattr(ingest, "Publisher", NoBroker)
    assert cli_main(["ingest", str(tmp_path / "batch")]) == 1
    err = capsys.readouterr().err
    assert "cannot reach Kafka at" in err and "set SKUFORGE_KAFKA_BOOTSTRAP" in err
    assert err.count("running?") == 1, err


def test_a_copy_of_a_photo_in_a_folder_is_named_in_a_warning(
    batch: Path, capsys: pytest.CaptureFixture[str], publisher: type[_Publisher]
) -> None:
    # A copy ("photo_0 copy.png", "IMG_1 (1).jpg") is ingested once, which is right, but without a
    # word: its owner counted one photo more than the SKU got, and nothing said which file was left out.
    folder = batch / "A"
    (folder / "photo_0 copy.png").write_bytes((folder / "photo_0.png").read_bytes())
    assert cli_main(["ingest", str(batch)]) == 0
    err = capsys.readouterr().err
    assert (
        f"skuforge ingest: warning: SKU A-1: {folder / 'photo_0.png'} is the same picture as "
        f"{folder / 'photo_0 copy.png'} and is not ingested a second time" in err
    ), err
    assert err.count("warning:") == 1 and publisher.published == ["A-1"]


def test_a_photo_link_that_loops_is_named_for_what_it_is(tmp_path: Path) -> None:
    # A link to itself, or two links to each other, read "a link to A/loop.jpg, which does not exist":
    # its owner looked, and there it was.
    folder = _sku(tmp_path, "A", "A-1")
    os.symlink(folder / "loop.jpg", folder / "loop.jpg")
    message = _refusal(tmp_path)
    assert (
        f"{folder / 'loop.jpg'}: a link that leads back to itself ({folder / 'loop.jpg'}), never to a "
        "file; put the photo itself here or remove the link" in message
    )
    (folder / "metadata.json").unlink()
    os.symlink(folder / "metadata.json", folder / "metadata.json")
    message = _refusal(tmp_path)
    assert (
        f"{folder / 'metadata.json'}: a link that leads back to itself ({folder / 'metadata.json'}), "
        "never to a file; put the file itself here or fix the link" in message
    )


def test_of_a_cut_out_and_its_copy_flattened_on_white_the_cut_out_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Stored over white, a cut-out and the same picture flattened on white are one photo, and the file
    # first by name was kept: the flattened one, and with it no mask, so the cut-out's exact outline,
    # which the captioner takes instead of the matting model's, was dropped.
    folder = _sku(tmp_path, "A", "A-1", colours=(10,))
    cut_out = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
    cut_out.paste((200, 30, 30, 255), (20, 20, 76, 76))
    flattened = Image.new("RGB", (96, 96), (255, 255, 255))
    flattened.paste((200, 30, 30), (20, 20, 76, 76))
    flattened.save(folder / "a-flattened.png")
    cut_out.save(folder / "b-cut-out.png")
    [sku] = prepare_all(tmp_path, load_settings())
    [photo] = [photo for photo in sku.photos if photo.original_filename != "photo_0.png"]
    assert photo.original_filename == "b-cut-out.png" and photo.mask_png is not None
    assert sku.copies == ((folder / "a-flattened.png", folder / "b-cut-out.png"),)


def _red_square(outline: tuple[int, int, int, int] | None) -> Image.Image:
    """A red square on white, 96x96; with ``outline`` (a box), a cut-out whose opaque part is that box:
    the white around the square inside it stays, and every such cut-out is the same photo over white."""
    if outline is None:
        flattened = Image.new("RGB", (96, 96), (255, 255, 255))
        flattened.paste((200, 30, 30), (20, 20, 76, 76))
        return flattened
    cut_out = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
    cut_out.paste((255, 255, 255, 255), outline)
    cut_out.paste((200, 30, 30, 255), (20, 20, 76, 76))
    return cut_out


def test_a_photo_whose_cut_out_was_swapped_makes_a_new_event(tmp_path: Path) -> None:
    # The event id covered the photos over white, not their transparency: a flattened photo replaced by
    # its cut-out, or a cut-out whose outline was redrawn, was the same event, which every stage skipped
    # as already seen, so the captioner never took the new outline.
    settings = load_settings()
    folder = _sku(tmp_path, "A", "A-1", colours=(10,))
    ids = []
    for outline in (None, (20, 20, 76, 76), (10, 10, 86, 86)):
        _red_square(outline).save(folder / "red.png")
        [sku] = prepare_all(tmp_path, settings)
        assert len({photo.photo_id for photo in sku.photos}) == 2  # the same picture every time
        ids.append(sku.event_id)
    assert len(set(ids)) == 3, "a swapped cut-out made an event already seen"

    # And again the same: the same id, so re-ingesting stays idempotent.
    [sku] = prepare_all(tmp_path, settings)
    assert sku.event_id == ids[-1]


def test_a_sku_without_cut_outs_keeps_the_event_id_it_always_had(tmp_path: Path) -> None:
    # Ids published before masks counted must not change: a re-ingest would make every SKU again.
    _sku(tmp_path, "A", "A-1")
    [sku] = prepare_all(tmp_path, load_settings())
    assert sku.event_id == derive_id(
        "ingest", sku.metadata.model_dump_json(), *sorted(photo.photo_id for photo in sku.photos)
    )


def test_a_control_character_in_a_photos_file_name_is_escaped_not_a_refusal(tmp_path: Path) -> None:
    # A file name on disk may hold any byte but '/' and NUL: a newline or a terminal escape went on,
    # as it was, into the event's original_filename and from there into the console and logs. Refusing
    # it would fail a whole batch over a name its owner may not see; it is written visibly instead.
    folder = _sku(tmp_path, "A", "A-1", colours=(10,))
    Image.new("RGB", (64, 64), (90, 40, 80)).save(folder / "shelf\nphoto\x1b[2J\x85.png")
    [sku] = prepare_all(tmp_path, load_settings())

    names = sorted(photo.original_filename for photo in sku.photos)
    assert names == ["photo_0.png", "shelf\\nphoto\\x1b[2J\\x85.png"]
    ingested = ingest.upload_sku(sku, FileStore(tmp_path / "store"))
    assert sorted(photo.original_filename for photo in ingested.photos) == names


def test_a_redrawn_outline_is_stored_beside_the_one_an_earlier_event_names(tmp_path: Path) -> None:
    # The mask was stored under the photo's id alone, which a redrawn outline keeps: the new mask
    # replaced the bytes the earlier event names, so that event, still unread or replayed, failed its
    # checksum and was dead-lettered. Stored objects an event names are never replaced (delivery.md).
    store = FileStore(tmp_path / "store")
    folder = _sku(tmp_path / "batch", "A", "A-1", colours=(10,))
    events = []
    for outline in ((20, 20, 76, 76), (10, 10, 86, 86)):
        _red_square(outline).save(folder / "red.png")
        [sku] = prepare_all(tmp_path / "batch", load_settings())
        events.append(ingest.upload_sku(sku, store))

    masks = [photo.mask for event in events for photo in event.photos if photo.mask is not None]
    assert len(masks) == 2
    for mask in masks:
        store.read_verified(mask)  # ChecksumMismatch when a later ingest replaced it


def test_a_file_name_cannot_forge_lines_or_escapes_in_what_ingest_prints(
    batch: Path, capsys: pytest.CaptureFixture[str], publisher: type[_Publisher]
) -> None:
    # Problems and warnings named files as they were: a name holding a newline printed a problem of
    # its own making under "fix these", and one holding a terminal escape reached the terminal.
    folder = batch / "A"
    forged = folder / "scan\n  photo_0.png: fine, ignore the rest\x1b[2J.png"
    forged.write_bytes(b"not an image")

    assert cli_main(["ingest", str(batch)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert not [line for line in err.splitlines() if line.startswith("  photo_0.png")], err
    assert f"  {folder}/scan\\n  photo_0.png: fine, ignore the rest\\x1b[2J.png: refused" in err

    forged.unlink()
    Image.new("RGB", (64, 64), (10, 40, 80)).save(folder / "copy\x1b]0;owned\x07.png")  # photo_0's twin
    assert cli_main(["ingest", str(batch)]) == 0
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert f"is the same picture as {folder}/copy\\x1b]0;owned\\x07.png and" in err


def test_a_long_file_name_is_cut_between_escapes_never_inside_one(tmp_path: Path) -> None:
    # The 255-character cut came after the escaping, so a name whose escapes reach past it ended in
    # half an escape ("\x1"): a name that reads as another byte, and no longer as its file's.
    folder = _sku(tmp_path, "A", "A-1", colours=(10,))
    raw_name = "\t" * 126 + "\x1b.png"  # 131 bytes on disk; escaped, 252 characters before the \x1b
    Image.new("RGB", (64, 64), (90, 40, 80)).save(folder / raw_name)
    [sku] = prepare_all(tmp_path, load_settings())

    [name] = [photo.original_filename for photo in sku.photos if photo.original_filename != "photo_0.png"]
    assert name == "\\t" * 126  # the \x1b did not fit whole: left out, not cut in half
    ingested = ingest.upload_sku(sku, FileStore(tmp_path / "store"))  # within the schema's 255
    assert name in [photo.original_filename for photo in ingested.photos]


def test_the_publisher_is_closed_when_the_topic_listing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, publisher: type[_Publisher]
) -> None:
    # Only a topic found missing closed it: a listing that failed (the broker went away after the
    # producer bootstrapped) left the producer and its sender thread open in a demo or bench process.
    closed: list[_Publisher] = []
    monkeypatch.setattr(_Publisher, "close", lambda self: closed.append(self))

    def broker_gone(settings: Settings, client_id: str = "") -> set[str]:
        raise TransientError("no broker answered the topic listing")

    monkeypatch.setattr(ingest, "listed_topics", broker_gone)
    _sku(tmp_path / "batch", "A", "A-1")
    with pytest.raises(TransientError, match="no broker answered"):
        ingest_path(tmp_path / "batch", load_settings(), store=FileStore(tmp_path / "store"))
    assert len(closed) == 1 and publisher.published == []


def test_metadata_says_which_fields_it_takes_and_which_are_optional(tmp_path: Path) -> None:
    """A first user's metadata.json: the GroceryStoreDataset ships a description per product, and a
    retailer's export has more. 'description: Extra inputs are not permitted' named no field it
    does take, and a missing file was said to need brand and series, which may be left out."""
    folder = _sku(tmp_path, "A", "A-1")
    metadata = folder / "metadata.json"
    metadata.write_text(
        '{"sku_id": "A-1", "name": "Granny Smith", "category": "apple", "description": "green"}'
    )
    assert (
        f"{metadata}: description: not a field of metadata.json (sku_id, name, category; optional: "
        "brand, series); take it out" in _refusal(tmp_path)
    )
    metadata.unlink()
    assert (
        f"{metadata}: missing (a JSON object with sku_id, name, category; optional: brand, series)"
        in _refusal(tmp_path)
    )
    metadata.write_text('{"sku_id": "A-1", "name": "Granny Smith", "category": "apple"}')
    [sku] = prepare_all(tmp_path, load_settings())
    assert (sku.metadata.brand, sku.metadata.series) == ("", "")


def test_a_text_file_in_a_sku_folder_is_not_told_to_be_exported_as_a_photo(tmp_path: Path) -> None:
    """The GroceryStoreDataset's product folders hold a description and an information .txt beside the
    photo; copied as a SKU folder, each was told 'export it as JPEG or PNG'. A file that is no picture
    is told to move out; one that is a picture in a format ingest does not read still gets the advice."""
    folder = _sku(tmp_path, "A", "A-1")
    (folder / "Granny-Smith_Description.txt").write_text("A green apple.\n")
    (folder / "anim.gif").write_bytes(b"GIF89a")
    message = _refusal(tmp_path)
    text_line = next(line for line in message.splitlines() if "Granny-Smith_Description.txt" in line)
    assert text_line.strip() == (
        f"{folder / 'Granny-Smith_Description.txt'}: not a photo (a text file); every file in a SKU folder "
        "is read as a photo: move it out"
    )
    gif_line = next(line for line in message.splitlines() if "anim.gif" in line)
    assert "export it as JPEG or PNG" in gif_line
