"""The matting session on models that load and run but do not give what a U2-Net gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.matting.session import MattingModelError, open_session


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
