"""The captioner on a matting or BLIP model that cannot run a SKU's photos together but can run each alone."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from schemas.events import SkuCaptioned
from services.captioner.config import CaptionerSettings
from services.captioner.stage import MATTING_MODEL_LABEL, CaptionerModels, handle
from shared import runtime
from shared.captioning.vlm import VlmCaptioner, VlmModelError
from shared.config import load_settings
from shared.matting.session import U2NetPSession
from shared.store import FileStore
from tests.support.bus import ingested_envelope
from tests.support.captioning import context, photos_sku, tiny_blip_dir
from tests.support.matting import batch_folding_onnx_bytes, stand_in_onnx_bytes


def _red_box_on_green(shift_px: int) -> Image.Image:
    """A photo the stand-in model mats: its red box scores high, the green backdrop low."""
    image = Image.new("RGB", (128, 96), (0, 200, 0))
    image.paste((200, 10 * shift_px, 0), (32 + shift_px, 16, 96, 80))
    return image


def test_a_sku_whose_photos_the_model_cannot_mat_together_is_captioned_from_each_alone(
    tmp_path: Path,
) -> None:
    """A batch-folding export (one map per call) mats one photo a call as the stand-in does. Before, the
    SKU's four photos, matted in one call, failed it with a MattingModelError: retried, then
    dead-lettered as handler_error, though the matting stage mats each image of such a model alone."""
    store = FileStore(tmp_path / "store")
    ctx = context(store, load_settings(store_uri=store.base_uri))
    event = ingested_envelope(photos_sku(store, "SKU-1", {f"p{i}": _red_box_on_green(i) for i in range(4)}))

    def captioned(onnx: bytes) -> SkuCaptioned:
        session = U2NetPSession(onnx, threads=1, use_gpu=False)
        session.warm_up()
        options = load_settings(CaptionerSettings, captioner_use_gpu=False)
        [emit] = handle(event, ctx, models=CaptionerModels(session=session, vlm=None, options=options))
        assert isinstance(emit.payload, SkuCaptioned)
        return emit.payload

    alone = captioned(stand_in_onnx_bytes())
    folded = captioned(batch_folding_onnx_bytes())

    assert [photo.usable for photo in alone.photos] == [True] * 4
    assert folded.photos == alone.photos


def _batch_folding(captioner: VlmCaptioner) -> VlmCaptioner:
    """``captioner`` with its model's ``generate`` folding the batch to its first sentence, as an export
    that fixed its batch to one would: one image a call it captions as before."""
    generate = captioner.model.generate

    def first_only(**inputs: Any) -> Any:
        return generate(**inputs)[:1]

    captioner.model.generate = first_only
    return captioner


@pytest.mark.slow
def test_a_blip_model_giving_fewer_sentences_than_images_is_a_clear_error(tmp_path: Path) -> None:
    """``describe`` of three images returned one sentence, and a caller zipping them with its images
    lost two (``zip``) or failed in ``next`` with a bare StopIteration (the captioner)."""
    captioner = _batch_folding(VlmCaptioner(tiny_blip_dir(tmp_path / "blip"), threads=1, max_new_tokens=4))
    images = [Image.new("RGB", (40, 40), colour) for colour in ("red", "green", "blue")]

    with pytest.raises(VlmModelError, match="returned 1 sentences for 3 images"):
        captioner.describe(images)
    assert len(captioner.describe(images[:1])) == 1


@pytest.mark.slow
def test_a_sku_whose_photos_blip_cannot_describe_together_is_described_one_photo_a_call(
    tmp_path: Path,
) -> None:
    """Before, the SKU of three photos failed in ``_sentences`` with a bare StopIteration: retried, then
    dead-lettered as ``handler_error: StopIteration: `` (a detail naming nothing), though the model
    describes each photo alone."""
    store = FileStore(tmp_path / "store")
    ctx = context(store, load_settings(store_uri=store.base_uri))
    event = ingested_envelope(photos_sku(store, "SKU-1", {f"p{i}": _red_box_on_green(i) for i in range(3)}))
    blip = tiny_blip_dir(tmp_path / "blip")
    session = U2NetPSession(stand_in_onnx_bytes(), threads=1, use_gpu=False)
    session.warm_up()
    options = load_settings(CaptionerSettings, captioner_use_gpu=False)

    def captioned(vlm: VlmCaptioner) -> SkuCaptioned:
        [emit] = handle(event, ctx, models=CaptionerModels(session=session, vlm=vlm, options=options))
        assert isinstance(emit.payload, SkuCaptioned)
        return emit.payload

    honest = captioned(VlmCaptioner(blip, threads=1, max_new_tokens=4))
    folded = captioned(_batch_folding(VlmCaptioner(blip, threads=1, max_new_tokens=4)))

    assert [photo.usable for photo in honest.photos] == [True] * 3
    assert folded.photos == honest.photos


def test_skus_a_model_cannot_run_together_are_warned_of_once_a_minute_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, every SKU of such a model logged a warning of its own (a flood: the model fails on every
    SKU of several photos), and no metric counted them, as the runtime counts its failed batches."""
    store = FileStore(tmp_path / "store")
    ctx = context(store, load_settings(store_uri=store.base_uri))
    ctx.metrics.declare_model(MATTING_MODEL_LABEL)
    session = U2NetPSession(batch_folding_onnx_bytes(), threads=1, use_gpu=False)
    session.warm_up()
    models = CaptionerModels(
        session=session, vlm=None, options=load_settings(CaptionerSettings, captioner_use_gpu=False)
    )
    clock = [1000.0]
    monkeypatch.setattr(runtime, "time", SimpleNamespace(monotonic=lambda: clock[0]))

    with caplog.at_level(logging.WARNING, logger=ctx.log.name):
        for index, step_s in enumerate((0, 30, 31)):
            clock[0] += step_s
            # Four: ONNX Runtime on the CPU runs fewer one image a call, which such a model mats.
            photos = {f"p{i}": _red_box_on_green(i) for i in range(4)}
            handle(ingested_envelope(photos_sku(store, f"SKU-{index}", photos)), ctx, models=models)

    warnings = [r for r in caplog.records if "inputs together" in r.getMessage()]
    said = [(w.__dict__["batch_size"], w.__dict__["failed_calls_since_last_warning"]) for w in warnings]
    assert said == [(4, 1), (4, 2)]
    failed = ctx.metrics.registry.get_sample_value(
        "skuforge_model_batch_failures_total", {"stage": ctx.metrics.stage, "model": MATTING_MODEL_LABEL}
    )
    assert failed == 3
