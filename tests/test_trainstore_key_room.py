"""An event whose keys are too long for the store is the trainstore's to refuse before it writes anything.

The keys come from the event's ids under ``SKUFORGE_TRAINSTORE_PREFIX`` (and an S3 store's prefix): the
store refuses one past its room as ``key_too_long`` (dead-lettered, to replay once a shorter prefix
leaves it room), but the manifest part's key can be longer than the image's: the image and mask were
written, then the part was refused, and the event left objects no row names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

import devstack.up
from devstack.up import main as up_main
from schemas.envelope import DeadLetter
from schemas.events import GateAccepted
from schemas.topics import GATE_ACCEPTED
from services.trainstore.stage import build_stage as build_trainstore
from shared.bus import make_envelope
from shared.config import ConfigError, Settings, load_settings
from shared.errors import BadInput
from shared.store import FileStore, ObjectStore, S3Store
from shared.trainstore.settings import TrainstoreSettings
from skuforge_cli.main import main as cli_main
from tests.support.bus import create_topics, isolated_settings, read_topic, running, wait_consumed
from tests.support.gate import matted_item, produce_events
from tests.support.trainstore import trainstore_stage

# 953 bytes: under it, SKU-001's synthetic image gen-001-00 takes 1010 of a FileStore's 1024, its
# manifest's delta part 1028 and a compacted part's columnar copy 1030.
LONG_PREFIX = "/".join(["t" * 250, "t" * 250, "t" * 250, "t" * 200])


def test_an_event_whose_manifest_key_is_too_long_is_refused_before_its_objects_are_written(
    tmp_path: Path,
) -> None:
    store, manifests, writer, ctx = trainstore_stage(tmp_path, compact_after_parts=16, prefix=LONG_PREFIX)
    accepted = GateAccepted(matted=matted_item(store, 1, 0), iou=0.97, checks=[])
    event = make_envelope(
        GATE_ACCEPTED, accepted, event_id="a" * 32, sku_id="SKU-001", trace_id="t", producer="test"
    )

    with pytest.raises(BadInput) as refused:
        writer.handlers()[GATE_ACCEPTED](event, ctx)

    said = str(refused.value)
    assert refused.value.reason == "key_too_long", said
    assert "is 1030 bytes" in said and "/manifests/SKU-001/columns-c-" in said, said
    assert list(store.list_keys(f"{LONG_PREFIX}/")) == []
    assert manifests.read_sku("SKU-001") == {}


# 943 bytes: under it, the keys of a SKU id of 7 characters fit the 1020 bytes S3 leaves under the
# store's prefix "pfx/" (its manifest parts' longest 1020), a SKU id of 8 characters' do not.
S3_ROOM_PREFIX = "/".join(["t" * 250, "t" * 250, "t" * 250, "t" * 190])


@pytest.mark.kafka
@pytest.mark.slow
def test_an_event_whose_keys_s3_would_refuse_is_dead_lettered_and_the_stream_goes_on(
    kafka_bootstrap: str, s3_endpoint: str, s3_store: ObjectStore
) -> None:
    """S3 answered KeyTooLongError (which moto does not check) once the key was sent, and the stage
    retried the event for ever as the deployment's fault. It is the event's: dead-lettered as
    ``key_too_long`` with nothing of it written, and the next event of the partition is stored."""
    settings = isolated_settings(kafka_bootstrap, s3_store.base_uri, s3_endpoint_url=s3_endpoint)
    create_topics(settings, GATE_ACCEPTED, partitions=1)
    too_long, fits = (
        GateAccepted(matted=matted_item(s3_store, index, 0), iou=0.97, checks=[]) for index in (1000, 6)
    )
    produce_events(settings, GATE_ACCEPTED, [too_long, fits])

    stage = build_trainstore(
        settings=settings,
        store=s3_store,
        trainstore=load_settings(TrainstoreSettings, trainstore_prefix=S3_ROOM_PREFIX),
    )
    with running(stage):
        [record] = read_topic(kafka_bootstrap, settings.dlq_name(GATE_ACCEPTED), expect=1)
        wait_consumed(settings, "trainstore", (GATE_ACCEPTED,))

    letter = DeadLetter.model_validate_json(record.value)
    assert (letter.sku_id, letter.reason) == ("SKU-1000", "key_too_long"), letter
    assert "/manifests/SKU-1000/" in letter.detail and "leaves keys 1020" in letter.detail, letter.detail
    stored = [key.removeprefix(f"{S3_ROOM_PREFIX}/") for key in s3_store.list_keys(f"{S3_ROOM_PREFIX}/")]
    assert {key.split("/")[1] for key in stored} == {"SKU-006"}, stored
    assert len(stored) == 3, stored  # the image, its mask and a manifest part


def _s3_store_of_room(room: int) -> S3Store:
    """An S3 store (never called) whose prefix leaves keys ``room`` of S3's 1024 bytes."""
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t")
    prefix = "/".join(["p" * 200, "p" * 200, "p" * (1024 - room - 403)])  # and its "/": 1024 - room
    return S3Store("any-bucket", prefix, client=client, uri_from="the test")


@pytest.mark.parametrize(
    ("store_of", "prefix"),
    [
        # 1003 bytes: with a FileStore's 1024, no SKU's manifest part fits, whatever its id.
        (FileStore, "/".join(["t" * 250] * 4)),
        # 450 bytes: a settings' check alone could not tell; under the 512 an S3 prefix of 511 bytes
        # leaves, a manifest part of a one-character SKU id takes 521.
        (lambda _root: _s3_store_of_room(512), "/".join(["t" * 250, "t" * 199])),
    ],
    ids=["file", "s3"],
)
def test_a_prefix_that_leaves_no_event_room_is_refused_at_start(
    tmp_path: Path, store_of: Callable[[Path], ObjectStore], prefix: str
) -> None:
    """Started, the stage dead-lettered every event as ``key_too_long``, one by one, instead of
    stopping with one line naming the setting."""
    trainstore = load_settings(TrainstoreSettings, trainstore_prefix=prefix)

    with pytest.raises(ConfigError) as refused:
        build_trainstore(settings=Settings(), store=store_of(tmp_path / "store"), trainstore=trainstore)

    said = str(refused.value)
    assert f"SKUFORGE_TRAINSTORE_PREFIX ({len(prefix)} bytes)" in said and "key_too_long" in said, said


# 1003 bytes: with a FileStore's 1024, no SKU's manifest part fits, whatever its id.
ROOMLESS_PREFIX = "/".join(["t" * 250] * 4)


def test_a_prefix_that_leaves_no_event_room_is_refused_by_skuforge_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`skuforge config` passed it, and the trainstore stage was the first to refuse it, at its start."""
    monkeypatch.setenv("SKUFORGE_STORE_URI", str(tmp_path / "store"))
    monkeypatch.setenv("SKUFORGE_TRAINSTORE_PREFIX", ROOMLESS_PREFIX)

    assert cli_main(["config"]) == 2

    err = capsys.readouterr().err
    assert f"SKUFORGE_TRAINSTORE_PREFIX ({len(ROOMLESS_PREFIX)} bytes)" in err and "Traceback" not in err, err


def test_a_prefix_that_leaves_no_event_room_is_refused_by_up_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`skuforge up` started Kafka and every service; then the trainstore stopped, naming the setting."""
    monkeypatch.setenv("SKUFORGE_TRAINSTORE_PREFIX", ROOMLESS_PREFIX)
    monkeypatch.delenv("SKUFORGE_GENERATION_BACKEND_MIX", raising=False)

    def starts_the_stack(workdir: Path) -> None:
        raise AssertionError("went on to start a stack the trainstore would refuse")

    monkeypatch.setattr(devstack.up, "hold_workdir", starts_the_stack)
    assert up_main(["--workdir", str(tmp_path / "up"), "--backend", "composite"]) == 2

    assert f"SKUFORGE_TRAINSTORE_PREFIX ({len(ROOMLESS_PREFIX)} bytes)" in capsys.readouterr().err
    assert not (tmp_path / "up").exists()  # nothing started, nothing written
