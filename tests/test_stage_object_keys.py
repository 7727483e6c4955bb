"""An object an event already names is never replaced: a stage that runs an input again with other
results (a redeployed model or threshold, a replay from the DLQ, a re-render) writes beside it."""

from __future__ import annotations

import logging
from pathlib import Path

from schemas.envelope import derive_id
from schemas.events import ImageMatted, SkuCaptioned
from schemas.topics import IMAGE_GENERATED, SKU_INGESTED
from services.captioner.config import CaptionerSettings
from services.captioner.stage import CaptionerModels, handle
from services.matting.stage import handle_batch
from shared.bus import make_envelope
from shared.config import load_settings
from shared.matting.session import MaskOptions, U2NetPSession
from shared.observability import StageMetrics
from shared.runtime import Context, Emit
from shared.store import FileStore
from tests.support.captioning import context, synthetic_sku
from tests.support.gate import matted_item


def test_a_second_matting_of_an_item_leaves_the_first_events_objects(
    random_u2netp_onnx: Path, tmp_path: Path
) -> None:
    # Before, the predicted mask and the cut-out lived at masks/predicted/<sku>/<item>.png: a second
    # run with other pixels replaced them, and the first image.matted (queued for the gate, or
    # waiting for a person in the console) failed as checksum_mismatch, its bytes gone for good.
    store = FileStore(tmp_path / "store")
    ctx = Context(
        "matting",
        store,
        load_settings(store_uri=store.base_uri),
        StageMetrics("matting"),
        logging.getLogger("t"),
    )
    payload = matted_item(store, 1, 0).generated  # a rendered product photo and its mask, stored
    event = make_envelope(
        IMAGE_GENERATED,
        payload,
        event_id=derive_id("t", "1"),
        sku_id=payload.sku.sku_id,
        trace_id="t",
        producer="t",
    )
    outputs: list[ImageMatted] = []
    for threshold in (0.3, 0.7):  # the same model redeployed with another threshold
        session = U2NetPSession(
            random_u2netp_onnx, threads=1, use_gpu=False, mask=MaskOptions(threshold=threshold, cleanup=False)
        )
        (result,) = handle_batch([event], ctx, session=session, roi_margin=0.25)
        assert isinstance(result, list) and isinstance(result[0], Emit)
        assert isinstance(result[0].payload, ImageMatted)
        outputs.append(result[0].payload)
    first, second = outputs
    assert first.predicted_mask.sha256 != second.predicted_mask.sha256  # the runs did differ
    for matted in outputs:  # each event's objects are still there, as it names them
        store.read_verified(matted.predicted_mask)
        store.read_verified(matted.cutout)


def test_a_second_captioning_of_a_sku_leaves_the_first_events_masks(
    random_u2netp_onnx: Path, tmp_path: Path
) -> None:
    # Before, a reference mask lived at masks/reference/<sku>/<photo>.png: a replayed sku.ingested
    # captioned with another model replaced it under the sku.captioned already sent, which the
    # generator, the gate and the trainstore all read.
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri)
    payload = synthetic_sku(store, 0, seed=3, photos=1, size_px=128)
    event = make_envelope(
        SKU_INGESTED,
        payload,
        event_id=derive_id("t", "sku"),
        sku_id=payload.sku.sku_id,
        trace_id="t",
        producer="t",
    )
    outputs: list[SkuCaptioned] = []
    for threshold in (0.3, 0.6):
        session = U2NetPSession(
            random_u2netp_onnx, threads=1, use_gpu=False, mask=MaskOptions(threshold=threshold, cleanup=False)
        )
        models = CaptionerModels(session=session, vlm=None, options=load_settings(CaptionerSettings))
        (emit,) = handle(event, context(store, settings), models=models)
        assert isinstance(emit.payload, SkuCaptioned)
        outputs.append(emit.payload)
    masks = [photo.mask for captioned in outputs for photo in captioned.photos if photo.mask is not None]
    assert len(masks) == 2 and masks[0].sha256 != masks[1].sha256
    for ref in masks:
        store.read_verified(ref)
