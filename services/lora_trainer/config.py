"""Settings of the LoRA trainer stage: environment variables ``SKUFORGE_LORA_*``.

The base model is the generator's (``SKUFORGE_DIFFUSION_MODEL``, ``SKUFORGE_DIFFUSION_BASE_MODEL``)
unless ``SKUFORGE_LORA_MODEL`` names another folder; adapters go to the generator's registry
(``SKUFORGE_DIFFUSION_ADAPTERS_URI``, else ``<SKUFORGE_STORE_URI>/adapters``), so what the trainer
publishes is what the generator lists. Adapters are labelled with the model actually trained
(``SKUFORGE_LORA_BASE_MODEL``; ``adapter_base_model`` in ``stage.py`` says how it defaults), and
the trainer trains on the photos the generator cuts products from
(``SKUFORGE_GENERATION_MIN_PLAIN_BACKGROUND``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from schemas.events import MAX_ADAPTER_SKUS
from shared.config import SETTINGS_CONFIG, model_id_setting, name_or_unset, one_line_setting
from shared.lora_training.dataset import (
    MAX_EARLY_STOP_MIN_DELTA,
    MAX_LORA_RESOLUTION,
    MAX_PRIOR_LOSS_WEIGHT,
    TrainingRecipe,
)

_RECIPE = TrainingRecipe()


class LoraTrainerSettings(BaseSettings):
    """What the trainer trains, when, and how."""

    model_config = SETTINGS_CONFIG

    lora_model: str | None = Field(
        default=None,
        description="base inpainting pipeline folder to train on; unset = SKUFORGE_DIFFUSION_MODEL",
    )
    lora_base_model: str | None = Field(
        default=None,
        min_length=1,
        description="base-model name adapters are registered under (the generator uses those matching its "
        "SKUFORGE_DIFFUSION_BASE_MODEL); unset = the generator's when training its model, else the "
        "SKUFORGE_LORA_MODEL folder's name (refused at start-up if SKUFORGE_DIFFUSION_BASE_MODEL is set)",
    )
    lora_device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto", description="'auto' = CUDA if available"
    )
    lora_threads: int = Field(default=1, ge=1, le=256, description="torch CPU threads (CPU training only)")
    lora_rank: int = Field(default=_RECIPE.rank, ge=1, le=256, description="LoRA rank")
    lora_alpha: int = Field(
        default=_RECIPE.alpha, ge=1, le=1024, description="LoRA alpha (scale = alpha / rank)"
    )
    lora_learning_rate: float = Field(default=_RECIPE.learning_rate, gt=0.0, le=0.1, description="AdamW rate")
    lora_max_steps: int = Field(
        default=_RECIPE.max_steps, ge=1, description="step cap (too many steps copy the training images)"
    )
    lora_early_stop_patience: int = Field(
        default=_RECIPE.early_stop_patience,
        ge=0,
        description="stop when the loss average has not improved for this many steps; 0 = never",
    )
    # The bounds below are TrainingRecipe's (shared/lora_training/dataset.py says why), so a recipe built
    # elsewhere holds the same rules.
    lora_early_stop_min_delta: float = Field(
        default=_RECIPE.early_stop_min_delta,
        ge=0.0,
        le=MAX_EARLY_STOP_MIN_DELTA,
        description="smallest improvement of the loss's moving average that counts, at most "
        f"{MAX_EARLY_STOP_MIN_DELTA} (the loss is a noise MSE, below 1)",
    )
    # A multiple of 8 (the VAE's factor): diffusers refused any other size when painting class images,
    # a ValueError that failed every job for good.
    lora_resolution: int = Field(
        default=_RECIPE.resolution,
        ge=64,
        le=MAX_LORA_RESOLUTION,
        multiple_of=8,
        description=f"training image side (px), a multiple of 8 from 64 to {MAX_LORA_RESOLUTION}",
    )
    lora_scenes_per_photo: int = Field(
        default=_RECIPE.scenes_per_photo, ge=1, le=200, description="composites per reference photo"
    )
    lora_class_images: int = Field(
        default=_RECIPE.class_images,
        ge=0,
        le=2000,
        description="prior-preservation images per class; 0 = none (none either when "
        "SKUFORGE_LORA_PRIOR_LOSS_WEIGHT is 0)",
    )
    lora_class_images_dir: str | None = Field(
        default=None,
        description="real class images, <dir>/<class slug>/*.png|jpg; unset = painted by the base model",
    )
    lora_prior_loss_weight: float = Field(
        default=_RECIPE.prior_loss_weight,
        ge=0.0,
        le=MAX_PRIOR_LOSS_WEIGHT,
        description=f"weight of the class-image loss, at most {MAX_PRIOR_LOSS_WEIGHT:g} (above it the "
        "product barely trains)",
    )
    lora_checkpoint_every: int = Field(
        default=_RECIPE.checkpoint_every,
        ge=1,
        description="steps between checkpoints to the store (not part of a job's identity: no retraining)",
    )
    lora_seed: int = Field(
        default=_RECIPE.seed, ge=0, lt=2**32, description="seed of the data order and noise"
    )
    lora_general_after_accepted: int = Field(
        default=500, ge=1, description="train the general adapter after this many new accepted images"
    )
    lora_general_every_s: float = Field(
        default=0.0,
        ge=0.0,
        description="also train it on this schedule when new images came (the clock starts when the "
        "trainer first sees an accepted image); 0 = off",
    )
    # Each image may be of another SKU, and AdapterPublished names at most MAX_ADAPTER_SKUS: above it the
    # adapter trained for hours, then its event failed to build and nothing was published.
    lora_general_max_images: int = Field(
        default=2000,
        ge=1,
        le=MAX_ADAPTER_SKUS,
        description="the general adapter trains on at most this many accepted images, spread evenly "
        "over all of them (each is copied into the job's set and encoded on the training device); "
        f"at most {MAX_ADAPTER_SKUS}, the SKUs its AdapterPublished event may name",
    )
    # Each poll lists and reads the training requests in the store: 1e-300 passed "> 0", a busy loop of reads.
    # At most a day: past threading.TIMEOUT_MAX (about 292 years) the worker's wait raised and it died.
    lora_poll_s: float = Field(
        default=5.0,
        ge=0.5,
        le=86400.0,
        description="how often the worker looks for work (s, at least 0.5, at most a day)",
    )

    @field_validator("lora_model", "lora_base_model", "lora_class_images_dir", mode="before")
    @classmethod
    def _name_or_unset(cls, value: Any) -> Any:
        return name_or_unset(value)

    @field_validator("lora_base_model")
    @classmethod
    def _base_model_is_a_model_id(cls, value: str | None) -> str | None:
        # The base_model of every adapter.published the trainer writes, which refuses what this refuses.
        return model_id_setting(value)

    @field_validator("lora_model")
    @classmethod
    def _model_is_one_line(cls, value: str | None) -> str | None:
        # Its folder's name is the adapters' base_model when SKUFORGE_LORA_BASE_MODEL is unset.
        return one_line_setting(value)

    def recipe(self) -> TrainingRecipe:
        """The training recipe these settings describe (its weight-changing knobs are part of every
        job's content hash, ``TrainingRecipe.identity``)."""
        return TrainingRecipe(
            rank=self.lora_rank,
            alpha=self.lora_alpha,
            learning_rate=self.lora_learning_rate,
            max_steps=self.lora_max_steps,
            early_stop_patience=self.lora_early_stop_patience,
            early_stop_min_delta=self.lora_early_stop_min_delta,
            resolution=self.lora_resolution,
            scenes_per_photo=self.lora_scenes_per_photo,
            class_images=self.lora_class_images,
            prior_loss_weight=self.lora_prior_loss_weight,
            checkpoint_every=self.lora_checkpoint_every,
            seed=self.lora_seed,
        )
