"""U2-Net and U2-NetP (Qin et al. 2020, "U2-Net: Going Deeper with Nested U-Structure for Salient Object
Detection") in PyTorch, with ONNX export for the ONNX Runtime matting stage.

Module and attribute names follow the reference implementation (github.com/xuebinqin/U-2-Net,
``model/u2net.py``) so that the published ``u2net.pth`` / ``u2netp.pth`` state dicts load with
``strict=True`` and models trained here can be swapped with the upstream ones (and with rembg's
``u2net_custom`` sessions) without key remapping.

Both networks return seven sigmoid maps ``(d0, d1, ..., d6)``, each ``(B, 1, H, W)``: ``d0`` is the fused
mask used for inference, ``d1``..``d6`` are the side outputs used for deep supervision during training.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ONNX_INPUT_NAME",
    "ONNX_OUTPUT_NAMES",
    "REBNCONV",
    "RSU4",
    "RSU4F",
    "RSU5",
    "RSU6",
    "RSU7",
    "U2NET",
    "U2NETP",
    "ModelName",
    "U2NetOutputs",
    "build_model",
    "deep_supervision_loss",
    "export_onnx",
    "load_reference_state_dict",
]

ModelName = Literal["u2net", "u2netp"]
U2NetOutputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]

ONNX_INPUT_NAME = "input"
# Output 0 must be the fused map: rembg's sessions (and ours) take ``outputs[0]`` as the mask.
ONNX_OUTPUT_NAMES: tuple[str, ...] = tuple(f"d{i}" for i in range(7))

_DDP_PREFIX = "module."


def _upsample_like(src: Tensor, tar: Tensor) -> Tensor:
    """Bilinearly resize ``src`` to the spatial size of ``tar``.

    Resizing to the target's size rather than by a fixed factor is what makes inputs whose sides are not
    multiples of 32 work: ``ceil_mode`` pooling rounds odd sizes up, so "x2" would overshoot the skip.
    ``align_corners=False`` is what the reference's deprecated ``F.upsample(mode="bilinear")`` resolves to.
    """
    return F.interpolate(src, size=tar.shape[2:], mode="bilinear", align_corners=False)


class REBNCONV(nn.Module):
    """3x3 (dilated) convolution, batch norm, ReLU."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, dirate: int = 1) -> None:
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Apply conv, BN and ReLU."""
        out: Tensor = self.relu_s1(self.bn_s1(self.conv_s1(x)))
        return out


class _RSU(nn.Module):
    """Residual U-block RSU-L: a small U-Net of height L whose output is added to an input projection.

    Children are registered as ``rebnconvin``, ``rebnconv1``..``rebnconv{L}`` (the last one dilated by 2
    instead of pooled) and ``rebnconv{L-1}d``..``rebnconv1d``, the reference's names and order.
    """

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.height = height
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        for i in range(1, height):
            self.add_module(f"rebnconv{i}", REBNCONV(out_ch if i == 1 else mid_ch, mid_ch))
        self.add_module(f"rebnconv{height}", REBNCONV(mid_ch, mid_ch, dirate=2))
        for i in range(height - 1, 0, -1):
            self.add_module(f"rebnconv{i}d", REBNCONV(mid_ch * 2, out_ch if i == 1 else mid_ch))
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        """Encode with ``L-2`` poolings, decode with skip connections, add the residual."""
        hxin = self.rebnconvin(x)
        skips: list[Tensor] = []
        hx = hxin
        for i in range(1, self.height):
            if i > 1:
                hx = self.pool(hx)
            hx = self.get_submodule(f"rebnconv{i}")(hx)
            skips.append(hx)
        hx = self.get_submodule(f"rebnconv{self.height}")(hx)
        for i in range(self.height - 1, 0, -1):
            skip = skips[i - 1]
            if i < self.height - 1:
                hx = _upsample_like(hx, skip)
            hx = self.get_submodule(f"rebnconv{i}d")(torch.cat((hx, skip), 1))
        return hx + hxin


class RSU7(_RSU):
    """RSU block of height 7 (five poolings)."""

    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3) -> None:
        super().__init__(7, in_ch, mid_ch, out_ch)


class RSU6(_RSU):
    """RSU block of height 6 (four poolings)."""

    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3) -> None:
        super().__init__(6, in_ch, mid_ch, out_ch)


class RSU5(_RSU):
    """RSU block of height 5 (three poolings)."""

    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3) -> None:
        super().__init__(5, in_ch, mid_ch, out_ch)


class RSU4(_RSU):
    """RSU block of height 4 (two poolings)."""

    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3) -> None:
        super().__init__(4, in_ch, mid_ch, out_ch)


class RSU4F(nn.Module):
    """Dilated RSU-4: no pooling, dilations 1/2/4/8, for the low-resolution stages."""

    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3) -> None:
        super().__init__()
        self.rebnconvin = REBNCONV(in_ch, out_ch, dirate=1)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, dirate=1)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, dirate=2)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, dirate=4)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, dirate=8)
        self.rebnconv3d = REBNCONV(mid_ch * 2, mid_ch, dirate=4)
        self.rebnconv2d = REBNCONV(mid_ch * 2, mid_ch, dirate=2)
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch, dirate=1)

    def forward(self, x: Tensor) -> Tensor:
        """Dilated encoder/decoder at constant resolution, plus the residual."""
        hxin = self.rebnconvin(x)
        hx1 = self.rebnconv1(hxin)
        hx2 = self.rebnconv2(hx1)
        hx3 = self.rebnconv3(hx2)
        hx4 = self.rebnconv4(hx3)
        hx3d = self.rebnconv3d(torch.cat((hx4, hx3), 1))
        hx2d = self.rebnconv2d(torch.cat((hx3d, hx2), 1))
        hx1d = self.rebnconv1d(torch.cat((hx2d, hx1), 1))
        out: Tensor = hx1d + hxin
        return out


# (block, in_ch, mid_ch, out_ch) for stage1..stage6 then stage5d..stage1d, as in the reference.
_StageSpec = tuple[type[nn.Module], int, int, int]


class _U2NetBase(nn.Module):
    """Six encoder stages, five decoder stages, six side outputs and a 1x1 fusion conv."""

    def __init__(
        self,
        encoder: Sequence[_StageSpec],
        decoder: Sequence[_StageSpec],
        side_channels: Sequence[int],
        out_ch: int,
    ) -> None:
        super().__init__()
        for i, (block, cin, cmid, cout) in enumerate(encoder, start=1):
            self.add_module(f"stage{i}", block(cin, cmid, cout))
        for i, (block, cin, cmid, cout) in zip(range(5, 0, -1), decoder, strict=True):
            self.add_module(f"stage{i}d", block(cin, cmid, cout))
        for i, ch in enumerate(side_channels, start=1):
            self.add_module(f"side{i}", nn.Conv2d(ch, out_ch, 3, padding=1))
        self.outconv = nn.Conv2d(6 * out_ch, out_ch, 1)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def forward(self, x: Tensor) -> U2NetOutputs:
        """Return ``(d0, d1, ..., d6)``: the fused map then the side maps, all sigmoids at input size."""
        enc: list[Tensor] = []
        hx = x
        for i in range(1, 7):
            if i > 1:
                hx = self.pool(hx)
            hx = self.get_submodule(f"stage{i}")(hx)
            enc.append(hx)

        # side_in[k] feeds side{k+1}: hx1d, hx2d, ..., hx5d, then hx6 (the bottom has no decoder stage).
        side_in: list[Tensor] = [enc[5]]
        hx = enc[5]
        for i in range(5, 0, -1):
            skip = enc[i - 1]
            hx = self.get_submodule(f"stage{i}d")(torch.cat((_upsample_like(hx, skip), skip), 1))
            side_in.insert(0, hx)

        # Side maps are fused as logits; the sigmoid comes last, as in the reference.
        sides = [self.get_submodule("side1")(side_in[0])]
        sides += [
            _upsample_like(self.get_submodule(f"side{k}")(side_in[k - 1]), sides[0]) for k in range(2, 7)
        ]
        fused = self.outconv(torch.cat(sides, 1))
        d1, d2, d3, d4, d5, d6 = (torch.sigmoid(s) for s in sides)
        return torch.sigmoid(fused), d1, d2, d3, d4, d5, d6


class U2NET(_U2NetBase):
    """Full U2-Net (about 44.0 M parameters, 176 MB in fp32)."""

    def __init__(self, in_ch: int = 3, out_ch: int = 1) -> None:
        super().__init__(
            encoder=[
                (RSU7, in_ch, 32, 64),
                (RSU6, 64, 32, 128),
                (RSU5, 128, 64, 256),
                (RSU4, 256, 128, 512),
                (RSU4F, 512, 256, 512),
                (RSU4F, 512, 256, 512),
            ],
            decoder=[
                (RSU4F, 1024, 256, 512),
                (RSU4, 1024, 128, 256),
                (RSU5, 512, 64, 128),
                (RSU6, 256, 32, 64),
                (RSU7, 128, 16, 64),
            ],
            side_channels=[64, 64, 128, 256, 512, 512],
            out_ch=out_ch,
        )


class U2NETP(_U2NetBase):
    """Small U2-Net (about 1.13 M parameters, 4.7 MB in fp32)."""

    def __init__(self, in_ch: int = 3, out_ch: int = 1) -> None:
        super().__init__(
            encoder=[
                (RSU7, in_ch, 16, 64),
                (RSU6, 64, 16, 64),
                (RSU5, 64, 16, 64),
                (RSU4, 64, 16, 64),
                (RSU4F, 64, 16, 64),
                (RSU4F, 64, 16, 64),
            ],
            decoder=[
                (RSU4F, 128, 16, 64),
                (RSU4, 128, 16, 64),
                (RSU5, 128, 16, 64),
                (RSU6, 128, 16, 64),
                (RSU7, 128, 16, 64),
            ],
            side_channels=[64] * 6,
            out_ch=out_ch,
        )


def build_model(name: ModelName) -> nn.Module:
    """Build a randomly initialised ``"u2net"`` or ``"u2netp"`` (3 input channels, 1 output channel)."""
    if name == "u2net":
        return U2NET()
    if name == "u2netp":
        return U2NETP()
    raise ValueError(f"unknown U2-Net variant {name!r}; expected 'u2net' or 'u2netp'")


def _format_keys(keys: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _load_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``torch.save`` wrote at ``path``, which must be a mapping (a state dict or a checkpoint)."""
    # weights_only: a .pth from the internet must not be able to run code when unpickled.
    try:
        loaded = torch.load(Path(path), map_location="cpu", weights_only=True)
    # KeyError, ValueError: some bytes that are no pickle at all ("hello world") fail in the unpickler.
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        # torch's own message advises weights_only=False: unsafe for a file from elsewhere.
        raise ValueError(f"{path}: not a weights file torch can load safely ({type(exc).__name__})") from None
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(loaded).__name__}")
    return dict(loaded)


def read_weights(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A state dict from a ``.pth`` (reference layout) or a ``skuforge matting train`` checkpoint."""
    loaded = _load_mapping(path)
    if isinstance(loaded.get("model"), Mapping) and "step" in loaded:  # a checkpoint, optimiser or not
        loaded = dict(loaded["model"])
    elif isinstance(loaded.get("state_dict"), Mapping):  # a common wrapper ({"state_dict": ..., "epoch": 3})
        loaded = dict(loaded["state_dict"])
    # Anything else in it crashed `matting export` with an AttributeError ("no is_floating_point").
    odd = sorted(str(key) for key, value in loaded.items() if not isinstance(value, Tensor))
    if odd:
        raise ValueError(f"{path}: not a state dict of tensors (these entries are not: {', '.join(odd[:5])})")
    return loaded


def average_weights(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Tensor]:
    """The element-wise mean of several state dicts of one architecture (checkpoint averaging).

    Floating-point tensors (weights, BatchNorm statistics) are averaged in float64; integer ones
    (``num_batches_tracked``) are taken from the last file. Keys and shapes must agree.
    """
    if not paths:
        raise ValueError("no weights to average")
    states = [read_weights(path) for path in paths]
    first = states[0]
    for path, state in zip(paths[1:], states[1:], strict=True):
        if state.keys() != first.keys() or any(state[k].shape != first[k].shape for k in first):
            raise ValueError(f"{path}: keys or shapes differ from {paths[0]}")
    return {
        key: (
            (torch.stack([state[key].double() for state in states]).mean(dim=0)).to(value.dtype)
            if value.is_floating_point()
            else states[-1][key].clone()
        )
        for key, value in first.items()
    }


def load_reference_state_dict(
    model: nn.Module, path_or_state_dict: str | os.PathLike[str] | Mapping[str, Tensor]
) -> nn.Module:
    """Load reference-layout weights (e.g. the official ``u2net.pth``) into ``model`` strictly.

    Accepts a path to a ``torch.save``-d state dict or the mapping itself. A ``"module."`` prefix on
    every key (checkpoints saved from an ``nn.DataParallel`` or DDP wrapper) is stripped. BatchNorm
    ``num_batches_tracked`` counters, absent from checkpoints written by PyTorch < 0.4.1, are filled
    with zeros; they do not affect inference. Anything else missing, unexpected or of the wrong shape
    raises ``ValueError`` naming the keys. Returns ``model``.
    """
    if isinstance(path_or_state_dict, Mapping):
        state = dict(path_or_state_dict)
    else:
        state = _load_mapping(path_or_state_dict)

    if state and all(k.startswith(_DDP_PREFIX) for k in state):
        state = {k[len(_DDP_PREFIX) :]: v for k, v in state.items()}

    expected = model.state_dict()
    for key, value in expected.items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        problems = [advice] if (advice := _other_architecture(model, state)) else []
        if missing:
            problems.append(f"missing keys ({len(missing)}): {_format_keys(missing)}")
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches ({len(mismatched)}): {_format_keys(mismatched)}")
        raise ValueError(f"state dict does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


def _other_architecture(model: nn.Module, state: Mapping[str, Tensor]) -> str:
    """The advice, for weights that do not fit ``model``, that they are the other U2-Net's ('' if they fit
    neither): U2-NetP weights given as a U2-Net failed on 571 shape mismatches, naming no architecture."""
    names: dict[str, ModelName] = {"U2NET": "u2net", "U2NETP": "u2netp"}
    for class_name, name in names.items():
        if class_name == type(model).__name__:
            continue
        expected = {key: tuple(value.shape) for key, value in build_model(name).state_dict().items()}
        given = {key: tuple(value.shape) for key, value in state.items()}
        if given == expected:
            return f"they are {class_name} weights (model {name!r})"
    return ""


def deep_supervision_loss(outputs: Sequence[Tensor], target: Tensor) -> tuple[Tensor, Tensor]:
    """The paper's deep-supervision loss (the reference's ``muti_bce_loss_fusion``).

    ``outputs`` are the seven sigmoid maps ``(d0, ..., d6)`` and ``target`` the ground-truth mask in
    ``[0, 1]`` of the same shape. Returns ``(loss0, total)``: the mean BCE of the fused map alone (what
    the reference logs as "target loss") and the sum of the seven mean BCEs (what it back-propagates).
    """
    if len(outputs) != 7:
        raise ValueError(f"expected 7 outputs (d0..d6), got {len(outputs)}")
    losses = [F.binary_cross_entropy(d, target) for d in outputs]
    total = torch.stack(losses).sum()
    return losses[0], total


def export_onnx(
    model: nn.Module, path: str | os.PathLike[str], *, size_px: int = 320, opset: int = 17
) -> Path:
    """Export ``model`` in eval mode to a self-contained ONNX file at ``path`` and return the path.

    The graph has one float32 input ``"input"`` (``B x 3 x H x W``, normalised RGB) and the seven outputs
    ``"d0"``..``"d6"`` (``B x 1 x H x W``), ``d0`` first. Batch, height and width are all dynamic;
    ``size_px`` is only the square size traced with (320, U2-Net's training size, is what callers feed).
    The model's training/eval mode is restored afterwards.
    """
    import onnx

    from shared.matting.graph import split_wide_concats
    from shared.model_cache import write_atomically

    device = next(model.parameters()).device
    dummy = torch.zeros(1, 3, size_px, size_px, device=device)
    dynamic = {0: "batch", 2: "height", 3: "width"}
    # The exporter writes a file: a scratch folder's, never the target (written last, below).
    with tempfile.TemporaryDirectory(prefix="skuforge-onnx-") as scratch:
        exported = Path(scratch) / "exported.onnx"
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                traced_shapes = [tuple(t.shape) for t in model(dummy)]
            # The legacy TorchScript exporter, deliberately. The dynamo exporter gives the same numbers but
            # on 2 CPU cores takes ~25 s for U2-NetP instead of ~2 s, has no opset-17 implementations (it
            # emits 18 and down-converts through a fallback), writes weights to a side ``.data`` file unless
            # told not to, and needs a batch > 1 example to keep the batch dynamic. Its deprecation warnings
            # are therefore expected noise here.
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
                )
                warnings.filterwarnings(
                    "ignore", message="The feature will be removed", category=DeprecationWarning
                )
                torch.onnx.export(
                    model,
                    (dummy,),
                    str(exported),
                    input_names=[ONNX_INPUT_NAME],
                    output_names=list(ONNX_OUTPUT_NAMES),
                    dynamic_axes={name: dynamic for name in (ONNX_INPUT_NAME, *ONNX_OUTPUT_NAMES)},
                    opset_version=opset,
                    do_constant_folding=True,
                    dynamo=False,
                )
        finally:
            model.train(was_training)
        proto = onnx.load(str(exported))

    # The exporter's symbolic shape inference mislabels the channel axis of the resized side outputs
    # (d2..d6 come out declared as [batch, width, height, width]); the values are right, only the declared
    # shapes are not, so they are rewritten from the traced ones.
    for value, shape in zip(proto.graph.output, traced_shapes, strict=True):
        dims = value.type.tensor_type.shape.dim
        for axis, (dim, size) in enumerate(zip(dims, shape, strict=True)):
            if axis in dynamic:
                dim.dim_param = dynamic[axis]
            else:
                dim.dim_value = size
    # The widest concat becomes two convolutions: same numbers, 0.4 GB less peak memory at batch 8.
    split_wide_concats(proto, size_px=size_px)
    onnx.checker.check_model(proto, full_check=True)
    # Exported, rewritten and checked in memory, then written beside the target and renamed over it: a
    # crash or a failed check half-way left a truncated or unchecked file in place of a working model
    # (perhaps the served one).
    final = Path(path)
    write_atomically(final, proto.SerializeToString())
    return final
