"""Review 45 of the matting tools and library.

An empty path option (``--out "$OUT"`` with OUT unset) was read as Path(""), the current folder:
``skuforge matting pairs --out ""`` wrote its images/ and masks/ where the user stood, ``eval ""`` looked
for a model there. Each path option of ``skuforge matting``, ``bench.matting_real``,
``bench.matting_memory`` and ``shared.captioning.fit_shape`` now refuses it as the other commands do
(``path_argument``): exit 2, naming the option, before any work.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from shared.matting.graph import activation_shapes, split_wide_concats
from tests.support.cli import refusal_of

# (module, argv with "" where the path goes, the option argparse names)
EMPTY_PATHS = [
    ("services.matting.cli", ["train", "--extra", ""], "--extra"),
    ("services.matting.cli", ["train", "--init", ""], "--init"),
    ("services.matting.cli", ["train", "--out", ""], "--out"),
    ("services.matting.cli", ["train", "--checkpoint", ""], "--checkpoint"),
    ("services.matting.cli", ["pairs", "--out", ""], "--out"),
    ("services.matting.cli", ["official", "--out", ""], "--out"),
    ("services.matting.cli", ["official", "--pth", ""], "--pth"),
    ("services.matting.cli", ["real-pairs", "--dataset", "d", "--held-out", ""], "--held-out"),
    ("services.matting.cli", ["real-pairs", "--dataset", "d", "--out", ""], "--out"),
    ("services.matting.cli", ["eval", ""], "model_path"),
    ("services.matting.cli", ["export", "", "--out", "m.onnx"], "weights"),
    ("services.matting.cli", ["export", "w.pth", "--pth", "", "--out", "m.onnx"], "--pth"),
    ("services.matting.cli", ["export", "w.pth", "--out", ""], "--out"),
    ("services.matting.cli", ["quantize", ""], "model_path"),
    ("services.matting.cli", ["quantize", "m.onnx", "--out", ""], "--out"),
    ("services.matting.cli", ["quantize", "m.onnx", "--ranges", ""], "--ranges"),
    ("services.matting.cli", ["quantize", "m.onnx", "--calibration-photos", ""], "--calibration-photos"),
    ("services.matting.cli", ["tune-ranges", "", "--out", "r.json", "--photos", "p"], "weights"),
    ("services.matting.cli", ["tune-ranges", "w.pth", "--out", "", "--photos", "p"], "--out"),
    ("services.matting.cli", ["tune-ranges", "w.pth", "--out", "r.json", "--photos", ""], "--photos"),
    (
        "services.matting.cli",
        ["tune-ranges", "w.pth", "--out", "r.json", "--photos", "p", "--calibration-photos", ""],
        "--calibration-photos",
    ),
    ("bench.matting_real", ["--dataset", "d", "--sheet", ""], "--sheet"),
    ("bench.matting_real", ["--dataset", "d", "--out", ""], "--out"),
    ("bench.matting_memory", ["--before", ""], "--before"),
    ("bench.matting_memory", ["--out", ""], "--out"),
    ("shared.captioning.fit_shape", ["--out", ""], "--out"),
]


@pytest.mark.parametrize(("module", "argv", "option"), EMPTY_PATHS, ids=lambda value: str(value))
def test_an_empty_path_is_refused_naming_its_option(
    module: str,
    argv: list[str],
    option: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Run in an empty folder: read as ".", `pairs --out ""` rendered 900 pairs into the folder it ran in.
    monkeypatch.chdir(tmp_path)
    refusal = refusal_of(importlib.import_module(module).main, argv, capsys)
    assert f"argument {option}: the path is empty (an unset shell variable?)" in refusal
    assert not any(tmp_path.iterdir()), "it wrote into the folder it ran in"


# --- shared/matting/graph.py ---------------------------------------------------------------------


def _graph(nodes: list[onnx.NodeProto], inputs: dict[str, list[int | str]], output: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_activation_probe_names_the_inputs_of_a_graph_with_more_than_one() -> None:
    # It fed the first input only, and ONNX Runtime's "Required inputs (['mask']) are missing from feed"
    # did not say that the probe (and the concat split) takes one image input.
    model = _graph(
        [helper.make_node("Mul", ["image", "mask"], ["masked"])],
        {"image": ["batch", 3, "h", "w"], "mask": ["batch", 1, "h", "w"]},
        "masked",
    )
    with pytest.raises(ValueError, match=r"2 inputs \(image, mask\); .* one image input"):
        activation_shapes(model, size_px=8)
    with pytest.raises(ValueError, match="2 inputs"):
        split_wide_concats(model, size_px=8)


def test_the_activation_probe_says_an_input_that_is_no_image_batch_is_not_one() -> None:
    model = _graph([helper.make_node("Relu", ["x"], ["y"])], {"x": ["batch", 4]}, "y")
    with pytest.raises(ValueError, match=r"input x is declared \['batch', 4\].*N x C x H x W"):
        activation_shapes(model, size_px=8)


def test_a_graph_with_no_activation_has_no_concat_to_split() -> None:
    # Its only node a Constant, the probe measured nothing, and max() of nothing was a bare ValueError
    # ("max() iterable argument is empty") from a pass that had nothing to do.
    constant = numpy_helper.from_array(np.zeros((1, 1, 2, 2), np.float32), "value")
    model = _graph(
        [helper.make_node("Constant", [], ["y"], value=constant)], {"x": ["batch", 3, "h", "w"]}, "y"
    )
    assert split_wide_concats(model, size_px=8) == 0
    assert [node.op_type for node in model.graph.node] == ["Constant"]
