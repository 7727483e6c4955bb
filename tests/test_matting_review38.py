"""The matting session and stage on what a model or a restart may give them: finite maps whose span a
float32 cannot hold, and the model metrics a dashboard reads from the first call."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from schemas.events import ImageMatted
from services.matting.config import MattingSettings
from services.matting.stage import MattingMetrics, build_stage, handle_batch, open_matting_session
from shared.config import load_settings
from shared.errors import BadInput
from shared.matting.session import MattingModelError, U2NetPSession, U2NetSession, normalise_min_max
from shared.observability import StageMetrics
from shared.runtime import Context
from shared.store import FileStore
from tests.support.matting import (
    batch_folding_onnx_bytes,
    generated_event,
    nan_where_red_onnx_bytes,
    stand_in_onnx_bytes,
)


def test_a_finite_map_wider_than_a_float32_is_normalised_not_made_nan() -> None:
    """Max minus min of a map from -3e38 to 3e38 overflowed to inf, and inf / inf made its brightest
    pixel NaN: the most confident product pixel was background, never reported as not finite."""
    maps = np.array([[[-3e38, 0.0], [1.5e38, 3e38]]], dtype=np.float32)
    normalised = normalise_min_max(maps)
    assert np.isfinite(normalised).all()
    assert np.allclose(normalised, [[[0.0, 0.5], [0.75, 1.0]]])


def test_a_model_whose_finite_outputs_span_past_float32_mats_its_product(tmp_path: Path) -> None:
    """The model's maps were finite, so nothing refused them, and the product's half of the mask came
    out empty: the gate then flagged the item as an empty mask, the model's answer lost."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # The normalised red channel times 1e38: about 2.2e38 where white, -2.1e38 where black.
    red = numpy_helper.from_array(np.array([1e38, 0.0, 0.0], np.float32).reshape(1, 3, 1, 1), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["d0"])],
        "huge-red",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 320, 320])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, ["batch", 1, 320, 320])],
        initializer=[red],
    )
    path = tmp_path / "huge-red.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    session = U2NetSession(path, threads=1, use_gpu=False)
    session.warm_up()
    image = Image.new("RGB", (64, 64), "black")
    image.paste((255, 255, 255), (32, 0, 64, 64))

    (result,) = session.predict([image])

    assert result.mask[:, 40:].all() and not result.mask[:, :24].any()
    assert result.foreground_fraction > 0.4 and result.mean_confidence > 0.9


def test_the_matting_model_metrics_start_at_zero(tmp_path: Path) -> None:
    """The stage's model call latency and batch size were born at its first call after a restart, a
    count born at 1, whose first call rate() and increase() do not see; the generator's start at 0."""
    session = U2NetPSession(stand_in_onnx_bytes(), threads=1, use_gpu=False)
    settings = load_settings(store_uri=f"file://{tmp_path / 'store'}")
    stage = build_stage(matting=MattingSettings(), session=session, settings=settings)

    labels = {"stage": stage.name, "model": "matting"}
    registry = stage.metrics.registry
    assert registry.get_sample_value("skuforge_model_seconds_count", labels) == 0.0
    assert registry.get_sample_value("skuforge_model_batch_size_count", labels) == 0.0


def test_an_empty_mask_is_no_confidence_figure(tmp_path: Path) -> None:
    """``skuforge_matting_mean_confidence`` is the mean over the mask's pixels; an empty mask, which has
    none, was observed as 0.0, so a model that found nothing more often read as a model less sure of
    what it found (its emptiness is ``skuforge_matting_foreground_fraction``'s to show)."""
    store, ctx = _matting_context(tmp_path)
    session = U2NetPSession(stand_in_onnx_bytes(), threads=1, use_gpu=False)
    image = store.put_image("generated/black.png", Image.new("RGB", (64, 48), "black"))
    event = generated_event(image)
    registry = CollectorRegistry()

    (outputs,) = handle_batch([event], ctx, session=session, metrics=MattingMetrics(registry))
    for action in ctx._take_actions(event):  # what the runtime runs once the input is committed
        action()

    assert not isinstance(outputs, BadInput)
    matted = outputs[0].payload
    assert isinstance(matted, ImageMatted) and matted.foreground_fraction == 0.0
    assert registry.get_sample_value("skuforge_matting_foreground_fraction_count") == 1.0
    assert registry.get_sample_value("skuforge_matting_mean_confidence_count") == 0.0


def test_a_model_whose_fixed_batch_fits_a_poll_is_not_said_to_be_cut_by_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file exported with a batch of 2 takes calls of 2 whatever SKUFORGE_MATTING_MAX_BATCH says; the
    start-up warning read the setting (64), not the session's batch, and told the operator that a poll
    of 16 cut the calls to 16 and to raise both settings, which would change nothing."""
    import onnx

    model = onnx.load_from_string(stand_in_onnx_bytes())
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    path = tmp_path / "fixed-batch-2.onnx"
    onnx.save(model, str(path))
    matting = load_settings(
        MattingSettings, matting_model=str(path), matting_use_gpu=False, matting_max_batch=64
    )

    session = open_matting_session(matting, load_settings(max_poll_records=16))

    assert session.max_batch == 2
    assert "more than a poll brings" not in caplog.text


def test_an_image_the_model_gives_nan_for_is_named_in_its_dead_letter(tmp_path: Path) -> None:
    """A read refusal names the image's URI (``naming``); ``model_output_not_finite`` named only the
    model, so an operator reading the letter had to decode its payload to learn which image it was."""
    store, ctx = _matting_context(tmp_path)
    session = U2NetPSession(nan_where_red_onnx_bytes(), threads=1, use_gpu=False)
    session.warm_up()
    image = store.put_image("generated/white.png", Image.new("RGB", (64, 48), "white"))
    event = generated_event(image)

    (refusal,) = handle_batch([event], ctx, session=session)

    assert isinstance(refusal, BadInput) and refusal.reason == "model_output_not_finite"
    assert refusal.detail.startswith(f"image {image.uri}: {session.model_id} gave NaN"), refusal.detail


def test_a_model_giving_fewer_maps_than_images_is_a_clear_error() -> None:
    """A model that folds the batch away passed its warm-up, and ``predict`` of four images returned
    one result: a caller zipping them with its images (``zip`` stops at the shorter) lost three."""
    session = U2NetPSession(batch_folding_onnx_bytes(), threads=1, use_gpu=False)
    session.warm_up()
    images = [Image.new("RGB", (64, 48), colour) for colour in ("white", "red", "green", "blue")]

    with pytest.raises(MattingModelError, match=r"\(1, 1, 320, 320\) for 4 images"):
        session.predict(images)
    assert not session.ready


def test_the_stage_mats_alone_what_a_batch_folding_model_cannot_mat_together(tmp_path: Path) -> None:
    """The stage's chunk failed in ``next`` (StopIteration, an error naming nothing); now the model's
    error fails the chunk's call, and the chunk is matted one image a call, which the model mats: no
    accepted image is dead-lettered for the model's fault."""
    store, ctx = _matting_context(tmp_path)
    session = U2NetPSession(batch_folding_onnx_bytes(), threads=1, use_gpu=False)
    events = []
    for index in range(4):
        image = store.put_image(f"generated/{index}.png", Image.new("RGB", (64, 48), (60 * index, 0, 0)))
        events.append(generated_event(image, index))

    results = handle_batch(events, ctx, session=session)

    assert len(results) == 4 and not any(isinstance(result, BadInput) for result in results)
    assert session.ready


def _matting_context(tmp_path: Path) -> tuple[FileStore, Context]:
    """A file store and the matting stage's context over it."""
    store = FileStore(tmp_path / "store")
    settings = load_settings(store_uri=store.base_uri)
    return store, Context("matting", store, settings, StageMetrics("matting"), logging.getLogger("t"))
