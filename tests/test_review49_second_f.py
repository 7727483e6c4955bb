"""Review 49: an object a store wrote before review 48 under a key holding a character refused since
(a C1 control, a line separator, a bidirectional control) is read; it is also deleted, so that the
stages that delete what a row no longer names (the retraining store's replaced objects) remove it
instead of failing the event with a bare ``ValueError``. Nothing new is written under such a key.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from schemas.envelope import Envelope
from schemas.events import GateAccepted, ImageMatted
from schemas.topics import GATE_ACCEPTED
from services.trainstore.evaluation import (
    EvaluateRefused,
    real_image_hashes,
    stored_images,
    streamed_sha256s,
    training_photos,
)
from shared.bus import make_envelope
from shared.errors import ImageRejected, TransientError
from shared.images import encode_png
from shared.observability import escape_control_characters
from shared.store import FileStore, ObjectStore
from shared.trainstore.dataset import ClassPlan, ExportPlan
from shared.trainstore.manifest import ManifestRow, ManifestStore
from tests.support.gate import captioned, matted_item
from tests.support.s3 import file_or_s3_store
from tests.support.store import written_before
from tests.support.trainstore import trainstore_stage

STORED_BEFORE = [("\u202e", "U+202E"), ("\x9b", "U+009B"), ("\u2028", "U+2028")]
IDS = ["bidi", "c1_escape", "line_separator"]
SKU = "SKU-001"


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return file_or_s3_store(request, tmp_path / "store")


@pytest.mark.parametrize(("char", "named"), STORED_BEFORE, ids=IDS)
def test_an_object_written_under_such_a_key_before_is_deleted(
    store: ObjectStore, char: str, named: str
) -> None:
    # Refused before: the retraining store's stage deleting a replaced render named so raised a bare
    # ValueError, the event retried and went to the dead letters, the old render stayed.
    key = f"renders/shelf{char}gnp.png"
    written_before(store, key, b"png bytes")

    store.delete(key)

    assert not store.exists(key)
    store.delete(key)  # deleting a missing object is not an error, as for any key


@pytest.mark.parametrize(("char", "named"), STORED_BEFORE, ids=IDS)
def test_an_unchanged_object_under_such_a_key_is_deleted_if_unchanged(
    store: ObjectStore, char: str, named: str
) -> None:
    key = f"locks/held{char}.json"
    written_before(store, key, b"{}")
    _, version = store.get_versioned(key)

    assert not store.delete_if(key, "not-its-version")
    assert store.exists(key)
    assert store.delete_if(key, version)
    assert not store.exists(key)


@pytest.mark.parametrize(("char", "named"), STORED_BEFORE, ids=IDS)
def test_nothing_is_written_under_such_a_key_still(store: ObjectStore, char: str, named: str) -> None:
    key = f"renders/shelf{char}gnp.png"
    written_before(store, key, b"png bytes")
    _, version = store.get_versioned(key)
    for write in (
        lambda: store.put_bytes(key, b"other bytes"),
        lambda: store.replace_if(key, b"other bytes", version),
        lambda: store.uri_for(key),
    ):
        with pytest.raises(ValueError, match=re.escape(named)):
            write()
    assert store.get_bytes(key) == b"png bytes"


def test_a_key_with_a_control_character_is_refused_on_delete_as_ever(tmp_path: Path) -> None:
    # C0 and DEL were refused in a key always: no object was written under one.
    store = FileStore(tmp_path)
    for key in ("renders/a\nb.png", "renders/a\x1bb.png", "renders/a\u202eb\x07.png"):
        with pytest.raises(ValueError, match="control character"):
            store.delete(key)
        with pytest.raises(ValueError, match="control character"):
            store.delete_if(key, "0" * 64)


def test_a_failed_delete_of_such_a_key_names_its_uri_escaped(tmp_path: Path) -> None:
    # A FileStore's delete that the disk refuses is a TransientError naming the URI: escaped, so the
    # character never reaches a log line or a dead letter, and not a ValueError from uri_for.
    store = FileStore(tmp_path)
    key = "renders/ro\u202e/shelf.png"
    written_before(store, key, b"png bytes")
    folder = store.root / "renders" / "ro\u202e"
    folder.chmod(0o500)
    try:
        if _writable(folder):
            pytest.skip("running as a user whom file modes do not stop")
        with pytest.raises(TransientError) as failed:
            store.delete(key)
    finally:
        folder.chmod(0o700)
    uri = f"{store.base_uri}/{key}"
    assert "\u202e" not in str(failed.value) and escape_control_characters(uri) in str(failed.value)


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").touch()
    except PermissionError:
        return False
    (folder / ".probe").unlink()
    return True


def test_the_trainstore_deletes_a_replaced_render_whose_key_holds_one(tmp_path: Path) -> None:
    # Before: the old render's deletion raised a bare ValueError (its key refused), so the event was
    # retried and dead-lettered though its row was written, and the old render stayed in the store.
    store, manifests, writer, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    first = matted_item(store, 1, 0)
    photo = captioned(store, 1, photos=1).photos[0]
    again = first.model_copy(update={"generated": first.generated.model_copy(update={"image": photo.image})})
    writer.accepted(_accepted(first, "a"), ctx)
    old = manifests.read_sku(SKU)[first.generated.item_id].image
    assert old is not None
    # As a store wrote it before review 48: the render's key, and the row naming it, hold a U+202E.
    named_before = old.replace(".png", "\u202e.png")
    (store.root / manifests.key(old)).rename(store.root / manifests.key(named_before))
    for part in (store.root / manifests.key(f"manifests/{SKU}")).rglob("*.jsonl"):
        text = part.read_text(encoding="utf-8")
        part.write_text(text.replace(old, named_before.replace("\u202e", "\\u202e")), encoding="utf-8")
    assert manifests.read_sku(SKU)[first.generated.item_id].image == named_before

    writer.accepted(_accepted(again, "b"), ctx)

    assert manifests.read_sku(SKU)[first.generated.item_id].image_sha256 == photo.image.sha256
    assert not store.exists(manifests.key(named_before))


def _accepted(item: ImageMatted, event_id: str) -> Envelope[GateAccepted]:
    return make_envelope(
        GATE_ACCEPTED,
        GateAccepted(matted=item, iou=1.0, checks=[]),
        event_id=event_id * 32,
        sku_id=SKU,
        trace_id="t" * 32,
        producer="gate",
    )


# --- evaluate takes the keys dataset export reads, and refuses the others as export does --------------


def _row(image: str, sha256: str | None = None) -> ManifestRow:
    return ManifestRow(
        item_id="i1",
        sku_id="apple",
        category="fruit",
        source="real",
        status="accepted",
        image=image,
        image_sha256=sha256,
    )


@pytest.mark.parametrize(("char", "named"), STORED_BEFORE, ids=IDS)
def test_evaluate_reads_an_image_whose_key_a_store_wrote_before(
    store: ObjectStore, char: str, named: str
) -> None:
    # Before: refused ("no key the store reads") when its row had no sha256, a bare ValueError from
    # uri_for on S3 naming the photo, though dataset export reads the same row.
    manifests = ManifestStore(store, "trainstore")
    image = f"images/a{char}b.jpg"
    written_before(store, manifests.key(image), b"jpeg bytes")
    rows = [_row(image)]

    streamed = streamed_sha256s(manifests, rows)
    plan = ExportPlan(classes=[ClassPlan(sku_id="apple", real=rows, synthetic=[], synthetic_dropped=0)])
    [photo] = training_photos(manifests, plan, streamed)

    assert streamed == {image: hashlib.sha256(b"jpeg bytes").hexdigest()}
    assert photo.read() == b"jpeg bytes"
    [(name, _)] = stored_images(manifests, rows, streamed)
    assert name == photo.name and char not in name  # a name shown in reports: escaped
    assert escape_control_characters(char) in name


@pytest.mark.parametrize("image", ["images/a\nb.jpg", "images/a\x1b[31mb.jpg"])
def test_evaluate_refuses_a_hashed_row_whose_image_key_no_store_reads(tmp_path: Path, image: str) -> None:
    # Before: with a sha256 in its row the image is read only when trained on, and the store's bare
    # ValueError came out of the experiment (a traceback), not the refusal a row with no sha256 gets.
    manifests = ManifestStore(FileStore(tmp_path), "trainstore")
    rows = [_row(image, "0" * 64)]
    plan = ExportPlan(classes=[ClassPlan(sku_id="apple", real=rows, synthetic=[], synthetic_dropped=0)])
    [photo] = training_photos(manifests, plan, streamed_sha256s(manifests, rows))

    with pytest.raises(EvaluateRefused) as refused:
        photo.read()
    message = str(refused.value)
    assert "apple/i1" in message and "no key the store reads" in message
    assert "\n" not in message and "\x1b" not in message
    assert image.encode("unicode_escape").decode("ascii") in message


def test_a_refusal_of_a_stored_image_whose_key_holds_one_names_it_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: the store image past a lowered SKUFORGE_MAX_IMAGE_PIXELS was refused naming its row's key
    # raw, so its U+202E reordered the refusal's text on the operator's terminal.
    monkeypatch.setenv("SKUFORGE_MAX_IMAGE_PIXELS", "10000")
    manifests = ManifestStore(FileStore(tmp_path), "trainstore")
    image = "images/a\u202eb.png"
    data = encode_png(np.zeros((200, 200, 3), np.uint8))
    written_before(manifests.store, manifests.key(image), data)

    with pytest.raises(ImageRejected) as refused:
        real_image_hashes(manifests, [_row(image, hashlib.sha256(data).hexdigest())], None, {})

    assert "\u202e" not in str(refused.value) and "images/a\\u202eb.png" in str(refused.value)
