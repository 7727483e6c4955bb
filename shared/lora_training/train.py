"""The LoRA training loop: diffusers' inpainting UNet with a peft adapter, prior-preservation loss.

What ``train_dreambooth_lora`` (diffusers' example) does, cut to what skuforge needs and made
restartable:

- the UNet gets a peft ``LoraConfig`` (rank, alpha) on its attention projections; everything else is
  frozen. The UNet is the inpainting one (latents + mask + masked-image latents in), trained with the
  product's background as the mask, which is what the generator repaints;
- each step draws one instance item and (with class items) one class item from a generator seeded by
  ``(recipe.seed, step)``: a resumed job sees the same batches and noise as an uninterrupted one;
- loss = MSE(noise) on the instance item + ``prior_loss_weight`` x MSE(noise) on the class item;
- early stop: when an exponential moving average of the loss has not improved by ``min_delta`` for
  ``patience`` steps; ``max_steps`` caps it anyway (too many steps copy the training images);
- a checkpoint (LoRA weights, optimiser state, step, early-stop state) goes to the object store every
  ``checkpoint_every`` steps; a job started again resumes from the newest one;
- ``should_stop`` (SIGTERM) is asked between the items it encodes and after each step: the loop raises
  ``TrainingInterrupted``, after a checkpoint once a step was taken.

Only SD 1.x-style inpainting folders are trained here (one text encoder); SDXL is refused (told by
its pipeline class or its second text encoder), and so are a UNet that is not an inpainting one and a
model that does not predict the noise (``check_trainable``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from shared.generation.adapters import safetensors_header
from shared.images import decode_image, decode_mask, pixel_array

# TrainingInterrupted lives with the set, whose building stops too; it is imported from here as well.
from shared.lora_training.dataset import TrainingInterrupted, TrainingItem, TrainingRecipe, TrainingSet
from shared.store import ObjectStore

if TYPE_CHECKING:
    import torch

log = logging.getLogger("skuforge.lora_training")

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
EMA_DECAY = 0.9
INPAINT_IN_CHANNELS = 9  # latents (4) + paint mask (1) + masked-image latents (4)


class TrainingError(Exception):
    """The job cannot train (an SDXL folder, an empty set): the message says what to change."""


@dataclass(frozen=True)
class TrainingResult:
    """What a finished job produced."""

    weights: bytes  # diffusers LoRA safetensors (save_lora_weights layout, its LoraConfig in the header)
    steps: int
    final_loss: float | None
    resumed_from_step: int
    stopped_early: bool


@dataclass
class _Progress:
    step: int = 0
    ema_loss: float | None = None
    best_loss: float = math.inf
    since_best: int = 0


def check_trainable(model_dir: Path) -> None:
    """Refuse a base model this loop cannot train: SDXL (two text encoders, text-time conditioning),
    a UNet that is not an inpainting one (it takes latents + mask + masked-image latents, 9
    channels; a text-to-image UNet takes 4 and fails at the first step), or one that does not
    predict the noise (a scheduler whose ``prediction_type`` is ``v_prediction`` or ``sample``).
    A file that cannot be read raises its ``OSError``: a folder being copied or a mount away is the
    machine's fault, not the model's, and a trainer retries it."""
    try:
        index = json.loads((model_dir / "model_index.json").read_text())
        pipeline_class = str(index.get("_class_name", ""))
    except (ValueError, AttributeError) as exc:
        raise TrainingError(f"{model_dir}/model_index.json cannot be read ({exc})") from None
    # Told by the pipeline class (StableDiffusionXL*, the generator's own test) or SDXL's second text
    # encoder, not by "XL" anywhere in the text: a recorded name ("_name_or_path") may hold it.
    if "XL" in pipeline_class or "text_encoder_2" in index:
        raise TrainingError(
            f"{model_dir} is an SDXL pipeline ({pipeline_class or 'text_encoder_2'}): the trainer trains "
            "SD 1.x-style inpainting only"
        )
    try:
        in_channels = json.loads((model_dir / "unet" / "config.json").read_text()).get("in_channels")
    except (ValueError, AttributeError) as exc:
        raise TrainingError(f"{model_dir}/unet/config.json cannot be read ({exc})") from None
    if in_channels != INPAINT_IN_CHANNELS:
        raise TrainingError(
            f"{model_dir} has a UNet with in_channels {in_channels}, not {INPAINT_IN_CHANNELS}: the trainer "
            "needs an inpainting model (e.g. an SD 1.5 inpainting pipeline)"
        )
    # The loss is the noise MSE: a v-prediction model (some SD 2.x-based inpainting models) passed every
    # check above and was trained towards the noise, an adapter that pulls its predictions off target.
    try:
        scheduler = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError):
        scheduler = {}  # the scheduler's own default is epsilon; a missing one fails at loading
    prediction_type = scheduler.get("prediction_type") if isinstance(scheduler, dict) else None
    if prediction_type not in (None, "epsilon"):
        raise TrainingError(
            f"{model_dir} has a scheduler with prediction_type {prediction_type!r}, not 'epsilon': the "
            "trainer trains noise-predicting models only (e.g. an SD 1.5 inpainting pipeline)"
        )


def trained_class_items(training_set: TrainingSet, recipe: TrainingRecipe) -> list[TrainingItem]:
    """The set's class items the loop draws from: none when ``prior_loss_weight`` is 0 (a set built by an
    earlier release for such a job holds some: they are neither encoded nor counted as trained on)."""
    return training_set.class_items if recipe.prior_loss_weight > 0 else []


def checkpoint_key(prefix: str) -> str:
    """Where a job's newest checkpoint lives (one object, replaced in place)."""
    return f"{prefix}/checkpoint.pt"


def train_lora(
    model_dir: Path,
    training_set: TrainingSet,
    recipe: TrainingRecipe,
    store: ObjectStore,
    checkpoint_prefix: str,
    *,
    device: str = "cpu",
    on_step: Callable[[int, float], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> TrainingResult:
    """Train a LoRA on ``training_set`` (resuming from ``checkpoint_prefix`` if a checkpoint is there)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import CLIPTextModel, CLIPTokenizer

    check_trainable(model_dir)  # checked at start-up too; this is for a folder changed since
    instances, classes = training_set.instance_items, trained_class_items(training_set, recipe)
    if not instances:
        raise TrainingError(f"training set {training_set.sha256[:12]} has no instance images")
    torch_device = torch.device(device)
    # Everything in float32, whatever the folder was saved in: transformers loads the dtype the
    # folder's config names (a pipeline saved after loading it in float16 says float16) and diffusers
    # float32, and a float16 text encoder feeding a float32 UNet fails at its first step
    # ("expected m1 and m2 to have the same dtype"); LoRA weights and AdamW want float32 anyway.
    fp32: dict[str, Any] = {"local_files_only": True, "dtype": torch.float32}
    tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", **fp32)
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", **fp32)
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", **fp32)
    scheduler = DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler", local_files_only=True)
    modules: list[Any] = [text_encoder, vae, unet]
    for module in modules:
        module.requires_grad_(False)
        # A keyword a release does not know is ignored with a warning: the cast makes float32 certain.
        module.to(device=torch_device, dtype=torch.float32)
    # The adapter's initial A matrices come from torch's global generator: seed it, so a job is a
    # function of its recipe (an uninterrupted run and a resumed one end with the same weights).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        unet.add_adapter(
            LoraConfig(
                r=recipe.rank,
                lora_alpha=recipe.alpha,
                init_lora_weights="gaussian",
                target_modules=LORA_TARGETS,
            )
        )
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=recipe.learning_rate)

    # Everything but the UNet is frozen: encode every item once. A stop request is heard between items
    # (a general set holds up to 2000): nothing is written yet, the job encodes again when it resumes.
    encoded: list[_Encoded] = []
    with torch.no_grad():
        for item in (*instances, *classes):
            if should_stop():
                raise TrainingInterrupted(
                    f"stopped encoding the training set: {len(encoded)} of {len(instances) + len(classes)} "
                    "items; it is encoded again when the job resumes"
                )
            try:
                encoded.append(_encode(item, store, tokenizer, text_encoder, vae, torch_device))
            except Exception as exc:
                exc.add_note(f"while encoding training item {item.item_id}")
                raise
    encoded_instances, encoded_classes = encoded[: len(instances)], encoded[len(instances) :]

    progress = _Progress()
    key = checkpoint_key(checkpoint_prefix)
    state = _read_checkpoint(store, key, torch_device) if store.exists(key) else None
    if state is not None and _resume(
        state, key, unet, optimizer, get_peft_model_state_dict, set_peft_model_state_dict
    ):
        progress = _Progress(**state["progress"])
        log.info("resuming from checkpoint", extra={"step": progress.step, "checkpoint": key})
    resumed_from = progress.step
    # A run that stopped early and died before its result was written resumes stopped: another
    # step would give other weights than the uninterrupted run's.
    stopped_early = bool(recipe.early_stop_patience) and progress.since_best >= recipe.early_stop_patience
    unet.train()
    while progress.step < recipe.max_steps and not stopped_early:
        try:
            value = _step(
                encoded_instances, encoded_classes, unet, scheduler, optimizer, recipe, progress.step
            )
        except Exception as exc:
            # A fault of torch's (a shape or dtype problem) says what failed, not where: the job's failure
            # record names the step (the trainer reads the notes into it).
            exc.add_note(f"at training step {progress.step + 1} of {recipe.max_steps}")
            raise
        progress.step += 1
        if not math.isfinite(value):
            # Diverged (a learning rate or alpha too high): its weights would paint black or noise.
            raise TrainingError(
                f"training diverged: the loss is {value} at step {progress.step}; lower "
                "SKUFORGE_LORA_LEARNING_RATE or SKUFORGE_LORA_ALPHA"
            )
        progress.ema_loss = (
            value if progress.ema_loss is None else EMA_DECAY * progress.ema_loss + (1 - EMA_DECAY) * value
        )
        if progress.ema_loss < progress.best_loss - recipe.early_stop_min_delta:
            progress.best_loss, progress.since_best = progress.ema_loss, 0
        else:
            progress.since_best += 1
        if on_step is not None:
            on_step(progress.step, value)
        done = progress.step >= recipe.max_steps
        if recipe.early_stop_patience and progress.since_best >= recipe.early_stop_patience:
            stopped_early = done = True
        stopping = not done and should_stop()
        if done or stopping or progress.step % recipe.checkpoint_every == 0:
            _checkpoint(store, key, unet, optimizer, progress, get_peft_model_state_dict)
        if stopping:
            raise TrainingInterrupted(f"stopped at step {progress.step}; the checkpoint holds it")
        if done:
            break
    return TrainingResult(
        weights=adapter_weights(unet),
        steps=progress.step,
        final_loss=progress.ema_loss,
        resumed_from_step=resumed_from,
        stopped_early=stopped_early,
    )


def _step(
    instances: list[_Encoded],
    classes: list[_Encoded],
    unet: Any,
    scheduler: Any,
    optimizer: Any,
    recipe: TrainingRecipe,
    step: int,
) -> float:
    """Optimiser step ``step + 1`` (its batch and noise drawn from ``(recipe.seed, step)``): its loss."""
    import torch
    import torch.nn.functional as F

    device = instances[0].latents.device  # where the set was encoded: the training device
    draw = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
    batch = [instances[int(torch.randint(len(instances), (1,), generator=draw))]]
    if classes:
        batch.append(classes[int(torch.randint(len(classes), (1,), generator=draw))])
    latents = torch.cat([b.latents for b in batch])
    noise = torch.randn(latents.shape, generator=draw).to(device)
    steps_t = torch.randint(scheduler.config.num_train_timesteps, (len(batch),), generator=draw).to(device)
    noisy = scheduler.add_noise(latents, noise, steps_t)
    model_input = torch.cat(
        [noisy, torch.cat([b.mask for b in batch]), torch.cat([b.masked_latents for b in batch])], dim=1
    )
    hidden = torch.cat([b.text for b in batch])
    prediction = unet(model_input, steps_t, encoder_hidden_states=hidden).sample
    losses = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
    loss = losses[0] + (recipe.prior_loss_weight * losses[1] if len(batch) > 1 else 0.0)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def adapter_weights(unet: Any) -> bytes:
    """The adapter ``unet`` holds as a diffusers LoRA safetensors file (``save_lora_weights``), with
    its ``LoraConfig`` in the header, byte for byte the same for the same adapter.

    Without the config diffusers' ``load_lora_weights`` takes alpha = rank, and the generator served
    an adapter trained at alpha / rank = 4 at scale 1. safetensors writes the header's metadata from a
    hash map, in an order that changes from save to save: its keys are sorted again, so a resumed job
    ends with the uninterrupted one's bytes and the registry's sha256 names one file per adapter.
    """
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state_dict = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    with tempfile.TemporaryDirectory(prefix="lora-") as tmp:
        StableDiffusionInpaintPipeline.save_lora_weights(
            tmp,
            unet_lora_layers=state_dict,
            unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        )
        weights = (Path(tmp) / "pytorch_lora_weights.safetensors").read_bytes()
    header = safetensors_header(weights)
    (header_bytes,) = struct.unpack("<Q", weights[:8])
    metadata = header.pop("__metadata__", {})
    # Tensors keep their order (their offsets point into the data that follows, unchanged).
    text = json.dumps({"__metadata__": dict(sorted(metadata.items())), **header}, separators=(",", ":"))
    encoded = text.encode() + b" " * (-len(text) % 8)  # padded to 8 bytes, as safetensors pads it
    return struct.pack("<Q", len(encoded)) + encoded + weights[8 + header_bytes :]


@dataclass(frozen=True)
class _Encoded:
    latents: torch.Tensor
    mask: torch.Tensor
    masked_latents: torch.Tensor
    text: torch.Tensor


def vae_pixels(data: bytes) -> npt.NDArray[np.float32]:
    """A training image decoded (``decode_image``) as the VAE takes it: HxWx3 float32 in -1..1.

    Read a strip at a time (``pixel_array``, as every stage reads a decoded image), then scaled in
    place."""
    pixels = pixel_array(decode_image(data)).astype(np.float32)
    pixels /= 127.5
    pixels -= 1.0
    return pixels


def _encode(
    item: TrainingItem, store: ObjectStore, tokenizer: Any, text_encoder: Any, vae: Any, device: Any
) -> _Encoded:
    """Latents, latent-size paint mask, masked-image latents and text states of one item."""
    import torch
    import torch.nn.functional as F

    image = vae_pixels(store.get_bytes(item.image))
    pixels = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).to(device)
    if item.mask is not None:
        # Paint the background (what the generator repaints); keep the product.
        product = decode_mask(store.get_bytes(item.mask)).astype(np.float32) / 255.0
        paint = torch.from_numpy(1.0 - product)[None, None].to(device)
    else:
        paint = torch.ones((1, 1, *pixels.shape[2:]), device=device)
    scaling = vae.config.scaling_factor
    latents = vae.encode(pixels).latent_dist.mean * scaling
    masked_latents = vae.encode(pixels * (paint < 0.5)).latent_dist.mean * scaling
    mask = F.interpolate(paint, size=latents.shape[-2:])
    ids = tokenizer(
        item.prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    text = text_encoder(ids)[0]
    return _Encoded(latents=latents, mask=mask, masked_latents=masked_latents, text=text)


def _read_checkpoint(store: ObjectStore, key: str, device: Any) -> dict[str, Any] | None:
    """The checkpoint at ``key``, or None (a warning names it) when it cannot be read: cut short, not
    torch's, or without the fields ``_checkpoint`` writes. The job then starts again from step 0 and
    ends with the weights an uninterrupted one ends with; raised, it was counted as the job's fault and
    the job failed for good after its attempts. Tensors and plain values only (``weights_only``): an
    object in the store is not code to run."""
    import pickle

    import torch

    try:
        state = torch.load(io.BytesIO(store.get_bytes(key)), map_location=device, weights_only=True)
        if not (isinstance(state, dict) and {"lora", "optimizer", "progress"} <= state.keys()):
            raise ValueError("not a dict of lora, optimizer and progress")
        _Progress(**state["progress"])
    except (RuntimeError, ValueError, TypeError, EOFError, pickle.UnpicklingError) as exc:
        _starting_again(key, exc)
        return None
    return state


def _resume(
    state: dict[str, Any],
    key: str,
    unet: Any,
    optimizer: Any,
    lora_state: Callable[[Any], Any],
    set_lora_state: Callable[[Any, Any], Any],
) -> bool:
    """Load a read checkpoint's LoRA weights and optimizer state into ``unet`` and ``optimizer``; False
    (the warning of a checkpoint that cannot be read) when they do not fit the job's model: another
    job's copied in, or damaged in a way ``torch.load`` accepts (a parameter group of another size, a
    LoRA of another rank, AdamW moments of another shape). Raised, it was counted as the job's fault
    and the job failed for good after its attempts. The weights loaded before the mismatch showed are
    put back to the job's initial ones, so that the job started again ends as an uninterrupted one ends."""
    initial_lora = {name: tensor.detach().clone() for name, tensor in lora_state(unet).items()}
    initial_optimizer = optimizer.state_dict()  # a fresh optimizer's: no moments yet
    try:
        set_lora_state(unet, state["lora"])
        optimizer.load_state_dict(state["optimizer"])
        _check_moments(optimizer)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        set_lora_state(unet, initial_lora)
        optimizer.load_state_dict(initial_optimizer)
        _starting_again(key, exc)
        return False
    return True


def _check_moments(optimizer: Any) -> None:
    """``ValueError`` unless each parameter's AdamW state, where it has one, holds its step and moments
    of the parameter's shape. ``load_state_dict`` checks only how many parameters each group has: a
    moment of another shape, or one missing, loaded and raised at the next step, as the job's fault."""
    import torch

    for group in optimizer.param_groups:
        names = ("exp_avg", "exp_avg_sq", *(("max_exp_avg_sq",) if group.get("amsgrad") else ()))
        for param in group["params"]:
            moments = optimizer.state.get(param)
            if not moments:
                continue  # not stepped yet: AdamW makes its moments at its first step
            step = moments.get("step")
            if not (isinstance(step, torch.Tensor) and step.numel() == 1):
                raise ValueError(f"the optimizer's step of a parameter is {step!r:.80}, not one number")
            for name in names:
                moment = moments.get(name)
                if isinstance(moment, torch.Tensor) and moment.shape == param.shape:
                    continue
                found = (
                    f"of shape {tuple(moment.shape)}" if isinstance(moment, torch.Tensor)
                    else "missing" if moment is None else f"a {type(moment).__name__}"
                )  # fmt: skip
                raise ValueError(
                    f"the optimizer's {name} of a parameter of shape {tuple(param.shape)} is {found}"
                )


def _starting_again(key: str, exc: Exception) -> None:
    log.warning(
        "checkpoint cannot be read: the job starts again from step 0",
        extra={"checkpoint": key, "reason": " ".join(f"{type(exc).__name__}: {exc}".split())[:300]},
    )


def _checkpoint(
    store: ObjectStore,
    key: str,
    unet: Any,
    optimizer: Any,
    progress: _Progress,
    lora_state: Callable[[Any], Any],
) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(
        {"lora": lora_state(unet), "optimizer": optimizer.state_dict(), "progress": progress.__dict__}, buffer
    )
    store.put_bytes(key, buffer.getvalue())  # replaced whole: a reader sees the old or the new one
    log.info("checkpoint", extra={"step": progress.step, "ema_loss": progress.ema_loss})
