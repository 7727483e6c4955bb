"""Backend ``diffusion``: diffusers inpainting around the product, which keeps its own pixels.

Per variant, three steps (all deterministic for a request's seed and the variant index):

1. **Place** (``place_product``): the reference photo is scaled, slightly rotated and moved onto a
   new square canvas so the product lands at a drawn scale and position. The transformed product
   mask is the variant's ``expected_mask``: exact by construction.
2. **Paint**: a Stable Diffusion (or SDXL) inpainting pipeline repaints everything outside the
   slightly dilated product mask; then the placed product pixels are pasted back, so inside the
   expected mask the output *is* the placed product, bit for bit.
3. **Harmonise** (optional, ``SKUFORGE_DIFFUSION_HARMONIZE_STRENGTH`` > 0): a low-strength pass over
   the whole image that blends light and edges; it changes the product's pixels too, so it is
   recorded in the parameters and the gate measures what it did (IoU) rather than trusting it.

LoRA adapters come from the registry (``shared/generation/adapters.py``): the series' specialised
adapter, else the general one, else none. ``LoraSlots`` keeps a small LRU of adapters in the
pipeline and deletes evicted ones, because peft/diffusers slow down with every adapter ever loaded
(huggingface/diffusers#11816, huggingface/peft#981).

Weights are a ``save_pretrained`` pipeline folder: a local path, or an ``s3://`` / ``file://`` URI
copied into a local cache first. Loading never touches the internet (``local_files_only``)::

    backend = DiffusionBackend.from_settings(load_settings(DiffusionSettings), load_settings())
    samples = backend.generate(request)                 # request.n GeneratedSample
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import json
import logging
import math
import sys
import threading
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings

from schemas.events import MAX_MODEL_ID_CHARS
from shared.config import (
    SETTINGS_CONFIG,
    ConfigError,
    Settings,
    describe_validation_error,
    model_id_setting,
    model_uri_opens,
    name_or_unset,
)
from shared.errors import BadInput, ChecksumMismatch, ObjectMissing, TransientError
from shared.generation.adapters import (
    MAX_ADAPTER_ID_CHARS,
    AdapterChoice,
    AdapterMetadata,
    AdapterRegistry,
    resolve_adapter,
)
from shared.generation.backend import GeneratedSample, GenerationRequest, RowOutcome, seed_entropy
from shared.model_cache import DEFAULT_UNUSED_DAYS, UnsafeCache, fetch_directory, open_cache
from shared.model_cache import release as release_copy
from shared.store import ObjectStore, check_store_uri, open_store

if TYPE_CHECKING:
    import torch

__all__ = [
    "DiffusionBackend",
    "DiffusionModelError",
    "DiffusionParameters",
    "DiffusionSettings",
    "LoraSlots",
    "NonFiniteOutput",
    "Placement",
    "apply_offload",
    "is_out_of_memory",
    "model_digest",
    "paint_finite",
    "paint_mask",
    "place_product",
    "release_memory",
    "variant_seeds",
]

log = logging.getLogger("skuforge.generation.diffusion")

UInt8Array = npt.NDArray[np.uint8]

CANVAS_FILL = 127  # grey behind the placed photo; the painter never keeps it (paint_mask: photo_area)
MAX_VARIANTS = 64  # per request; the stage asks for a few at a time
# Sides the pipeline paints: the VAE halves the image three times, so a side is a multiple of 8.
MIN_SIZE_PX = 64
SIZE_STEP_PX = 8
EVICTED_KEPT = 256  # evicted adapter ids remembered (LoraSlots.evicted)


class DiffusionSettings(BaseSettings):
    """Which diffusion model runs, where, and how variants are drawn: ``SKUFORGE_DIFFUSION_*``."""

    model_config = SETTINGS_CONFIG

    diffusion_model: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "inpainting pipeline folder (save_pretrained layout): a local path, or an s3:// or file:// URI "
            "copied to the cache; needed when SKUFORGE_GENERATION_BACKEND=diffusion"
        ),
    )
    diffusion_architecture: Literal["auto", "sd", "sdxl"] = Field(
        default="auto",
        description="'sd' (StableDiffusionInpaintPipeline), 'sdxl', or 'auto' = from model_index.json",
    )
    diffusion_cache_dir: str | None = Field(
        default=None,
        description="where models and adapters from URIs are copied; unset = <system temp>/skuforge-models"
        "; made for this user alone (0700) when missing; refused when everyone may write to it (unset: also"
        " when another user owns it or its group may write to it)",
    )
    diffusion_device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto", description="'auto' = CUDA when available, else CPU"
    )
    diffusion_dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        default="auto", description="'auto' = float16 on CUDA, float32 on CPU"
    )
    diffusion_offload: Literal["off", "model", "sequential"] = Field(
        default="off",
        description=(
            "CUDA memory saving: 'model' = enable_model_cpu_offload (whole models move to the GPU in turn), "
            "'sequential' = enable_sequential_cpu_offload (least memory, slowest); needs CUDA"
        ),
    )
    diffusion_attention_slicing: Literal["off", "auto", "max"] = Field(
        default="off", description="enable_attention_slicing: less memory per call, a little slower"
    )
    diffusion_threads: int = Field(default=2, ge=1, le=256, description="torch CPU threads")
    diffusion_steps: int = Field(default=30, ge=1, le=500, description="denoising steps of the painting pass")
    diffusion_guidance: float = Field(
        default=7.5, ge=0.0, le=50.0, description="classifier-free guidance scale (<= 1: no guidance)"
    )
    diffusion_mask_dilation_px: int = Field(
        default=8, ge=0, le=64, description="the painter keeps this many px around the product untouched"
    )
    diffusion_harmonize_strength: float = Field(
        default=0.0,
        ge=0.0,
        le=0.6,
        description="strength of the whole-image harmonisation pass (changes product pixels); 0 = off",
    )
    diffusion_scale_min: float = Field(
        default=0.35, gt=0.0, le=1.0, description="smallest product size: its longer side / canvas side"
    )
    diffusion_scale_max: float = Field(
        default=0.7, gt=0.0, le=1.0, description="largest product size: its longer side / canvas side"
    )
    diffusion_max_rotation_deg: float = Field(
        default=8.0, ge=0.0, le=45.0, description="product rotation is drawn from +- this many degrees"
    )
    diffusion_max_batch: int = Field(
        default=4, ge=1, le=64, description="variants per pipeline call (bounds GPU memory)"
    )
    diffusion_adapters_uri: str | None = Field(
        default=None, description="LoRA adapter registry root; unset = <SKUFORGE_STORE_URI>/adapters"
    )
    diffusion_base_model: str | None = Field(
        default=None,
        description="base-model name adapters must declare to be used; unset = adapters are not filtered",
    )
    diffusion_lora_cache_size: int = Field(
        default=4, ge=1, le=64, description="LoRA adapters kept loaded (LRU); evicted ones are deleted"
    )
    diffusion_lora_scale: float = Field(default=1.0, ge=0.0, le=4.0, description="weight of the active LoRA")
    diffusion_adapter_refresh_s: float = Field(
        default=30.0, ge=0.0, description="how long the registry listing is reused; 0 = list every request"
    )

    @field_validator(
        "diffusion_model",
        "diffusion_cache_dir",
        "diffusion_adapters_uri",
        "diffusion_base_model",
        mode="before",
    )
    @classmethod
    def _name_or_unset(cls, value: Any) -> Any:
        return name_or_unset(value)

    @field_validator("diffusion_model")
    @classmethod
    def _model_uri_opens(cls, value: str | None) -> str | None:
        return model_uri_opens(value)

    @field_validator("diffusion_base_model")
    @classmethod
    def _base_model_is_a_model_id(cls, value: str | None) -> str | None:
        # Every adapter.published's base_model is this name: refused there, it was refused event by event.
        return model_id_setting(value)

    @field_validator("diffusion_adapters_uri")
    @classmethod
    def _adapters_uri_opens(cls, value: str | None) -> str | None:
        # A scheme no store serves, or a bucket name S3 refuses, was a traceback in the generator only
        # once the pipeline had loaded; checked here, the generator and the LoRA trainer refuse it alike.
        if value is not None:
            check_store_uri(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DiffusionSettings:
        if self.diffusion_scale_min > self.diffusion_scale_max:
            raise ValueError("SKUFORGE_DIFFUSION_SCALE_MIN must not exceed SKUFORGE_DIFFUSION_SCALE_MAX")
        return self

    def adapters_uri(self, shared: Settings) -> str:
        """Root of the LoRA adapter registry: SKUFORGE_DIFFUSION_ADAPTERS_URI, else <store>/adapters."""
        return self.diffusion_adapters_uri or f"{shared.store_uri.rstrip('/')}/adapters"

    def adapters_uri_from(self) -> str:
        """The setting ``adapters_uri`` came from: what the registry's faults tell the operator to check."""
        return "SKUFORGE_DIFFUSION_ADAPTERS_URI" if self.diffusion_adapters_uri else "SKUFORGE_STORE_URI"

    def adapters_store(self, shared: Settings) -> ObjectStore:
        """The store at ``adapters_uri``; an S3 refusal names the setting that URI came from (it blamed
        SKUFORGE_STORE_URI when SKUFORGE_DIFFUSION_ADAPTERS_URI had set it). ``ConfigError`` when
        ``<SKUFORGE_STORE_URI>/adapters`` is one no store opens: the store's prefix passes its own check
        with up to 9 bytes fewer than the registry's needs, and the generator and `skuforge adapters`
        died in a ValueError traceback (SKUFORGE_DIFFUSION_ADAPTERS_URI is checked when it is read)."""
        uri = self.adapters_uri(shared)
        if self.diffusion_adapters_uri is None:
            try:
                check_store_uri(uri)
            except ValueError as exc:
                raise ConfigError(
                    f"SKUFORGE_STORE_URI's prefix leaves the LoRA adapter registry under it too little room "
                    f"({exc}): shorten the prefix, or set SKUFORGE_DIFFUSION_ADAPTERS_URI"
                ) from None
        store = open_store(
            uri,
            s3_endpoint_url=shared.s3_endpoint_url,
            s3_region=shared.s3_region,
            uri_from=self.adapters_uri_from(),
        )
        # adapter.published's registry_uri is this root, '/' and an adapter id: a model id. A longer root
        # (a file store's absolute path; an S3 prefix is shorter) trained, then had every publication refused.
        most = MAX_MODEL_ID_CHARS - 1 - MAX_ADAPTER_ID_CHARS
        if len(store.base_uri) > most:
            root = (
                "SKUFORGE_DIFFUSION_ADAPTERS_URI"
                if self.diffusion_adapters_uri
                else "<SKUFORGE_STORE_URI>/adapters"
            )
            raise ConfigError(
                f"{self.adapters_uri_from()}: the LoRA adapter registry's root, {root}, is "
                f"{len(store.base_uri)} characters as a URI; an adapter's registry_uri (the root, '/' and an "
                f"adapter id of up to {MAX_ADAPTER_ID_CHARS}) is an event's model id, at most "
                f"{MAX_MODEL_ID_CHARS} characters: give a root of at most {most}"
            )
        return store


class DiffusionModelError(Exception):
    """The configured pipeline folder is missing, incomplete or not loadable, or the cache cannot hold it."""


class NonFiniteOutput(RuntimeError):
    """The pipeline painted NaN or infinite pixels (float16 overflow), even when decoded again in float32.

    Not the request's fault and not a store being away: the backend's own failure, which the Triton
    model reports as ``backend_error`` (the stage retries it a few times, then dead-letters it).
    """


class DiffusionParameters(BaseModel):
    """Per-request knobs in ``GenerationRequest.parameters``; unset ones are drawn or come from settings.

    Keys this backend does not know (the composite backend's, the stage's) are left alone.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    scale: float | None = Field(default=None, gt=0.0, le=1.0)
    rotation_deg: float | None = Field(default=None, ge=-45.0, le=45.0)
    position_x: float | None = Field(default=None, ge=0.0, le=1.0)
    position_y: float | None = Field(default=None, ge=0.0, le=1.0)
    steps: int | None = Field(default=None, ge=1, le=500)
    guidance: float | None = Field(default=None, ge=0.0, le=50.0)
    harmonize_strength: float | None = Field(default=None, ge=0.0, le=0.6)


# The knobs a request's ``parameters`` may set for this backend.
DIFFUSION_PARAMETERS: frozenset[str] = frozenset(DiffusionParameters.model_fields)


# --- placement: pure functions on arrays -------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """The reference photo moved onto a new canvas, and where its product pixels are."""

    canvas: UInt8Array  # size x size x 3
    expected_mask: UInt8Array  # size x size, 0/255
    scale: float  # product's longer side / canvas side (less than asked where the turned box did not fit)
    rotation_deg: float
    position_x: float  # 0..1: left .. right of the positions that keep the product inside
    position_y: float
    # size x size, 255 where the canvas shows the photo (not the CANVAS_FILL beyond its edges, nor the
    # pixels the resampling blended with it); None: all of it
    photo_area: UInt8Array | None = None


def place_product(
    reference: UInt8Array,
    mask: UInt8Array,
    size: int,
    *,
    scale: float,
    rotation_deg: float,
    position_x: float,
    position_y: float,
) -> Placement:
    """Scale, rotate and move the reference photo so its product lands as asked on a ``size`` canvas.

    The whole photo moves (not only the cut-out), so the band the painter keeps around the product
    shows the photo's own surroundings. Image and mask get the same affine map; the mask is
    thresholded at half, so ``expected_mask`` is exactly where the canvas holds product pixels.
    """
    ys, xs = np.nonzero(mask >= 128)
    if xs.size == 0:
        raise BadInput("empty_mask", "the product mask has no product pixels (no value >= 128)")
    photo = Image.fromarray(np.ascontiguousarray(reference), "RGB")
    matte = Image.fromarray(np.ascontiguousarray(mask), "L")
    x0, x1, y0, y1 = float(xs.min()), float(xs.max() + 1), float(ys.min()), float(ys.max() + 1)
    theta = math.radians(rotation_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    longer = max(x1 - x0, y1 - y0)
    # Turned, a product whose box came out wider than the canvas was centred and cut by its edges (a
    # square at scale 0.9 turned 8 degrees lost its corners): it is shrunk until the box fits, and that
    # scale is the one recorded. The tolerance keeps the record's replay from shrinking it again.
    turned = max((x1 - x0) * abs(cos) + (y1 - y0) * abs(sin), (x1 - x0) * abs(sin) + (y1 - y0) * abs(cos))
    if scale * turned / longer > 1 + 1e-9:
        scale = longer / turned
    zoom = scale * size / longer
    # Shrinking a big photo by a large factor aliases under bicubic sampling: box-reduce it first.
    factor = int(1.0 / zoom)
    if factor >= 2:
        photo, matte = photo.reduce(factor), matte.reduce(factor)
        x0, x1, y0, y1 = x0 / factor, x1 / factor, y0 / factor, y1 / factor
        zoom *= factor
    width, height = x1 - x0, y1 - y0
    # The rotated product's bounding box on the canvas, and the centres that keep it inside.
    span_x = zoom * (width * abs(cos) + height * abs(sin))
    span_y = zoom * (width * abs(sin) + height * abs(cos))
    centre_x = span_x / 2 + position_x * (size - span_x) if span_x < size else size / 2
    centre_y = span_y / 2 + position_y * (size - span_y) if span_y < size else size / 2
    # PIL wants the inverse map (canvas -> photo): rotate back, unscale, move to the product's centre.
    a, b, d, e = cos / zoom, sin / zoom, -sin / zoom, cos / zoom
    src_x, src_y = (x0 + x1) / 2, (y0 + y1) / 2
    affine = (a, b, src_x - a * centre_x - b * centre_y, d, e, src_y - d * centre_x - e * centre_y)
    canvas = photo.transform(
        (size, size), Image.Transform.AFFINE, affine, Image.Resampling.BICUBIC, fillcolor=(CANVAS_FILL,) * 3
    )
    moved = matte.transform(
        (size, size), Image.Transform.AFFINE, affine, Image.Resampling.BILINEAR, fillcolor=0
    )
    expected = np.where(np.asarray(moved) >= 128, 255, 0).astype(np.uint8)
    # Where the photo ends on the canvas: a tightly framed photo ends inside the band the painter
    # keeps around the product, and that band kept CANVAS_FILL grey. One pixel in from that edge, for
    # the bicubic sampling's reach into the fill.
    whole = Image.new("L", photo.size, 255).transform(
        (size, size), Image.Transform.AFFINE, affine, Image.Resampling.BILINEAR, fillcolor=0
    )
    inside = np.asarray(whole.filter(ImageFilter.MinFilter(3))) == 255
    if not expected.any():
        raise BadInput("product_too_small", f"the product vanishes at scale {scale} on a {size}px canvas")
    return Placement(
        canvas=np.asarray(canvas, dtype=np.uint8),
        expected_mask=expected,
        scale=scale,
        rotation_deg=rotation_deg,
        position_x=position_x,
        position_y=position_y,
        photo_area=np.where(inside, 255, 0).astype(np.uint8),
    )


def paint_mask(
    expected_mask: UInt8Array, dilation_px: int, photo_area: UInt8Array | None = None
) -> UInt8Array:
    """What the painter repaints (255): everything outside the product mask grown by ``dilation_px``,
    and, of that band, what is not the photo (``photo_area`` 0: the canvas fill beyond a tightly framed
    photo's edge, which was kept as a grey rim around the product)."""
    kept = Image.fromarray(expected_mask, "L")
    if dilation_px > 0:
        kept = kept.filter(ImageFilter.MaxFilter(2 * dilation_px + 1))
    keep = np.asarray(kept) >= 128
    if photo_area is not None:
        keep &= (photo_area >= 128) | (expected_mask >= 128)
    return np.where(keep, 0, 255).astype(np.uint8)


def variant_seeds(seed: int, index: int) -> tuple[int, int, int]:
    """Three independent seeds of one variant: placement, painting, harmonisation.

    Derived from (seed, index) by numpy's SeedSequence, so variant 1 of seed 5 shares nothing
    with variant 0 of seed 6.
    """
    states = np.random.SeedSequence([seed_entropy(seed), index]).generate_state(3, dtype=np.uint64)
    # torch.Generator.manual_seed takes up to 2**64 - 1, numpy's Generator anything: halve to be safe.
    placement, painting, harmonising = (int(state) >> 1 for state in states)
    return placement, painting, harmonising


# --- LoRA adapters in the pipeline ----------------------------------------------------------------


class LoraSlots:
    """The adapters loaded into a pipeline: an LRU of at most ``capacity``.

    An evicted adapter is deleted from the pipeline (``delete_adapters``), not only deactivated:
    every adapter a peft model holds slows ``set_adapters`` and each forward pass a little, so
    keeping them all would make switching cost grow with the registry.

    ``offload`` and ``device`` are the pipeline's memory saver (``apply_offload``): diffusers takes
    the offload hooks off to load an adapter and puts them back only when the load succeeds, so a
    failed load puts them back here.

    The folder ``fetch`` returned stays held in the model cache while its adapter is loaded, and is
    given back (``release``) when the adapter is evicted or fails to load: each held copy keeps a file
    descriptor open, and a generator serving a large registry for days ran out of them.
    """

    def __init__(
        self,
        pipe: Any,
        capacity: int,
        fetch: Callable[[AdapterMetadata], Path],
        *,
        release: Callable[[Path], None] = release_copy,
        scale: float = 1.0,
        offload: str = "off",
        device: torch.device | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("the LoRA cache must hold at least one adapter")
        self.pipe = pipe
        self.capacity = capacity
        self.fetch = fetch
        self.release = release
        self.scale = scale
        self.offload = offload
        self.device = device
        self._loaded: OrderedDict[str, str] = OrderedDict()  # adapter_id -> weights sha256, oldest first
        self._folders: dict[str, Path] = {}  # adapter_id -> the cached copy it was loaded from
        self.active: str | None = None
        # The last ids deleted, oldest first (for metrics and tests); bounded, as a list it grew with every
        # eviction for the life of the server.
        self.evicted: deque[str] = deque(maxlen=EVICTED_KEPT)

    @property
    def loaded(self) -> list[str]:
        """Adapter ids in the pipeline, least recently used first."""
        return list(self._loaded)

    def activate(self, adapter: AdapterMetadata | None) -> None:
        """Make ``adapter`` the only active one (``None``: the base model), loading it if needed.

        An adapter that does not fit the model is refused (``BadInput`` ``adapter_unloadable``) and
        leaves nothing in the UNet. One that cannot be fetched or loaded leaves the adapters loaded as
        they were: the least recently used is evicted only once the new one is in, so for the length of
        a load ``capacity + 1`` adapters are in the pipeline (a LoRA is megabytes beside the UNet).
        Running out of GPU memory (``torch.OutOfMemoryError``) or a CUDA
        fault (``torch.AcceleratorError``) is the backend's, not the adapter's: raised as it is.
        """
        if adapter is None:
            if self._loaded:
                self.pipe.disable_lora()
            self.active = None
            return
        adapter_id = adapter.adapter_id
        if self._loaded.get(adapter_id) == adapter.weights_sha256:
            self._loaded.move_to_end(adapter_id)
        else:
            # Fetched before anything is unloaded: a fetch that fails (the store away, the cache full)
            # used to have evicted an adapter for nothing, to be loaded again by the next request.
            directory = self.fetch(adapter)
            try:
                if adapter_id in self._loaded:
                    self._delete(adapter_id)  # re-registered with new weights: load those instead
            except BaseException:
                self.release(directory)
                raise
            import torch

            try:
                with warnings.catch_warnings():
                    # peft warns whenever a second adapter joins a model: here that is the design.
                    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                    # ...and when it removes a half-loaded adapter after a failure (handled below).
                    warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
                    self.pipe.load_lora_weights(
                        str(directory),
                        weight_name=adapter.weight_name,
                        adapter_name=adapter_id,
                        local_files_only=True,
                    )
            except (torch.OutOfMemoryError, torch.AcceleratorError):
                self._undo_failed_load(adapter_id, directory)
                raise
            except (ValueError, RuntimeError, KeyError, OSError) as exc:
                self._undo_failed_load(adapter_id, directory)
                raise BadInput(
                    "adapter_unloadable",
                    f"adapter {adapter_id!r} does not fit this model (base {adapter.base_model!r}): {exc}",
                ) from exc
            self._loaded[adapter_id] = adapter.weights_sha256
            self._folders[adapter_id] = directory
            # Only now, with the new one in, the least recently used make room: a load that failed (an
            # adapter that does not fit, the GPU out of memory) had evicted one for nothing.
            while len(self._loaded) > self.capacity:
                self._delete(next(iter(self._loaded)))
        self.pipe.enable_lora()
        self.pipe.set_adapters([adapter_id], adapter_weights=[self.scale])
        self.active = adapter_id

    def _undo_failed_load(self, adapter_id: str, directory: Path) -> None:
        """After a failed load: remove what did get into the UNet, put the offload hooks back, and let go
        of the cached copy."""
        self.release(directory)
        # Half-injected layers would stay in the UNet: remove whatever did get in.
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.pipe.delete_adapters([adapter_id])
        # diffusers removed the offload hooks before loading and re-applies them only on success:
        # without them the next call would find the weights on the CPU (huggingface/diffusers
        # loaders/lora_base.py, `_func_optionally_disable_offloading`).
        if self.offload != "off" and self.device is not None:
            apply_offload(self.pipe, self.offload, self.device)

    def _delete(self, adapter_id: str) -> None:
        self.pipe.delete_adapters([adapter_id])
        del self._loaded[adapter_id]
        directory = self._folders.pop(adapter_id, None)
        if directory is not None:
            self.release(directory)
        self.evicted.append(adapter_id)
        if self.active == adapter_id:
            self.active = None


# --- the backend --------------------------------------------------------------------------------

# A model cache that cannot take an adapter's copy: its volume full, over quota or read-only, or a
# folder in it this user may not write. The operator's to fix; the variants wait meanwhile.
_CACHE_UNWRITABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def _torch_setup(settings: DiffusionSettings) -> tuple[torch.device, torch.dtype]:
    import torch

    if settings.diffusion_device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("SKUFORGE_DIFFUSION_DEVICE=cuda but torch sees no CUDA device")
    use_cuda = settings.diffusion_device == "cuda" or (
        settings.diffusion_device == "auto" and torch.cuda.is_available()
    )
    device = torch.device("cuda" if use_cuda else "cpu")
    if settings.diffusion_dtype == "auto":
        dtype = torch.float16 if use_cuda else torch.float32
    else:
        dtype = getattr(torch, settings.diffusion_dtype)
        if dtype == torch.float16 and not use_cuda:
            raise ConfigError("SKUFORGE_DIFFUSION_DTYPE=float16 needs CUDA; on CPU use float32 or bfloat16")
    if settings.diffusion_offload != "off" and not use_cuda:
        raise ConfigError(
            f"SKUFORGE_DIFFUSION_OFFLOAD={settings.diffusion_offload} moves models between CPU and a CUDA "
            "device; on CPU leave it 'off'"
        )
    if not use_cuda:
        torch.set_num_threads(settings.diffusion_threads)
    return device, dtype


def model_digest(directory: Path) -> str:
    """A cheap fingerprint of a model folder: every file's path and size, and the bytes of the small ones.

    Hashing gigabytes of weights at every start would cost tens of seconds; configs and sizes
    already tell two published models apart. Lineage of generated images (``model_id``) and the
    LoRA trainer's job identity both use it. Hidden files and folders are left out (a download tool's
    ``.cache/`` holds timestamps): two copies of one model have one digest.
    """

    def visible(path: Path) -> bool:
        return path.is_file() and not any(part.startswith(".") for part in path.relative_to(directory).parts)

    digest = hashlib.sha256()
    for path in sorted(filter(visible, directory.rglob("*"))):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(directory).as_posix()}\0{size}\0".encode())
        if size <= 1 << 20:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _pipeline_index(directory: Path) -> dict[str, Any]:
    """The folder's ``model_index.json``, or a ``DiffusionModelError`` that says what was expected."""
    index_path = directory / "model_index.json"
    if not index_path.is_file():
        missing = "" if directory.is_dir() else " (that folder does not exist)"
        raise DiffusionModelError(
            f"no diffusers pipeline at {directory}{missing}: expected a save_pretrained folder with "
            "model_index.json (SKUFORGE_DIFFUSION_MODEL takes a local folder or an s3:// or file:// URI)"
        )
    index: dict[str, Any] = json.loads(index_path.read_text(encoding="utf-8"))
    return index


def load_inpaint_pipeline(
    directory: Path,
    *,
    architecture: str,
    device: torch.device,
    dtype: torch.dtype,
    offload: str = "off",
    attention_slicing: str = "off",
) -> Any:
    """Load a ``save_pretrained`` inpainting pipeline from a local folder, offline, in ``dtype``.

    ``offload`` ('off', 'model', 'sequential') and ``attention_slicing`` ('off', 'auto', 'max') are
    diffusers' memory savers. The weights' dtype is checked after loading: a keyword diffusers does
    not know is ignored with a mere warning, and the pipeline would silently run in float32.
    """
    index = _pipeline_index(directory)
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline
    from diffusers.utils import logging as diffusers_logging

    if architecture == "auto":
        architecture = "sdxl" if "XL" in str(index.get("_class_name", "")) else "sd"
    diffusers_logging.disable_progress_bar()
    pipeline_class: Any
    extra: dict[str, Any] = {}
    if architecture == "sdxl":
        pipeline_class = StableDiffusionXLInpaintPipeline
    else:
        pipeline_class = StableDiffusionInpaintPipeline
        # Outputs go to the gate and to people reviewing them, not to the public.
        extra = {"safety_checker": None, "requires_safety_checker": False}
    try:
        # diffusers >= 0.42 takes `dtype` (`torch_dtype` is deprecated there, and older releases know
        # only `torch_dtype`): pyproject pins diffusers>=0.42, and the check below catches a mismatch.
        pipe = pipeline_class.from_pretrained(directory, local_files_only=True, dtype=dtype, **extra)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DiffusionModelError(
            f"diffusers cannot load an inpainting pipeline from {directory}: {exc}"
        ) from exc
    wrong = {name: str(part.dtype) for name, part in _weighted_parts(pipe).items() if part.dtype != dtype}
    if wrong:
        raise DiffusionModelError(
            f"asked diffusers for {dtype} weights but got {wrong}: this diffusers release ignores the "
            "`dtype` keyword (install diffusers>=0.42)"
        )
    if offload == "off":
        pipe = pipe.to(device)
    else:
        apply_offload(pipe, offload, device)
    if attention_slicing != "off":
        pipe.enable_attention_slicing(attention_slicing)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def apply_offload(pipe: Any, offload: str, device: torch.device) -> None:
    """Put diffusers' offload hooks on ``pipe``: 'model' (``enable_model_cpu_offload``) or 'sequential'.

    What loading the pipeline does, and what a failed LoRA load must do again (``LoraSlots``).
    """
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        raise ValueError(f"offload must be 'model' or 'sequential', got {offload!r}")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is torch running out of (GPU) memory: the backend's state, not the input's fault."""
    torch = sys.modules.get("torch")  # not imported: then it cannot be torch's error
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


def release_memory() -> None:
    """Collect garbage and give CUDA's cached blocks back, after a failure or a job.

    Call it outside any ``except`` block: while an exception is being handled its traceback keeps
    every frame it passed through alive, with their tensors.
    """
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# Out of memory while other processes hold at least this share of the GPU more than when the backend
# loaded (CUDA contexts and Triton's pool are there from the start): they may let go (the LoRA trainer
# beside the generator on one GPU, docs/diffusion.md), so the row is waited for, not refused.
OTHERS_HOLD_SHARE = 0.1


def gpu_memory_held_by_others() -> float:
    """The share of the current CUDA device's memory that neither is free nor is cached by this
    process's torch (another process's: a training job, another server); 0.0 without CUDA.

    Call it after ``release_memory``, so this process's cache is given back first.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return 0.0
    try:
        free, total = torch.cuda.mem_get_info()
        ours = torch.cuda.memory_reserved()
    except RuntimeError:  # a CUDA fault: no figure, and no reason to fail the batch over it
        return 0.0
    return max(0.0, float(total - free - ours)) / float(total) if total else 0.0


def paint_finite(
    pipe: Any, *, after_step: Callable[[int], None] | None = None, **call: Any
) -> npt.NDArray[np.float32]:
    """``pipe(**call)`` with ``output_type="np"``: its images (rows x H x W x 3, 0..1), every one finite.

    ``after_step`` is called with each denoising step's index (0-based) once the step is done; what it
    raises ends the painting there (a stop request need not wait out the remaining steps).

    A float16 VAE can overflow and decode NaN, which becomes black pixels once converted to uint8: a
    plain background the product would be pasted onto, which the gate would accept. So the final
    latents are kept, and a row that comes out non-finite is decoded again with the VAE in float32,
    once; a row still non-finite (its latents are already NaN: the UNet overflowed) raises
    ``NonFiniteOutput`` rather than be returned. Rows that came out finite are not touched.
    """
    import torch

    final: dict[str, Any] = {}

    def keep_latents(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        final["latents"] = tensors["latents"]
        if after_step is not None:
            after_step(step)
        return tensors

    with torch.inference_mode():
        images = pipe(
            **call,
            output_type="np",
            callback_on_step_end=keep_latents,
            callback_on_step_end_tensor_inputs=["latents"],
        ).images
    images = np.asarray(images, dtype=np.float32)
    bad = [row for row in range(len(images)) if not np.isfinite(images[row]).all()]
    if not bad:
        return images
    latents = final.get("latents")
    if latents is not None and _can_decode_in_float32(pipe) and bool(torch.isfinite(latents[bad]).all()):
        log.warning(
            "the VAE decoded non-finite pixels in %s; decoding %d row(s) again in float32",
            pipe.vae.dtype,
            len(bad),
        )
        images[bad] = _decode_in_float32(pipe, latents[bad])
        bad = [row for row in bad if not np.isfinite(images[row]).all()]
    if bad:
        raise NonFiniteOutput(
            f"the pipeline painted NaN or infinite pixels in {len(bad)} of {len(images)} row(s) "
            f"(weights in {pipe.vae.dtype}); not emitted: a float16 overflow, try float32 or bfloat16 "
            "(SKUFORGE_DIFFUSION_DTYPE)"
        )
    return images


def _can_decode_in_float32(pipe: Any) -> bool:
    """A plain ``AutoencoderKL`` not already in float32 (an asymmetric VAE needs the image and mask too)."""
    import torch
    from diffusers import AutoencoderKL

    vae: Any = getattr(pipe, "vae", None)
    return type(vae) is AutoencoderKL and pipe.vae.dtype != torch.float32


def _decode_in_float32(pipe: Any, latents: torch.Tensor) -> npt.NDArray[np.float32]:
    """Decode final latents as the pipeline does, with the VAE in float32 for the call (then back)."""
    import torch

    vae = pipe.vae
    config = vae.config
    with torch.no_grad():
        latents = latents.to(torch.float32)
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:  # SDXL-style VAEs: what the SDXL pipeline does
            shape = (1, latents.shape[1], 1, 1)
            latents = latents * torch.tensor(std).view(shape).to(latents) / config.scaling_factor
            latents = latents + torch.tensor(mean).view(shape).to(latents)
        else:
            latents = latents / config.scaling_factor
        dtype = vae.dtype
        vae.to(dtype=torch.float32)  # the upcast the SDXL pipeline does (`upcast_vae`), for SD too
        try:
            decoded = vae.decode(latents, return_dict=False)[0]
        finally:
            vae.to(dtype=dtype)
            pipe.maybe_free_model_hooks()  # with model offload: the VAE back to the CPU
        images = pipe.image_processor.postprocess(decoded.float(), output_type="np")
    return np.asarray(images, dtype=np.float32)


def _weighted_parts(pipe: Any) -> dict[str, Any]:
    """The pipeline's torch modules (UNet, VAE, text encoders) by component name."""
    import torch

    return {name: part for name, part in pipe.components.items() if isinstance(part, torch.nn.Module)}


class DiffusionBackend:
    """Product-preserving inpainting with per-request LoRA adapters; one instance per process.

    ``generate`` is serialised by a lock: the pipeline and its active adapter are shared state.
    """

    name = "diffusion"

    def __init__(
        self,
        pipe: Any,
        *,
        model_id: str,
        registry: AdapterRegistry | None,
        settings: DiffusionSettings,
        cache_dir: Path,
        device: torch.device,
        cache_unused_days: float = DEFAULT_UNUSED_DAYS,
    ) -> None:
        self.pipe = pipe
        self.model_id = model_id
        self.registry = registry
        self.settings = settings
        self.cache_dir = cache_dir
        self.cache_unused_days = cache_unused_days
        self.device = device
        # Recorded with every image: the same seed paints (nearly) the same image only on the same
        # kind of device, in the same dtype; the noise itself is drawn on the CPU everywhere.
        self.device_name = str(getattr(device, "type", device))  # torch.device("cuda:0") -> "cuda"
        self.dtype_name = str(getattr(pipe, "dtype", "")).removeprefix("torch.")
        self.lora = LoraSlots(
            pipe,
            settings.diffusion_lora_cache_size,
            self._fetch_adapter,
            scale=settings.diffusion_lora_scale,
            offload=settings.diffusion_offload,
            device=device,
        )
        self._lock = threading.Lock()
        self.rows_per_call_max = 0  # the most variants one pipeline call painted (batching at work)
        self._listing: list[AdapterMetadata] = []
        self._listed_at = -math.inf

    @classmethod
    def from_settings(cls, diffusion: DiffusionSettings, shared: Settings) -> DiffusionBackend:
        """Build the backend from ``diffusion`` (``SKUFORGE_DIFFUSION_*``) and ``shared`` (the object
        store the model URI and the adapter registry are read with); reads no environment itself."""
        if diffusion.diffusion_model is None:
            raise ConfigError(
                "SKUFORGE_GENERATION_BACKEND=diffusion needs SKUFORGE_DIFFUSION_MODEL: a save_pretrained "
                "inpainting pipeline folder, or an s3:// or file:// URI of one"
            )
        # The registry's URI, then device, dtype and offload settings: refused before gigabytes of weights
        # are fetched (again at every restart of a pod without a persistent cache) and loaded.
        registry = AdapterRegistry(diffusion.adapters_store(shared))
        device, dtype = _torch_setup(diffusion)
        try:
            # Checked even for a local model: adapters' weights are copied there later.
            cache_dir = open_cache(diffusion.diffusion_cache_dir)
        except OSError as exc:  # one another user could write to, or none this user can make
            raise DiffusionModelError(
                f"cannot use the model cache: {exc} (SKUFORGE_DIFFUSION_CACHE_DIR)"
            ) from exc
        model = diffusion.diffusion_model
        if "://" in model:
            try:
                directory = fetch_directory(
                    model,
                    cache_dir,
                    s3_endpoint_url=shared.s3_endpoint_url,
                    s3_region=shared.s3_region,
                    unused_days=shared.model_cache_unused_days,
                    uri_from="SKUFORGE_DIFFUSION_MODEL",
                    # Looked for in the listing: looked for in the copy, a URI one folder too high (every
                    # model under it) was copied whole, gigabytes each, before it was refused.
                    required_file="model_index.json",
                )
            except (ValueError, BadInput, UnsafeCache) as exc:
                raise DiffusionModelError(f"cannot fetch the diffusion model {model!r}: {exc}") from exc
            except OSError as exc:
                # The store's faults arrive mapped: an OSError here is the cache's (full, read-only, not
                # this user's). os.write's ENOSPC names no file, so the folder is named here.
                if exc.errno not in _CACHE_UNWRITABLE_ERRNOS:
                    raise
                raise DiffusionModelError(
                    f"cannot copy the diffusion model {model!r} into the model cache {cache_dir} ({exc}): "
                    "free room there, make it writable by this user, or point SKUFORGE_DIFFUSION_CACHE_DIR "
                    "at a folder that is"
                ) from exc
        else:
            directory = Path(model)
        _pipeline_index(directory)  # before torch loads: a wrong path fails in milliseconds
        pipe = load_inpaint_pipeline(
            directory,
            architecture=diffusion.diffusion_architecture,
            device=device,
            dtype=dtype,
            offload=diffusion.diffusion_offload,
            attention_slicing=diffusion.diffusion_attention_slicing,
        )
        name = model.rstrip("/").rpartition("/")[2] or "model"
        return cls(
            pipe,
            model_id=f"diffusion:{name}@sha256:{model_digest(directory)[:12]}",
            registry=registry,
            settings=diffusion,
            cache_dir=cache_dir,
            device=device,
            cache_unused_days=shared.model_cache_unused_days,
        )

    # -- adapters --

    def _fetch_adapter(self, adapter: AdapterMetadata) -> Path:
        """The adapter's copy in the model cache. A copy the cache refuses (``UnsafeCache``: another user
        could change it), or a cache that cannot hold it (its volume full, over quota or read-only, or
        not this user's to write), is the operator's to see to, not the request's fault: a
        ``TransientError`` naming the folder, so the variant waits for the fix instead of being
        dead-lettered."""
        if self.registry is None:
            raise BadInput("no_adapter_registry", "this backend has no adapter registry")
        try:
            return self.registry.fetch_weights(adapter, self.cache_dir, unused_days=self.cache_unused_days)
        except UnsafeCache as exc:
            raise TransientError(
                f"cannot use the model cache for adapter {adapter.adapter_id!r}: {exc} "
                "(SKUFORGE_DIFFUSION_CACHE_DIR)"
            ) from exc
        except OSError as exc:
            # The store's own faults arrive mapped (TransientError, ObjectMissing): an OSError here is
            # the cache's. os.write's ENOSPC names no file, so the folder is named here, and the weights
            # file with its size: which registration's it is, and the room it needs.
            if exc.errno not in _CACHE_UNWRITABLE_ERRNOS:
                raise
            raise TransientError(
                f"cannot copy adapter {adapter.adapter_id!r} ({adapter.weight_name}, {adapter.weights_bytes} "
                f"bytes) into the model cache {self.cache_dir} "
                f"({exc}): free room there, make it writable by this user, or point "
                "SKUFORGE_DIFFUSION_CACHE_DIR at a folder that is"
            ) from exc

    def adapters(self, *, refresh: bool = False) -> list[AdapterMetadata]:
        """The registry's listing, reused for ``SKUFORGE_DIFFUSION_ADAPTER_REFRESH_S``."""
        if self.registry is None:
            return []
        now = time.monotonic()
        if refresh or now - self._listed_at >= self.settings.diffusion_adapter_refresh_s:
            self._listing = self.registry.list()
            self._listed_at = now
        return self._listing

    def _registry_refusal(self, adapter: AdapterMetadata, exc: BadInput) -> BadInput:
        """Why ``adapter``'s weights could not be fetched: ``TransientError`` raised when the registry no
        longer lists it as it was when chosen, else the refusal of the request.

        The registry keeps the replaced registration's weights, but a listing older than that (or an
        adapter removed) points at bytes that are gone: a retry chooses from the fresh listing. An
        adapter listed unchanged whose weights fail is broken in the registry: missing weights stay
        ``object_missing``; damaged ones are ``adapter_checksum_mismatch``, not the ``checksum_mismatch``
        of a damaged photo, so the stage refuses the SKU once instead of drawing from its other photos.
        """
        current = next((a for a in self.adapters(refresh=True) if a.adapter_id == adapter.adapter_id), None)
        if current != adapter:
            raise TransientError(
                f"adapter {adapter.adapter_id!r} changed in the registry since it was listed ({exc}); "
                "the listing is read again, retry the request"
            ) from exc
        if isinstance(exc, ChecksumMismatch):
            return BadInput(
                "adapter_checksum_mismatch",
                f"adapter {adapter.adapter_id!r} is damaged in the registry ({exc.detail}): register it "
                "again (skuforge adapters register), then replay",
            )
        return exc

    def choose_adapter(self, request: GenerationRequest) -> AdapterChoice:
        """The adapter ``request`` gets (explicit id, else series, else general, else none)."""
        base_model = self.settings.diffusion_base_model
        try:
            return resolve_adapter(
                self.adapters(), series=request.series, adapter_id=request.adapter_id, base_model=base_model
            )
        except BadInput as exc:
            if exc.reason != "unknown_adapter":
                raise
            # Maybe registered since the listing was cached: look once more before refusing.
            return resolve_adapter(
                self.adapters(refresh=True),
                series=request.series,
                adapter_id=request.adapter_id,
                base_model=base_model,
            )

    # -- generation --

    def generate(self, request: GenerationRequest) -> list[GeneratedSample]:
        """``request.n`` samples; the same request (seed included) gives the same pixels."""
        (outcome,) = self.generate_many([request])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def generate_many(self, requests: list[GenerationRequest]) -> list[RowOutcome]:
        """Serve several requests with as few pipeline calls as possible; one outcome per request.

        Variants that share an adapter, a size, steps, guidance and harmonisation strength are
        painted in one pipeline call (up to ``SKUFORGE_DIFFUSION_MAX_BATCH`` rows), each with its
        own ``torch.Generator``, so a variant's pixels do not depend on its neighbours (up to float
        rounding in batched kernels). A request refused for its input or its adapter fails alone.
        An adapter whose weights are gone or altered because it was registered again (or removed)
        since the listing was read is not the request's fault: the listing is read again and
        ``TransientError`` raised, so the request is retried with the current adapter, not dead-lettered;
        one whose weights fail their checksum while listed unchanged is ``adapter_checksum_mismatch``.
        """
        outcomes: list[RowOutcome | None] = [None] * len(requests)
        plans: dict[int, _Plan] = {}
        for position, request in enumerate(requests):
            try:
                plans[position] = self._plan(request)
            except (ValueError, BadInput) as exc:
                outcomes[position] = exc
        with self._lock:
            choices: dict[int, AdapterChoice] = {}
            for position in list(plans):
                try:
                    choices[position] = self.choose_adapter(requests[position])
                except BadInput as exc:
                    outcomes[position] = exc
                    del plans[position]
            # Group every variant by what one pipeline call must share.
            groups: dict[tuple[str | None, int, int, float, float], list[tuple[int, int]]] = {}
            for position, plan in plans.items():
                key = (choices[position].adapter_id, requests[position].size, *plan.shared_call)
                groups.setdefault(key, []).extend((position, index) for index in range(requests[position].n))
            painted: dict[tuple[int, int], tuple[UInt8Array, int]] = {}
            for key, variants in groups.items():
                adapter = choices[variants[0][0]].adapter
                try:
                    self.lora.activate(adapter)
                except BadInput as exc:
                    refused = exc
                    if adapter is not None and isinstance(exc, (ObjectMissing, ChecksumMismatch)):
                        refused = self._registry_refusal(adapter, exc)
                    elif (
                        adapter is not None
                        and self.registry is not None
                        and exc.reason == "adapter_unloadable"
                    ):
                        # diffusers' words name no file: which registration did not fit is named here.
                        weights = self.registry.weights_uri(adapter)
                        refused = BadInput(exc.reason, f"{exc.detail} (its weights: {weights})")
                    for position, _ in variants:
                        outcomes[position] = refused
                        plans.pop(position, None)
                    continue
                step = self.settings.diffusion_max_batch
                for start in range(0, len(variants), step):
                    chunk = variants[start : start + step]
                    rows = [(requests[p], plans[p], i) for p, i in chunk]
                    images = self._paint(rows, key[1], *plans[chunk[0][0]].shared_call)
                    self.rows_per_call_max = max(self.rows_per_call_max, len(chunk))
                    for variant, image in zip(chunk, images, strict=True):
                        painted[variant] = (image, len(chunk))
        for position, plan in plans.items():
            outcomes[position] = self._samples(requests[position], plan, choices[position], painted, position)
        done = [outcome for outcome in outcomes if outcome is not None]
        if len(done) != len(requests):
            raise RuntimeError("a request was neither served nor refused")  # a bug here, not bad input
        return done

    def _plan(self, request: GenerationRequest) -> _Plan:
        """Validate ``request`` and draw its variants' placements and seeds (no model involved)."""
        _check_request(request)
        try:
            knobs = DiffusionParameters.model_validate(request.parameters)
        except ValidationError as exc:
            raise BadInput("invalid_parameters", describe_validation_error(exc)) from None
        settings = self.settings
        placements: list[Placement] = []
        seeds: list[tuple[int, int, int]] = []
        for index in range(request.n):
            seeds.append(variant_seeds(request.seed, index))
            rng = np.random.default_rng(seeds[-1][0])
            draw = (
                rng.uniform(settings.diffusion_scale_min, settings.diffusion_scale_max),
                rng.uniform(-settings.diffusion_max_rotation_deg, settings.diffusion_max_rotation_deg),
                rng.uniform(0.0, 1.0),
                rng.uniform(0.0, 1.0),
            )
            placements.append(
                place_product(
                    request.reference,
                    request.mask,
                    request.size,
                    scale=knobs.scale if knobs.scale is not None else draw[0],
                    rotation_deg=knobs.rotation_deg if knobs.rotation_deg is not None else draw[1],
                    position_x=knobs.position_x if knobs.position_x is not None else draw[2],
                    position_y=knobs.position_y if knobs.position_y is not None else draw[3],
                )
            )
        return _Plan(
            placements=placements,
            seeds=seeds,
            steps=knobs.steps or settings.diffusion_steps,
            guidance=knobs.guidance if knobs.guidance is not None else settings.diffusion_guidance,
            harmonize=(
                knobs.harmonize_strength
                if knobs.harmonize_strength is not None
                else settings.diffusion_harmonize_strength
            ),
        )

    def _samples(
        self,
        request: GenerationRequest,
        plan: _Plan,
        choice: AdapterChoice,
        painted: dict[tuple[int, int], tuple[UInt8Array, int]],
        position: int,
    ) -> list[GeneratedSample]:
        settings = self.settings
        samples = []
        # Placement values are recorded unrounded: place_product(**them) reproduces the canvas exactly.
        for index, placement in enumerate(plan.placements):
            image, rows_in_call = painted[(position, index)]
            parameters = {
                **request.parameters,
                "backend": self.name,
                "model_id": self.model_id,
                # Its index among the request's samples, which with the seed draws it. Recorded as
                # variant_index, it read 0 beside the event's own variant_index (one sample a request).
                "sample_index": index,
                "seed": request.seed,
                "scale": placement.scale,
                "rotation_deg": placement.rotation_deg,
                "position_x": placement.position_x,
                "position_y": placement.position_y,
                "steps": plan.steps,
                "guidance": plan.guidance,
                "mask_dilation_px": settings.diffusion_mask_dilation_px,
                "harmonize_strength": plan.harmonize,
                # Without harmonisation the product's pixels are pasted back: exact by construction.
                "product_pixels_exact": plan.harmonize == 0.0,
                "adapter_id": choice.adapter_id,
                "adapter_kind": choice.adapter.kind if choice.adapter else None,
                "adapter_choice": choice.reason,
                "adapter_scale": settings.diffusion_lora_scale if choice.adapter else 0.0,
                "size": request.size,
                "device": self.device_name,
                "dtype": self.dtype_name,
                # Lineage only: batched kernels may round differently from a single row.
                "pipeline_batch_rows": rows_in_call,
            }
            samples.append(
                GeneratedSample(
                    image=image,
                    expected_mask=placement.expected_mask,
                    parameters=parameters,
                    adapter_id=choice.adapter_id,
                )
            )
        return samples

    def _paint(
        self,
        variants: list[tuple[GenerationRequest, _Plan, int]],
        size: int,
        steps: int,
        guidance: float,
        harmonize: float,
    ) -> list[UInt8Array]:
        """One pipeline call for ``variants`` (request, plan, variant index), and one more to harmonise."""
        import torch

        count = len(variants)
        placements = [plan.placements[index] for _, plan, index in variants]
        seeds = [plan.seeds[index] for _, plan, index in variants]
        common: dict[str, Any] = {
            "prompt": [request.prompt for request, _, _ in variants],
            "negative_prompt": [request.negative_prompt for request, _, _ in variants],
            "height": size,
            "width": size,
            "guidance_scale": guidance,
        }
        dilation = self.settings.diffusion_mask_dilation_px
        masks = [paint_mask(p.expected_mask, dilation, p.photo_area) for p in placements]
        # One generator per variant: a variant's pixels do not depend on its neighbours in the batch.
        # CPU generators: a CUDA generator draws other noise than a CPU one for the same seed, and
        # diffusers moves CPU-drawn noise to the pipeline's device (what it recommends for reproducing).
        generators = [torch.Generator(device="cpu").manual_seed(s[1]) for s in seeds]
        painted = paint_finite(
            self.pipe,
            image=[Image.fromarray(p.canvas) for p in placements],
            mask_image=[Image.fromarray(m, "L") for m in masks],
            num_inference_steps=steps,
            strength=1.0,
            generator=generators,
            **common,
        )
        outputs = []
        for placement, image in zip(placements, painted, strict=True):
            pixels = _to_uint8(image)
            inside = placement.expected_mask == 255
            pixels[inside] = placement.canvas[inside]
            outputs.append(pixels)
        if harmonize <= 0.0:
            return outputs
        generators = [torch.Generator(device="cpu").manual_seed(s[2]) for s in seeds]
        everything = Image.new("L", (size, size), 255)
        harmonised = paint_finite(
            self.pipe,
            image=[Image.fromarray(pixels) for pixels in outputs],
            mask_image=[everything] * count,
            # diffusers runs int(steps * strength) steps: keep at least one.
            num_inference_steps=max(steps, math.ceil(1.0 / harmonize)),
            strength=harmonize,
            generator=generators,
            **common,
        )
        return [_to_uint8(image) for image in harmonised]


@dataclass(frozen=True)
class _Plan:
    """One request's variants before painting: placements, seeds and the knobs of its pipeline call."""

    placements: list[Placement]
    seeds: list[tuple[int, int, int]]
    steps: int
    guidance: float
    harmonize: float

    @property
    def shared_call(self) -> tuple[int, float, float]:
        """What every row of one pipeline call must share (besides adapter and size)."""
        return (self.steps, self.guidance, self.harmonize)


def _to_uint8(image: npt.NDArray[Any]) -> UInt8Array:
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def _check_request(request: GenerationRequest) -> None:
    """Refuse malformed requests with a reason the dead-letter topic can carry."""
    reference, mask = request.reference, request.mask
    if reference.dtype != np.uint8 or reference.ndim != 3 or reference.shape[2] != 3:
        raise BadInput(
            "invalid_reference",
            f"expected an H x W x 3 uint8 RGB image, got {reference.shape} {reference.dtype}",
        )
    if mask.dtype != np.uint8 or mask.shape != reference.shape[:2]:
        raise BadInput(
            "invalid_mask",
            f"expected an H x W uint8 mask the size of the reference {reference.shape[:2]}, "
            f"got {mask.shape} {mask.dtype}",
        )
    if not 1 <= request.n <= MAX_VARIANTS:
        raise BadInput("invalid_n", f"n={request.n}: ask for 1 to {MAX_VARIANTS} variants per request")
    if request.size < MIN_SIZE_PX or request.size % SIZE_STEP_PX:
        raise BadInput(
            "invalid_size",
            f"size={request.size}: use a multiple of {SIZE_STEP_PX}, at least {MIN_SIZE_PX} px",
        )
