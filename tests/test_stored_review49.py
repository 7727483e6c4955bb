"""Review 49: records stored before review 48 whose object ``uri`` holds a character the contract now
refuses there (a C1 control, a line separator, a bidirectional control), outside the console.

A series request the LoRA trainer stored from such a ``sku.captioned`` no longer read: "request file
skipped", and the accepted work was dropped from its series' adapter.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from schemas.common import READ_FROM_STORE, ObjectRef
from services.lora_trainer.stage import PREFIX
from shared.errors import BadInput, ChecksumMismatch, ObjectMissing
from shared.lora_training.dataset import TrainingRecipe, build_training_set
from shared.observability import escape_control_characters
from shared.store import FileStore, ObjectStore, sha256_hex
from tests.support.console import app_for, build_console, flagged_item, login, pending_envelope
from tests.support.lora import _trainer, one_photo_source, stand_in_captioned
from tests.support.s3 import file_or_s3_store
from tests.support.store import written_before

# What the contract refuses in a uri since review 48 and a store wrote under a key before it (C0 and DEL
# were refused in a key always): a bidirectional override, the 8-bit terminal escape, a line separator.
STORED_BEFORE = [("\u202e", "U+202E"), ("\x9b", "U+009B"), ("\u2028", "U+2028")]
IDS = ["bidi", "c1_escape", "line_separator"]


def _series_request(store: FileStore, char: str) -> tuple[dict[str, Any], str]:
    """A captioned SKU as stored before review 48, its one photo's and mask's uri holding ``char`` (as
    JSON: the contract refuses it now); and that uri."""
    captioned = stand_in_captioned(store, "SKU-1", "Cola", photo_key="incoming/shelf.png").model_dump(
        mode="json"
    )
    uri = store.uri_for("incoming/shelf.png").replace("shelf.png", f"shelf{char}gnp.png")
    for field in ("image", "mask"):
        captioned["photos"][0][field]["uri"] = uri
    return captioned, uri


@pytest.mark.parametrize(("char", "named"), STORED_BEFORE, ids=IDS)
def test_a_series_request_stored_with_one_stays_in_its_series_plan(
    tmp_path: Path, char: str, named: str
) -> None:
    # Since review 48 the request no longer read ("request file skipped"): its SKU's photos were dropped
    # from the series' adapter, though the request was accepted and is still in the store.
    store = FileStore(tmp_path)
    request, uri = _series_request(store, char)
    store.put_json(f"{PREFIX}/series/cola/SKU-1.json", request)
    trainer = _trainer(store)

    jobs = trainer.plan()

    assert [job.series for job in jobs] == ["Cola"]
    assert [source.image_uri for source in jobs[0].sources] == [uri]  # as stored, not escaped


# --- the store reads an object written under such a key before review 48; it writes none -------------


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return file_or_s3_store(request, tmp_path / "store")


def _stored_ref(uri: str, data: bytes) -> ObjectRef:
    """The reference a record stored before review 48 holds (read as stored, ``READ_FROM_STORE``)."""
    stored = {"uri": uri, "sha256": sha256_hex(data), "bytes": len(data)}
    return ObjectRef.model_validate(stored, context=READ_FROM_STORE)


@pytest.mark.parametrize(("char", "named"), STORED_BEFORE, ids=IDS)
def test_an_object_written_under_such_a_key_before_is_read(store: ObjectStore, char: str, named: str) -> None:
    # Since review 48 the store refused the key on read too: a console task's image answered 502
    # unsafe_key and a series request's photo was left out of its training set, though the bytes are there.
    key = f"photos/shelf{char}gnp.png"
    written_before(store, key, b"png bytes")
    uri = f"{store.base_uri}/{key}"

    assert store.get_bytes(uri) == store.get_bytes(key) == b"png bytes"
    assert store.read_verified(_stored_ref(uri, b"png bytes")) == b"png bytes"
    assert store.read_checked(uri, sha256_hex(b"png bytes")) == b"png bytes"
    assert store.get_bytes_at_most(uri, 100) == b"png bytes"
    assert b"".join(store.iter_bytes(uri)) == b"png bytes"
    assert store.exists(key)
    store.modified_at(key)


@pytest.mark.parametrize(("char", "named"), STORED_BEFORE, ids=IDS)
def test_nothing_is_written_under_such_a_key_still(store: ObjectStore, char: str, named: str) -> None:
    key = f"photos/shelf{char}gnp.png"
    written_before(store, key, b"png bytes")
    for write in (
        lambda: store.put_bytes(key, b"other bytes"),
        lambda: store.put_new(f"photos/new{char}.png", b"other bytes"),
        lambda: store.uri_for(key),
    ):
        with pytest.raises(ValueError, match=re.escape(named)):
            write()
    assert store.get_bytes(key) == b"png bytes"
    assert list(store.list_addressable("photos/")) == []  # listed, it would be taken for a new object


@pytest.mark.parametrize(("char", "named"), STORED_BEFORE, ids=IDS)
def test_a_refusal_to_read_one_names_its_uri_escaped(store: ObjectStore, char: str, named: str) -> None:
    # The refusal goes on to a dead letter, a log line, a console answer: the character never echoed.
    key = f"photos/shelf{char}gnp.png"
    uri = f"{store.base_uri}/{key}"
    escaped = escape_control_characters(uri)
    with pytest.raises(ObjectMissing) as missing:
        store.read_verified(_stored_ref(uri, b"png bytes"))
    assert char not in str(missing.value) and escaped in str(missing.value)
    written_before(store, key, b"other bytes")
    for read in (
        lambda: store.read_verified(_stored_ref(uri, b"png bytes")),
        lambda: store.read_checked(uri, sha256_hex(b"png bytes")),
    ):
        with pytest.raises(ChecksumMismatch) as mismatch:
            read()
        assert char not in str(mismatch.value) and escaped in str(mismatch.value)


def test_a_key_with_a_control_character_is_refused_on_read_as_ever(tmp_path: Path) -> None:
    # C0 and DEL were refused in a key always: no object was written under one, none is read.
    store = FileStore(tmp_path)
    for key in ("photos/a\nb.png", "photos/a\x1bb.png", "photos/a\u202eb\x07.png"):
        with pytest.raises(ValueError, match="control character"):
            store.get_bytes(key)
        with pytest.raises(BadInput, match="unsafe_key"):
            store.read_checked(f"{store.base_uri}/{key}", "0" * 64)


@pytest.mark.parametrize(("char", "named"), STORED_BEFORE, ids=IDS)
def test_the_console_shows_the_image_of_a_task_stored_with_one(tmp_path: Path, char: str, named: str) -> None:
    parts = build_console(tmp_path)
    pending = flagged_item(parts.store, 0)
    generated = pending.matted.generated
    mask = generated.expected_mask
    key = parts.store.key_for(mask.uri).replace(".png", f"{char}gnp.png")
    data = parts.store.get_bytes(mask.uri)
    written_before(parts.store, key, data)
    expected = mask.model_copy(update={"uri": f"{parts.store.base_uri}/{key}"})
    matted = pending.matted.model_copy(
        update={"generated": generated.model_copy(update={"expected_mask": expected})}
    )
    envelope = pending_envelope(pending.model_copy(update={"matted": matted}))
    parts.tasks.add_pending(envelope)

    with TestClient(app_for(parts)) as client:
        login(client)
        image = client.get(f"/tasks/{envelope.event_id}/images/expected")
    assert image.status_code == 200, image.text
    assert image.content == data


@pytest.mark.parametrize(("char", "named"), STORED_BEFORE, ids=IDS)
def test_the_trainer_trains_on_a_photo_stored_with_one(tmp_path: Path, char: str, named: str) -> None:
    store = FileStore(tmp_path / "store")
    source = one_photo_source(store)
    for field in ("image", "mask"):
        uri = getattr(source, f"{field}_uri")
        moved = uri.replace(".png", f"{char}.png")
        written_before(store, store.key_for(uri).replace(".png", f"{char}.png"), store.get_bytes(uri))
        source = dataclasses.replace(source, **{f"{field}_uri": moved})
    recipe = TrainingRecipe(resolution=64, scenes_per_photo=1, class_images=0)

    training_set = build_training_set(store, "set", "0" * 64, [source], recipe)

    assert len(training_set.items) == 1
