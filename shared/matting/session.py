"""Matting sessions: an ONNX model file plus its pre/post-processing, behind one batched ``predict``.

The idea is rembg's ``sessions/``: a matting model is a file and the arithmetic around it, chosen
by name. Unlike rembg, ``predict`` takes a batch and makes one ONNX Runtime call per chunk of
``max_batch`` images (on CPU, of at most ``CPU_CALL_IMAGES``, with every shape fixed), and the
arithmetic is vectorised numpy in float32 (the min-max stretch of the model-size maps in float64)::

    session = open_session(None, threads=2, use_gpu=True, store=None, uri_from=None)  # the committed U2-NetP
    for result in session.predict(images):
        result.mask            # uint8 HxW, 0 background / 255 product, at the image's own size
        result.cutout(image)   # RGBA: the image with that mask as alpha

Names (``REGISTRY``): ``u2netp`` (the default, ``models/u2netp-skuforge.onnx``: the official U2-NetP
fine-tuned on GroceryStoreDataset photos and renderer data, mixed back with the official weights;
its model card beside it), ``u2netp-official`` (the official weights as set-up checked them),
``u2netp-int8`` (its quantised copy) and ``u2net-custom`` (any
U2-Net-compatible ONNX file, given as a path or URI). A model is compatible when its input takes
Nx3xHxW float32 or float16 (320x320 unless the file fixes its size, square or not) and its output ``d0``
(or, failing that, its first output) is the fused Nx1xHxW saliency map (at least an eighth of the input's
side: ``MAP_SIDE_DIVISOR``).

Pre- and post-processing are plain functions (``u2net_preprocess``, ``normalise_min_max``,
``otsu_thresholds``, and ``shared.arith.masks.clean_mask``) so they are tested, and reused by
training, without a model.
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from PIL import Image

from shared.arith.masks import clean_mask
from shared.config import ConfigError, load_settings
from shared.errors import BadInput, ObjectMissing, TransientError
from shared.images import pixel_array, to_rgb
from shared.matting import MODELS_DIR
from shared.matting.roi import Box, box_problem, paste
from shared.model_cache import DEFAULT_UNUSED_DAYS, UnsafeCache, cache_dir, fetch_file
from shared.store import ObjectStore

log = logging.getLogger("skuforge.matting")

__all__ = [
    "DEFAULT_MODEL",
    "MODELS_DIR",
    "REGISTRY",
    "DeferredConfidence",
    "MaskOptions",
    "MattingModelBroken",
    "MattingModelError",
    "MattingModelMissing",
    "MattingResult",
    "MattingSession",
    "RegisteredModel",
    "U2NetPSession",
    "U2NetSession",
    "choose_providers",
    "mask_figures",
    "normalise_min_max",
    "official_onnx_path",
    "open_session",
    "otsu_thresholds",
    "u2net_preprocess",
]

F32Array = npt.NDArray[np.float32]
UInt8Array = npt.NDArray[np.uint8]

DEFAULT_MODEL = "u2netp"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
# The ImageNet statistics the U2-Net reference normalises with (its ToTensorLab).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
OTSU_BINS = 256
# On the CPU provider an ORT call takes at most this many images (a chunk of ``max_batch`` is run
# as several calls). Per image, calls of 4 and of 8 take the same time on the 2-core CPU, and a
# shape-fixed call of 8 held 1.5 GB of activations (the issue-3 limit) where 4 holds half that.
# With a named batch the calls are of exactly 4 or of 1 (the rest of a chunk, one image at a time),
# so two shape-fixed sessions serve every chunk (``_session_for``).
CPU_CALL_IMAGES = 4
# The input types a model may take (ORT's names): the pre-processing's float32 is cast to a float16
# export's input (the normalised pixels, within +-3, lose nothing a 320 px map shows), its maps back.
INPUT_TYPES: dict[str, type[np.floating]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# The most input pixels one call of a model may fix (its fixed batch times its fixed height and width:
# 8192 x 8192, or 655 images of 320 x 320). It only refuses exports no warm-up could hold: a 60000 x
# 60000 export asked 43 GB for its warm-up image's input alone, and the stage was killed for memory at
# start-up, saying nothing of why. A GPU export with a fixed batch of 64 or 256 at 320 x 320 (U2-NetP
# held 1.5 GB of activations for 8 x 320 x 320) stays well inside it.
# Not a setting: it refuses no model that a machine could warm up, and a model that one call of it
# would not fit is better exported with a free batch than run under a raised cap.
MAX_CALL_INPUT_SIDE_PX = 8192
MAX_CALL_INPUT_PIXELS = MAX_CALL_INPUT_SIDE_PX * MAX_CALL_INPUT_SIDE_PX
# A model's map has sides of at least its input's over this (a stride-8 segmentation output, the
# coarsest a mask is read from); a smaller one, blown up to the image, is no product's outline.
MAP_SIDE_DIVISOR = 8


def _shape_text(shape: Sequence[int | str | None]) -> str:
    """A model input's shape as its refusals show it: ``1 x 3 x free x 320``. ONNX Runtime gives a free
    dimension as its name, or as None where the export left it unnamed (-1): "free", not "None"."""
    return " x ".join("free" if dim is None else str(dim) for dim in shape)


class MattingModelError(Exception):
    """The matting model cannot be opened or does not behave like the session expects."""


class MattingModelMissing(MattingModelError, FileNotFoundError):
    """The model file the configuration names does not exist."""


class MattingModelBroken(MattingModelError, TransientError):
    """The model fails on its blank warm-up image too (a call that raises, or NaN): the model or its
    device is at fault, not the images, so a stage retries them (``TransientError``) until it runs again."""


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeferredConfidence:
    """A confidence map kept at the model's size, and where it belongs: in ``box`` (None: the whole
    image) of an image of ``size`` (width, height)."""

    model_map: F32Array  # HxW of the model's input size, in [0, 1], min-max normalised
    size: tuple[int, int]
    box: Box | None = None

    def at_image_size(self) -> F32Array:
        """The map resized to the box (or image) and placed in the image, zero outside the box."""
        if self.box is None:
            return resize_confidence(self.model_map, self.size)
        left, top, right, bottom = self.box
        return paste(resize_confidence(self.model_map, (right - left, bottom - top)), self.box, self.size)


@dataclass(frozen=True, eq=False)
class MattingResult:
    """The model's answer for one image, at the image's own size.

    ``mean_confidence`` is the mean confidence over the pixels of the final mask (after clean-up):
    how sure the model is about what it calls product. It is 0.0 when the mask is empty.

    A session's results keep the confidence at the model's size (``DeferredConfidence``) and bring it
    to the image's size on each read of ``confidence``: at 40 MP a full-size float32 map is 160 MB
    per image, and the stage reads only the mask and the two figures.
    """

    confidence_map: F32Array | DeferredConfidence  # HxW, or the model-size map it is computed from
    mask: UInt8Array  # HxW, 0 background / 255 product
    foreground_fraction: float
    mean_confidence: float

    @property
    def confidence(self) -> F32Array:
        """HxW in [0, 1], min-max normalised as the U2-Net reference does; 0 outside a box."""
        if isinstance(self.confidence_map, DeferredConfidence):
            return self.confidence_map.at_image_size()
        return self.confidence_map

    def cutout(self, image: Image.Image) -> Image.Image:
        """``image`` as RGBA with this mask as alpha; the image must be the one that was predicted."""
        height, width = self.mask.shape
        if image.size != (width, height):
            raise ValueError(f"image is {image.size[0]}x{image.size[1]}, the mask is {width}x{height}")
        rgba = image.copy() if image.mode == "RGB" else to_rgb(image)
        rgba.putalpha(Image.fromarray(self.mask))
        return rgba


def mask_figures(confidence: F32Array, mask: UInt8Array, image_pixels: int) -> tuple[float, float]:
    """(foreground fraction of ``image_pixels``, mean confidence over the mask) of a map and its mask,
    which may be a region of an image that is zero outside it."""
    foreground = mask > 0
    pixels = int(np.count_nonzero(foreground))
    mean_confidence = float(confidence[foreground].mean()) if pixels else 0.0
    return pixels / image_pixels, min(1.0, max(0.0, mean_confidence))


def _finite_maps(maps: F32Array) -> npt.NDArray[np.bool_]:
    """Per map of a batch, whether every value in it is finite."""
    return np.isfinite(maps.reshape(len(maps), -1)).all(axis=1)


@dataclass(frozen=True)
class MaskOptions:
    """How a confidence map becomes a mask: threshold, then optional clean-up."""

    threshold: float | Literal["otsu"] = 0.5
    cleanup: bool = True
    min_blob_fraction: float = 0.002

    def __post_init__(self) -> None:
        if self.threshold != "otsu" and not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"threshold must be 'otsu' or in (0, 1), got {self.threshold!r}")
        if not 0.0 <= self.min_blob_fraction < 1.0:
            raise ValueError(f"min_blob_fraction must be in [0, 1), got {self.min_blob_fraction!r}")


# --- pre-processing --------------------------------------------------------------------------


def u2net_preprocess(images: Sequence[Image.Image], size_px: int | tuple[int, int] = 320) -> F32Array:
    """The U2-Net reference input for a batch: Nx3xsizexsize float32 (Nx3xHxW for a ``size_px`` of
    (W, H), a model exported at a fixed non-square size).

    Per image: RGB, resized to sizexsize, divided by its own brightest value, then normalised
    with the ImageNet mean and std. Bilinear resizing, because the reference resizes with
    skimage (order 1, anti-aliased on downscaling), which Pillow's BILINEAR matches. Any mode is
    taken, converted as ``shared.images.decode_image`` converts (``to_rgb``: 16-bit grey rescaled,
    alpha over white), so the model sees what the pipeline's decoded photos look like.
    """
    size = (size_px, size_px) if isinstance(size_px, int) else size_px
    pixels = np.stack(
        [
            np.asarray(
                (image if image.mode == "RGB" else to_rgb(image)).resize(size, Image.Resampling.BILINEAR)
            )
            for image in images
        ]
    )
    # A black image has max 0; dividing by 1 keeps it black where the reference would give NaN.
    brightest = np.maximum(pixels.max(axis=(1, 2, 3)), 1).astype(np.float32)
    batch = pixels.astype(np.float32)
    batch /= brightest[:, None, None, None]
    batch -= IMAGENET_MEAN
    batch /= IMAGENET_STD
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


# --- post-processing -------------------------------------------------------------------------


def normalise_min_max(predictions: F32Array) -> F32Array:
    """Stretch each NxHxW map to [0, 1] as the U2-Net reference does (its ``normPRED``).

    A flat map has nothing to stretch; it is kept as it is (clipped to [0, 1]) instead of
    becoming NaN. Stretched in float64: the span of a finite float32 map (-3e38 to 3e38) can be
    more than a float32 holds, and inf / inf made its most confident pixels NaN, so background.
    """
    maps = predictions.astype(np.float64)
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    flat = span <= 0.0
    stretched = (maps - low) / np.where(flat, 1.0, span)
    return np.where(flat, np.clip(maps, 0.0, 1.0), stretched).astype(np.float32)


def otsu_thresholds(maps: F32Array, bins: int = OTSU_BINS) -> npt.NDArray[np.float64]:
    """Otsu's threshold of each NxHxW confidence map in [0, 1] (one histogram pass for the batch).

    Returns, per map, the lower edge of the first foreground bin: pixels ``>= threshold`` are
    foreground. A map with one value only has no split; it gets 0.5.
    """
    count = maps.shape[0]
    bin_of = np.clip((maps.reshape(count, -1) * bins).astype(np.intp), 0, bins - 1)
    bin_of += (np.arange(count) * bins)[:, None]
    histogram = np.bincount(bin_of.ravel(), minlength=count * bins).reshape(count, bins).astype(np.float64)
    probability = histogram / histogram.sum(axis=1, keepdims=True)
    weight_below = np.cumsum(probability, axis=1)
    mean_below = np.cumsum(probability * np.arange(bins), axis=1)
    mean_total = mean_below[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_total * weight_below - mean_below) ** 2 / (weight_below * (1.0 - weight_below))
    between = np.nan_to_num(between, nan=0.0, posinf=0.0)
    best = between.argmax(axis=1)
    return np.where(between.max(axis=1) > 0.0, (best + 1) / bins, 0.5)


def resize_confidence(confidence: F32Array, size: tuple[int, int]) -> F32Array:
    """Bilinear resize of an HxW float32 map to ``size`` = (width, height), kept in [0, 1]."""
    if (confidence.shape[1], confidence.shape[0]) == size:
        return confidence.copy()
    # Read a strip at a time and clipped in place: through np.asarray (Image.tobytes) and np.clip the
    # map was held twice at once (8 bytes a pixel of a 40 MP photo, for a 4-byte map).
    resized: F32Array = pixel_array(Image.fromarray(confidence).resize(size, Image.Resampling.BILINEAR))
    return np.clip(resized, 0.0, 1.0, out=resized)


def threshold_mask(confidence: F32Array, threshold: float, options: MaskOptions) -> UInt8Array:
    """The 0/255 mask of one confidence map: ``confidence >= threshold``, cleaned if asked."""
    foreground = confidence >= threshold
    if options.cleanup:
        foreground = clean_mask(foreground, options.min_blob_fraction)
    return np.where(foreground, np.uint8(255), np.uint8(0))


def mask_in_box(
    model_map: F32Array, size: tuple[int, int], box: Box | None, threshold: float, options: MaskOptions
) -> MattingResult:
    """The result for one model-size map of the ``box`` (None: all) of an image of ``size`` (w, h).

    The full-size float32 confidence lives only inside this call, at the box's size, and the mask is
    thresholded there and pasted into the image: post-processing a chunk of 40 MP images holds one
    such map at a time, not one per image (``bench/matting_memory.py``).
    """
    region_size = size if box is None else (box[2] - box[0], box[3] - box[1])
    confidence = resize_confidence(model_map, region_size)
    mask = threshold_mask(confidence, threshold, options)
    fraction, mean_confidence = mask_figures(confidence, mask, size[0] * size[1])
    del confidence
    if box is not None:
        mask = paste(mask, box, size)
    return MattingResult(DeferredConfidence(model_map, size, box), mask, fraction, mean_confidence)


# --- sessions --------------------------------------------------------------------------------

_shared_cpu_arena = False


def _register_shared_cpu_arena() -> None:
    """Register, once per process, the CPU arena that shape-specialised sessions share."""
    global _shared_cpu_arena
    if not _shared_cpu_arena:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, None)
        _shared_cpu_arena = True


def _preload_cuda_libraries() -> None:
    """Let ONNX Runtime find the CUDA and cuDNN libraries of the ``nvidia-*`` wheels (what
    ``onnxruntime-gpu[cuda,cudnn]`` installs): a process that never imports torch does not load them,
    and the CUDA provider then fails to start. Harmless where the libraries come from the system."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:  # onnxruntime < 1.21
        return
    try:
        preload()
    except Exception as exc:  # a missing library: the session start below reports what it means
        log.debug("onnxruntime.preload_dlls failed", extra={"error": str(exc)})


def choose_providers(use_gpu: bool, available: Sequence[str] | None = None) -> list[str]:
    """ONNX Runtime providers, best first: CUDA when allowed and installed, then always the CPU."""
    available = ort.get_available_providers() if available is None else available
    if use_gpu and CUDA_PROVIDER in available:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


class MattingSession(ABC):
    """One matting model in ONNX Runtime; ``predict`` runs a batch, one ORT call per chunk.

    On the CPU provider a chunk is run as calls of at most ``CPU_CALL_IMAGES`` images; with a named
    batch, as calls of exactly that many and of one image, each on a session whose shapes are all
    fixed (``_session_for``).

    ``model`` is an ONNX file path or the file's bytes; ``model_name`` names it in ``model_id``
    (default: the file name). ``model_id`` = name + short sha256 of the bytes, for lineage.
    """

    #: The registry name of this kind of model.
    name: ClassVar[str]
    #: Input size used when the file does not fix its spatial size.
    default_size_px: ClassVar[int] = 320

    def __init__(
        self,
        model: Path | str | bytes,
        *,
        threads: int = 2,
        use_gpu: bool = True,
        max_batch: int = 8,
        mask: MaskOptions | None = None,
        model_name: str | None = None,
    ) -> None:
        if threads < 1 or max_batch < 1:
            raise ValueError(f"threads and max_batch must be at least 1, got {threads} and {max_batch}")
        if isinstance(model, bytes):
            source = model
            model_name = model_name or "in-memory.onnx"
        else:
            # Read once: the sessions of other batch sizes open later, and must open this model even
            # if the file is replaced meanwhile (a training run writing its output, a redeploy).
            source = _read_model_file(Path(model))
            model_name = model_name or Path(model).name
        self.mask_options = mask or MaskOptions()
        self._threads = threads
        wanted = choose_providers(use_gpu)
        if CUDA_PROVIDER in wanted:
            _preload_cuda_libraries()
        self._set_source(source, model_name)
        try:
            self._session = self._open(wanted, {})
        except MattingModelError as exc:
            if isinstance(model, bytes) or "external data" not in str(exc.__cause__).lower():
                raise
            # Its weights are in files beside it (``model.onnx.data``, what torch's newer exporter
            # writes), which a model read from bytes cannot reach: taken into the model, in memory,
            # so that they are read once and are part of its sha256 like any model's weights.
            self._set_source(_inline_external_data(Path(model), self.model_id), model_name)
            self._session = self._open(wanted, {})
        # What ORT actually enabled: a CUDA provider that failed to initialise is dropped here.
        self.providers: list[str] = list(self._session.get_providers())
        self.gpu_fallback = CUDA_PROVIDER in wanted and CUDA_PROVIDER not in self.providers
        if self.gpu_fallback:
            # ORT only prints its own error to stderr and goes on, many times slower, on the CPU.
            log.warning(
                "matting runs on the CPU: ONNX Runtime's CUDA provider is installed but did not start "
                "(CUDA or cuDNN libraries missing or not found: install onnxruntime-gpu[cuda,cudnn] or "
                "the CUDA toolkit); set SKUFORGE_MATTING_USE_GPU=false to say CPU is meant",
                extra={"model_id": self.model_id, "providers": self.providers},
            )

        model_input = self._session.get_inputs()[0]
        outputs = [output.name for output in self._session.get_outputs()]
        self.input_name: str = model_input.name
        self.output_name: str = "d0" if "d0" in outputs else outputs[0]
        if len(model_input.shape) != 4:
            raise MattingModelError(
                f"{self.model_id} takes a {len(model_input.shape)}-D input {model_input.name!r} "
                f"{_shape_text(model_input.shape)}; a U2-Net model takes N x 3 x H x W"
            )
        if model_input.type not in INPUT_TYPES:
            # Its warm-up failed in ORT's bare "Unexpected input data type", naming neither file nor input.
            raise MattingModelError(
                f"{self.model_id} takes input {model_input.name!r} of {model_input.type}; a U2-Net model "
                f"takes {' or '.join(INPUT_TYPES)} (the normalised pixels)"
            )
        #: What the model's input is given as: the float32 pre-processing, cast for a float16 export.
        self.input_dtype: type[np.floating] = INPUT_TYPES[model_input.type]
        batch_dim, channel_dim, height_dim, size_dim = model_input.shape
        if channel_dim != 3 and (isinstance(channel_dim, int) or size_dim == 3):
            # A channels-last export (N x H x W x 3, as tf2onnx writes a Keras model) opened with a
            # "size" of 3: every image was shrunk to 3 x 3 and every mask was noise, served as ready.
            raise MattingModelError(
                f"{self.model_id} takes input {model_input.name!r} {_shape_text(model_input.shape)}, not 3 "
                "colour channels second; a U2-Net model takes N x 3 x H x W (export it channels-first)"
            )
        fixed_at_zero = [
            f"{dim_name} {dim}"
            for dim_name, dim in (("batch", batch_dim), ("height", height_dim), ("width", size_dim))
            if isinstance(dim, int) and dim < 1
        ]
        if fixed_at_zero:
            # Opened, it had a max_batch of 0 (or no pixels a side), and its warm-up failed in "range()
            # arg 3 must not be zero", or blamed the blank warm-up image.
            raise MattingModelError(
                f"{self.model_id} fixes its input {model_input.name!r} {_shape_text(model_input.shape)} at "
                f"{', '.join(fixed_at_zero)}: no image fits it; export it with that dimension free "
                "(dynamic_axes) or at 1 or more"
            )
        # A free side takes the other side's fixed size (a model trained square), else the default; a
        # file exported at a fixed non-square size (N x 3 x 192 x 256) is fed and read at its H x W.
        fixed_sides = [dim for dim in (size_dim, height_dim) if isinstance(dim, int)]
        free_side = fixed_sides[0] if fixed_sides else self.default_size_px
        #: The model's input (width, height); ``size_px`` is its width (its side, for square models).
        self.input_size: tuple[int, int] = (
            size_dim if isinstance(size_dim, int) else free_side,
            height_dim if isinstance(height_dim, int) else free_side,
        )
        self.size_px = self.input_size[0]
        # A file exported with a fixed batch size takes exactly that many images a call: fewer are
        # padded (``_run``), more are split.
        self._fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 1 else None
        #: Images per call of a file exported with a fixed batch size (1 for a free batch).
        self.call_images: int = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else 1
        self.max_batch = min(max_batch, batch_dim) if isinstance(batch_dim, int) else max_batch
        width, height = self.input_size
        if self.call_images * width * height > MAX_CALL_INPUT_PIXELS:
            # It said "1 x 60000 x 60000 pixels" of an input shown "[1, 3, None, 60000]", the height
            # exported free (-1): neither where that height came from nor which dimension to change.
            if isinstance(size_dim, int) == isinstance(height_dim, int):
                free_sides = "" if isinstance(size_dim, int) else f"; its free height and width take {width}"
            elif isinstance(size_dim, int):
                free_sides = f"; its free height takes its width, {width}"
            else:
                free_sides = f"; its free width takes its height, {height}"
            changes = [
                *(["a free batch or a smaller fixed one"] if self._fixed_batch else []),
                *(["a smaller fixed height or width"] if fixed_sides else []),
            ]
            raise MattingModelError(
                f"{self.model_id} takes {self.call_images} x {width} x {height} pixels a call (input "
                f"{model_input.name!r} {_shape_text(model_input.shape)}{free_sides}), more than the "
                f"{MAX_CALL_INPUT_SIDE_PX} x {MAX_CALL_INPUT_SIDE_PX} ({MAX_CALL_INPUT_PIXELS:,}) a call may "
                f"take: its warm-up would run out of memory; export it with {', or '.join(changes)}"
            )
        # On the CPU provider a free batch is run in calls of at most CPU_CALL_IMAGES (``_call``), named
        # or not; the batch dimension's name, where it has one, gets them shape-fixed sessions
        # (``_session_for``).
        on_cpu = self.providers == [CPU_PROVIDER]
        self._cpu_calls = on_cpu and not isinstance(batch_dim, int)
        self._batch_dim = batch_dim if isinstance(batch_dim, str) and on_cpu else None
        self._size_dims = {
            dim: side
            for dim, side in ((size_dim, self.input_size[0]), (height_dim, self.input_size[1]))
            if isinstance(dim, str)
        }
        self._by_batch: dict[int, ort.InferenceSession] = {}
        if self._batch_dim is not None:
            # The free session is never run here: the one-image session takes its place, so that it
            # holds no copy of the weights (180 MB for a full U2-Net) beside the shape-fixed ones.
            self._session = self._session_for(1)
        self._ready = False

    def _open(self, providers: list[str], fixed_dims: dict[str, int]) -> ort.InferenceSession:
        """An ORT session on the model, with the named free dimensions in ``fixed_dims`` fixed."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The memory-pattern planner pre-allocates every activation of a batch at once: U2-NetP at
        # batch 8 peaked at 2.8 GB RSS with it and 1.46 GB without, at the same speed on CPU.
        options.enable_mem_pattern = False
        for dim, value in fixed_dims.items():
            options.add_free_dimension_override_by_name(dim, value)
        if fixed_dims:
            # The sessions of several batch sizes share one CPU arena instead of one each.
            _register_shared_cpu_arena()
            options.add_session_config_entry("session.use_env_allocators", "1")
        try:
            return ort.InferenceSession(self._source, options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for unreadable models
            hint = ""
            if "external data" in str(exc).lower():
                hint = (
                    " (its weights are in separate files, ONNX external data: a model fetched from a "
                    "URI comes without them; save it as one file, onnx.save(onnx.load(path), out))"
                )
            raise MattingModelError(f"ONNX Runtime cannot load {self.model_id}{hint}: {exc}") from exc

    def _set_source(self, source: bytes, model_name: str) -> None:
        """The model's bytes, and the sha256 and id they give it."""
        self._source = source
        self.sha256 = hashlib.sha256(source).hexdigest()
        self.model_id = f"{model_name}@sha256:{self.sha256[:12]}"

    def _session_for(self, batch: int) -> ort.InferenceSession:
        """The session for a call of ``batch`` images: on CPU, one with every shape fixed.

        U2-Net exports have a free batch, height and width. With all three known, ORT folds the
        shape arithmetic away and keeps the convolutions' blocked (NCHWc) layout through the
        upsampling and concatenations: 13 layout reorders instead of 107, and 12-15% less time
        per image on the 2-core CPU (``bench/results/matting.json``); fixing the height and width
        alone folds nothing. The height and width are always ``input_size`` here, so only the batch
        size varies, and ``_calls`` makes only two: one image and ``CPU_CALL_IMAGES``, the latter
        made on first use. Other providers keep the one free session.
        """
        if self._batch_dim is None:
            return self._session
        session = self._by_batch.get(batch)
        if session is None:
            session = self._open(self.providers, {**self._size_dims, self._batch_dim: batch})
            self._by_batch[batch] = session
        return session

    @property
    def ready(self) -> bool:
        """A run has succeeded and the latest run did not fail (for the stage's /readyz); an image the
        model gives NaN for while it still mats the blank warm-up image is not a failed run."""
        return self._ready

    def predict(
        self, images: Sequence[Image.Image], boxes: Sequence[Box | None] | None = None
    ) -> list[MattingResult]:
        """Masks of ``images`` (any sizes, any modes), in order; pre- and post-processed per ``max_batch``.

        ``boxes``: per image, a region to mat (``shared.matting.roi.product_box``) or None for the
        whole image. A boxed image is matted as its crop; its result is at the image's full size,
        zero outside the box. An image without pixels (0xN) or a box that is no region of its image
        is refused (``ValueError`` naming its index) before any image is matted. A map with NaN or
        infinity in it is a ``MattingModelError`` (``predict_each`` refuses such an image alone), and so
        is a model call that returns other than one map per image (``predict_each`` too).
        """
        results = self.predict_each(images, boxes)
        refused = [index for index, result in enumerate(results) if isinstance(result, BadInput)]
        if refused:
            raise MattingModelError(
                f"{self.model_id} returned NaN or infinite values for {len(refused)} of {len(images)} "
                f"images (images{refused}); it mats its blank warm-up image, so it is those images it "
                "cannot mat"
            )
        return [result for result in results if not isinstance(result, BadInput)]

    def predict_each(
        self, images: Sequence[Image.Image], boxes: Sequence[Box | None] | None = None
    ) -> list[MattingResult | BadInput]:
        """``predict``, with an image whose map the model gives with NaN or infinity in it refused alone
        (``BadInput('model_output_not_finite')``) and the others matted.

        One NaN makes a whole min-max normalised map NaN, and NaN is never >= the threshold: its mask
        would be silently empty. Whose fault it is, the image's or the model's, is asked of the blank
        warm-up image (``_run``): a model that cannot mat that either is broken (an fp16 overflow, a
        bad export), and that is a ``MattingModelError`` for the whole chunk and ``ready`` False; one
        that can is healthy, so ``ready`` is not put down by one input (the stage's /readyz).
        """
        if boxes is None:
            boxes = [None] * len(images)
        elif len(boxes) != len(images):
            raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
        # Checked before any image is matted: a box past the edge crops to a padded image whose
        # result then fails to paste back, in a numpy broadcast error naming neither; an empty image
        # fails the whole call in Pillow's resize ("height and width must be > 0").
        for index, (image, box) in enumerate(zip(images, boxes, strict=True)):
            if image.width <= 0 or image.height <= 0:
                raise ValueError(f"images[{index}] is {image.width}x{image.height}: it has no pixels to mat")
            if box is not None and (problem := box_problem(box, image.size)):
                raise ValueError(f"boxes[{index}] {tuple(box)}: {problem}")
        results: list[MattingResult | BadInput] = []
        for first in range(0, len(images), self.max_batch):
            chunk = images[first : first + self.max_batch]
            chunk_boxes = boxes[first : first + self.max_batch]
            # One crop at a time: the crops of a chunk of 40 MP images, held together, were as
            # large again as the images. The pre-processing is per image, so the input is the same.
            batch = np.concatenate(
                [
                    self.preprocess([image if box is None else image.crop(box)])
                    for image, box in zip(chunk, chunk_boxes, strict=True)
                ]
            )
            # Ready by the whole chunk, not the model call alone: a map refused in post-processing (one
            # far smaller than the input) failed the run as much as a call that raised.
            try:
                predictions = self._run(batch)
                finite = _finite_maps(predictions)
                kept = [index for index, ok in enumerate(finite) if ok]
                matted = iter(
                    self.postprocess(
                        predictions[finite], [chunk[i].size for i in kept], [chunk_boxes[i] for i in kept]
                    )
                    if kept
                    else []
                )
                results.extend(
                    next(matted)
                    if ok
                    else BadInput(
                        "model_output_not_finite",
                        f"{self.model_id} gave NaN or infinite confidences for this image, which would be "
                        "an empty mask; it mats its blank warm-up image, so the model is running",
                    )
                    for ok in finite
                )
            except Exception:
                self._ready = False
                raise
            self._ready = True
        return results

    def warm_up(self) -> None:
        """Run one blank image, so a model with the wrong inputs or outputs fails now, clearly (and is
        not ``ready``)."""
        try:
            self.predict([Image.new("RGB", self.input_size)])
        except Exception as failed:
            # Here the blank image is the one that failed: what it failed with says why.
            exc = failed.__cause__ if isinstance(failed, MattingModelBroken) and failed.__cause__ else failed
            raise MattingModelError(
                f"{self.model_id} does not run as a {self.name} model "
                f"(input {self.input_name!r}, output {self.output_name!r}): {exc}"
            ) from exc

    def _run(self, batch: F32Array) -> F32Array:
        """The model's maps for ``batch``; it raises when the call failed or the model is broken
        (``MattingModelBroken``), and ``predict_each`` then puts ``ready`` down.

        A call that raises is the images' only if the model still mats the blank warm-up image and the
        images fail again after it: a GPU whose driver failed raises on every call, and its events, each
        failing alone too, were dead-lettered as ``handler_error`` until it was back. The second call is
        because a device back between the images' call and the blank image's read as a healthy model,
        and an image that was fine was blamed (a dead letter after the last attempt)."""
        try:
            maps = self._call(batch)
        except Exception as exc:
            self._raise_if_broken(exc)
            try:
                maps = self._call(batch)
            except Exception as again:
                self._raise_if_broken(again)
                raise
        # A map with NaN or inf in it is one image's fault only if the model still mats the blank
        # warm-up image (``predict_each`` refuses that image); if not, the model is broken (an fp16
        # overflow, a bad export): say so instead of passing empty masks on to the gate.
        broken = ~_finite_maps(maps)
        if broken.any() and not self._mats_the_blank_image():
            raise MattingModelBroken(
                f"{self.model_id} returned NaN or infinite values for {int(broken.sum())} of "
                f"{len(maps)} images, and for its blank warm-up image: the model is broken"
            )
        return maps

    def _raise_if_broken(self, exc: Exception) -> None:
        """``MattingModelBroken`` from ``exc`` when the blank warm-up image fails too: the model's or its
        device's fault, not the images'."""
        if not self._mats_the_blank_image():
            raise MattingModelBroken(
                f"{self.model_id} failed ({type(exc).__name__}: {exc}), and so does its blank warm-up "
                "image: the model or its device is broken"
            ) from exc

    def _calls(self, images: int) -> list[tuple[int, int]]:
        """(first image, images) of each ORT call that runs a batch of ``images``."""
        # A free batch without a name (None in ORT's shape) was given the whole chunk in one call.
        step = CPU_CALL_IMAGES if self._cpu_calls else images
        if self._fixed_batch is not None:
            step = self._fixed_batch
        step = max(step, 1)
        calls: list[tuple[int, int]] = []
        for first in range(0, images, step):
            count = min(step, images - first)
            if self._batch_dim is not None and count < step:
                # The rest one image at a time: a session per call size (1 to 4) held a copy of the
                # weights each, 2.5 GB for a full U2-Net; a free one would undo the fixed shapes' speed.
                calls.extend((image, 1) for image in range(first, images))
            else:
                calls.append((first, count))
        return calls

    def _call(self, batch: F32Array) -> F32Array:
        """The model's output for ``batch``, in calls of the sizes the session takes."""
        outputs = []
        fixed = self._fixed_batch
        for first, count in self._calls(len(batch)):
            part = batch[first : first + count].astype(self.input_dtype, copy=False)
            if fixed is not None and count < fixed:  # blank images fill the call; their maps dropped
                part = np.concatenate([part, np.zeros((fixed - count, *part.shape[1:]), part.dtype)])
            (predictions,) = self._session_for(len(part)).run([self.output_name], {self.input_name: part})
            maps = np.asarray(predictions, dtype=np.float32)
            if maps.shape[:1] != (len(part),):
                # An export that fixed or folded the batch passes the one-image warm-up; its maps, cut to
                # the call's images, were fewer than the images, and the callers got fewer results.
                raise MattingModelError(
                    f"{self.model_id} returned {self.output_name!r} {maps.shape} for {len(part)} images; "
                    "a U2-Net model returns one map per image, batch first (export it with a dynamic batch)"
                )
            outputs.append(maps[:count])
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _mats_the_blank_image(self) -> bool:
        """Whether the model's map of the warm-up's blank image comes, finite: the model's health, asked
        when some image's call fails or its map is not finite."""
        try:
            maps = self._call(self.preprocess([Image.new("RGB", self.input_size)]))
        except Exception:
            return False
        return bool(_finite_maps(maps).all())

    @abstractmethod
    def preprocess(self, images: Sequence[Image.Image]) -> F32Array:
        """The model input for a chunk of images."""

    @abstractmethod
    def postprocess(
        self,
        predictions: F32Array,
        sizes: Sequence[tuple[int, int]],
        boxes: Sequence[Box | None] | None = None,
    ) -> list[MattingResult]:
        """Results from the model output for a chunk; ``sizes`` are the images' (width, height), and
        ``boxes`` the regions the model saw (None: whole images)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_id!r}, providers={self.providers})"


class U2NetSession(MattingSession):
    """Any U2-Net-compatible ONNX file: reference pre-processing, fused output d0, then a mask."""

    name = "u2net-custom"

    def preprocess(self, images: Sequence[Image.Image]) -> F32Array:
        """Resize, divide by the brightest value, ImageNet-normalise: Nx3xHxW float32."""
        return u2net_preprocess(images, self.input_size)

    def postprocess(
        self,
        predictions: F32Array,
        sizes: Sequence[tuple[int, int]],
        boxes: Sequence[Box | None] | None = None,
    ) -> list[MattingResult]:
        """Min-max normalise d0, resize to each image's size (or box), threshold and clean up."""
        if predictions.ndim not in (3, 4):
            # A flattened map (N x HW) stopped the stage with numpy's "axis 2 is out of bounds".
            raise ValueError(
                f"its output {self.output_name!r} is {predictions.shape}; a U2-Net model returns "
                "N x 1 x H x W maps"
            )
        if predictions.ndim == 4 and predictions.shape[1] != 1:
            # A model that outputs an image (N x 3 x H x W) passed the warm-up, and its red channel
            # was read as the mask.
            raise ValueError(f"its output is {predictions.shape[1]} channels per image; a mask is 1")
        height, width = predictions.shape[-2:]
        if height * MAP_SIDE_DIVISOR < self.input_size[1] or width * MAP_SIDE_DIVISOR < self.input_size[0]:
            # A map pooled to N x 1 x 1 x 1 passed the warm-up, and blown up to each image it was a flat
            # mask: all product or all background, served as ready.
            raise ValueError(
                f"its output {self.output_name!r} is {predictions.shape}: {width} x {height} maps for a "
                f"{self.input_size[0]} x {self.input_size[1]} input; a mask is at least 1/{MAP_SIDE_DIVISOR} "
                "of the input's side, a U2-Net's is the input's size"
            )
        maps = normalise_min_max(predictions[:, 0] if predictions.ndim == 4 else predictions)
        options = self.mask_options
        if options.threshold == "otsu":
            # On the model-size maps: one vectorised histogram pass for the whole chunk.
            thresholds = [float(t) for t in otsu_thresholds(maps)]
        else:
            thresholds = [float(options.threshold)] * len(sizes)
        boxes = [None] * len(sizes) if boxes is None else boxes
        return [
            mask_in_box(confidence_map.copy(), size, box, threshold, options)
            for confidence_map, size, box, threshold in zip(maps, sizes, boxes, thresholds, strict=True)
        ]


class U2NetPSession(U2NetSession):
    """U2-NetP (the 4.7 MB U2-Net): same pre/post-processing, the project's default model."""

    name = "u2netp"


def _read_model_file(path: Path) -> bytes:
    """The model file's bytes; ``MattingModelError`` naming it when it cannot be read (another user's
    file, a failing disk: an OSError traceback at start-up), ``MattingModelMissing`` when it is gone."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise MattingModelMissing(f"no matting model file at {path}") from exc
    except OSError as exc:
        raise MattingModelError(f"cannot read the matting model {path}: {exc}") from exc


def _is_model_file(path: Path) -> bool:
    """Whether ``path`` is a file; ``MattingModelError`` naming it when that cannot be told: ``is_file``
    answers False only for a missing file, and raised for a folder on the way this user may not enter
    (another user's home) or a name too long, an OSError traceback at start-up."""
    try:
        return path.is_file()
    except OSError as exc:
        raise MattingModelError(f"cannot read the matting model {path}: {exc}") from exc


def _inline_external_data(path: Path, model_id: str) -> bytes:
    """The model at ``path`` with the weights it keeps in files beside it (ONNX external data) taken
    in, as one serialised model. Needs the ``onnx`` package (the diffusion extra); without it, or
    for a model over protobuf's 2 GB, ``MattingModelError`` says how to make a one-file model."""
    advice = "save it as one file first: python -c \"import onnx; onnx.save(onnx.load('IN'), 'OUT')\""
    try:
        import onnx
    except ImportError:
        raise MattingModelError(
            f"{model_id} keeps its weights in separate files (ONNX external data), and taking them in "
            f"needs the onnx package (pip install onnx); or {advice}"
        ) from None
    try:
        model = onnx.load(str(path), load_external_data=False)
        for tensor in model.graph.initializer:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {entry.key: entry.value for entry in tensor.external_data}
            location = Path(info.get("location", ""))
            if not location.parts or location.is_absolute() or ".." in location.parts:
                raise ValueError(f"tensor {tensor.name}: location {str(location)!r} is not a file beside it")
            # Beside the path as given, not its link target: a snapshot folder of links (the Hugging
            # Face cache) holds both files as links into a blob store. (onnx.load refuses linked data.)
            with (path.parent / location).open("rb") as file:
                file.seek(int(info.get("offset", 0)))
                length = int(info["length"]) if "length" in info else -1
                tensor.raw_data = file.read(length)
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
        return bytes(model.SerializeToString())
    except (OSError, ValueError) as exc:
        raise MattingModelError(
            f"{model_id}: cannot read the weights it keeps beside it (ONNX external data): {exc}; {advice}"
        ) from exc


# --- opening by name, path or URI ------------------------------------------------------------


@dataclass(frozen=True)
class RegisteredModel:
    """A model known by name: its session class and its file, a name in ``MODELS_DIR`` or an absolute
    path (None: a path is needed)."""

    session_class: type[MattingSession]
    file_name: str | Path | Callable[[], Path] | None
    how_to_make: str = ""

    def path(self) -> Path | None:
        """The model file (a callable ``file_name`` is resolved now, not at import)."""
        if self.file_name is None:
            return None
        return MODELS_DIR / (self.file_name() if callable(self.file_name) else self.file_name)


def official_onnx_path() -> Path:
    """Where set-up puts the checked official U2-NetP: ``SKUFORGE_OFFICIAL_U2NETP`` if set, else
    ``var/models/u2netp-official.onnx`` in the checkout, or in the working directory when skuforge is
    installed as a package (there is no checkout above site-packages). Read at each call, so a
    setting made after import counts."""
    configured = os.environ.get("SKUFORGE_OFFICIAL_U2NETP")
    if configured:  # a relative path is the working directory's, as every command reads it
        return Path(configured).resolve()
    checkout = MODELS_DIR.parents[2]
    root = checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()
    return root / "var" / "models" / "u2netp-official.onnx"


REGISTRY: dict[str, RegisteredModel] = {
    "u2netp": RegisteredModel(
        U2NetPSession,
        "u2netp-skuforge.onnx",
        how_to_make="It is the project's own model, committed there (restore it with git); how it was "
        "made is in docs/matting.md and its model card",
    ),
    "u2netp-int8": RegisteredModel(
        U2NetPSession,
        "u2netp-skuforge-int8.onnx",
        how_to_make=(
            "quantise the trained U2-NetP with "
            "`skuforge matting quantize shared/matting/models/u2netp-skuforge.onnx` "
            "(after `skuforge matting train`)"
        ),
    ),
    # The official weights, as set-up fetched and checked them (shared.matting.official): the baseline.
    "u2netp-official": RegisteredModel(
        U2NetPSession,
        official_onnx_path,
        how_to_make="`make setup` fetches and checks it (skuforge matting official)",
    ),
    "u2net-custom": RegisteredModel(U2NetSession, None),
}
_MODEL_HELP = (
    "{setting} takes a registered name ({names}), a local .onnx path, "
    "or an s3:// or file:// URI of a U2-Net-compatible ONNX file"
)


def open_session(
    model: str | None,
    *,
    threads: int,
    use_gpu: bool,
    store: ObjectStore | None,
    max_batch: int = 8,
    mask: MaskOptions | None = None,
    s3_endpoint_url: str | None = None,
    s3_region: str = "us-east-1",
    cache_unused_days: float = DEFAULT_UNUSED_DAYS,
    cache: str | None = None,
    cache_from: str = "TMPDIR",
    uri_from: str | None,
) -> MattingSession:
    """Open the matting model ``model`` names; None means the committed U2-NetP.

    ``model`` is a registered name (``REGISTRY``), a local path, or an ``s3://`` / ``file://`` URI.
    URIs inside ``store`` are read through it, others through ``open_store`` (with the S3
    endpoint given); the bytes are cached in a local file named by their sha256
    (``shared/model_cache.py``; copies not used for ``cache_unused_days`` are deleted there), in the
    folder ``cache`` (None: ``<system temp>/skuforge-models``), which ``cache_from`` sets: what a cache
    that cannot take the copy says to point elsewhere.
    ``uri_from`` is the setting or option ``model`` came from, which an S3 refusal says to check and a
    missing model's help says to change; None for a model no setting chose (a path of the caller's, the
    committed model), which a URI is refused. It has no default: one, SKUFORGE_STORE_URI, was blamed for
    models a caller's setting had named.
    Raises ``MattingModelMissing`` when the file is not there, saying how to make or name one.
    """
    name = DEFAULT_MODEL if model is None else model
    # A tool's help named the services' settings after its own option; with no setting, nothing to change.
    # Only names that open a model: u2net-custom, offered here, was refused for want of its file.
    names = ", ".join(name for name, entry in REGISTRY.items() if entry.file_name is not None)
    help_text = _MODEL_HELP.format(setting=uri_from, names=names) if uri_from else ""
    and_help = f": {help_text}" if help_text else ""

    def session(
        cls: type[MattingSession], model: Path | bytes, model_name: str | None = None
    ) -> MattingSession:
        return cls(
            model, threads=threads, use_gpu=use_gpu, max_batch=max_batch, mask=mask, model_name=model_name
        )

    if name in REGISTRY:
        entry = REGISTRY[name]
        path = entry.path()
        if path is None:
            raise MattingModelError(
                f"model {name!r} needs its file: give the model file's path or URI instead"
                + (f"; {help_text}" if help_text else "")
            )
        if not _is_model_file(path):
            elsewhere = f" Or point elsewhere: {help_text}" if help_text else ""
            raise MattingModelMissing(
                f"the matting model {name!r} is missing: {path} does not exist. "
                f"{entry.how_to_make}.{elsewhere}"
            )
        if name == "u2netp-official":
            # The baseline every figure is compared with, and real-pairs' pseudo-labeller: a file
            # SKUFORGE_OFFICIAL_U2NETP names is checked as set-up checked its own (an md5 read of 4 MB).
            from shared.matting.official import OfficialWeightsError, verify_md5

            # The session runs the bytes checked: opened from the path, a file replaced between the
            # check and the open was loaded unchecked.
            checked = _read_model_file(path)
            try:
                verify_md5(checked, source=str(path))
            except OfficialWeightsError as exc:
                raise MattingModelError(str(exc)) from None
            return session(entry.session_class, checked, path.name)
        return session(entry.session_class, path)
    if "://" in name:
        parent, _, file_name = name.rpartition("/")
        if not file_name or "://" not in parent:
            raise MattingModelError(
                f"{name!r} names no model file; expected s3://bucket/dir/model.onnx or file:///dir/model.onnx"
            )
        if uri_from is None:
            raise ValueError(
                f"the matting model {name} is a URI: uri_from must name the setting it came from"
            )
        try:
            path = fetch_file(
                name,
                cache,
                store=store,
                s3_endpoint_url=s3_endpoint_url,
                s3_region=s3_region,
                unused_days=cache_unused_days,
                uri_from=uri_from,
            )
        except ObjectMissing as exc:
            # The store says what is there instead, if anything (a folder, a pipe).
            # With the setting's help, as for a missing local file: the captioner names two models.
            missing = f"no matting model at {name}: {exc.why}" if exc.why else f"no matting model at {name}"
            raise MattingModelMissing(f"{missing}; {help_text}") from exc
        # A scheme no store serves (https://...), a malformed URI, a key in ``store`` that escapes it.
        except (ValueError, BadInput) as exc:
            raise MattingModelError(f"cannot fetch the matting model {name}: {exc}; {help_text}") from exc
        except UnsafeCache as exc:  # another user could plant a model there: not "make it writable"
            raise MattingModelError(
                f"cannot fetch the matting model {name}: {exc} ({cache_from} moves it)"
            ) from exc
        except OSError as exc:  # the cache cannot be written: full, a read-only /tmp, another user's folder
            # The folder itself, as configured; os.write's ENOSPC names no file.
            raise MattingModelError(
                f"cannot copy the matting model {name} into the model cache {cache_dir(cache)}: {exc}; free "
                f"room there, make it writable by this user, or point {cache_from} at a folder that is"
            ) from exc
        return session(U2NetSession, path, file_name)
    path = Path(name)
    if not _is_model_file(path):
        raise MattingModelMissing(f"no matting model file at {path}{and_help}")
    return session(U2NetSession, path)


def open_tool_session(
    model: str | None, option: str | None, *, threads: int, max_batch: int = 8
) -> MattingSession:
    """A command-line tool's CPU session for the matting model its ``option`` (``--matting-model``) names;
    ``option`` None for a tool with no such option, which runs the committed model (``model`` None).

    An s3:// model is fetched as the services fetch theirs, from SKUFORGE_S3_ENDPOINT_URL and
    SKUFORGE_S3_REGION, and an S3 refusal names ``option``: opened with ``open_session``'s defaults, the
    bench tools asked AWS for a model in MinIO, and a refusal blamed SKUFORGE_STORE_URI. A model that
    does not open is a ``ConfigError``, as the matting stage makes it: the tools' ``run_command`` says
    it in a line (a traceback buried what was wrong with the file).
    """
    settings = load_settings()
    try:
        return open_session(
            model,
            threads=threads,
            use_gpu=False,
            store=None,
            max_batch=max_batch,
            s3_endpoint_url=settings.s3_endpoint_url,
            s3_region=settings.s3_region,
            cache_unused_days=settings.model_cache_unused_days,
            uri_from=option,
        )
    except MattingModelError as exc:
        raise ConfigError(f"{option}: {exc}" if option else str(exc)) from exc
