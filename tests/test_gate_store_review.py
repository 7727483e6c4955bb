"""Gate settings, retraining store and dataset export: what an operator hits at the edges.

Unit level, no broker: bad gate settings fail at start-up, a concurrent ``skuforge dataset compact``
cannot make the stage lose an event, a transient manifest failure does not double-count stored
images, and an export is exact (each SKU once), names unknown SKUs, and writes all or nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from schemas.envelope import Envelope
from schemas.events import GateAccepted
from schemas.topics import CORRECTION_RESOLVED, GATE_ACCEPTED
from services.gate.config import GateSettings
from services.gate.stage import build_stage as build_gate
from services.trainstore.stage import Trainstore
from services.trainstore.stage import build_stage as build_trainstore
from shared.bus import make_envelope
from shared.config import ConfigError, Settings, load_settings
from shared.errors import BadInput, TransientError
from shared.gate.checks import GateThresholds
from shared.observability import StageMetrics
from shared.runtime import Context
from shared.store import FileStore
from shared.trainstore.manifest import ManifestRow, ManifestStore
from shared.trainstore.settings import TrainstoreSettings
from skuforge_cli.main import main as cli_main
from tests.support.gate import matted_item, resolved
from tests.support.trainstore import PREFIX, add_item

# -- gate settings ------------------------------------------------------------------------------


def test_gate_thresholds_that_only_clash_together_fail_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # Valid one by one, invalid together: before, the gate started and failed every item instead.
    monkeypatch.setenv("SKUFORGE_GATE_MIN_FOREGROUND_FRACTION", "0.95")
    with pytest.raises(ConfigError, match=r"SKUFORGE_GATE_MAX_FOREGROUND_FRACTION: .*above"):
        load_settings(GateSettings)

    # A category override is checked against the global thresholds it will be applied to...
    monkeypatch.setenv("SKUFORGE_GATE_MIN_FOREGROUND_FRACTION", "0.005")
    monkeypatch.setenv("SKUFORGE_GATE_MAX_FOREGROUND_FRACTION", "0.5")
    monkeypatch.setenv("SKUFORGE_GATE_CATEGORY_OVERRIDES", '{"pouch": {"min_foreground_fraction": 0.6}}')
    with pytest.raises(ConfigError, match=r"SKUFORGE_GATE_CATEGORY_OVERRIDES.*'pouch'"):
        load_settings(GateSettings)

    # ...so one that is valid with them is not refused for clashing with the built-in defaults.
    monkeypatch.setenv("SKUFORGE_GATE_MAX_FOREGROUND_FRACTION", "0.98")
    monkeypatch.setenv("SKUFORGE_GATE_CATEGORY_OVERRIDES", '{"pouch": {"min_foreground_fraction": 0.92}}')
    gate = load_settings(GateSettings)
    assert gate.thresholds_for("pouch").min_foreground_fraction == 0.92


def test_a_nan_drift_tolerance_override_fails_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # NaN would make "drift <= tolerance" false for every item: everything flagged for correction.
    monkeypatch.setenv("SKUFORGE_GATE_CATEGORY_OVERRIDES", '{"pouch": {"drift_tolerance": NaN}}')
    with pytest.raises(
        ConfigError,
        match=r"SKUFORGE_GATE_CATEGORY_OVERRIDES \(pouch\.drift_tolerance\): Input should be a finite number",
    ):
        load_settings(GateSettings)
    with pytest.raises(ValueError, match="drift_tolerance"):
        GateThresholds(drift_tolerance=float("nan"))


@pytest.mark.parametrize("where", ["global", "override"])
def test_an_infinite_drift_tolerance_fails_at_start_up(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # inf passed start-up; every check's threshold then went out as JSON null, which GateCheck
    # refuses: every gate.accepted and correction.pending event dead-lettered downstream.
    if where == "global":
        monkeypatch.setenv("SKUFORGE_GATE_DRIFT_TOLERANCE", "inf")
    else:
        monkeypatch.setenv("SKUFORGE_GATE_CATEGORY_OVERRIDES", '{"pouch": {"drift_tolerance": Infinity}}')
    with pytest.raises(ConfigError, match=r"DRIFT_TOLERANCE|drift_tolerance"):
        load_settings(GateSettings)


# -- trainstore settings and stage --------------------------------------------------------------


@pytest.mark.parametrize("prefix", [".", "./trainstore", "a/../b"])
def test_a_trainstore_prefix_with_dot_segments_fails_at_start_up(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store refuses such keys, so the stage would dead-letter every event as handler_error.
    monkeypatch.setenv("SKUFORGE_TRAINSTORE_PREFIX", prefix)
    with pytest.raises(ConfigError, match=r"SKUFORGE_TRAINSTORE_PREFIX: .*'\.' or '\.\.' segment"):
        load_settings(TrainstoreSettings)


@pytest.mark.parametrize("prefix", ["t" * 256, "a/" + "b" * 300 + "/c"])
def test_a_trainstore_prefix_with_a_folder_name_over_255_bytes_fails_at_start_up(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store refuses every key and listing under it: the stage retried and dead-lettered every event
    # as handler_error, and `skuforge dataset stats` ended in a ValueError's traceback.
    monkeypatch.setenv("SKUFORGE_TRAINSTORE_PREFIX", prefix)
    with pytest.raises(ConfigError, match=r"SKUFORGE_TRAINSTORE_PREFIX: .*longer than 255 bytes"):
        load_settings(TrainstoreSettings)


def _context(store: FileStore) -> Context:
    return Context("trainstore", store, Settings(), StageMetrics("trainstore"), logging.getLogger("test"))


def _accepted_event(store: FileStore) -> tuple[str, Envelope[GateAccepted]]:
    matted = matted_item(store, 1, 0)
    event = make_envelope(
        GATE_ACCEPTED,
        GateAccepted(matted=matted, iou=0.97, checks=[]),
        event_id="e" * 32,
        sku_id=matted.generated.sku.sku_id,
        trace_id="t" * 32,
        producer="test",
    )
    return matted.generated.item_id, event


class CompactsWhileListed(FileStore):
    """A store where ``skuforge dataset compact`` runs right after the stage lists a SKU's parts."""

    compactor: ManifestStore | None = None

    def _list(self, prefix: str) -> Iterator[str]:
        keys = list(super()._list(prefix))
        if self.compactor is not None and "/manifests/SKU-001/" in prefix:
            compactor, self.compactor = self.compactor, None
            compactor.compact("SKU-001")
        yield from keys


def test_a_concurrent_compaction_does_not_dead_letter_the_stages_event(tmp_path: Path) -> None:
    store = CompactsWhileListed(tmp_path / "store")
    writer = Trainstore(ManifestStore(store, PREFIX), compact_after_parts=16)
    for index in range(3):
        writer.manifests.append(
            "SKU-001",
            [
                ManifestRow(
                    item_id=f"old-{index}", sku_id="SKU-001", category="c", source="real", status="unusable"
                )
            ],
        )
    item_id, event = _accepted_event(store)
    store.compactor = ManifestStore(FileStore(tmp_path / "store"), PREFIX)

    # Before: the deltas listed were deleted under the read, ObjectMissing, the event dead-lettered.
    writer.accepted(event, _context(store))

    rows = writer.manifests.read_sku("SKU-001")
    assert rows[item_id].status == "accepted"
    assert sorted(rows) == sorted([item_id, "old-0", "old-1", "old-2"])


def test_a_re_rendered_item_keeps_its_row_and_its_stored_bytes_in_step(tmp_path: Path) -> None:
    # The generator rendered a variant again (its input replayed after the scene library changed):
    # the same item id, other bytes, and both accepted. The trainstore stores a verified copy under
    # its own key and the row names that copy's sha256, so whichever render came last, the row and
    # the bytes beside it agree, and the dataset tools that check them find nothing tampered.
    store = FileStore(tmp_path / "store")
    writer = Trainstore(ManifestStore(store, PREFIX), compact_after_parts=16)
    matted = matted_item(store, 1, 0)
    re_rendered = matted.model_copy(
        update={"generated": matted.generated.model_copy(update={"image": matted_item(store, 1, 1).cutout})}
    )
    for index, item in enumerate((matted, re_rendered, matted)):  # the first render's event again, late
        event = make_envelope(
            GATE_ACCEPTED,
            GateAccepted(matted=item, iou=0.97, checks=[]),
            event_id=f"{index}" * 32,
            sku_id=item.generated.sku.sku_id,
            trace_id="t" * 32,
            producer="test",
        )
        writer.accepted(event, _context(store))
        row = writer.manifests.read_sku(item.generated.sku.sku_id)[item.generated.item_id]
        assert row.image is not None and row.image_sha256 == item.generated.image.sha256
        store.read_checked(writer.manifests.key(row.image), row.image_sha256)


class FailsFirstManifestWrite(FileStore):
    """S3 answers 503 once, to the first manifest write."""

    failed = False

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        if "/manifests/" in key and not self.failed:
            self.failed = True
            raise TransientError("S3 answered 503")
        super()._write(key, data, content_type)


def test_an_image_is_counted_once_when_its_manifest_write_is_retried(tmp_path: Path) -> None:
    store = FailsFirstManifestWrite(tmp_path / "store")
    registry = CollectorRegistry()
    writer = Trainstore(ManifestStore(store, PREFIX), compact_after_parts=16, registry=registry)
    _, event = _accepted_event(store)
    with pytest.raises(TransientError):
        writer.accepted(event, _context(store))
    writer.accepted(event, _context(store))  # the runtime's retry
    writer.accepted(event, _context(store))  # a redelivery
    stored = registry.get_sample_value("skuforge_trainstore_images_stored_total", {"source": "synthetic"})
    assert stored == 1.0


def test_the_counters_the_alerts_read_start_at_zero_in_the_gate_and_the_trainstore(tmp_path: Path) -> None:
    """A count born at 1 is invisible to increase(): after a restart, SkuforgeNoImagesStored saw neither
    the first SKU nor the first stored image, and the gate's flag share missed the first pending item."""
    settings = load_settings(store_uri=f"file://{tmp_path / 'store'}")
    gate = build_gate(settings=settings).metrics.registry
    trainstore = build_trainstore(settings=settings)
    stored = trainstore.metrics.registry

    assert {
        decision: gate.get_sample_value("skuforge_gate_decisions_total", {"decision": decision})
        for decision in ("accepted", "pending")
    } == {"accepted": 0.0, "pending": 0.0}
    assert {
        source: stored.get_sample_value("skuforge_trainstore_images_stored_total", {"source": source})
        for source in ("real", "synthetic")
    } == {"real": 0.0, "synthetic": 0.0}
    labels = {"stage": trainstore.name, "topic": settings.topic_name(GATE_ACCEPTED), "outcome": "ok"}
    assert stored.get_sample_value("skuforge_messages_total", labels) == 0.0


# -- dataset export -----------------------------------------------------------------------------


@pytest.fixture
def store_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """SKU-A: 1 real, 2 synthetic; SKU-B: 1 real. The CLI's store is this one."""
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    add_item(manifests, "SKU-A", "real-0", "real", "reference")
    add_item(manifests, "SKU-A", "gen-0", "synthetic", "accepted")
    add_item(manifests, "SKU-A", "gen-1", "synthetic", "accepted")
    add_item(manifests, "SKU-B", "real-0", "real", "reference")
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    return tmp_path / "store"


def test_a_sku_named_twice_is_exported_once(store_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["dataset", "export", str(out), "--format", "jsonl", "--max-synthetic-per-real", "1"]
    assert cli_main([*args, "--sku", "SKU-A", "--sku", "SKU-A"]) == 0
    lines = [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]
    # Before: every line twice, and the cap (1 synthetic per real) let 2 synthetic images through.
    assert [(line["source"], line["item_id"]) for line in lines] == [
        ("real", "real-0"),
        ("synthetic", "gen-0"),
    ]
    summary = json.loads((out / "export.json").read_text())
    assert summary["classes"] == {"SKU-A": {"real": 1, "synthetic": 1, "dropped": 1}}
    manifests = ManifestStore(FileStore(store_dir), PREFIX)
    assert len(list(manifests.iter_rows(["SKU-B", "SKU-B"]))) == 1


def test_an_unknown_sku_is_a_clear_error_not_an_empty_export(
    store_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        cli_main(
            [
                "dataset",
                "export",
                str(out),
                "--format",
                "jsonl",
                "--max-synthetic-per-real",
                "1",
                "--sku",
                "SKU-Z",
            ]
        )
    assert exited.value.code == 2
    assert "no SKU 'SKU-Z' in the store" in capsys.readouterr().err
    assert not out.exists()


def test_a_failed_export_writes_nothing_and_says_why(
    store_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = FileStore(store_dir)
    key = f"{PREFIX}/images/SKU-B/real/real-0.png"
    good = store.get_bytes(key)
    store.put_bytes(key, good + b"x")
    out = tmp_path / "out"
    args = ["dataset", "export", str(out), "--format", "imagefolder", "--max-synthetic-per-real", "1"]

    # Before: a traceback, and SKU-A's images left in out/, so the rerun was refused as "not empty".
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    assert "checksum_mismatch" in err and "nothing was written" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [store_dir]

    store.put_bytes(key, good)
    out.mkdir()  # an existing empty directory is fine
    assert cli_main(args) == 0
    assert sorted(path.name for path in out.iterdir()) == ["SKU-A", "SKU-B", "export.json"]

    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    with pytest.raises(SystemExit) as exited:
        cli_main([*args[:2], str(not_a_directory), *args[3:]])
    assert exited.value.code == 2
    assert "is a file" in capsys.readouterr().err


def test_an_event_that_misstates_its_image_size_is_refused_not_recorded(tmp_path: Path) -> None:
    # Before, the manifest row took the event's width and height on trust: a 30x40 photo was
    # recorded as 4000 x 1.
    store = FileStore(tmp_path / "store")
    writer = Trainstore(ManifestStore(store, PREFIX), compact_after_parts=16)
    _, event = _accepted_event(store)
    generated = event.payload.matted.generated
    lying = generated.model_copy(
        update={"image": generated.image.model_copy(update={"width": 4000, "height": 1})}
    )
    event = event.model_copy(
        update={
            "payload": event.payload.model_copy(
                update={"matted": event.payload.matted.model_copy(update={"generated": lying})}
            )
        }
    )
    with pytest.raises(BadInput, match=r"dimension_mismatch: image .* the event says 4000x1"):
        writer.accepted(event, _context(store))
    assert writer.manifests.read_sku(generated.sku.sku_id) == {}


class AcceptsAfterTheRejection(FileStore):
    """A store where another trainstore member stores an acceptance of the item right after this
    member wrote its rejection row, before it deletes the item's objects (two members may hold one
    partition number of gate.accepted and correction.resolved)."""

    meanwhile: Callable[[], object] | None = None

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        super()._write(key, data, content_type)
        if self.meanwhile is not None and "/part-d-" in key and b'"rejected"' in data:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()


def test_a_rejection_does_not_delete_the_image_of_an_acceptance_stored_meanwhile(tmp_path: Path) -> None:
    # Before: the rejecting member deleted images/<sku>/synthetic/<item>.png after the other member had
    # stored it with a newer accepted row: a trainable row without its image, and every export of the
    # store failed on it.
    store = AcceptsAfterTheRejection(tmp_path / "store")
    rejecting = Trainstore(ManifestStore(store, PREFIX), compact_after_parts=16)
    accepting = Trainstore(ManifestStore(FileStore(tmp_path / "store"), PREFIX), compact_after_parts=16)
    first = matted_item(store, 1, 0)
    second = first.model_copy(
        update={"generated": first.generated.model_copy(update={"image": matted_item(store, 1, 1).cutout})}
    )
    sku_id = first.generated.sku.sku_id
    accept = make_envelope(
        GATE_ACCEPTED,
        GateAccepted(matted=first, iou=0.97, checks=[]),
        event_id="a" * 32,
        sku_id=sku_id,
        trace_id="t" * 32,
        producer="test",
    )
    reject = make_envelope(
        CORRECTION_RESOLVED,
        resolved(store, second, "reject"),
        event_id="b" * 32,
        sku_id=sku_id,
        trace_id="t" * 32,
        producer="test",
    )
    store.meanwhile = lambda: accepting.accepted(accept, _context(store))
    rejecting.resolved(reject, _context(store))
    assert store.meanwhile is None  # the acceptance did come in between

    row = rejecting.manifests.read_sku(sku_id)[first.generated.item_id]
    assert row.status == "accepted" and row.image is not None and row.image_sha256 is not None
    store.read_checked(rejecting.manifests.key(row.image), row.image_sha256)


def test_a_photo_captioned_again_as_unusable_loses_its_stored_copies(tmp_path: Path) -> None:
    """Stored as a reference, then found unusable by a replayed or re-run captioning: the row said "no
    objects" (docs/gate-and-trainstore.md) while its image and mask stayed in the store."""
    from schemas.topics import SKU_CAPTIONED
    from tests.support.gate import captioned
    from tests.support.trainstore import stored

    store = FileStore(tmp_path / "store")
    writer = Trainstore(ManifestStore(store, PREFIX), compact_after_parts=16)
    first = captioned(store, 1)
    sku_id = first.sku.sku_id
    photos = [
        photo.model_copy(update={"usable": False, "mask": None, "unusable_reason": "blurry"})
        if photo.photo_id == "p0"
        else photo
        for photo in first.photos
    ]
    for index, payload in enumerate((first, first.model_copy(update={"photos": photos}))):
        event_id = str(index) * 32
        event = make_envelope(
            SKU_CAPTIONED, payload, event_id=event_id, sku_id=sku_id, trace_id="t" * 32, producer="test"
        )
        writer.captioned(event, _context(store))
        if index == 0:
            assert all(stored(writer.manifests, sku_id, "p0", "real"))  # an image and a mask
    rows = writer.manifests.read_sku(sku_id)
    assert rows["p0"].status == "unusable" and rows["p0"].image is None
    assert stored(writer.manifests, sku_id, "p0", "real") == ([], [])
    # The other photo keeps its copies.
    assert rows["p1"].status == "reference"
    assert stored(writer.manifests, sku_id, "p1", "real") == (
        [writer.manifests.key(str(rows["p1"].image))],
        [writer.manifests.key(str(rows["p1"].mask))],
    )
