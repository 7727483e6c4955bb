"""Settings of the captioner stage: environment variables ``SKUFORGE_CAPTIONER_*``.

Like the matting stage's, they sit beside the shared ``Settings``: field names carry the
``captioner_`` prefix under ``SKUFORGE_``, so ``shared.config.describe_validation_error`` names the
variables correctly. The captioner opens its own matting session (reference photos are few and
deserve the full model even where the matting stage runs a quantised one), hence its own
``captioner_matting_*`` fields.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings

from shared.argtypes import MAX_THREADS
from shared.config import SETTINGS_CONFIG, model_uri_opens, name_or_unset


class CaptionerSettings(BaseSettings):
    """Which captioner backend runs, its model, and the rules that make a photo unusable."""

    model_config = SETTINGS_CONFIG

    captioner_backend: Literal["attributes", "vlm"] = Field(
        default="attributes",
        description="'attributes' (measured colours, shape and view; no weights) or 'vlm' (adds BLIP)",
    )
    captioner_vlm_model: str | None = Field(
        default=None,
        min_length=1,
        description="BLIP model directory (save_pretrained layout): a local path, or an s3:// or file:// URI",
    )
    captioner_vlm_cache_dir: str | None = Field(
        default=None,
        description="where a BLIP directory given as a URI is downloaded; unset = system temp"
        "; made for this user alone (0700) when missing; refused when everyone may write to it (unset: also"
        " when another user owns it or its group may write to it)",
    )
    captioner_vlm_prompt: str = Field(
        default="a photo of",
        description="text the BLIP sentence starts from (' ', spaces only, = unconditional: an empty "
        "variable is unset)",
    )
    captioner_vlm_max_new_tokens: int = Field(
        default=30,
        ge=1,
        le=200,
        description="longest BLIP sentence, in tokens (no sampling: greedy, or the num_beams of the model "
        "folder's generation_config.json)",
    )
    captioner_matting_model: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "matting ONNX model of the reference masks (what SKUFORGE_MATTING_MODEL takes); "
            "unset = the committed U2-NetP"
        ),
    )
    captioner_matting_cache_dir: str | None = Field(
        default=None,
        description="where a matting model given as a URI is copied; unset = <system temp>/skuforge-models"
        "; made for this user alone (0700) when missing; refused when everyone may write to it (unset: also"
        " when another user owns it or its group may write to it)",
    )
    captioner_matting_threads: int = Field(
        default=2, ge=1, le=MAX_THREADS, description="threads of ONNX Runtime (matting) and of torch (BLIP)"
    )
    captioner_use_gpu: bool = Field(default=True, description="use CUDA for matting and BLIP when available")
    captioner_matting_max_batch: int = Field(
        default=10,
        ge=1,
        le=256,
        description="photos per matting batch; 10 = a whole SKU in one batch (on a GPU one call; on CPU "
        "calls of at most 4)",
    )
    captioner_mask_threshold: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="matting confidence at or above which a pixel is product"
    )
    captioner_min_mask_fraction: float = Field(
        default=0.005,
        ge=0.0,
        lt=1.0,
        description="a mask covering less of the photo than this: no product found (photo unusable as a "
        "reference; stored as a real training image without a mask)",
    )
    captioner_max_mask_fraction: float = Field(
        default=0.95,
        gt=0.0,
        le=1.0,
        description="a mask covering more of the photo than this: full frame, no product found (unusable as "
        "a reference; stored as a real training image without a mask)",
    )
    captioner_fill_dents_share: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="on a plain-background photo of a SKU whose packaging is a box, carton or can (convex "
        "outlines), a dent in the predicted mask covering at least this share of it is filled: a white face "
        "on white the model dropped (0: off)",
    )
    captioner_blank_spread: float = Field(
        default=3.0,
        ge=0.0,
        description="photos whose colours vary less than this (CIE Lab, 0.1th-99.9th percentile) are blank",
    )
    captioner_colours: int = Field(default=5, ge=2, le=12, description="k of the k-means colour clustering")
    captioner_max_colour_names: int = Field(
        default=3, ge=1, le=8, description="colour names a caption mentions, most dominant first"
    )
    captioner_min_colour_share: float = Field(
        default=0.04, ge=0.0, lt=1.0, description="colours covering less of the product are not named"
    )

    @field_validator(
        "captioner_vlm_model",
        "captioner_vlm_cache_dir",
        "captioner_matting_model",
        "captioner_matting_cache_dir",
        mode="before",
    )
    @classmethod
    def _name_or_unset(cls, value: Any) -> Any:
        return name_or_unset(value)

    @field_validator("captioner_vlm_model", "captioner_matting_model")
    @classmethod
    def _model_uri_opens(cls, value: str | None) -> str | None:
        return model_uri_opens(value)

    @model_validator(mode="after")
    def _consistent(self) -> CaptionerSettings:
        if self.captioner_backend == "vlm" and self.captioner_vlm_model is None:
            raise ValueError(
                "SKUFORGE_CAPTIONER_BACKEND=vlm needs SKUFORGE_CAPTIONER_VLM_MODEL (a BLIP directory or URI)"
            )
        # Set for BLIP, the attributes backend never reads them: the operator meant vlm, or stale config.
        # Not the cache folder: a place, not a choice of captions, often set for every stage alike. Nor a
        # model given as blank: that is unset (None), though pydantic counts it as set.
        unread = sorted(
            name
            for name in self.model_fields_set
            if name.startswith("captioner_vlm_")
            and name != "captioner_vlm_cache_dir"
            and getattr(self, name) is not None
        )
        if self.captioner_backend == "attributes" and unread:
            raise ValueError(
                f"{', '.join('SKUFORGE_' + name.upper() for name in unread)} set but "
                "SKUFORGE_CAPTIONER_BACKEND is attributes, which runs no BLIP: set it to vlm, or unset them"
            )
        if self.captioner_min_mask_fraction >= self.captioner_max_mask_fraction:
            raise ValueError(
                "SKUFORGE_CAPTIONER_MIN_MASK_FRACTION must be below SKUFORGE_CAPTIONER_MAX_MASK_FRACTION"
            )
        return self
