"""Train U2-NetP (or U2-Net) on the renderer's synthetic products, evaluate it, export ONNX.

Data: photos from ``shared.synth`` with exact masks (nothing is downloaded), plus, when given,
any folder of image/mask pairs — that is how human-corrected masks flow back into training.
Loss: the paper's deep supervision (BCE on the fused output and all six side outputs).
Evaluation: held-out photos from a different seed, through the real inference path (the ONNX
session: resize to 320, predict, resize back, threshold), so the reported IoU is what the
gate will see. Requires the ``diffusion`` extra (torch).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import pickle
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from shared.argtypes import json_file_text
from shared.arith.masks import mask_iou
from shared.config import ConfigError
from shared.errors import ImageRejected
from shared.images import decode_image, decode_mask, pixel_array, seek_photo_page
from shared.matting import RENDERER_HELDOUT_SEED
from shared.matting.session import MaskOptions, U2NetPSession, U2NetSession, u2net_preprocess
from shared.matting.u2net import (
    ModelName,
    build_model,
    deep_supervision_loss,
    export_onnx,
    load_reference_state_dict,
    read_weights,
)
from shared.matting.unfinished import unfinished_problem
from shared.model_cache import write_atomically
from shared.photos import HEIC_ADVICE, HEIC_SUFFIXES, PHOTO_FILE_SUFFIXES
from shared.synth import render_dataset

log = logging.getLogger("skuforge.matting.train")

IMAGE_SUFFIXES = PHOTO_FILE_SUFFIXES  # what ingest takes as a photo (.tif and .jfif included)
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".webp")  # the formats decode_mask reads (no JPEG)


@dataclass
class TrainConfig:
    """Everything a training run depends on; written into the model card."""

    model: ModelName = "u2netp"
    steps: int = 2000
    batch: int = 8
    learning_rate: float = 1e-3
    size_px: int = 320
    # Most steps run at a lower resolution (the net is fully convolutional): ~3x cheaper on CPU.
    low_res_px: int = 192
    low_res_fraction: float = 0.6
    train_images: int = 2000
    heldout_images: int = 200
    seed: int = 1
    heldout_seed: int = RENDERER_HELDOUT_SEED
    extra_pairs: list[Path] = field(default_factory=list)
    init_weights: Path | None = None  # start from a state dict (e.g. the committed .pth) instead of scratch
    # Keep BatchNorm in eval mode (fixed statistics, affine still trained): needed when starting from
    # the official weights, whose BatchNorms were folded into the convolutions (shared.matting.official),
    # and steadier at the small batches a CPU affords.
    freeze_batchnorm: bool = False
    threads: int = 2
    # Where the steps run: "cpu", or "cuda" on a machine with an NVIDIA GPU (minutes instead of hours
    # for the same steps). Not part of a run's identity: a checkpoint resumes on either.
    device: str = "cpu"
    # Also keep each checkpoint's weights as CHECKPOINT-stepNNNNN.pth (reference layout), for
    # `matting export CK1 CK2 CK3` (checkpoint averaging); the checkpoint itself is overwritten.
    keep_checkpoints: bool = False
    max_minutes: float | None = None  # stop early (then export) when the training time budget is spent
    log_every: int = 50
    checkpoint_every: int = 250


@dataclass
class Evaluation:
    """Held-out quality of a model, through the inference path."""

    mean_iou: float
    median_iou: float
    mae: float
    n_images: int
    # Each photo's IoU, in held-out order (quantize compares them photo by photo); not in summary().
    ious: tuple[float, ...] = field(default=(), repr=False)

    def summary(self) -> dict[str, float | int]:
        """The figures printed and written to model cards, without the per-photo IoUs."""
        return {
            "mean_iou": self.mean_iou,
            "median_iou": self.median_iou,
            "mae": self.mae,
            "n_images": self.n_images,
        }


def render_training_set(n: int, seed: int, size_px: int) -> tuple[list[Image.Image], npt.NDArray[np.uint8]]:
    """``n`` synthetic photos of ``n`` different products with their exact masks."""
    images, masks = [], []
    for photo in render_dataset(n, seed, size_px=size_px):
        images.append(photo.image)
        masks.append(photo.mask)
    return images, np.stack(masks)


def load_pairs(folder: Path, size_px: int) -> tuple[list[Image.Image], npt.NDArray[np.uint8]]:
    """Image/mask pairs from ``folder/images/NAME.*`` and ``folder/masks/NAME.png`` (or ``MASK_SUFFIXES``'
    others: one mask an image), resized to size_px.

    Decoded as the pipeline decodes (``shared.images``: EXIF orientation applied, so a phone photo
    lines up with a mask drawn on it upright; alpha over white; 16-bit rescaled), and checked: each
    mask has its image's size, marks some product and is not a colour picture. Hidden files (macOS's
    ``._NAME``) and ``__MACOSX`` are skipped. Raises ``ConfigError`` naming every file that is missing
    or refused, before any of them is used, and for a folder a ``pairs`` or ``real-pairs`` run stopped in.
    """
    if (unfinished := unfinished_problem(folder)) is not None:
        raise ConfigError(f"--extra {folder}: {unfinished}")
    images, masks, problems = [], [], []
    mask_dir = folder / "masks"
    named: dict[str, list[Path]] = {}  # the files in masks/ by their name less its suffix
    for path in sorted(mask_dir.iterdir()) if mask_dir.is_dir() else ():
        if not path.name.startswith(".") and path.is_file():
            named.setdefault(path.stem, []).append(path)
    photos: dict[str, list[Path]] = {}  # the files in images/ by their name less its suffix
    for image_path in sorted((folder / "images").iterdir()):
        if not image_path.name.startswith(".") and image_path.name != "__MACOSX" and image_path.is_file():
            photos.setdefault(image_path.stem, []).append(image_path)
    for stem, same_name in photos.items():
        if len(same_name) > 1:
            # Each was paired with the one mask of their name, silently: a photo it was not drawn on.
            problems.append(
                f"{', '.join(map(str, same_name))}: more than one image named {stem}, for the one mask "
                "of that name; rename or remove all but one"
            )
            continue
        image_path = same_name[0]
        if image_path.suffix.lower() in HEIC_SUFFIXES:  # an iPhone's: what to do, as ingest says it
            problems.append(f"{image_path}: {HEIC_ADVICE}; or move it out of images/")
            continue
        if image_path.suffix.lower() not in IMAGE_SUFFIXES:
            # Skipped without a word before: a .tif or .jfif pair (photo suffixes ingest takes) was
            # left out of training unseen.
            problems.append(
                f"{image_path}: not an image training reads ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "convert it or move it out of images/"
            )
            continue
        found = named.get(image_path.stem, [])
        candidates = [path for path in found if path.suffix.lower() in MASK_SUFFIXES]
        if len(candidates) != 1:
            problems.append(_mask_problem(image_path, mask_dir, found, candidates))
            continue
        mask_path = candidates[0]
        try:
            image = decode_image(image_path.read_bytes())
        except (ImageRejected, OSError) as exc:
            problems.append(f"{image_path}: refused ({exc})")
            continue
        try:
            mask_bytes = mask_path.read_bytes()
            mask = decode_mask(mask_bytes)
            colour = _is_colour_picture(mask_bytes)
        except (ImageRejected, OSError) as exc:
            problems.append(f"{mask_path}: refused ({exc})")
            continue
        if mask.shape != (image.height, image.width):
            problems.append(
                f"{mask_path} is {mask.shape[1]}x{mask.shape[0]}, its image {image_path} is "
                f"{image.width}x{image.height} (EXIF orientation applied); a mask must have its image's size"
            )
            continue
        if colour:
            # Read by brightness, a photo saved as its own mask marks its light parts as product.
            problems.append(f"{mask_path}: a colour picture, not a mask (white on black marks the product)")
            continue
        if not mask.any():
            problems.append(f"{mask_path}: marks no product (all background); a pair needs its product")
            continue
        size = (size_px, size_px)
        images.append(image.resize(size, Image.Resampling.BILINEAR))
        resized = Image.fromarray(mask).resize(size, Image.Resampling.BILINEAR)
        masks.append((np.asarray(resized) >= 128).astype(np.uint8) * 255)
    if problems:
        shown = problems[:10] + ([f"and {len(problems) - 10} more"] if len(problems) > 10 else [])
        raise ConfigError("\n".join([f"--extra {folder}: unusable image/mask pairs:", *shown]))
    if not images:
        raise ConfigError(f"--extra {folder}: no image/mask pairs (expected images/ and masks/ folders)")
    return images, np.stack(masks)


def _mask_problem(image_path: Path, mask_dir: Path, found: list[Path], candidates: list[Path]) -> str:
    """Why ``image_path`` has no one mask: two or more, or none under the names looked for. Only
    ``NAME.png`` was looked for: a ``.tif`` mask beside its photo was "no mask at masks/NAME.png"."""
    if candidates:
        return f"{image_path}: more than one mask ({', '.join(map(str, candidates))}); keep one"
    stem = image_path.stem
    others = ", ".join(f"{stem}{suffix}" for suffix in MASK_SUFFIXES[1:])
    missing = f"{image_path}: no mask at {mask_dir / f'{stem}.png'} (or {others})"
    if not found:
        return missing
    verb = "is" if len(found) == 1 else "are"
    return f"{missing}; {', '.join(map(str, found))} {verb} in no format a mask is read in: save it as PNG"


def _is_colour_picture(data: bytes) -> bool:
    """Whether an RGB(A) mask file shows colours: more than 1% of its pixels clearly not grey. A
    mask drawn in grey and saved as RGB is not; a palette mask is read by its indices, not asked."""
    with Image.open(io.BytesIO(data)) as opened:
        # The page decode_mask reads: a grey preview ahead of a TIFF's colour page hid its colours.
        seek_photo_page(opened, "mask")
        if opened.mode not in ("RGB", "RGBA"):
            return False
    # uint8 as decoded: max - min of a pixel cannot go below 0, so no wider copy is needed.
    pixels = pixel_array(decode_image(data))
    spread = pixels.max(axis=-1) - pixels.min(axis=-1)
    return float((spread > 32).mean()) > 0.01


def _batches(
    images: list[Image.Image], masks: npt.NDArray[np.uint8], config: TrainConfig, rng: np.random.Generator
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    for step in range(config.steps):
        size = config.low_res_px if step < config.low_res_fraction * config.steps else config.size_px
        picks = rng.choice(len(images), size=config.batch, replace=False)
        batch_images, batch_masks = [], []
        for index in picks:
            image, mask = images[index], Image.fromarray(masks[index])
            if rng.random() < 0.5:  # products and scenes are left-right symmetric enough
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            batch_images.append(image)
            batch_masks.append(np.asarray(mask.resize((size, size), Image.Resampling.BILINEAR)))
        inputs = torch.from_numpy(u2net_preprocess(batch_images, size_px=size))
        # Brightness jitter after normalisation would break the reference's divide-by-max; jitter
        # contrast instead, which the divide-by-max does not undo.
        contrast = torch.from_numpy(rng.uniform(0.8, 1.2, size=(config.batch, 1, 1, 1)).astype(np.float32))
        inputs = inputs * contrast
        targets = torch.from_numpy(np.stack(batch_masks).astype(np.float32) / 255.0)[:, None]
        yield step, inputs, targets


def _fingerprint(config: TrainConfig) -> dict[str, Any]:
    """What a checkpoint's run trained on and from: a resume must be of the same run. An ``--extra``
    folder counts by its pairs' names and sizes too (corrected masks dropped into it make another run);
    the learning rate, ``--steps`` and the time budget may change on a resume."""
    return {
        "model": config.model,
        "seed": config.seed,
        "size_px": config.size_px,
        "batch": config.batch,
        "low_res_px": config.low_res_px,
        "low_res_fraction": config.low_res_fraction,
        "freeze_batchnorm": config.freeze_batchnorm,
        "train_images": config.train_images,
        "extra_pairs": [_folder_listing(folder) for folder in config.extra_pairs],
        "init_weights": None if config.init_weights is None else str(config.init_weights.resolve()),
    }


def _folder_listing(folder: Path) -> str:
    """The folder and a digest of its files' relative names and sizes (cheap: no file is read).

    Without what ``load_pairs`` skips, hidden files and ``__MACOSX``: a ``.partial-*`` file an
    interrupted atomic write left (``matting pairs``, ``real-pairs``), or one cleaned away, made a
    resume of the same data refused as another run's."""
    relative = (path.relative_to(folder) for path in folder.rglob("*") if path.is_file())
    entries = sorted(
        f"{name.as_posix()}:{(folder / name).stat().st_size}"
        for name in relative
        if not any(part.startswith(".") or part == "__MACOSX" for part in name.parts)
    )
    return f"{folder.resolve()}#{hashlib.sha256(chr(10).join(entries).encode()).hexdigest()[:16]}"


def _batchnorm_folded(model: torch.nn.Module) -> bool:
    """Whether every BatchNorm of ``model`` has identity statistics (mean 0, variance 1 or 1 - eps), as
    in weights whose BatchNorms were folded into the convolutions (``shared.matting.official``)."""
    norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    return bool(norms) and all(
        norm.running_mean is not None
        and norm.running_var is not None
        and bool((norm.running_mean == 0).all())
        and bool(((norm.running_var - 1).abs() <= 1e-4).all())
        for norm in norms
    )


def start_state(
    config: TrainConfig, checkpoint: Path | None
) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """The model a run starts from (``init_weights`` loaded) and the checkpoint it resumes, if any.

    ``ValueError`` says why the run cannot start: ``init_weights`` that do not fit the model, or a
    checkpoint of another run (other data, seed, model or init weights: resuming it trained that run
    on and exported it under this run's model card) or one already at ``steps`` (nothing to train:
    the old weights were exported again). Cheap: called before the training set is rendered."""
    model = build_model(config.model)
    if config.init_weights is not None:
        load_reference_state_dict(model, read_weights(config.init_weights))  # a checkpoint's too
        if not config.freeze_batchnorm and _batchnorm_folded(model):
            raise ValueError(
                f"{config.init_weights}: its BatchNorms are folded into the convolutions (identity "
                "statistics: the official U2-NetP and every model fine-tuned from it); train it with "
                "--freeze-batchnorm, or in train mode they re-normalise every activation and undo it"
            )
    if checkpoint is None or not checkpoint.is_file():
        return model, None
    try:
        saved: dict[str, Any] = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, OSError) as exc:  # torn, or not torch's
        raise ValueError(
            f"--checkpoint {checkpoint} cannot be read ({exc}); delete it to start afresh"
        ) from None
    if not isinstance(saved, dict) or not {"model", "step"} <= saved.keys():
        raise ValueError(
            f"--checkpoint {checkpoint} is not a checkpoint of `matting train` (no model and step): give "
            "weights to start from with --init, and a new --checkpoint"
        )
    wanted = _fingerprint(config)
    written_by = saved.get("config")
    if written_by is not None and written_by != wanted:
        differs = ", ".join(key for key in wanted if written_by.get(key) != wanted[key])
        raise ValueError(
            f"--checkpoint {checkpoint} is of another run (its {differs} differ): give this run its own "
            "--checkpoint, or delete that one to start afresh"
        )
    done = int(saved["step"]) + 1
    if done >= config.steps:
        raise ValueError(
            f"--checkpoint {checkpoint} has already trained {done} steps of --steps {config.steps}: nothing "
            "to train; raise --steps to train on, or give a new --checkpoint"
        )
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as exc:  # a checkpoint from before the fingerprint, of the other model
        raise ValueError(f"--checkpoint {checkpoint} does not fit {config.model}: {exc}") from None
    return model, saved


def train(
    config: TrainConfig, out_onnx: Path, *, checkpoint: Path | None = None
) -> tuple[torch.nn.Module, dict[str, float | None]]:
    """Train, checkpointing as it goes (a rerun with the same checkpoint resumes), then export ONNX."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model, saved = start_state(config, checkpoint)
    device = torch.device(config.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # one input size throughout: pick kernels once
    model.to(device)  # before the optimiser is made (its state lives where the parameters do)
    started = time.monotonic()
    # The pairs first: a refused file is named now, not after rendering the synthetic set (minutes).
    extra = [load_pairs(folder, config.size_px) for folder in config.extra_pairs]
    images, masks = render_training_set(config.train_images, config.seed, config.size_px)
    for extra_images, extra_masks in extra:
        images += extra_images
        masks = np.concatenate([masks, extra_masks])
    render_s = time.monotonic() - started
    log.info("training data ready", extra={"images": len(images), "seconds": round(render_s, 1)})

    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    first_step = 0
    if saved is not None:
        optimiser.load_state_dict(saved["optimiser"])
        for group in optimiser.param_groups:  # the configured rate, not the saved one: a resume may lower it
            group["lr"] = config.learning_rate
        first_step = int(saved["step"]) + 1
        log.info("resumed", extra={"step": first_step})

    model.train()
    if config.freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
    train_started = time.monotonic()
    window: list[float] = []
    last_loss: float | None = None
    steps_done = first_step
    for step, inputs, targets in _batches(images, masks, config, rng):
        if step < first_step:
            continue  # keep the data stream identical to an uninterrupted run
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        outputs = model(inputs)
        fused_loss, total_loss = deep_supervision_loss(outputs, targets)
        optimiser.zero_grad()
        total_loss.backward()
        optimiser.step()
        window.append(float(fused_loss.detach()))
        if (
            (step + 1) % config.log_every == 0
            or step + 1 == config.steps
            or (config.max_minutes is not None and time.monotonic() - train_started > config.max_minutes * 60)
        ):
            last_loss = sum(window) / len(window)
            elapsed = time.monotonic() - train_started
            log.info(
                "training",
                extra={
                    "step": step + 1,
                    "fused_bce": round(last_loss, 4),
                    "elapsed_s": round(elapsed, 1),
                    "size_px": inputs.shape[-1],
                },
            )
            window.clear()
        steps_done = step + 1
        out_of_time = (
            config.max_minutes is not None and time.monotonic() - train_started > config.max_minutes * 60
        )
        if checkpoint is not None and ((step + 1) % config.checkpoint_every == 0 or out_of_time):
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            # Beside it, then renamed over it: a run killed mid-save left a torn file, which the rerun
            # could not read, and the progress it was to resume from was gone.
            partial = checkpoint.with_name(f".{checkpoint.name}.partial")
            weights = {key: value.detach().cpu() for key, value in model.state_dict().items()}
            torch.save(
                {
                    "model": weights,
                    "optimiser": optimiser.state_dict(),
                    "step": step,
                    "config": _fingerprint(config),
                },
                partial,
            )
            os.replace(partial, checkpoint)
            if config.keep_checkpoints:
                kept = io.BytesIO()
                torch.save(weights, kept)
                step_file = checkpoint.with_name(f"{checkpoint.stem}-step{step + 1:05d}.pth")
                write_atomically(step_file, kept.getvalue())
        if out_of_time:
            log.info("training time budget spent; stopping", extra={"step": step + 1})
            break
    train_s = time.monotonic() - train_started

    model.eval()
    model.to("cpu")  # the exported graph and the .pth are device-free
    out_onnx.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model, out_onnx, size_px=config.size_px)
    # The state dict too (reference key layout): for fine-tuning and for PyTorch-side comparisons.
    torch.save(model.state_dict(), out_onnx.with_suffix(".pth"))
    final = round(last_loss, 4) if last_loss is not None else None
    timings = {
        "render_s": round(render_s, 1),
        "train_s": round(train_s, 1),
        "final_fused_bce": final,
        "steps_done": steps_done,
    }
    return model, timings


def evaluate(
    onnx_path: Path | bytes,
    n: int,
    seed: int,
    *,
    model: ModelName = "u2netp",
    size_px: int = 512,
    threads: int = 2,
    batch: int = 8,
    progress: Callable[[int, float], None] | None = None,
) -> Evaluation:
    """Mean IoU and MAE of ``onnx_path`` (a file, or its bytes) on ``n`` held-out renderer photos
    (different products). ``progress`` is told the photos done and their mean IoU after each batch."""
    session_class = U2NetPSession if model == "u2netp" else U2NetSession
    session = session_class(onnx_path, threads=threads, use_gpu=False, max_batch=batch, mask=MaskOptions())
    ious: list[float] = []
    errors: list[float] = []
    photos = render_dataset(n, seed, size_px=size_px)  # rendered batch by batch: progress from the first
    while chunk := list(itertools.islice(photos, batch)):
        for photo, result in zip(chunk, session.predict([p.image for p in chunk]), strict=True):
            ious.append(mask_iou(result.mask, photo.mask))
            errors.append(float(np.abs(result.confidence - photo.mask.astype(np.float32) / 255.0).mean()))
        if progress is not None:
            progress(len(ious), float(np.mean(ious)))
    return Evaluation(
        mean_iou=round(float(np.mean(ious)), 4),
        median_iou=round(float(np.median(ious)), 4),
        mae=round(float(np.mean(errors)), 4),
        n_images=len(ious),
        ious=tuple(round(value, 4) for value in ious),
    )


def write_model_card(
    path: Path,
    config: TrainConfig,
    timings: dict[str, float | None],
    evaluation: Evaluation,
    onnx_path: Path,
    extra: dict[str, object] | None = None,
) -> None:
    """A short model card beside the ONNX file: data, steps, time, held-out IoU/MAE."""
    card = {
        "model": config.model,
        "onnx": onnx_path.name,
        "onnx_bytes": onnx_path.stat().st_size,
        "data": f"{config.train_images} renderer photos (shared/synth, seed {config.seed}) at "
        f"{config.size_px}px"
        + (f" + pairs from {[str(p) for p in config.extra_pairs]}" if config.extra_pairs else ""),
        "heldout": f"{evaluation.n_images} renderer photos of other products "
        f"(seed {config.heldout_seed}) at 512px, through the ONNX session "
        "(resize to 320, predict, resize back, threshold 0.5)",
        "heldout_images": evaluation.n_images,
        "heldout_mean_iou": evaluation.mean_iou,
        "heldout_median_iou": evaluation.median_iou,
        "heldout_mae": evaluation.mae,
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k != "extra_pairs"
        },
        "timings_s": timings,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}",
        **(extra or {}),
    }
    path.write_text(json_file_text(card, label=str(path)))
