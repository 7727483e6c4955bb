"""Review 46 of the matting stage and tools.

``skuforge matting quantize`` calibrated every model at 320 x 320, one photo a call, in float32: a model
the stage serves (docs/matting.md, Serving) exported at a fixed non-square size or with a fixed batch
ended, after the renderer photos were made, in ONNX Runtime's "Got invalid dimensions" traceback, and a
float16 export in "Unexpected input data type". The calibration now feeds the model its own input size
and batch, and a float16 model is refused in a line before any work (int8 is made from float32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from services.matting import cli
from shared.matting.session import U2NetSession
from tests.support.cli import refusal_of


def _one_conv_model(path: Path, shape: list[int | str], element: int = TensorProto.FLOAT) -> Path:
    """A 1x1 convolution and a sigmoid taking ``shape`` (N x 3 x H x W) of ``element``, one map out."""
    dtype = np.float16 if element == TensorProto.FLOAT16 else np.float32
    weights = numpy_helper.from_array(np.array([0.8, -0.5, 0.3], dtype).reshape(1, 3, 1, 1), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["d0"]),
        ],
        "one_conv",
        [helper.make_tensor_value_info("input", element, shape)],
        [helper.make_tensor_value_info("d0", element, [shape[0], 1, shape[2], shape[3]])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    "shape", [["batch", 3, 192, 256], [2, 3, 320, 320]], ids=["fixed-non-square", "fixed-batch-of-two"]
)
def test_quantize_calibrates_a_model_at_its_own_input_size_and_batch(
    shape: list[int | str], tmp_path: Path
) -> None:
    from shared.matting.quantize import quantize_u2net

    fp32 = _one_conv_model(tmp_path / "fp32.onnx", shape)
    int8 = quantize_u2net(fp32, tmp_path / "int8.onnx", calibration_images=3, real_images=0)

    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    session = U2NetSession(int8, threads=1, use_gpu=False)
    (result,) = session.predict([Image.new("RGB", (40, 30), (200, 40, 40))])
    assert result.mask.shape == (30, 40)


def test_quantize_refuses_a_float16_model_in_a_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fp16 = _one_conv_model(tmp_path / "fp16.onnx", ["batch", 3, 320, 320], TensorProto.FLOAT16)
    out = tmp_path / "int8.onnx"

    refusal = refusal_of(cli.main, ["quantize", str(fp16), "--out", str(out), "--heldout", "2"], capsys)

    assert f"{fp16}" in refusal
    assert "float16" in refusal and "float32" in refusal
    assert not out.exists()


# --- weights of the other architecture ----------------------------------------------------------------

COMMITTED_WEIGHTS = Path(__file__).resolve().parents[1] / "shared/matting/models/u2netp-skuforge.pth"


def test_export_of_u2netp_weights_as_u2net_says_which_architecture_they_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: 571 shape mismatches listed 20 at a time, and not a word of u2netp.
    out = tmp_path / "m.onnx"

    refusal = refusal_of(
        cli.main, ["export", str(COMMITTED_WEIGHTS), "--model", "u2net", "--out", str(out)], capsys
    )

    first_line = refusal.strip().splitlines()[-1]
    assert "state dict does not fit U2NET: they are U2NETP weights (model 'u2netp')" in first_line, first_line
    assert not out.exists()


def test_weights_that_fit_neither_architecture_get_no_architecture_advice() -> None:
    import torch

    from shared.matting.u2net import build_model, load_reference_state_dict

    with pytest.raises(ValueError, match="missing keys") as refused:
        load_reference_state_dict(build_model("u2net"), {"a": torch.zeros(3)})
    assert "they are" not in str(refused.value)


def test_quantize_refuses_a_model_already_quantised_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: quantised again, its candidate had two nodes of one name, and the held-out eval that
    # followed ended in a MattingModelError traceback ("This is an invalid model").
    from shared.matting.quantize import quantize_u2net

    fp32 = _one_conv_model(tmp_path / "fp32.onnx", ["batch", 3, 320, 320])
    int8 = quantize_u2net(fp32, tmp_path / "int8.onnx", calibration_images=1, real_images=0)
    out = tmp_path / "int8-again.onnx"

    refusal = refusal_of(cli.main, ["quantize", str(int8), "--out", str(out), "--heldout", "2"], capsys)

    assert f"{int8} is already quantised" in refusal, refusal
    assert not out.exists() and not list(tmp_path.glob("*.candidate.onnx"))


# --- the names SKUFORGE_MATTING_MODEL takes ---------------------------------------------------------


def test_the_names_a_refusal_offers_are_names_that_open_a_model(tmp_path: Path) -> None:
    # Before: "model 'u2net-custom' needs its file: SKUFORGE_MATTING_MODEL takes a registered name
    # (u2netp, u2netp-int8, u2netp-official, u2net-custom), ...": the name refused, offered as the fix.
    from shared.matting.session import MattingModelError, MattingModelMissing, open_session

    with pytest.raises(MattingModelError, match="needs its file") as custom:
        open_session("u2net-custom", threads=1, use_gpu=False, store=None, uri_from="SKUFORGE_MATTING_MODEL")
    with pytest.raises(MattingModelMissing) as missing:
        open_session(
            str(tmp_path / "gone.onnx"),
            threads=1,
            use_gpu=False,
            store=None,
            uri_from="SKUFORGE_MATTING_MODEL",
        )
    for refusal in (str(custom.value), str(missing.value)):
        assert "(u2netp, u2netp-int8, u2netp-official)" in refusal, refusal
        assert "u2net-custom," not in refusal and "u2net-custom)" not in refusal, refusal
    assert "give the model file's path or URI" in str(custom.value)
