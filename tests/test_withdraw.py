"""A photo its owner removed leaves the retraining store, with every image generated from it.

``skuforge ingest --withdraw-missing`` withdraws the photos an earlier ingest stored that left the
SKU's folder (``shared/trainstore/withdrawals.py``): a marker, ``withdrawn`` rows for the photo and the
images generated from it, their objects deleted; the trainstore stage keeps later images of it out.
Before, ingest only warned, and a photo its owner had taken out (a wrong product, a face in the shot)
stayed in every export, with all its synthetic images.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from devstack.demo.demo import SAMPLE_SKUS
from schemas.envelope import Envelope
from schemas.events import GateAccepted, ImageMatted, SkuCaptioned, SkuIngested
from schemas.topics import CORRECTION_PENDING, CORRECTION_RESOLVED, GATE_ACCEPTED, SKU_CAPTIONED, SKU_INGESTED
from services.captioner.config import CaptionerSettings
from services.captioner.stage import handle, open_models
from services.ingest import ingest
from services.ingest.ingest import ingest_path, withdraw_skus
from services.trainstore.stage import Trainstore
from shared.bus import make_envelope
from shared.config import Settings, load_settings
from shared.observability import StageMetrics
from shared.runtime import Context
from shared.store import FileStore
from shared.trainstore.dataset import plan_export, sku_stats
from shared.trainstore.loader import load_manifest
from shared.trainstore.manifest import ManifestRow, ManifestStore
from shared.trainstore.settings import TrainstoreSettings
from shared.trainstore.withdrawals import Withdrawals
from skuforge_cli.main import main as cli_main
from tests.support.bus import file_store_uri, isolated_settings
from tests.support.captioning import context
from tests.support.gate import captioned, matted_item, pending_of, resolved
from tests.support.trainstore import stored

PREFIX = "trainstore"
SKU = "SKU-001"  # the SKU of tests.support.gate's sku(1)


def _context(store: FileStore) -> Context:
    return Context("trainstore", store, Settings(), StageMetrics("trainstore"), logging.getLogger("test"))


def _envelope(topic: Any, payload: Any, event_id: str) -> Envelope[Any]:
    return make_envelope(
        topic, payload, event_id=event_id * 32, sku_id=SKU, trace_id="t" * 32, producer="test"
    )


def _of_photo(store: FileStore, variant: int, photo_id: str) -> ImageMatted:
    """A matted item of SKU-001 generated from reference photo ``photo_id``."""
    matted = matted_item(store, 1, variant)
    return matted.model_copy(
        update={"generated": matted.generated.model_copy(update={"reference_photo_id": photo_id})}
    )


def _accept(writer: Trainstore, store: FileStore, matted: ImageMatted, event_id: str) -> None:
    event = _envelope(GATE_ACCEPTED, GateAccepted(matted=matted, iou=0.97, checks=[]), event_id)
    writer.accepted(event, _context(store))


def _approve(writer: Trainstore, store: FileStore, matted: ImageMatted, event_id: str) -> None:
    event = _envelope(CORRECTION_RESOLVED, resolved(store, matted, "approve_expected"), event_id)
    writer.resolved(event, _context(store))


def _withdraw(writer: Trainstore, *photo_ids: str) -> list[ManifestRow]:
    return writer.withdrawals.withdraw(SKU, "soda", photo_ids, by="test")


@pytest.fixture
def writer(tmp_path: Path) -> tuple[Trainstore, FileStore, CollectorRegistry]:
    store = FileStore(tmp_path / "store")
    registry = CollectorRegistry()
    return (
        Trainstore(ManifestStore(store, PREFIX), compact_after_parts=16, registry=registry),
        store,
        registry,
    )


def test_a_withdrawn_photo_and_its_generated_images_leave_the_store(
    writer: tuple[Trainstore, FileStore, CollectorRegistry],
) -> None:
    trainstore, store, _ = writer
    ctx = _context(store)
    trainstore.captioned(_envelope(SKU_CAPTIONED, captioned(store, 1, photos=2), "a"), ctx)
    of_p0 = [_of_photo(store, variant, "p0") for variant in range(3)]
    of_p1 = _of_photo(store, 3, "p1")
    _accept(trainstore, store, of_p0[0], "b")
    _accept(trainstore, store, of_p1, "c")
    _approve(trainstore, store, of_p0[1], "d")
    trainstore.pending(_envelope(CORRECTION_PENDING, pending_of(of_p0[2]), "e"), ctx)
    rows = trainstore.manifests.read_sku(SKU)
    stored_p0 = [rows[item.generated.item_id].image for item in of_p0[:2]] + [
        rows["p0"].image,
        rows["p0"].mask,
    ]
    assert all(key and store.exists(trainstore.manifests.key(key)) for key in stored_p0)

    written = _withdraw(trainstore, "p0")

    rows = trainstore.manifests.read_sku(SKU)
    withdrawn = {item_id for item_id, row in rows.items() if row.status == "withdrawn"}
    assert (
        withdrawn == {"p0", *(item.generated.item_id for item in of_p0)} == {row.item_id for row in written}
    )
    assert all(rows[item_id].image is None and rows[item_id].mask is None for item_id in withdrawn)
    assert "photo_withdrawn" in rows["p0"].reasons
    assert rows[of_p0[2].generated.item_id].reasons == ["iou_below_threshold", "photo_withdrawn"]
    # What had nothing to do with p0 stays.
    assert (rows["p1"].status, rows[of_p1.generated.item_id].status) == ("reference", "accepted")
    assert not any(store.exists(trainstore.manifests.key(key)) for key in stored_p0 if key)
    assert store.exists(trainstore.manifests.key(str(rows[of_p1.generated.item_id].image)))
    # Every training set and the stats see it.
    (plan,) = plan_export(rows.values(), max_synthetic_per_real=10).classes
    assert [row.item_id for row in plan.real] == ["p1"]
    assert [row.item_id for row in plan.synthetic] == [of_p1.generated.item_id]
    (stats,) = sku_stats(rows.values())
    counts = (stats.real, stats.synthetic_accepted, stats.synthetic_approved, stats.pending, stats.withdrawn)
    assert counts == (1, 1, 0, 0, 4)

    # Run again (the first run stopped before its deletions): no rows, and the objects go.
    store.put_bytes(trainstore.manifests.key(str(stored_p0[0])), b"left behind", "image/png")
    assert _withdraw(trainstore, "p0") == []
    assert trainstore.manifests.read_sku(SKU) == rows
    assert not store.exists(trainstore.manifests.key(str(stored_p0[0])))


def test_an_image_of_a_withdrawn_photo_that_arrives_later_is_not_stored(
    writer: tuple[Trainstore, FileStore, CollectorRegistry],
) -> None:
    trainstore, store, registry = writer
    ctx = _context(store)
    trainstore.captioned(_envelope(SKU_CAPTIONED, captioned(store, 1, photos=2), "a"), ctx)
    _withdraw(trainstore, "p0")
    late, approved, rejected = (_of_photo(store, variant, "p0") for variant in range(3))

    _accept(trainstore, store, late, "c")  # under way in the gate when the photo was withdrawn
    _approve(trainstore, store, approved, "d")  # a reviewer decided on a task queued before
    trainstore.resolved(_envelope(CORRECTION_RESOLVED, resolved(store, rejected, "reject"), "e"), ctx)

    rows = trainstore.manifests.read_sku(SKU)
    assert rows[late.generated.item_id].status == "withdrawn"
    assert rows[approved.generated.item_id].status == "withdrawn"
    assert rows[rejected.generated.item_id].status == "rejected", "a person's rejection stays one"
    assert list(store.list_keys(f"{PREFIX}/images/{SKU}/synthetic/")) == []
    metric = "skuforge_trainstore_items_withdrawn_total"
    assert registry.get_sample_value(metric, {"source": "synthetic"}) == 2.0


def test_a_replayed_older_captioned_event_does_not_bring_a_withdrawn_photo_back(
    writer: tuple[Trainstore, FileStore, CollectorRegistry],
) -> None:
    # Nor one in which the photo is unusable (the captioner ran after ingest deleted it).
    trainstore, store, _ = writer
    ctx = _context(store)
    older = captioned(store, 1, photos=2)
    trainstore.captioned(_envelope(SKU_CAPTIONED, older, "a"), ctx)
    _withdraw(trainstore, "p0")
    # Ingest deletes the withdrawn photo's upload: reading it dead-lettered the whole replayed event.
    store.delete(store.key_for(older.photos[0].image.uri))

    trainstore.captioned(_envelope(SKU_CAPTIONED, older, "b"), ctx)  # `skuforge dlq replay`, a rewind
    unusable = older.photos[0].model_copy(
        update={"usable": False, "mask": None, "unusable_reason": "object_missing"}
    )
    trainstore.captioned(
        _envelope(SKU_CAPTIONED, older.model_copy(update={"photos": [unusable, *older.photos[1:]]}), "c"), ctx
    )
    pending = _of_photo(store, 0, "p0")
    trainstore.pending(_envelope(CORRECTION_PENDING, pending_of(pending), "d"), ctx)
    _approve(trainstore, store, pending, "e")

    rows = trainstore.manifests.read_sku(SKU)
    assert (rows["p0"].status, rows["p0"].image) == ("withdrawn", None)
    assert rows[pending.generated.item_id].status == "withdrawn"
    assert stored(trainstore.manifests, SKU, "p0", "real") == ([], [])


def test_a_row_a_concurrent_writer_stored_is_withdrawn_by_the_next_write(
    writer: tuple[Trainstore, FileStore, CollectorRegistry],
) -> None:
    trainstore, store, _ = writer
    trainstore.captioned(_envelope(SKU_CAPTIONED, captioned(store, 1, photos=2), "a"), _context(store))
    _withdraw(trainstore, "p0")
    # Another member, which read the manifest before the withdrawal, stored an acceptance.
    escaped = ManifestRow(
        item_id="gen-escaped",
        sku_id=SKU,
        category="soda",
        source="synthetic",
        status="accepted",
        image=f"images/{SKU}/synthetic/gen-escaped.png",
        reference_photo_id="p0",
    )
    store.put_bytes(trainstore.manifests.key(str(escaped.image)), b"png", "image/png")
    trainstore.manifests.append(SKU, [escaped])

    # Until then, no training set takes it.
    rows = trainstore.manifests.read_sku(SKU)
    (plan,) = plan_export(rows.values(), max_synthetic_per_real=10).classes
    assert "gen-escaped" not in [row.item_id for row in plan.synthetic]
    assert "gen-escaped" not in load_manifest(store, prefix=PREFIX).columns["item_id"]

    _accept(trainstore, store, _of_photo(store, 0, "p1"), "c")  # any later write of the SKU

    assert trainstore.manifests.read_sku(SKU)["gen-escaped"].status == "withdrawn"
    assert not store.exists(trainstore.manifests.key(str(escaped.image)))


def test_a_withdrawal_stopped_between_rows_and_deletions_deletes_when_the_event_comes_again(
    writer: tuple[Trainstore, FileStore, CollectorRegistry], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage deleted a withdrawn photo's objects only when it wrote rows: redelivered after a
    crash between the two, the event found the rows there, wrote nothing, and the photo's copies
    stayed in the store for good."""
    trainstore, store, _ = writer
    trainstore.captioned(_envelope(SKU_CAPTIONED, captioned(store, 1, photos=2), "a"), _context(store))
    image = trainstore.manifests.read_sku(SKU)["p0"].image
    assert image is not None and store.exists(trainstore.manifests.key(image))
    # The marker only (ingest stopped after it): the stage's next write of the SKU withdraws p0.
    store.put_bytes(trainstore.manifests.key(f"withdrawals/{SKU}/p0.json"), b'{"photo_id": "p0"}')

    def crash(*_: object) -> None:
        raise OSError("the process died here")

    event = _envelope(GATE_ACCEPTED, GateAccepted(matted=_of_photo(store, 0, "p1"), iou=0.97, checks=[]), "c")
    with monkeypatch.context() as patched:
        patched.setattr(trainstore.manifests, "delete_objects", crash)
        with pytest.raises(OSError, match="died"):
            trainstore.accepted(event, _context(store))
    assert trainstore.manifests.read_sku(SKU)["p0"].status == "withdrawn"
    assert store.exists(trainstore.manifests.key(image)), "the rows were written, the objects not deleted"

    trainstore.accepted(event, _context(store))  # redelivered
    assert not store.exists(trainstore.manifests.key(image))


def test_a_photo_whose_marker_exists_is_never_exported_whatever_its_row_says(
    writer: tuple[Trainstore, FileStore, CollectorRegistry],
) -> None:
    """A replayed sku.captioned stored by a member that read the manifest before the marker leaves the
    photo's row a reference: export and load_manifest took the photo a marker says is withdrawn."""
    trainstore, store, _ = writer
    trainstore.captioned(_envelope(SKU_CAPTIONED, captioned(store, 1, photos=2), "a"), _context(store))
    _accept(trainstore, store, _of_photo(store, 0, "p0"), "b")
    rows = trainstore.manifests.read_sku(SKU)
    (of_p0,) = [row.item_id for row in rows.values() if row.reference_photo_id == "p0"]
    assert rows["p0"].status == "reference" and rows[of_p0].status == "accepted"
    # Only the marker (the race: the rows say nothing yet).
    store.put_bytes(trainstore.manifests.key(f"withdrawals/{SKU}/p0.json"), b'{"photo_id": "p0"}')
    withdrawn = Withdrawals(trainstore.manifests).by_sku()
    (plan,) = plan_export(rows.values(), max_synthetic_per_real=10, withdrawn_photos=withdrawn).classes
    assert [row.item_id for row in plan.real] == ["p1"] and plan.synthetic == []
    loaded = load_manifest(store, prefix=PREFIX).columns["item_id"]
    assert "p0" not in loaded and of_p0 not in loaded and "p1" in loaded


def test_a_reinstated_photo_is_a_reference_again_and_its_old_images_stay_out(
    writer: tuple[Trainstore, FileStore, CollectorRegistry],
) -> None:
    trainstore, store, _ = writer
    ctx = _context(store)
    trainstore.captioned(_envelope(SKU_CAPTIONED, captioned(store, 1, photos=2), "a"), ctx)
    old = _of_photo(store, 0, "p0")
    _accept(trainstore, store, old, "b")
    _withdraw(trainstore, "p0")

    trainstore.withdrawals.reinstate(SKU, ["p0"])
    trainstore.captioned(_envelope(SKU_CAPTIONED, captioned(store, 1, photos=2), "d"), ctx)
    new = _of_photo(store, 1, "p0")
    _accept(trainstore, store, new, "e")

    rows = trainstore.manifests.read_sku(SKU)
    assert rows["p0"].status == "reference" and rows["p0"].image
    assert rows[old.generated.item_id].status == "withdrawn", "what was withdrawn stays withdrawn"
    assert rows[new.generated.item_id].status == "accepted"


def test_a_replayed_image_of_a_reinstated_photo_stays_withdrawn(
    writer: tuple[Trainstore, FileStore, CollectorRegistry],
) -> None:
    """Before, once the marker was lifted, a replayed accept or approval (a redelivery, a DLQ replay)
    of an image withdrawn with its photo replaced its withdrawn row and stored the image again."""
    trainstore, store, _ = writer
    ctx = _context(store)
    trainstore.captioned(_envelope(SKU_CAPTIONED, captioned(store, 1, photos=2), "a"), ctx)
    accepted, pending = _of_photo(store, 0, "p0"), _of_photo(store, 1, "p0")
    _accept(trainstore, store, accepted, "b")
    trainstore.pending(_envelope(CORRECTION_PENDING, pending_of(pending), "c"), ctx)
    _withdraw(trainstore, "p0")
    trainstore.withdrawals.reinstate(SKU, ["p0"])
    trainstore.captioned(_envelope(SKU_CAPTIONED, captioned(store, 1, photos=2), "d"), ctx)

    _accept(trainstore, store, accepted, "b")  # the same event again
    _approve(trainstore, store, pending, "f")  # a reviewer's approval of the withdrawn pending image

    rows = trainstore.manifests.read_sku(SKU)
    assert rows["p0"].status == "reference", "the reinstated photo is a reference again"
    for item in (accepted, pending):
        item_id = item.generated.item_id
        assert rows[item_id].status == "withdrawn"
        assert stored(trainstore.manifests, SKU, item_id) == ([], [])


def test_a_photo_withdrawn_before_the_store_knew_it_stays_out(
    writer: tuple[Trainstore, FileStore, CollectorRegistry],
) -> None:
    # Ingested, then withdrawn before the captioner got to it: its captioned event comes later.
    trainstore, store, _ = writer
    (row,) = _withdraw(trainstore, "p0")
    assert (row.item_id, row.source, row.status, row.category) == ("p0", "real", "withdrawn", "soda")
    trainstore.captioned(_envelope(SKU_CAPTIONED, captioned(store, 1, photos=2), "a"), _context(store))
    rows = trainstore.manifests.read_sku(SKU)
    assert (rows["p0"].status, rows["p1"].status) == ("withdrawn", "reference")


# -- ingest and the captioner ---------------------------------------------------------------------


class _Publisher:
    """Records what ingest would publish (the broker's part is tested in test_e2e)."""

    published: list[tuple[str, SkuIngested]] = []
    fail_with: Exception | None = None

    def __init__(self, settings: Settings, producer: str) -> None:
        pass

    def publish(self, topic: Any, payload: Any, *, sku_id: str, event_id: str, trace_id: str) -> Any:
        if self.fail_with is not None:
            raise self.fail_with
        self.published.append((event_id, payload))
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


def _sample_sku(root: Path) -> Path:
    folder = root / "skus" / "aubergine"
    shutil.copytree(SAMPLE_SKUS / "GROCERY-AUBERGINE-001", folder)
    return folder


def _one_photo_sku(root: Path) -> tuple[Path, FileStore, Settings]:
    """A folder under ``root/skus`` of SKU A-1 (an oat drink) with one photo, an empty store under
    ``root`` and settings on it, with no broker (``publisher`` stands in for it)."""
    folder = root / "skus" / "one"
    folder.mkdir(parents=True)
    metadata = {"sku_id": "A-1", "name": "Oat drink", "category": "carton"}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    shutil.copy(SAMPLE_SKUS / "GROCERY-AUBERGINE-001" / "Aubergine_Iconic.jpg", folder / "a.jpg")
    store = FileStore(root / "store")
    return folder, store, isolated_settings("localhost:1", store.base_uri)


def _caption_and_store(
    store: FileStore, settings: Settings, sku_id: str, payload: SkuIngested, event_id: str
) -> None:
    """``payload`` through the captioner (the default model) into the trainstore, in process."""
    models = open_models(load_settings(CaptionerSettings, captioner_use_gpu=False), settings, store)
    ctx = context(store, settings)
    ingested = make_envelope(
        SKU_INGESTED, payload, event_id=event_id, sku_id=sku_id, trace_id=event_id, producer="ingest"
    )
    (emit,) = handle(ingested, ctx, models=models)
    assert isinstance(emit.payload, SkuCaptioned)
    event = make_envelope(
        SKU_CAPTIONED,
        emit.payload,
        event_id="c" + event_id[1:],
        sku_id=sku_id,
        trace_id=event_id,
        producer="x",
    )
    Trainstore(ManifestStore(store, PREFIX), compact_after_parts=16).captioned(event, ctx)


@pytest.mark.slow
def test_ingest_withdraw_missing_takes_a_removed_photo_out_and_putting_it_back_reinstates_it(
    tmp_path: Path, publisher: type[_Publisher]
) -> None:
    folder = _sample_sku(tmp_path)
    sku_id = json.loads((folder / "metadata.json").read_text())["sku_id"]
    store = FileStore(tmp_path / "store")
    settings = isolated_settings("localhost:1", store.base_uri)
    trainstore = load_settings(TrainstoreSettings, trainstore_prefix=PREFIX)
    ingest_path(folder.parent, settings, store=store, trainstore=trainstore)
    ((first_id, first),) = publisher.published
    _caption_and_store(store, settings, sku_id, first, first_id)
    manifests = ManifestStore(store, PREFIX)
    assert {row.status for row in manifests.read_sku(sku_id).values()} == {"reference"}

    removed_photo = folder / "Aubergine_018.jpg"  # an in-store photo; the catalogue one stays
    kept = removed_photo.read_bytes()
    removed_photo.unlink()
    told: list[str] = []
    warned: list[str] = []
    ingest_path(
        folder.parent,
        settings,
        store=store,
        withdraw_missing=True,
        tell=told.append,
        warn=warned.append,
        trainstore=trainstore,
    )

    (second_id, second) = publisher.published[-1]
    (withdrawn,) = {photo.photo_id for photo in first.photos} - {photo.photo_id for photo in second.photos}
    assert second_id == ingest.prepare_all(folder.parent, settings)[0].event_id, (
        "the plain event: nothing new"
    )
    rows = manifests.read_sku(sku_id)
    assert rows[withdrawn].status == "withdrawn" and rows[withdrawn].image is None
    assert Withdrawals(manifests).photo_ids(sku_id) == {withdrawn}
    assert not store.exists(f"incoming/{sku_id}/{withdrawn}.png"), "deleted last"
    assert warned == [] and len(told) == 1 and f"SKU {sku_id}: withdrew 1 photo(s)" in told[0]

    # Put back: reinstated, under an event id of its own (the first one's consumers skip as seen);
    # a run stopped before the stages took it again gives the same id.
    removed_photo.write_bytes(kept)
    ingest_path(folder.parent, settings, store=store, tell=told.append, trainstore=trainstore)
    ingest_path(folder.parent, settings, store=store, tell=told.append, trainstore=trainstore)
    (back_id, back), (again_id, _) = publisher.published[-2:]
    assert back_id not in (first_id, second_id) and again_id == back_id
    assert "reinstated 1 withdrawn photo(s)" in told[-1]
    assert Withdrawals(manifests).photo_ids(sku_id) == set()
    _caption_and_store(store, settings, sku_id, back, back_id)
    assert manifests.read_sku(sku_id)[withdrawn].status == "reference"
    # Once the stages took it again, the same folder is still that reinstatement's event. It was the
    # first event's plain id again, whose images of the photo (withdrawn) a stage that had forgotten the
    # event made and stored again.
    ingest_path(folder.parent, settings, store=store, tell=told.append, trainstore=trainstore)
    assert publisher.published[-1][0] == back_id

    # Withdrawn and put back a second time: another event again. It was the first put-back's id, which
    # a captioner that had seen it skips, so the photo stayed withdrawn.
    removed_photo.unlink()
    ingest_path(
        folder.parent, settings, store=store, withdraw_missing=True, tell=told.append, trainstore=trainstore
    )
    assert Withdrawals(manifests).photo_ids(sku_id) == {withdrawn}
    removed_photo.write_bytes(kept)
    ingest_path(folder.parent, settings, store=store, tell=told.append, trainstore=trainstore)
    ingest_path(folder.parent, settings, store=store, tell=told.append, trainstore=trainstore)
    (back2_id, back2), (again2_id, _) = publisher.published[-2:]
    assert back2_id not in (first_id, second_id, back_id) and again2_id == back2_id
    _caption_and_store(store, settings, sku_id, back2, back2_id)
    assert manifests.read_sku(sku_id)[withdrawn].status == "reference"
    ingest_path(folder.parent, settings, store=store, tell=told.append, trainstore=trainstore)
    assert publisher.published[-1][0] == back2_id


def test_without_the_flag_ingest_warns_and_a_failed_publish_withdraws_nothing(
    tmp_path: Path, publisher: type[_Publisher]
) -> None:
    folder, store, settings = _one_photo_sku(tmp_path)
    store.put_bytes("incoming/A-1/0123456789abcdef.png", b"an earlier photo", "image/png")
    store.put_bytes("incoming/A-1/notes.txt", b"not a photo of ingest's", "text/plain")
    warned: list[str] = []
    ingest_path(folder.parent, settings, store=store, warn=warned.append)
    assert len(warned) == 1 and "1 photo from an earlier ingest" in warned[0]
    assert "(--withdraw-missing takes it out)" in warned[0]
    assert store.exists("incoming/A-1/0123456789abcdef.png")

    publisher.fail_with = ingest.TransientError("broker down")
    with pytest.raises(ingest.TransientError):
        ingest_path(folder.parent, settings, store=store, withdraw_missing=True)
    assert store.exists("incoming/A-1/0123456789abcdef.png")
    assert Withdrawals(ManifestStore(store, "trainstore")).photo_ids("A-1") == set()

    # Once it goes out: only what ingest itself stored is withdrawn.
    publisher.fail_with = None
    ingest_path(folder.parent, settings, store=store, withdraw_missing=True, tell=warned.append)
    assert Withdrawals(ManifestStore(store, "trainstore")).photo_ids("A-1") == {"0123456789abcdef"}
    assert not store.exists("incoming/A-1/0123456789abcdef.png")
    assert store.exists("incoming/A-1/notes.txt")


def test_a_copy_of_a_photo_in_a_subfolder_of_the_skus_folder_withdraws_nothing(
    tmp_path: Path, publisher: type[_Publisher]
) -> None:
    # incoming/A-1/old/<id>.png was read as photo <id> by its last segment: gone from the folder, so
    # --withdraw-missing withdrew photo <id>, which the folder still has, and deleted it from incoming/.
    folder, store, settings = _one_photo_sku(tmp_path)
    ingest_path(folder.parent, settings, store=store)
    photo_id = publisher.published[0][1].photos[0].photo_id
    store.put_bytes(f"incoming/A-1/old/{photo_id}.png", store.get_bytes(f"incoming/A-1/{photo_id}.png"))
    warned: list[str] = []
    ingest_path(folder.parent, settings, store=store, withdraw_missing=True, warn=warned.append)
    assert Withdrawals(ManifestStore(store, "trainstore")).photo_ids("A-1") == set()
    assert store.exists(f"incoming/A-1/{photo_id}.png") and warned == []


def test_the_cli_takes_withdraw_missing(
    tmp_path: Path,
    publisher: type[_Publisher],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = _sample_sku(tmp_path)
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    assert cli_main(["ingest", str(folder)]) == 0
    (folder / "Aubergine_002.jpg").unlink()
    assert cli_main(["ingest", "--withdraw-missing", str(folder)]) == 0
    err = capsys.readouterr().err
    assert "withdrew 1 photo(s)" in err and "warning" not in err


def test_a_folder_whose_sku_id_changed_warns_that_the_old_sku_stays(
    tmp_path: Path, publisher: type[_Publisher]
) -> None:
    # The folder's photos went out under the new id, and the old id's photos, generated images and
    # manifests stayed, a second class of the same product in every export, without a word.
    folder = tmp_path / "skus" / "oat-drink"
    folder.mkdir(parents=True)
    shutil.copy(SAMPLE_SKUS / "GROCERY-AUBERGINE-001" / "Aubergine_Iconic.jpg", folder / "a.jpg")
    metadata = {"sku_id": "A-1", "name": "Oat drink", "category": "carton"}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    store = FileStore(tmp_path / "store")
    settings = isolated_settings("localhost:1", store.base_uri)
    warned: list[str] = []
    ingest_path(folder.parent, settings, store=store, warn=warned.append)
    assert warned == []

    (folder / "metadata.json").write_text(json.dumps({**metadata, "sku_id": "A-2"}))
    ingest_path(folder.parent, settings, store=store, warn=warned.append)
    assert len(warned) == 1, warned
    assert "SKU A-2: 1 of its 1 photo(s) already stored under SKU A-1" in warned[0]
    assert "stay in the retraining store" in warned[0]
    assert "take the old SKU out with `skuforge ingest --withdraw-sku A-1`" in warned[0]
    assert store.exists(f"incoming/A-1/{publisher.published[0][1].photos[0].photo_id}.png"), "nothing removed"

    # Said once, when the new id first goes out; and never when both ids are in the batch: there the
    # one photo of three SKUs is named as such, not as a changed sku_id.
    ingest_path(folder.parent, settings, store=store, warn=warned.append)
    twin = tmp_path / "skus" / "oat-drink-copy"
    shutil.copytree(folder, twin)
    (twin / "metadata.json").write_text(json.dumps({**metadata, "sku_id": "A-3"}))
    shutil.copytree(folder, tmp_path / "skus" / "oat-drink-old")
    (tmp_path / "skus" / "oat-drink-old" / "metadata.json").write_text(json.dumps(metadata))
    ingest_path(folder.parent, settings, store=store, warn=warned.append)
    assert len(warned) == 3, warned[1:]
    assert "of SKU A-2; one photo given for two products" in warned[1], warned[1:]
    assert "of SKU A-2, the same picture as " in warned[2], warned[1:]
    assert "of SKU A-3; one photo given for 3 products" in warned[2], warned[1:]


# -- a whole SKU: skuforge ingest --withdraw-sku ------------------------------------------------------


def _oat_drink(root: Path, sku_id: str) -> Path:
    """A SKU folder of two photos under ``root/skus``."""
    folder = root / "skus" / sku_id.lower()
    folder.mkdir(parents=True)
    for name in ("Aubergine_Iconic.jpg", "Aubergine_002.jpg"):
        shutil.copy(SAMPLE_SKUS / "GROCERY-AUBERGINE-001" / name, folder / name)
    (folder / "metadata.json").write_text(
        json.dumps({"sku_id": sku_id, "name": "Oat drink", "category": "carton"})
    )
    return folder


def _stored_row(manifests: ManifestStore, sku_id: str, item_id: str, **fields: Any) -> ManifestRow:
    """A row of the retraining store whose image object exists."""
    source = fields.pop("source", "real")
    image = f"images/{sku_id}/{source}/{item_id}.png"
    manifests.store.put_bytes(manifests.key(image), b"png", "image/png")
    return ManifestRow(
        item_id=item_id, sku_id=sku_id, category="carton", source=source, image=image, **fields
    )


def test_withdraw_sku_takes_every_photo_of_a_sku_out_and_ingesting_its_folder_reinstates_them(
    tmp_path: Path, publisher: type[_Publisher]
) -> None:
    # There was no way to take a whole SKU out (a changed sku_id's old id, a delisted product): only
    # the photos missing from a folder given could be withdrawn.
    folder = _oat_drink(tmp_path, "A-1")
    store = FileStore(tmp_path / "store")
    settings = isolated_settings("localhost:1", store.base_uri)
    trainstore = load_settings(TrainstoreSettings, trainstore_prefix=PREFIX)
    ingest_path(folder.parent, settings, store=store, trainstore=trainstore)
    ((first_id, first),) = publisher.published
    photo_ids = sorted(photo.photo_id for photo in first.photos)
    manifests = ManifestStore(store, PREFIX)
    references = [_stored_row(manifests, "A-1", photo_id, status="reference") for photo_id in photo_ids]
    generated = _stored_row(
        manifests,
        "A-1",
        "gen-1",
        source="synthetic",
        status="accepted",
        reference_photo_id=photo_ids[0],
    )
    manifests.append("A-1", [*references, generated])
    other = _stored_row(manifests, "B-1", "b0", status="reference")
    manifests.append("B-1", [other])

    told: list[str] = []
    withdrawn = withdraw_skus(["A-1"], settings, store=store, tell=told.append, trainstore=trainstore)

    assert withdrawn == {"A-1": photo_ids}
    rows = manifests.read_sku("A-1")
    assert {item_id: row.status for item_id, row in rows.items()} == dict.fromkeys(
        [*photo_ids, "gen-1"], "withdrawn"
    )
    assert list(store.list_keys(f"{PREFIX}/images/A-1/")) == []
    assert list(store.list_keys("incoming/A-1/")) == []
    # The markers the trainstore stage and the console's sweep read, as --withdraw-missing writes them.
    assert Withdrawals(manifests).by_sku() == {"A-1": set(photo_ids)}
    assert manifests.read_sku("B-1") == {"b0": other} and store.exists(manifests.key(str(other.image)))
    assert told == [
        f"SKU A-1: withdrew 2 photo(s) ({', '.join(photo_ids)}) and 1 image(s) generated from them "
        "from the retraining store; ingest its folder again to reinstate them"
    ]
    # Run again: nothing left, nothing rewritten.
    assert withdraw_skus(["A-1"], settings, store=store, tell=told.append, trainstore=trainstore) == {}
    assert "SKU A-1: nothing left to withdraw" in told[-1]

    # Ingesting its folder again reinstates its photos, under an event id of their own.
    ingest_path(folder.parent, settings, store=store, tell=told.append, trainstore=trainstore)
    back_id, _ = publisher.published[-1]
    assert back_id != first_id and "SKU A-1: reinstated 2 withdrawn photo(s)" in told[-1]
    assert Withdrawals(manifests).photo_ids("A-1") == set()
    assert all(store.exists(f"incoming/A-1/{photo_id}.png") for photo_id in photo_ids)


def test_withdraw_sku_refuses_an_id_the_store_does_not_hold_and_withdraws_nothing(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    settings = isolated_settings("localhost:1", store.base_uri)
    trainstore = load_settings(TrainstoreSettings, trainstore_prefix=PREFIX)
    manifests = ManifestStore(store, PREFIX)
    manifests.append("B-1", [_stored_row(manifests, "B-1", "b0", status="reference")])

    with pytest.raises(ingest.IngestError, match=r"the store holds no SKU A-9, b-1 \(") as refused:
        withdraw_skus(["B-1", "A-9", "b-1"], settings, store=store, trainstore=trainstore)
    assert "nothing was withdrawn" in str(refused.value)
    assert Withdrawals(manifests).by_sku() == {}
    assert manifests.read_sku("B-1")["b0"].status == "reference"
    with pytest.raises(ingest.IngestError, match="not a SKU id: id contains a path separator"):
        withdraw_skus(["../B-1"], settings, store=store, trainstore=trainstore)


def test_the_cli_takes_withdraw_sku(
    tmp_path: Path,
    publisher: type[_Publisher],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = _oat_drink(tmp_path, "A-1")
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    assert cli_main(["ingest", str(folder)]) == 0
    capsys.readouterr()

    assert cli_main(["ingest", "--withdraw-sku", "A-9", "--withdraw-sku", "A-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skuforge ingest: nothing was withdrawn: the store holds no SKU A-9")
    assert err.count("\n") == 1
    assert cli_main(["ingest", "--withdraw-sku", "A-1"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["withdrawn_skus"] == 1 and "SKU A-1: withdrew 2 photo(s)" in err
    assert Withdrawals(ManifestStore(FileStore(tmp_path / "store"), "trainstore")).photo_ids("A-1")
    # Not with a folder: which SKUs a run withdraws would depend on how far its ingest got.
    with pytest.raises(SystemExit) as usage:
        cli_main(["ingest", "--withdraw-sku", "A-1", str(folder)])
    assert usage.value.code == 2 and "--withdraw-sku takes no folder" in capsys.readouterr().err


@pytest.mark.parametrize("stopped_by", ["store", "interrupt"])
def test_a_withdrawal_stopped_says_what_it_was_doing_not_publishing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stopped_by: str,
) -> None:
    # A --withdraw-sku cut short by the store or Ctrl-C read "nothing was published" or "SKUs published
    # before the interrupt stay published": it publishes nothing, and its user was left to guess.
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))

    def stopped(*args: Any, **kwargs: Any) -> None:
        if stopped_by == "store":
            raise ingest.StoreUnavailable(
                "store down; withdrawn: A-1; running the same command again finishes it"
            )
        raise KeyboardInterrupt

    monkeypatch.setattr(ingest, "withdraw_skus", stopped)
    status = cli_main(["ingest", "--withdraw-sku", "A-1", "--withdraw-sku", "A-2"])
    err = capsys.readouterr().err
    assert status == (1 if stopped_by == "store" else 130), err
    assert "publish" not in err and err.count("\n") == 1
    assert (
        "withdrawn: A-1" if stopped_by == "store" else "run the same command again to finish the withdrawal"
    ) in err


class _RefusesWithdrawals(FileStore):
    """A store that goes away when the withdrawal markers are written, after the photos went in."""

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> Any:
        if "/withdrawals/" in key:
            raise ingest.TransientError(f"S3 unreachable for {key}")
        return super().put_bytes(key, data, content_type)


def test_a_withdrawal_that_fails_after_every_publish_says_so_not_that_nothing_is_left(
    tmp_path: Path, publisher: type[_Publisher]
) -> None:
    # The store failing at --withdraw-missing's markers, after the last SKU went out, read "stopped
    # after publishing 1 of 1 SKUs (...); published: A-1; not published: . Run the same command again":
    # all published, nothing said of the withdrawal the rerun is for.
    folder = tmp_path / "skus" / "one"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps({"sku_id": "A-1", "name": "Oat", "category": "carton"}))
    shutil.copy(SAMPLE_SKUS / "GROCERY-AUBERGINE-001" / "Aubergine_Iconic.jpg", folder / "a.jpg")
    store = _RefusesWithdrawals(tmp_path / "store")
    settings = isolated_settings("localhost:1", store.base_uri)
    store.put_bytes("incoming/A-1/0123456789abcdef.png", b"an earlier photo", "image/png")
    with pytest.raises(ingest.IngestIncomplete) as stopped:
        ingest_path(folder.parent, settings, store=store, withdraw_missing=True)
    message = str(stopped.value)
    assert "published: A-1; not published: none" in message, message
    assert (
        "the withdrawal of SKU A-1's photos no longer in its folder did not finish (0123456789abcdef)"
        in message
    )
    assert "Run the same command again to finish" in message
    assert store.exists("incoming/A-1/0123456789abcdef.png"), "left for the rerun to find"
