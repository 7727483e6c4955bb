"""Learnt int8 ranges (``shared/matting/ranges.py``): the PyTorch simulation must round the very tensors
ONNX Runtime's QDQ quantiser rounds, start from the ranges its calibration finds, and its learnt ranges
must land in the int8 model on the tensors they were learnt for. A seeded random U2-NetP, tiny
calibration sets; no dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from shared.matting.quantize import calibration_photos, quantize_u2net
from shared.matting.ranges import (
    RangesMismatch,
    RangeTuning,
    apply_ranges,
    learn_ranges,
    read_ranges,
    simulate_int8,
    tensor_keys,
)
from shared.matting.u2net import U2NETP, export_onnx
from skuforge_cli.main import main as cli_main

pytestmark = pytest.mark.slow


def _scales_by_key(model: onnx.ModelProto) -> dict[str, tuple[float, int]]:
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    keys = tensor_keys(model)
    return {
        keys[node.input[0]]: (float(initializers[node.input[1]]), int(initializers[node.input[2]]))
        for node in model.graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] in keys
    }


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A seeded random U2-NetP as a .pth (reference key layout) and as the ONNX export makes it."""
    folder = tmp_path_factory.mktemp("ranges")
    torch.manual_seed(3)
    model = U2NETP().eval()
    torch.save(model.state_dict(), folder / "random.pth")
    return folder / "random.pth", export_onnx(model, folder / "random.onnx")


def test_the_simulation_rounds_and_calibrates_what_onnxruntime_quantises(
    random_model: tuple[Path, Path], tmp_path: Path
) -> None:
    pth, fp32 = random_model
    quantised = onnx.load(str(quantize_u2net(fp32, tmp_path / "int8.onnx", calibration_images=2)))
    model = U2NETP().eval()
    model.load_state_dict(torch.load(pth))
    simulation = simulate_int8(model)
    simulation.calibrate(calibration_photos(2, 4242, [], 0))
    ranges = simulation.ranges()
    onnxruntime = _scales_by_key(quantised)

    # Every range names a quantised tensor, but the one concat the memory rewrite turned into two
    # convolutions (shared/matting/graph.py); ONNX Runtime's other keys are Resize / MaxPool outputs,
    # which share their input's scale, and the two halves of that rewrite.
    missing = [key for key in ranges if key not in onnxruntime]
    assert len(missing) == 1 and missing[0].startswith("cat(")
    extra = {key.split("(")[0].split(":")[0] for key in onnxruntime if key not in ranges}
    assert extra == {"pool", "resize", "other"}
    for key, (lo, hi) in ranges.items():
        if key in onnxruntime:
            scale, zero = onnxruntime[key]
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            assert (hi - lo) / 255 == pytest.approx(scale, rel=0.02), key
            assert abs(round(-lo / ((hi - lo) / 255)) - zero) <= 2, key
    assert len(ranges) - 1 > 150  # input, 119 convolutions, concats, adds, sigmoids


def test_learnt_ranges_replace_the_calibrated_ones_in_the_int8_model(
    random_model: tuple[Path, Path], tmp_path: Path
) -> None:
    pth, fp32 = random_model
    photos = [photo.resize((64, 64)) for photo in calibration_photos(3, 7, [], 0)]
    tuning = RangeTuning(steps=3, batch=2, size_px=64, learning_rate=0.05)
    document = learn_ranges(pth, photos, photos, tuning)
    learnt = {key: (lo, hi) for key, (lo, hi) in document["ranges"].items()}
    assert learnt != {key: tuple(bounds) for key, bounds in document["calibrated_ranges"].items()}
    (tmp_path / "ranges.json").write_text(json.dumps(document))
    assert read_ranges(tmp_path / "ranges.json") == learnt

    int8 = quantize_u2net(fp32, tmp_path / "int8.onnx", calibration_images=2, ranges=learnt)
    written = _scales_by_key(onnx.load(str(int8)))
    for key, (lo, hi) in learnt.items():
        if key in written:
            scale = (max(hi, 0.0) - min(lo, 0.0)) / 255
            assert written[key][0] == pytest.approx(scale, rel=1e-6), key
            assert written[key][1] == round(-min(lo, 0.0) / written[key][0]), key
    # Each bias keeps its value, now at input scale x weight scale (within one step of it).
    before, after = _biases(tmp_path / "calibrated.onnx", fp32), _biases(int8, None)
    assert before.keys() == after.keys() and len(after) == 119  # the split's second half has none
    for name, (value, step) in after.items():
        assert np.abs(value - before[name][0]).max() <= step.max() / 2 + 1e-12, name
    # Every convolution still runs as one QLinearConv when the ranges move by more than onnxruntime
    # tolerates between a bias's scale and input scale x weight scale (about 1%): with the biases left
    # at the calibrated scales it fused 9 of the default model's 120, which ran slower than fp32.
    wider = {key: (lo * 1.3, hi * 1.3) for key, (lo, hi) in learnt.items()}
    moved = quantize_u2net(fp32, tmp_path / "wider.onnx", calibration_images=2, ranges=wider)
    assert _fused_convolutions(moved, tmp_path) == 120


def _biases(int8: Path, fp32: Path | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each convolution's dequantised bias and its scale, of ``int8`` (made from ``fp32`` first,
    calibrated, when given)."""
    if fp32 is not None:
        quantize_u2net(fp32, int8, calibration_images=2)
    model = onnx.load(str(int8))
    arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producer = {output: node for node in model.graph.node for output in node.output}
    out = {}
    for conv in model.graph.node:
        if conv.op_type == "Conv" and len(conv.input) > 2 and conv.input[2] in producer:
            dequantise = producer[conv.input[2]]
            scale = arrays[dequantise.input[1]].astype(np.float64)
            out[conv.name] = (arrays[dequantise.input[0]].astype(np.float64) * scale, scale)
    return out


def _fused_convolutions(model: Path, tmp_path: Path) -> int:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"optimised-{model.name}")
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return sum(
        node.op_type == "QLinearConv" for node in onnx.load(options.optimized_model_filepath).graph.node
    )


def test_ranges_of_another_network_other_weights_or_part_of_one_are_refused(
    random_model: tuple[Path, Path], tmp_path: Path
) -> None:
    pth, fp32 = random_model
    quantised = onnx.load(str(quantize_u2net(fp32, tmp_path / "int8.onnx", calibration_images=1)))
    with pytest.raises(RangesMismatch, match="do not fit this model"):
        apply_ranges(quantised, {"relu:stage9.rebnconvin.relu_s1": (0.0, 1.0), "input": (-1.0, 1.0)})
    # One range of a file: the other tensors kept their calibrated ranges, silently.
    with pytest.raises(RangesMismatch, match="a partial ranges file"):
        apply_ranges(quantised, {"input": (-3.0, 3.0)})
    # The same network with other weights: every key fits; the calibrated ranges tell them apart.
    model = U2NETP().eval()
    model.load_state_dict(torch.load(pth))
    simulation = simulate_int8(model)
    simulation.calibrate(calibration_photos(1, 4242, [], 0))
    torch.manual_seed(99)
    other = U2NETP().eval()
    other_int8 = quantize_u2net(
        export_onnx(other, tmp_path / "other.onnx"), tmp_path / "o8.onnx", calibration_images=1
    )
    with pytest.raises(RangesMismatch, match="learnt for other weights"):
        apply_ranges(onnx.load(str(other_int8)), simulation.ranges(), calibrated=simulation.ranges())
    assert apply_ranges(quantised, simulation.ranges(), calibrated=simulation.ranges()) > 150
    for bounds in ([0.5, 0.1], [0.0, 1e-44]):  # upside down; so narrow its scale is 0
        (tmp_path / "bad.json").write_text(json.dumps({"ranges": {"input": bounds}}))
        with pytest.raises(RangesMismatch, match="lo <= 0 <= hi"):
            read_ranges(tmp_path / "bad.json")


def test_tune_ranges_then_quantize_with_them_from_the_command_line(
    random_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pth, fp32 = random_model
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(photos / f"p{index}.png")
    ranges = tmp_path / "ranges.json"
    args = ["matting", "tune-ranges", str(pth), "--photos", str(photos), "--out", str(ranges)]
    assert cli_main([*args, "--steps", "2", "--batch", "2", "--calibration", "1", "--real", "0"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["tensors"] > 150

    # Written into a folder that does not exist yet (was a traceback after the learning), never over
    # the weights it was learnt for.
    nested = tmp_path / "new" / "folder" / "ranges.json"
    assert (
        cli_main(
            [
                *args[:-2],
                "--out",
                str(nested),
                "--steps",
                "1",
                "--batch",
                "1",
                "--calibration",
                "1",
                "--real",
                "0",
            ]
        )
        == 0
    )
    assert read_ranges(nested) == read_ranges(nested)
    with pytest.raises(SystemExit) as over_weights:
        cli_main([*args[:-2], "--out", str(pth)])
    assert over_weights.value.code == 2 and "is the weights file" in capsys.readouterr().err

    quantize = ["matting", "quantize", str(fp32), "--out", str(tmp_path / "int8.onnx"), "--heldout", "2"]
    assert cli_main([*quantize, "--calibration", "1", "--ranges", str(ranges)]) in (0, 1)
    (tmp_path / "not-ranges.json").write_text("[1, 2]")
    with pytest.raises(SystemExit) as refused:
        cli_main([*quantize, "--ranges", str(tmp_path / "not-ranges.json")])
    assert refused.value.code == 2
    assert "is not a ranges file" in capsys.readouterr().err
