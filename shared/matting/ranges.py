"""Learnt int8 activation ranges for U2-Net, written into ONNX Runtime's QDQ model.

Static int8 gives every activation a uint8 range; ONNX Runtime's MinMax calibration takes it from the
largest and smallest value any calibration photo produced. For some weights a few outliers then cost
the other values their resolution: run 7's fine-tune lost 2.4 points of real-photo IoU in int8
(docs/matting.md), and neither more calibration photos, percentile calibration, nor keeping parts of
the network in fp32 brought them back. Quantisation-aware fine-tuning of the weights moved the fp32
model off its mix point instead.

So the weights stay as they are and only the ranges are learnt: a PyTorch copy of the network
(``simulate_int8``: torch.fx) rounds every tensor ONNX Runtime's QDQ quantiser rounds (the input,
each Conv(+BN)(+ReLU) output, Concat, Add, Sigmoid; Resize and MaxPool keep their input's range, as
ONNX Runtime gives them its scale; weights per output channel, symmetric int8), starting from the
MinMax ranges of the same calibration photos ``quantize_u2net`` uses. Each range's ends are learnt
through the rounding (straight-through, as LSQ, Esser et al. 2020) so that the simulated int8 output
matches the fp32 output on training photos: a distillation, so no mask is needed. A range whose
calibrated low end is 0 (ReLU and Sigmoid outputs) keeps it at 0. ``apply_ranges`` then writes the
learnt scales and zero points into the int8 model ``quantize_u2net`` made, matched by where each
tensor sits in the graph (``tensor keys``), not by name or order.
"""

from __future__ import annotations

import json
import logging
import operator
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
import torch.fx as fx
import torch.nn.functional as F
from onnx import numpy_helper
from PIL import Image
from torch import nn

from shared.matting.session import u2net_preprocess
from shared.store import sha256_hex

log = logging.getLogger("skuforge.matting.ranges")

Range = tuple[float, float]


class RangesMismatch(ValueError):
    """A ranges file that does not fit the model it is applied to; the message says how."""


class _LearntRange(nn.Module):
    """Fake-quantises a tensor to uint8 over [lo, hi]; min/max while calibrating, learnt after."""

    lo0: torch.Tensor
    hi0: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("lo0", torch.tensor(0.0))
        self.register_buffer("hi0", torch.tensor(0.0))
        # The ends as log-factors of the calibrated ones: a step of lr moves every range by a share.
        self.log_hi = nn.Parameter(torch.tensor(0.0))
        self.log_lo = nn.Parameter(torch.tensor(0.0))
        self.mode: Literal["calibrate", "quantise", "off"] = "calibrate"

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        hi = self.hi0 * torch.exp(self.log_hi)
        lo = self.lo0 * torch.exp(self.log_lo) if float(self.lo0) < 0 else torch.zeros_like(self.lo0)
        return lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "calibrate":
            with torch.no_grad():
                self.lo0.copy_(torch.minimum(self.lo0, x.min()))
                self.hi0.copy_(torch.maximum(self.hi0, x.max()))
            return x
        if self.mode == "off":
            return x
        lo, hi = self.bounds()
        scale = (hi - lo).clamp_min(1e-8) / 255.0
        zero = _round_through(-lo / scale).clamp(0, 255)
        levels = _round_through(x / scale + zero).clamp(0, 255)
        return (levels - zero) * scale


class _Int8WeightConv(nn.Module):
    """The wrapped convolution with its weight rounded per output channel (symmetric int8), as ONNX
    Runtime quantises the BatchNorm-folded weight: the rounding is the same up to the per-channel scale."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.rounded = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, weight = self.conv, self.conv.weight
        if self.rounded:
            scale = (weight.detach().abs().amax(dim=(1, 2, 3)) / 127.0).clamp_min(1e-12)
            zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
            weight = torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -127, 127)
        return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _round_through(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity backward."""
    return x + (x.round() - x).detach()


@dataclass
class Int8Simulation:
    """The traced network and, per distinct range, its module name and its tensor key."""

    graph: fx.GraphModule
    keys: dict[str, str]  # module name -> tensor key

    def set_mode(self, mode: Literal["calibrate", "quantise", "off"]) -> None:
        """``calibrate`` and ``off`` run the fp32 network (ONNX Runtime calibrates the fp32 graph)."""
        for module in self.graph.modules():
            if isinstance(module, _LearntRange):
                module.mode = mode
            elif isinstance(module, _Int8WeightConv):
                module.rounded = mode == "quantise"

    def calibrate(self, photos: Sequence[Image.Image], *, size_px: int = 320, batch: int = 8) -> None:
        """MinMax ranges over ``photos``, as ONNX Runtime's calibration takes them."""
        self.set_mode("calibrate")
        device = next(self.graph.parameters()).device
        with torch.no_grad():
            for start in range(0, len(photos), batch):
                chunk = u2net_preprocess(list(photos[start : start + batch]), size_px=size_px)
                self.graph(torch.from_numpy(chunk).to(device))

    def ranges(self) -> dict[str, Range]:
        out = {}
        for name, key in self.keys.items():
            module = self.graph.get_submodule(name)
            assert isinstance(module, _LearntRange)
            with torch.no_grad():
                lo, hi = module.bounds()
            out[key] = (float(lo), float(hi))
        return out

    def range_parameters(self) -> list[nn.Parameter]:
        return [
            parameter
            for module in self.graph.modules()
            if isinstance(module, _LearntRange)
            for parameter in (module.log_hi, module.log_lo)
        ]


def simulate_int8(model: nn.Module) -> Int8Simulation:
    """``model`` (a U2-Net) traced, with a learnt range after every tensor ONNX Runtime's QDQ
    quantiser rounds and int8 weights; its own parameters are left as they are (and frozen)."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    graph = fx.symbolic_trace(model)
    modules = dict(graph.named_modules())
    keys: dict[str, str] = {}
    inserted: set[fx.Node] = set()
    after: dict[str, fx.Node] = {}

    def add_range(node: fx.Node, shared_with: str | None = None) -> None:
        name = shared_with or f"int8_range_{len(keys)}"
        if shared_with is None:
            graph.add_submodule(name, _LearntRange())
            keys[name] = ""
            after[name] = node
        with graph.graph.inserting_after(node):
            rounded = graph.graph.call_module(name, (node,))
        node.replace_all_uses_with(rounded, delete_user_cb=lambda user: user is not rounded)
        inserted.add(rounded)

    for node in list(graph.graph.nodes):
        if node.op == "placeholder":
            add_range(node)
        elif node.op == "call_module":
            module = modules[str(node.target)]
            if isinstance(module, nn.ReLU):
                add_range(node)
            elif isinstance(module, nn.Conv2d) and not _feeds_batchnorm(node, modules):
                add_range(node)  # side and fusion convolutions: no BatchNorm + ReLU after them
        elif node.op == "call_function":
            if node.target in (torch.cat, operator.add, torch.sigmoid):
                add_range(node)
            elif node.target is F.interpolate:
                source = node.args[0]
                shared = str(source.target) if isinstance(source, fx.Node) and source in inserted else None
                add_range(node, shared_with=shared)
    for name, node in after.items():
        keys[name] = _node_key(node, modules)
    for name, module in list(graph.named_modules()):
        if isinstance(module, nn.Conv2d):
            parent, _, leaf = name.rpartition(".")
            (graph.get_submodule(parent) if parent else graph).register_module(leaf, _Int8WeightConv(module))
    graph.recompile()
    return Int8Simulation(graph, keys)


def _feeds_batchnorm(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    users = list(node.users)
    return (
        len(users) == 1
        and users[0].op == "call_module"
        and isinstance(modules.get(str(users[0].target)), nn.BatchNorm2d)
    )


def _node_key(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    """Where a tensor sits in the network, in terms both graphs share: module paths for convolutions
    (a ReLU's path names the Conv+BN+ReLU ONNX Runtime fuses), and the operation over its inputs'
    keys for the rest."""
    if node.op == "placeholder":
        return "input"
    if node.op == "call_module":
        module = modules.get(str(node.target))
        if module is None:  # an inserted range
            return _node_key(_arg(node, 0), modules)
        if isinstance(module, nn.ReLU):
            return f"relu:{node.target}"
        if isinstance(module, nn.Conv2d):
            return f"conv:{node.target}"
        if isinstance(module, nn.MaxPool2d):
            return f"pool({_node_key(_arg(node, 0), modules)})"
    if node.target is F.interpolate:
        return f"resize({_node_key(_arg(node, 0), modules)})"
    if node.target is torch.cat:
        parts = node.args[0]
        assert isinstance(parts, (list, tuple))
        return (
            "cat(" + ",".join(_node_key(part, modules) for part in parts if isinstance(part, fx.Node)) + ")"
        )
    if node.target is operator.add:
        return "add(" + ",".join(sorted(_node_key(_arg(node, i), modules) for i in range(2))) + ")"
    if node.target is torch.sigmoid:
        return f"sig({_node_key(_arg(node, 0), modules)})"
    raise ValueError(f"no tensor key for {node.op} {node.target}")


def _arg(node: fx.Node, index: int) -> fx.Node:
    arg = node.args[index]
    assert isinstance(arg, fx.Node)
    return arg


@dataclass(frozen=True)
class RangeTuning:
    """A range-learning run; written into the ranges file beside the ranges."""

    steps: int = 100
    learning_rate: float = 1e-2
    batch: int = 16
    loss: Literal["bce", "mse"] = "bce"
    seed: int = 63
    size_px: int = 320


def learn_ranges(
    weights: Path,
    calibration: Sequence[Image.Image],
    photos: Sequence[Image.Image],
    tuning: RangeTuning,
    *,
    device: str = "cpu",
) -> dict[str, Any]:
    """The ranges file's content: ``weights`` (a U2-NetP state dict) calibrated on ``calibration`` (the
    photos ``quantize_u2net`` calibrates on), then ``tuning.steps`` steps on ``photos``."""
    from shared.matting.u2net import build_model, load_reference_state_dict, read_weights

    torch.manual_seed(tuning.seed)
    rng = np.random.default_rng(tuning.seed)
    model = load_reference_state_dict(build_model("u2netp"), read_weights(weights)).eval()
    simulation = simulate_int8(model)
    simulation.graph.to(torch.device(device)).eval()
    simulation.calibrate(calibration, size_px=tuning.size_px)
    calibrated = simulation.ranges()
    optimiser = torch.optim.Adam(simulation.range_parameters(), lr=tuning.learning_rate)
    started, losses = time.monotonic(), []
    for step, inputs in enumerate(_photo_batches(photos, tuning, rng)):
        inputs = inputs.to(torch.device(device))
        simulation.set_mode("off")
        with torch.no_grad():
            teacher = simulation.graph(inputs)[0]
        simulation.set_mode("quantise")
        student = simulation.graph(inputs)[0]
        if tuning.loss == "bce":
            loss = F.binary_cross_entropy(student.clamp(1e-4, 1 - 1e-4), teacher)
        else:
            loss = F.mse_loss(student, teacher)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 25 == 0 or step + 1 == tuning.steps:
            log.info(
                "ranges step",
                extra={"step": step + 1, "loss": round(float(np.mean(losses[-25:])), 6)},
            )
    return {
        "what": "learnt int8 activation ranges (shared/matting/ranges.py): apply with "
        "skuforge matting quantize --ranges",
        "weights_sha256": sha256_hex(weights.read_bytes()),
        "tuning": asdict(tuning),
        "device": device,
        "seconds": round(time.monotonic() - started, 1),
        "loss_first_25": round(float(np.mean(losses[:25])), 6) if losses else None,
        "loss_last_25": round(float(np.mean(losses[-25:])), 6) if losses else None,
        "ranges": {key: list(bounds) for key, bounds in simulation.ranges().items()},
        "calibrated_ranges": {key: list(bounds) for key, bounds in calibrated.items()},
    }


def _photo_batches(
    photos: Sequence[Image.Image], tuning: RangeTuning, rng: np.random.Generator
) -> Iterator[torch.Tensor]:
    """Random batches, flipped half the time, with the contrast jitter training uses."""
    for _ in range(tuning.steps):
        picks = rng.choice(len(photos), size=min(tuning.batch, len(photos)), replace=False)
        chosen = [
            photos[i].transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else photos[i]
            for i in picks
        ]
        contrast = rng.uniform(0.8, 1.2, size=(len(chosen), 1, 1, 1)).astype(np.float32)
        yield torch.from_numpy(u2net_preprocess(chosen, size_px=tuning.size_px) * contrast)


# The narrowest range written: a float32 scale below this is noise, and divides by ~0.
MIN_SCALE = 1e-8


def read_ranges(path: Path, *, part: str = "ranges") -> dict[str, Range]:
    """The ``ranges`` (or, with ``part``, the ``calibrated_ranges`` they started from) of a ranges
    file; RangesMismatch says what is wrong with the file."""
    try:
        document = json.loads(path.read_text())
        ranges = document[part]
        out = {str(key): (float(lo), float(hi)) for key, (lo, hi) in ranges.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RangesMismatch(f"{path} is not a ranges file (skuforge matting tune-ranges): {exc}") from None
    bad = [
        key
        for key, (lo, hi) in out.items()
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= 0 <= hi)
        or (hi > lo and (hi - lo) / 255.0 < MIN_SCALE)
    ]
    if bad:
        raise RangesMismatch(
            f"{path}: a range must have lo <= 0 <= hi, finite, and be empty or wider than "
            f"{255 * MIN_SCALE:g}; not so for {bad[:3]}"
        )
    return out


def tensor_keys(model: onnx.ModelProto) -> dict[str, str]:
    """Quantised activation tensor -> its key, for a QDQ U2-Net made by ``quantize_u2net``."""
    producer = {output: node for node in model.graph.node for output in node.output}
    initializers = {init.name for init in model.graph.initializer}
    input_names = {value.name for value in model.graph.input} - initializers

    def key(tensor: str) -> str:
        if tensor in input_names:
            return "input"
        node = producer[tensor]
        if node.op_type in ("DequantizeLinear", "QuantizeLinear"):
            return key(node.input[0])
        if tensor.endswith("/Relu_output_0"):  # ONNX Runtime fused Conv+ReLU and kept ReLU's name
            return "relu:" + _module_path(tensor)
        if node.op_type == "Conv":
            return "conv:" + _module_path(tensor) if tensor.endswith("/Conv_output_0") else f"other:{tensor}"
        if node.op_type == "MaxPool":
            return f"pool({key(node.input[0])})"
        if node.op_type == "Resize":
            return f"resize({key(node.input[0])})"
        if node.op_type == "Concat":
            return "cat(" + ",".join(key(part) for part in node.input) + ")"
        if node.op_type == "Add":
            return "add(" + ",".join(sorted(key(part) for part in node.input)) + ")"
        if node.op_type == "Sigmoid":
            return f"sig({key(node.input[0])})"
        return f"other:{tensor}"

    return {
        node.input[0]: key(node.input[0])
        for node in model.graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers
    }


def _module_path(tensor: str) -> str:
    """``/stage1d/rebnconv1/relu_s1/Relu_output_0`` -> ``stage1d.rebnconv1.relu_s1``."""
    return ".".join(tensor.strip("/").split("/")[:-1])


def apply_ranges(
    model: onnx.ModelProto, ranges: Mapping[str, Range], *, calibrated: Mapping[str, Range] | None = None
) -> int:
    """Write ``ranges`` into ``model``'s activation scales and zero points, in place; returns how many
    quantised tensors took a learnt range. Only the two halves of a split concat's convolution
    (``shared/matting/graph.py``) keep their calibrated ranges. A RangesMismatch, not a silent
    half-apply: a range that finds no tensor (another network), a tensor without a range (a partial
    file), and, given the ``calibrated`` ranges the learnt ones started from, a model whose own
    calibrated ranges differ from them (the same network with other weights: every key fits, and the
    ranges would be another model's)."""
    initializers = {init.name: init for init in model.graph.initializer}
    keys = tensor_keys(model)
    by_key: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in keys:
            by_key.setdefault(keys[node.input[0]], []).append(node)
    # Resize and MaxPool quantise with their input's scale (the same initializers, so the same range);
    # a concat the memory rewrite turned into two convolutions has no tensor left.
    rewritten = sum(
        1 for node in model.graph.node if node.op_type == "Conv" and node.name.endswith("/split0")
    )
    unmatched = [key for key in ranges if key not in by_key]
    found = [key for key in ranges if key in by_key]
    dropped_concats = [key for key in unmatched if key.startswith("cat(")]
    if len(unmatched) > len(dropped_concats) or len(dropped_concats) > rewritten or not found:
        raise RangesMismatch(
            f"the ranges do not fit this model: {len(unmatched)} of {len(ranges)} name no tensor of it "
            f"(e.g. {unmatched[:2]}); learn them for this model with skuforge matting tune-ranges"
        )
    # Resize / MaxPool outputs share their input's scale; "other:" are the split's halves.
    uncovered = [
        key for key in by_key if key not in ranges and not key.startswith(("pool(", "resize(", "other:"))
    ]
    if uncovered:
        raise RangesMismatch(
            f"the ranges cover {len(ranges)} tensors; {len(uncovered)} quantised tensors of this model have "
            f"none (e.g. {uncovered[:2]}): a partial ranges file"
        )
    if calibrated is not None:
        _refuse_other_weights(by_key, initializers, calibrated)
    written = 0
    for key in found:
        lo, hi = min(ranges[key][0], 0.0), max(ranges[key][1], 0.0)
        if hi > lo:
            scale = np.float32((hi - lo) / 255.0)
            zero = np.uint8(np.clip(round(-lo / float(scale)), 0, 255))
        else:  # a tensor that is 0 everywhere: ONNX Runtime's choice for it
            scale, zero = np.float32(1.0), np.uint8(0)
        for node in by_key[key]:
            scale_name, zero_name = node.input[1], node.input[2]
            initializers[scale_name].CopyFrom(numpy_helper.from_array(np.array(scale), scale_name))
            initializers[zero_name].CopyFrom(numpy_helper.from_array(np.array(zero), zero_name))
            written += 1
    _requantise_biases(model, initializers)
    return written


def _refuse_other_weights(
    by_key: Mapping[str, list[onnx.NodeProto]],
    initializers: Mapping[str, onnx.TensorProto],
    calibrated: Mapping[str, Range],
) -> None:
    """RangesMismatch when the model's calibrated scales are not the ones the ranges started from.
    Calibrated on the same weights (even from other copies of the photos: JPEG on the device, PNG
    here) they agree within a few percent; a random network of the same shape was 100x off."""
    ratios = []
    for key, (lo, hi) in calibrated.items():
        nodes = by_key.get(key)
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if not nodes or hi <= lo:
            continue
        here = float(numpy_helper.to_array(initializers[nodes[0].input[1]]))
        ratios.append(here / ((hi - lo) / 255.0))
    off = [ratio for ratio in ratios if not 0.8 <= ratio <= 1.25]
    if ratios and len(off) > 0.1 * len(ratios):
        raise RangesMismatch(
            f"the ranges were learnt for other weights: {len(off)} of {len(ratios)} of this model's "
            f"calibrated ranges differ from the ones they started from by more than 25% (median ratio "
            f"{float(np.median(ratios)):.3g}); learn them for this model with skuforge matting tune-ranges"
        )


def _requantise_biases(model: onnx.ModelProto, initializers: Mapping[str, onnx.TensorProto]) -> None:
    """Give each convolution's int32 bias the scale input scale x weight scale again.

    The quantiser stores a bias at exactly that scale, and onnxruntime fuses DequantizeLinear + Conv +
    QuantizeLinear into one QLinearConv only when it still holds: with the input's range learnt and
    the bias left at the calibrated scale, 111 of the 120 convolutions ran in float between
    dequantise and quantise, 3.5 times slower than fp32's own int8 copy. The bias's value is kept
    (rounded to the new scale)."""
    producer = {output: node for node in model.graph.node for output in node.output}

    def dequantised(name: str) -> tuple[str, str] | None:
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
            return None
        return node.input[0], node.input[1]

    for conv in model.graph.node:
        if conv.op_type != "Conv" or len(conv.input) < 3:
            continue
        x_node = producer.get(conv.input[0])
        weight, bias = dequantised(conv.input[1]), dequantised(conv.input[2])
        if x_node is None or x_node.op_type != "DequantizeLinear" or weight is None or bias is None:
            continue
        x_scale = numpy_helper.to_array(initializers[x_node.input[1]]).astype(np.float32)
        w_scale = numpy_helper.to_array(initializers[weight[1]]).astype(np.float32)
        (b_name, b_scale_name), b_scale = bias, numpy_helper.to_array(initializers[bias[1]])
        new_scale = (x_scale * w_scale).astype(np.float32)
        if np.array_equal(new_scale, b_scale):
            continue
        value = numpy_helper.to_array(initializers[b_name]).astype(np.float64) * b_scale.astype(np.float64)
        limits = np.iinfo(np.int32)
        quantised = np.round(value / new_scale.astype(np.float64))
        if np.abs(quantised).max() > limits.max:
            # Clipped, the bias would silently be another: the input's range is far too narrow.
            raise RangesMismatch(
                f"the input range of {conv.name} is too narrow for its bias: re-quantised it overflows int32"
            )
        initializers[b_name].CopyFrom(numpy_helper.from_array(quantised.astype(np.int32), b_name))
        initializers[b_scale_name].CopyFrom(numpy_helper.from_array(new_scale, b_scale_name))
