"""The command line as a user meets it: clear errors instead of tracebacks, exit codes that tell the truth,
and `skuforge demo` run again on a stack that already ran the same SKUs."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.structs import TopicPartition

from devstack.demo import tracker as tracker_module
from devstack.demo.demo import expected_generated
from devstack.demo.tracker import FlowState, FlowTracker, Seen
from schemas.common import ImageRef, SkuMetadata
from schemas.envelope import DeadLetter, derive_id
from schemas.events import CaptionedPhoto, ReferencePhoto, SkuCaptioned, SkuIngested
from schemas.topics import SKU_CAPTIONED, SKU_INGESTED, Topic
from services.ingest.ingest import IngestError, prepare_all
from shared.bus import make_envelope
from shared.config import load_settings
from shared.synth import write_sku_folders
from skuforge_cli.main import main as cli_main


@pytest.fixture
def sku_folders(tmp_path: Path) -> Path:
    write_sku_folders(tmp_path / "synth", skus=2, photos_per_sku=1, seed=3, size_px=96)
    return tmp_path / "synth" / "skus"


@pytest.fixture
def quick_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    """kafka-python's own clients against an address where nothing listens, giving up in 0.3 s: what
    they raise then is what the commands must turn into one line (not a stand-in error)."""
    monkeypatch.setitem(KafkaProducer.DEFAULT_CONFIG, "bootstrap_timeout_ms", 300)
    monkeypatch.setitem(KafkaAdminClient.DEFAULT_CONFIG, "bootstrap_timeout_ms", 300)


def test_ingest_with_kafka_unreachable_says_so_and_uploads_nothing(
    sku_folders: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    quick_bootstrap: None,
) -> None:
    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    assert cli_main(["ingest", str(sku_folders)]) == 1
    err = capsys.readouterr().err
    assert "cannot reach Kafka at 127.0.0.1:1" in err and "SKUFORGE_KAFKA_BOOTSTRAP" in err
    assert not (tmp_path / "store").exists(), "no photo may be uploaded for an event that cannot be sent"


def test_topics_create_with_kafka_unreachable_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], quick_bootstrap: None
) -> None:
    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    assert cli_main(["topics", "create"]) == 1
    err = capsys.readouterr().err
    assert "Kafka at 127.0.0.1:1" in err and "SKUFORGE_KAFKA_BOOTSTRAP" in err


def test_a_metadata_json_that_cannot_be_read_is_named_not_a_traceback(
    sku_folders: Path, tmp_path: Path
) -> None:
    root = tmp_path / "skus"
    shutil.copytree(sku_folders, root)
    metadata = root / "SYN-3-0001" / "metadata.json"
    metadata.unlink()
    metadata.mkdir()  # a folder where the file should be
    with pytest.raises(IngestError, match=r"SYN-3-0001/metadata\.json: cannot be read"):
        prepare_all(root, load_settings())


def test_config_validates_every_services_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["config"]) == 0
    assert '"gate_iou_min": 0.9' in capsys.readouterr().out  # a service's setting, not only the shared ones
    monkeypatch.setenv("SKUFORGE_GATE_IOU_MIN", "2")
    assert cli_main(["config"]) == 2
    assert "SKUFORGE_GATE_IOU_MIN" in capsys.readouterr().err


def test_up_refuses_a_bad_service_setting_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import devstack.up

    class NothingMayStart:
        def __init__(self, *_args: Any, **_kwargs: Any) -> None:
            raise AssertionError("skuforge up started the stack with an invalid setting")

    monkeypatch.setattr(devstack.up, "Supervisor", NothingMayStart)
    monkeypatch.setenv("SKUFORGE_GATE_IOU_MIN", "2")
    assert cli_main(["up", "--workdir", str(tmp_path / "up")]) == 2
    assert "SKUFORGE_GATE_IOU_MIN" in capsys.readouterr().err
    assert not (tmp_path / "up").exists()


def test_up_refuses_a_file_as_its_workdir_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    in_the_way = tmp_path / "stack"
    in_the_way.write_text("not a folder\n")
    for workdir in (in_the_way, in_the_way / "up"):
        with pytest.raises(SystemExit) as exited:
            cli_main(["up", "--workdir", str(workdir)])
        assert exited.value.code == 2
        assert f"--workdir {workdir}: {in_the_way} is a file, not a folder" in capsys.readouterr().err
    assert in_the_way.read_text() == "not a folder\n"


# --------------------------------------------------------------------------------------------------
# skuforge demo, again, on a stack that already ran the same SKUs
# --------------------------------------------------------------------------------------------------


@dataclass
class _Record:
    timestamp: int
    key: bytes
    value: bytes


def _record(topic: Topic[Any], payload: Any, *, event_id: str, trace_id: str, timestamp_ms: int) -> _Record:
    envelope = make_envelope(
        topic, payload, event_id=event_id, sku_id="SKU-1", trace_id=trace_id, producer="test"
    )
    return _Record(timestamp_ms, b"SKU-1", envelope.model_dump_json().encode())


IMAGE = ImageRef(uri="file:///x/p.png", sha256="0" * 64, bytes=1, width=8, height=8)


def _captioned(sku_id: str) -> SkuCaptioned:
    return SkuCaptioned(
        sku=SkuMetadata(sku_id=sku_id, name="Product", category="soda can"),
        photos=[CaptionedPhoto(photo_id="p1", image=IMAGE, mask=IMAGE, usable=True)],
        instance_token="sks",
        class_noun="can",
        instance_prompt="a photo of sks can",
        class_prompt="a photo of a can",
        captioner="test",
    )


def test_the_demo_follows_an_identical_ingest_the_stack_already_handled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same folder ingested again is the same event (same id, same trace); a stage that already
    handled it skips it, so what the stack made of it earlier is this run's result, not nothing."""
    settings = load_settings()
    captioned = _captioned("SKU-1")
    sku = captioned.sku
    ingested = SkuIngested(
        sku=sku, photos=[ReferencePhoto(photo_id="p1", image=IMAGE, original_filename="p.png")]
    )
    same, other = derive_id("ingest", "same folder"), derive_id("ingest", "other folder")
    topics = {
        settings.topic_name(SKU_INGESTED): [
            _record(SKU_INGESTED, ingested, event_id=other, trace_id=other, timestamp_ms=500),
            _record(SKU_INGESTED, ingested, event_id=same, trace_id=same, timestamp_ms=1_000),
            _record(SKU_INGESTED, ingested, event_id=same, trace_id=same, timestamp_ms=9_000),  # again
        ],
        settings.topic_name(SKU_CAPTIONED): [
            _record(
                SKU_CAPTIONED, captioned, event_id=derive_id(other, "c"), trace_id=other, timestamp_ms=600
            ),
            _record(
                SKU_CAPTIONED, captioned, event_id=derive_id(same, "c"), trace_id=same, timestamp_ms=2_000
            ),
        ],
    }

    class Consumer:
        def __init__(self, **_config: Any) -> None:
            self.batches = {TopicPartition(name, 0): records for name, records in topics.items()}

        def topics(self) -> set[str]:
            return set(topics)

        def partitions_for_topic(self, name: str) -> set[int] | None:
            return {0} if name in topics else None

        def assign(self, _partitions: list[TopicPartition]) -> None: ...

        def seek_to_beginning(self, *_partitions: TopicPartition) -> None: ...

        def poll(self, **_kwargs: Any) -> dict[TopicPartition, list[_Record]]:
            batches, self.batches = self.batches, {}
            return batches

        def close(self) -> None: ...

    monkeypatch.setattr(tracker_module, "KafkaConsumer", Consumer)
    # The stack started at 0.8 s; this run ingested at 9 s: its captioner handled it at 2 s.
    tracker = FlowTracker(settings, ["SKU-1"], since_ms=8_000, trace_ids=[same], trace_since_ms=800)
    state = tracker.poll()
    assert state.count(SKU_CAPTIONED) == 1, "the stack's answer to this very ingest must count"
    assert tracker.earlier_run_ms == 1_000
    # Without the traces (a stack the demo started itself), only what happens from now on counts.
    monkeypatch.setattr(tracker_module, "KafkaConsumer", Consumer)
    assert FlowTracker(settings, ["SKU-1"], since_ms=8_000).poll().count(SKU_CAPTIONED) == 0


def test_the_demo_expects_no_images_of_a_sku_the_generator_dead_lettered() -> None:
    """Else it waits for them until --timeout-s (600 s) and exits 1, though everything was decided."""
    state = FlowState()
    for sku_id in ("SKU-1", "SKU-2"):
        state.records[SKU_CAPTIONED.name][sku_id] = Seen(_captioned(sku_id), 1_000)
    assert expected_generated(state, variants=6) == 12
    state.dead.append(
        DeadLetter(
            reason="handler_error",
            error_class="ValueError",
            stage="generator",
            original_topic=load_settings().topic_name(SKU_CAPTIONED),
            original_partition=0,
            original_offset=0,
            original_value_b64="",
            sku_id="SKU-2",
            failed_at=datetime.now(UTC),
        )
    )
    assert expected_generated(state, variants=6) == 6
