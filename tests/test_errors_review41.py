"""A refusal named after the object it refused keeps its type and attributes, and a refusal survives
a pickle round trip.

``named`` rebuilt every refusal as a plain ``BadInput``: an ``ImageRejected`` lost ``setting`` (the
setting that lets the image through), a ``ChecksumMismatch`` its hashes, and the dead letter of a
stage that names what it refused (trainstore, gate, matting) said ``error_class: BadInput``. The
subclasses pass other arguments to ``Exception`` than they take, so pickle (and ``copy``) called
them with the message: a ``ChecksumMismatch`` did not rebuild at all (TypeError), an
``ObjectMissing`` said "no object at object_missing: no object at ...".
"""

from __future__ import annotations

import pickle
from pathlib import Path

from kafka.structs import TopicPartition

from schemas.envelope import DeadLetter
from schemas.events import GateAccepted
from schemas.topics import GATE_ACCEPTED
from services.trainstore.stage import build_stage
from shared.bus import make_envelope
from shared.config import load_settings
from shared.errors import BadInput, ChecksumMismatch, ImageRejected, ObjectMissing, named
from shared.store import FileStore
from shared.trainstore.settings import TrainstoreSettings
from tests.support.gate import matted_item
from tests.support.runtime import _record, _wired


def _letter_of_an_acceptance(tmp_path: Path, max_image_pixels: int, *, damaged: bool = False) -> DeadLetter:
    """The dead letter the trainstore writes for the gate's acceptance of a 96x96 render, under
    ``max_image_pixels``; ``damaged``: its image's bytes are changed after the event was written."""
    store = FileStore(tmp_path / "store")
    stage = build_stage(
        trainstore=load_settings(TrainstoreSettings),
        settings=load_settings(store_uri=f"file://{tmp_path / 'store'}", max_image_pixels=max_image_pixels),
    )
    _, producer = _wired(stage)
    matted = matted_item(store, 1, 0)
    if damaged:
        path = tmp_path / "store" / store.key_for(matted.generated.image.uri)
        path.write_bytes(path.read_bytes()[:-1] + b"\0")
    envelope = make_envelope(
        GATE_ACCEPTED,
        GateAccepted(matted=matted, iou=0.97, checks=[]),
        event_id="a" * 32,
        sku_id=matted.generated.sku.sku_id,
        trace_id="t",
        producer="gate",
    )
    tp = TopicPartition(stage.settings.topic_name(GATE_ACCEPTED), 0)
    stage._process_batch({tp: [_record(tp.topic, 0, envelope.model_dump_json().encode())]})
    [(_, value)] = producer.acked
    return DeadLetter.model_validate_json(value)


def test_a_refused_image_is_dead_lettered_as_image_rejected_naming_the_image(tmp_path: Path) -> None:
    letter = _letter_of_an_acceptance(tmp_path, max_image_pixels=5000)
    assert letter.reason == "too_many_pixels" and letter.detail.startswith("too_many_pixels: image file://")
    assert "SKUFORGE_MAX_IMAGE_PIXELS" in letter.detail
    assert letter.error_class == "ImageRejected"


def test_a_changed_image_is_dead_lettered_as_checksum_mismatch(tmp_path: Path) -> None:
    letter = _letter_of_an_acceptance(tmp_path, max_image_pixels=40_000_000, damaged=True)
    assert letter.reason == "checksum_mismatch" and letter.detail.startswith(
        "checksum_mismatch: image: file://"
    )
    assert letter.error_class == "ChecksumMismatch"


def test_named_keeps_the_refusals_type_and_attributes() -> None:
    refused = named(
        ImageRejected("too_large_bytes", "60 MB", setting="SKUFORGE_MAX_IMAGE_BYTES"), "mask", "s3://b/m"
    )
    assert isinstance(refused, ImageRejected) and refused.setting == "SKUFORGE_MAX_IMAGE_BYTES"
    assert str(refused) == "too_large_bytes: mask s3://b/m: 60 MB"
    changed = named(ChecksumMismatch("s3://b/i", "aa", "bb"), "image", "s3://b/i")
    assert isinstance(changed, ChecksumMismatch) and (changed.uri, changed.expected) == ("s3://b/i", "aa")
    assert changed.detail == "image: s3://b/i: expected sha256 aa, found bb"
    lost = named(ObjectMissing("s3://b/i", "a folder is there"), "image", "s3://b/i")
    assert isinstance(lost, ObjectMissing) and lost.why == "a folder is there"


def test_every_refusal_survives_a_pickle_round_trip() -> None:
    for refusal in (
        BadInput("clock_skew", "ahead"),
        ImageRejected("too_many_pixels", "big", setting="SKUFORGE_MAX_IMAGE_PIXELS"),
        ObjectMissing("s3://b/k", "a folder is there"),
        ChecksumMismatch("s3://b/k", "aa", "bb", "restore it"),
    ):
        again = pickle.loads(pickle.dumps(refusal))
        assert type(again) is type(refusal) and str(again) == str(refusal)
        assert vars(again) == vars(refusal)
