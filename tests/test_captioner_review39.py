"""The captioner on a matting model that cannot mat a SKU's photos together but can mat each alone."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from schemas.events import SkuCaptioned
from services.captioner.config import CaptionerSettings
from services.captioner.stage import CaptionerModels, handle
from shared.config import load_settings
from shared.matting.session import U2NetPSession
from shared.store import FileStore
from tests.support.bus import ingested_envelope
from tests.support.captioning import context, photos_sku
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
