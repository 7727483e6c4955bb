"""The captioner on what a restart gives a dashboard: its model call metrics from the first call."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.captioner.config import CaptionerSettings
from services.captioner.stage import CaptionerModels, build_stage
from shared.captioning.vlm import VlmCaptioner
from shared.config import load_settings
from shared.matting.session import U2NetPSession
from tests.support.captioning import tiny_blip_dir
from tests.support.matting import stand_in_onnx_bytes


@pytest.mark.parametrize("backend", ["attributes", "vlm"])
def test_the_captioner_model_metrics_start_at_zero(tmp_path: Path, backend: str) -> None:
    """The matting and BLIP call latency and batch size were born at the first call after a restart, a
    count born at 1, whose first call rate() and increase() do not see; the matting stage's start at 0.
    Without BLIP there is no ``vlm`` series: a model that never runs is not shown as idle."""
    session = U2NetPSession(stand_in_onnx_bytes(), threads=1, use_gpu=False)
    vlm = VlmCaptioner(tiny_blip_dir(tmp_path / "blip")) if backend == "vlm" else None
    models = CaptionerModels(session=session, vlm=vlm, options=load_settings(CaptionerSettings))
    stage = build_stage(models=models, settings=load_settings(store_uri=f"file://{tmp_path / 'store'}"))

    registry = stage.metrics.registry
    for model, born in (("matting", 0.0), ("vlm", 0.0 if vlm else None)):
        labels = {"stage": stage.name, "model": model}
        assert registry.get_sample_value("skuforge_model_seconds_count", labels) == born, model
        assert registry.get_sample_value("skuforge_model_batch_size_count", labels) == born, model
