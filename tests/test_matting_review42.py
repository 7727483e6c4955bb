"""The matting session on models that load and run but do not give what a U2-Net gives."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.matting.stage import handle_batch
from shared.config import load_settings
from shared.errors import BadInput, TransientError
from shared.matting.session import MattingModelError, U2NetSession, open_session
from shared.observability import StageMetrics
from shared.runtime import Context
from shared.store import FileStore
from tests.support.matting import batch_folding_onnx_bytes, generated_event, stand_in_onnx_bytes

log = logging.getLogger("test")


def test_a_model_whose_output_is_not_a_map_per_image_says_so_at_start(tmp_path: Path) -> None:
    """An output of N x 102400 (a map flattened by the export) stopped the stage with numpy's "axis 2
    is out of bounds for array of dimension 2", which named neither the output nor what it should be."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.array([0.8, -0.5, 0.3], np.float32).reshape(1, 3, 1, 1), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["map"]), helper.make_node("Flatten", ["map"], ["d0"])],
        "flattened",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 320, 320])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, ["batch", 320 * 320])],
        initializer=[weights],
    )
    path = tmp_path / "flattened.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    session = open_session(str(path), threads=1, use_gpu=False, store=None, uri_from=None)
    with pytest.raises(MattingModelError, match=r"output 'd0' is \(1, 102400\).*N x 1 x H x W"):
        session.warm_up()


def test_a_stopping_stage_gives_up_the_chunks_it_has_not_started(tmp_path: Path) -> None:
    """A poll's 16 images at the 40 MP limit are two chunks of about 31 s each on 2 CPU cores
    (bench/results/matting_memory.json): the stop finished both, past the 60 s a stage's pod gets
    before it is killed, and a poll raised for GPU batches took several times that. Once stopping, a
    chunk not started is given up, uncommitted, as the generator gives up its waves: the next run or
    the partition's next owner mats it."""
    store = FileStore(tmp_path / "store")
    ctx = Context("matting", store, load_settings(store_uri=store.base_uri), StageMetrics("matting"), log)
    session = U2NetSession(stand_in_onnx_bytes(), threads=1, use_gpu=False, max_batch=1)
    image = store.put_image("generated/grey.png", Image.new("RGB", (64, 48), (90, 120, 150)))
    events = [generated_event(image, index) for index in range(2)]
    ctx._stop.set()  # what Stage.stop() sets: SIGTERM came while this poll's batch was in hand

    with pytest.raises(TransientError, match="stopping"):
        handle_batch(events, ctx, session=session)

    assert not list(store.list_keys("masks/")), "a chunk was matted after the stop"


def test_a_chunk_the_model_cannot_mat_together_is_matted_one_image_a_call_and_counted(tmp_path: Path) -> None:
    """A model that folded or fixed its batch failed every chunk of several images: the stage's whole
    batch failed, and the runtime ran it again an event at a time, every image read from the store and
    decoded again, while skuforge_model_batch_failures_total{stage="matting"}, which the ops page says
    counts such calls, stayed 0."""
    store = FileStore(tmp_path / "store")
    metrics = StageMetrics("matting")
    ctx = Context("matting", store, load_settings(store_uri=store.base_uri), metrics, log)
    session = U2NetSession(batch_folding_onnx_bytes(), threads=1, use_gpu=False, max_batch=4)
    events = []
    for index in range(4):
        image = store.put_image(f"generated/{index}.png", Image.new("RGB", (64, 48), (60 * index, 0, 0)))
        events.append(generated_event(image, index))

    results = handle_batch(events, ctx, session=session)

    assert [len(result) for result in results if not isinstance(result, BadInput)] == [1, 1, 1, 1]
    assert (
        metrics.registry.get_sample_value(
            "skuforge_model_batch_failures_total", {"stage": "matting", "model": "matting"}
        )
        == 1
    )
