"""What docs/matting.md says a served matting model must be, held to what the session opens: the doc
said an N x 3 x 320 x 320 input and `d0` first among the outputs; the session takes any fixed size and reads
the output named `d0` wherever it is, else the first."""

from __future__ import annotations

import re

import numpy as np

from shared.matting.session import U2NetSession
from tests.support.docs import ROOT

MATTING = (ROOT / "docs" / "matting.md").read_text(encoding="utf-8")


def _model(size_px: int, outputs: list[str]) -> bytes:
    """A 1x1 convolution at a fixed ``size_px`` square input, its map given under each name of
    ``outputs``, in that order."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.array([0.8, -0.5, 0.3], np.float32).reshape(1, 3, 1, 1), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["map"]),
            *(helper.make_node("Identity", ["map"], [name]) for name in outputs),
        ],
        "named-outputs",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size_px, size_px])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 1, size_px, size_px])
            for name in outputs
        ],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _served_model_sentence() -> str:
    (sentence,) = re.findall(r"Any ONNX file with .*?\.(?= [A-Z])", " ".join(MATTING.split()))
    return sentence


def test_the_doc_says_what_input_size_and_output_a_served_model_needs() -> None:
    at_256 = U2NetSession(_model(256, ["side", "d0"]), threads=1, use_gpu=False)
    unnamed = U2NetSession(_model(320, ["mask", "side"]), threads=1, use_gpu=False)
    at_256.warm_up()
    unnamed.warm_up()
    assert (at_256.input_size, at_256.output_name, unnamed.output_name) == ((256, 256), "d0", "mask")

    sentence = _served_model_sentence()
    assert "320\u00d7320" not in sentence  # 320x320, as the doc writes it, sentence
    assert "first among its outputs" not in sentence, sentence
    assert re.search(r"named `d0`.*the first", sentence), sentence
