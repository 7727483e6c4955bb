"""Each producer's objects, paired with another SKU's event, are refused by the trainstore as
``other_sku_object``: the check knows a SKU's objects by the folder a stage writes them in, and a
producer whose folder was renamed (or a new one) left the check without a word, the trainstore then
storing another SKU's render under the event's SKU, one image with two labels.

The producers run for real (the generator's composite backend, matting and the captioner on a random
U2-NetP, the console's edited mask, ingest's upload), for a SKU other than the trainstore event's; and
each of the trainstore's reads asks the check (a sku.captioned's photos and masks, a reviewer's mask).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from schemas.common import ImageRef, SkuMetadata
from schemas.envelope import derive_id
from schemas.events import GateAccepted, ImageGenerated, ImageMatted, SkuCaptioned
from schemas.topics import CORRECTION_RESOLVED, GATE_ACCEPTED, IMAGE_GENERATED, SKU_CAPTIONED, SKU_INGESTED
from services.captioner.config import CaptionerSettings
from services.captioner.stage import CaptionerModels
from services.captioner.stage import handle as caption
from services.console.decisions import store_edited_mask
from services.console.tasks import Task
from services.generator.stage import handle_batch as generate
from services.ingest.ingest import PreparedPhoto, PreparedSku, upload_sku
from services.matting.stage import handle_batch as mat
from shared import keys
from shared.bus import make_envelope
from shared.config import load_settings
from shared.errors import BadInput
from shared.generation.composite import CompositeBackend
from shared.generation.scenes import Scene, SceneLibrary
from shared.generation.settings import GenerationSettings
from shared.images import encode_png
from shared.matting.session import MaskOptions, U2NetPSession
from shared.observability import StageMetrics
from shared.runtime import Context
from shared.store import FileStore
from tests.support.captioning import captioned_sku, context, synthetic_sku
from tests.support.console import flagged_item
from tests.support.gate import captioned, matted_item, resolved
from tests.support.generation import InProcessGenerator
from tests.support.trainstore import trainstore_stage

EVENT_SKU = "SKU-001"  # the trainstore event's (tests.support.gate.matted_item's)


def _refusal(store: FileStore, tmp_path: Path, ref: ImageRef) -> BadInput:
    """The trainstore's refusal of SKU-001's accepted item whose image is ``ref``."""
    _, manifests, writer, ctx = trainstore_stage(tmp_path, compact_after_parts=16, store=store)
    item = matted_item(store, 1, 0)
    matted = item.model_copy(update={"generated": item.generated.model_copy(update={"image": ref})})
    event = make_envelope(
        GATE_ACCEPTED,
        GateAccepted(matted=matted, iou=1.0, checks=[]),
        event_id="a" * 32,
        sku_id=EVENT_SKU,
        trace_id="t" * 32,
        producer="gate",
    )
    with pytest.raises(BadInput) as refusal:
        writer.accepted(event, ctx)
    assert manifests.read_sku(EVENT_SKU) == {}
    return refusal.value


def _assert_refused(store: FileStore, tmp_path: Path, refs: list[ImageRef], sku_id: str) -> None:
    assert refs and sku_id != EVENT_SKU
    for ref in refs:
        refusal = _refusal(store, tmp_path, ref)
        assert refusal.reason == "other_sku_object", (ref.uri, refusal)
        assert f"image {ref.uri}: an object of SKU {sku_id}, not of the event's SKU" in refusal.detail


def test_the_generators_image_and_expected_mask_of_another_sku_are_refused(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    ctx = Context("generator", store, load_settings(), StageMetrics("generator"), logging.getLogger("t"))
    sku_captioned = captioned_sku(store, 7)
    event = make_envelope(
        SKU_CAPTIONED,
        sku_captioned,
        event_id=derive_id("t", "g"),
        sku_id=sku_captioned.sku.sku_id,
        trace_id="t",
        producer="t",
    )
    scenes = SceneLibrary([Scene("shelves/a.png", "shelves", np.full((96, 128, 3), 120, np.uint8))])
    generation = load_settings(GenerationSettings, generation_variants_per_sku=1, generation_size_px=96)
    [outputs] = generate(
        [event], ctx, generator=InProcessGenerator(CompositeBackend(scenes, 1.0)), generation=generation
    )
    assert isinstance(outputs, list)
    generated = [emit.payload for emit in outputs if isinstance(emit.payload, ImageGenerated)]
    refs = [ref for item in generated for ref in (item.image, item.expected_mask)]
    _assert_refused(store, tmp_path, refs, sku_captioned.sku.sku_id)


def test_mattings_predicted_mask_and_cutout_of_another_sku_are_refused(
    random_u2netp_onnx: Path, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "store")
    ctx = Context("matting", store, load_settings(), StageMetrics("matting"), logging.getLogger("t"))
    generated = matted_item(store, 2, 0).generated
    event = make_envelope(
        IMAGE_GENERATED,
        generated,
        event_id=derive_id("t", "m"),
        sku_id=generated.sku.sku_id,
        trace_id="t",
        producer="t",
    )
    session = U2NetPSession(random_u2netp_onnx, threads=1, use_gpu=False, mask=MaskOptions(cleanup=False))
    [outputs] = mat([event], ctx, session=session, roi_margin=0.25)
    assert isinstance(outputs, list) and isinstance(outputs[0].payload, ImageMatted)
    matted = outputs[0].payload
    _assert_refused(store, tmp_path, [matted.predicted_mask, matted.cutout], generated.sku.sku_id)


def test_the_captioners_reference_mask_of_another_sku_is_refused(
    random_u2netp_onnx: Path, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri)
    ingested = synthetic_sku(store, 0, seed=3, photos=1, size_px=128)
    event = make_envelope(
        SKU_INGESTED,
        ingested,
        event_id=derive_id("t", "c"),
        sku_id=ingested.sku.sku_id,
        trace_id="t",
        producer="t",
    )
    session = U2NetPSession(random_u2netp_onnx, threads=1, use_gpu=False, mask=MaskOptions(cleanup=False))
    models = CaptionerModels(session=session, vlm=None, options=load_settings(CaptionerSettings))
    (emit,) = caption(event, context(store, settings), models=models)
    assert isinstance(emit.payload, SkuCaptioned)
    masks = [photo.mask for photo in emit.payload.photos if photo.mask is not None]
    _assert_refused(store, tmp_path, masks, ingested.sku.sku_id)


def test_the_consoles_corrected_mask_of_another_sku_is_refused(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    pending = flagged_item(store, 0, sku_id="SKU-00009")
    task = Task(
        task_id="task-1",
        sku_id="SKU-00009",
        item_id=pending.matted.generated.item_id,
        trace_id="t",
        iou=pending.iou,
        reasons=pending.reasons,
        pending=pending,
        state="claimed",
        received_at=0.0,
        claimed_by="alice",
        claimed_at=0.0,
        lease_expires_at=None,
        decision=None,
        decided_by=None,
        decided_at=None,
    )
    corrected = store_edited_mask(store, task, np.full((96, 96), 255, np.uint8))
    _assert_refused(store, tmp_path, [corrected], "SKU-00009")


def test_ingests_photo_and_its_transparency_of_another_sku_are_refused(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    png = encode_png(np.full((96, 96, 3), 200, np.uint8))
    mask_png = encode_png(np.full((96, 96), 255, np.uint8))
    photo = PreparedPhoto(
        photo_id="0123456789abcdef",
        original_filename="cut-out.png",
        png=png,
        file=tmp_path / "cut-out.png",
        width=96,
        height=96,
        mask_png=mask_png,
    )
    sku = SkuMetadata(sku_id="SKU-777", name="Product", category="soda can")
    ingested = upload_sku(PreparedSku(tmp_path, sku, [photo]), store)
    (stored,) = ingested.photos
    assert stored.mask is not None
    _assert_refused(store, tmp_path, [stored.image, stored.mask], "SKU-777")


def _moved(store: FileStore, ref: ImageRef, key: str) -> ImageRef:
    """``ref``'s bytes stored again under ``key``."""
    store.put_bytes(key, store.get_bytes(ref.uri), "image/png")
    return ref.model_copy(update={"uri": store.uri_for(key)})


@pytest.mark.parametrize("where", ["usable photo", "its mask", "maskless reference photo"])
def test_a_captioned_photo_or_mask_of_another_sku_is_refused(tmp_path: Path, where: str) -> None:
    # Each of the trainstore's reads of a sku.captioned asks the check, not only a generated item's.
    store, manifests, writer, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    event = captioned(store, 1, photos=1)
    photo, blurry = event.photos
    mask = photo.mask
    assert mask is not None
    if where == "usable photo":
        photo = photo.model_copy(
            update={"image": _moved(store, photo.image, keys.photo_key("SKU-002", "p0"))}
        )
    elif where == "its mask":
        moved = _moved(store, mask, keys.reference_mask_key("SKU-002", "p0"))
        photo = photo.model_copy(update={"mask": moved})
    else:
        image = _moved(store, photo.image, keys.photo_key("SKU-002", "p0"))
        photo = photo.model_copy(
            update={"image": image, "usable": False, "unusable_reason": "mask_full_frame"}
        )
    envelope = make_envelope(
        SKU_CAPTIONED,
        event.model_copy(update={"photos": [photo, blurry]}),
        event_id="c" * 32,
        sku_id=EVENT_SKU,
        trace_id="t" * 32,
        producer="captioner",
    )
    with pytest.raises(BadInput) as refusal:
        writer.captioned(envelope, ctx)
    assert refusal.value.reason == "other_sku_object"
    assert "an object of SKU SKU-002, not of the event's SKU SKU-001" in refusal.value.detail
    assert manifests.read_sku(EVENT_SKU) == {}


def test_a_reviewers_final_mask_of_another_sku_is_refused(tmp_path: Path) -> None:
    store, manifests, writer, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    item = matted_item(store, 1, 0)
    final_mask = _moved(
        store, item.predicted_mask, keys.corrected_mask_key("SKU-002", item.generated.item_id)
    )
    envelope = make_envelope(
        CORRECTION_RESOLVED,
        resolved(store, item, "approve_edited", final_mask=final_mask),
        event_id="e" * 32,
        sku_id=EVENT_SKU,
        trace_id="t" * 32,
        producer="console",
    )
    with pytest.raises(BadInput) as refusal:
        writer.resolved(envelope, ctx)
    assert refusal.value.reason == "other_sku_object"
    assert f"final mask {final_mask.uri}: an object of SKU SKU-002" in refusal.value.detail
    assert manifests.read_sku(EVENT_SKU) == {}


def test_an_object_directly_in_a_flow_folder_is_refused_as_of_no_sku(tmp_path: Path) -> None:
    # generated/x.png was refused as "an object of SKU x.png": its name read as a SKU id.
    store = FileStore(tmp_path / "store")
    item = matted_item(store, 1, 0)
    refusal = _refusal(store, tmp_path, _moved(store, item.generated.image, "generated/x.png"))
    assert refusal.reason == "other_sku_object"
    assert "SKU x.png" not in refusal.detail
    assert "generated/x.png is directly in the flow's folder generated/, with no SKU folder" in refusal.detail
    assert "not an object of the event's SKU SKU-001" in refusal.detail
