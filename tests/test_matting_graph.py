"""The concat-splitting graph rewrite: same outputs, no wide concat left."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from shared.matting.graph import activation_shapes, split_wide_concats


def conv_concat_conv(*, second_consumer: bool = False, group: int = 1) -> onnx.ModelProto:
    """X -> (Conv a: 3 ch, Conv b: 5 ch) -> Concat -> Conv (3x3, bias) -> Y; optionally Concat -> Z too."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["X", "Wa"], ["A"], name="conv_a"),
        helper.make_node("Conv", ["X", "Wb"], ["B"], name="conv_b"),
        helper.make_node("Concat", ["A", "B"], ["AB"], name="concat", axis=1),
        helper.make_node(
            "Conv",
            ["AB", "Wc", "bc"],
            ["Y"],
            name="conv_c",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            group=group,
        ),
    ]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 6, "h", "w"])]
    if second_consumer:
        nodes.append(helper.make_node("Relu", ["AB"], ["Z"], name="relu"))
        outputs.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["batch", 8, "h", "w"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4, "h", "w"])],
        outputs,
        [
            weight("Wa", 3, 4, 1, 1),
            weight("Wb", 5, 4, 1, 1),
            weight("Wc", 6, 8 // group, 3, 3),
            weight("bc", 6),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(session.run(None, {"X": x}))


def test_a_wide_concat_feeding_a_conv_becomes_two_convs_with_the_same_output() -> None:
    model = conv_concat_conv()
    x = np.random.default_rng(1).standard_normal((2, 4, 16, 16)).astype(np.float32)
    before = run(model, x)
    assert split_wide_concats(model, size_px=16) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = [node.op_type for node in model.graph.node]
    assert "Concat" not in ops and ops.count("Conv") == 4 and ops.count("Add") == 1
    assert {init.name for init in model.graph.initializer} == {
        "Wa",
        "Wb",
        "bc",
        "conv_c/split0/W",
        "conv_c/split1/W",
    }
    (after,) = run(model, x)
    # Two convs and an add sum in another order than one conv: 1.3e-5 apart on an AMD EPYC, under 1e-5
    # on the machines CI ran on before; a split taking the wrong input channels is off by far more.
    np.testing.assert_allclose(after, before[0], atol=1e-4)


@pytest.mark.parametrize("kind", ["second consumer", "grouped conv"])
def test_other_concats_are_left_alone(kind: str) -> None:
    model = conv_concat_conv(
        second_consumer=kind == "second consumer", group=2 if kind == "grouped conv" else 1
    )
    assert split_wide_concats(model, size_px=16) == 0
    assert "Concat" in [node.op_type for node in model.graph.node]


def test_small_concats_are_left_alone() -> None:
    # The concat (8 channels) is not half the size of a 20-channel activation.
    model = conv_concat_conv()
    model.graph.node.append(helper.make_node("Conv", ["X", "Wd"], ["D"], name="conv_d"))
    model.graph.initializer.append(numpy_helper.from_array(np.ones((20, 4, 1, 1), np.float32), "Wd"))
    model.graph.output.append(helper.make_tensor_value_info("D", TensorProto.FLOAT, ["batch", 20, "h", "w"]))
    assert activation_shapes(model, 16)["D"] == (1, 20, 16, 16)
    assert split_wide_concats(model, size_px=16) == 0


def test_exported_u2netp_concats_are_no_longer_its_largest_activations(random_u2netp_onnx: Path) -> None:
    # Before the rewrite, the top decoder's concat (128 channels at 320x320) was twice the size
    # of any other activation.
    model = onnx.load(str(random_u2netp_onnx))
    shapes = activation_shapes(model)
    size = {name: int(np.prod(shape)) for name, shape in shapes.items()}
    concats = [
        size[node.output[0]]
        for node in model.graph.node
        if node.op_type == "Concat" and node.output[0] in size
    ]
    assert concats and max(concats) <= 0.5 * max(size.values())
    assert any(node.name.endswith("/split1") for node in model.graph.node)


def test_a_graph_of_unnamed_nodes_is_rewritten_node_by_node() -> None:
    # Node names are optional in ONNX: keyed by name, every unnamed node was taken for the conv
    # (replaced by its split) or the concat (dropped), and the graph no longer ran.
    model = conv_concat_conv()
    for node in model.graph.node:
        node.name = ""
    x = np.random.default_rng(1).standard_normal((2, 4, 16, 16)).astype(np.float32)
    before = run(model, x)
    assert split_wide_concats(model, size_px=16) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Conv") == 4 and ops.count("Add") == 1 and "Concat" not in ops
    np.testing.assert_allclose(run(model, x)[0], before[0], atol=1e-4)


def test_a_concat_the_graph_outputs_is_left_alone() -> None:
    # Its only consumer node is the conv, but the graph returns it too: dropping it lost an output.
    model = conv_concat_conv()
    model.graph.output.append(helper.make_tensor_value_info("AB", TensorProto.FLOAT, ["batch", 8, "h", "w"]))
    assert split_wide_concats(model, size_px=16) == 0
    onnx.checker.check_model(model, full_check=True)
    assert "Concat" in [node.op_type for node in model.graph.node]


def test_a_concat_of_the_graph_input_is_left_alone() -> None:
    # The graph input X has no node, so the probe did not measure its channels: a KeyError, not a
    # rewrite or a refusal to rewrite.
    model = conv_concat_conv()
    model.graph.node[2].input[1] = "X"  # concat(A: 3 channels, X: 4 channels)
    weights = np.random.default_rng(2).standard_normal((6, 7, 3, 3)).astype(np.float32)
    model.graph.initializer[2].CopyFrom(numpy_helper.from_array(weights, "Wc"))
    del model.graph.node[1]  # conv_b, now unused
    x = np.random.default_rng(1).standard_normal((2, 4, 16, 16)).astype(np.float32)
    before = run(model, x)
    assert split_wide_concats(model, size_px=16) == 0
    np.testing.assert_array_equal(run(model, x)[0], before[0])


def test_an_omitted_optional_output_is_no_activation() -> None:
    # Dropout's mask output left out (""): exposing it as a graph output failed the probe session.
    model = conv_concat_conv()
    model.graph.node.append(helper.make_node("Dropout", ["Y"], ["Yd", ""], name="dropout"))
    model.graph.output[0].name = "Yd"
    shapes = activation_shapes(model, 16)
    assert shapes["Yd"] == (1, 6, 16, 16) and "" not in shapes
    assert split_wide_concats(model, size_px=16) == 1
