"""Settings of the matting stage: environment variables ``SKUFORGE_MATTING_*``.

They sit beside the shared ``Settings`` (``shared/config.py``), not inside them, because only this
stage reads them. Field names carry the ``matting_`` prefix under the shared ``SKUFORGE_`` prefix,
so the variables are ``SKUFORGE_MATTING_<NAME>`` and ``shared.config.describe_validation_error``,
which names variables as ``SKUFORGE_`` + field name, reports them correctly.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from shared.argtypes import MAX_THREADS
from shared.config import SETTINGS_CONFIG, model_uri_opens, name_or_unset
from shared.matting.roi import DEFAULT_ROI_MARGIN

# A fixed cut-off strictly between 0 and 1, or "otsu" for a per-image threshold.
Threshold = Annotated[float, Field(gt=0.0, lt=1.0)] | Literal["otsu"]
_THRESHOLD_HELP = "expected 'otsu' or a number strictly between 0 and 1"


class MattingSettings(BaseSettings):
    """What the matting stage runs and how it turns confidences into masks."""

    model_config = SETTINGS_CONFIG

    matting_model: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "ONNX model: a local path, an s3:// or file:// URI, or a registered name "
            "(u2netp, u2netp-int8, u2netp-official); unset = the committed U2-NetP fine-tuned on real "
            "product photos, shared/matting/models/u2netp-skuforge.onnx"
        ),
    )
    matting_cache_dir: str | None = Field(
        default=None,
        description="where a model given as a URI is copied; unset = <system temp>/skuforge-models"
        "; made for this user alone (0700) when missing; refused when everyone may write to it (unset: also"
        " when another user owns it or its group may write to it)",
    )
    matting_threads: int = Field(
        default=2, ge=1, le=MAX_THREADS, description="ONNX Runtime intra-op threads (CPU execution provider)"
    )
    matting_use_gpu: bool = Field(
        default=True, description="use ONNX Runtime's CUDA execution provider when it is available"
    )
    matting_max_batch: int = Field(
        default=8,
        ge=1,
        le=256,
        description="images per matting chunk (one ONNX Runtime call on GPU; on CPU, calls of at most 4); "
        "a chunk is of one poll's records, at most SKUFORGE_MAX_POLL_RECORDS",
    )
    matting_threshold: Threshold = Field(
        default=0.5, description="mask threshold on the confidence: a number in (0, 1), or 'otsu' per image"
    )
    matting_cleanup: bool = Field(
        default=True, description="drop small blobs (always keeping the largest) and fill holes in the mask"
    )
    matting_min_blob_fraction: float = Field(
        default=0.002,
        ge=0.0,
        lt=1.0,
        description="with clean-up: blobs smaller than this fraction of the matted area (the image, or "
        "its region of interest) are dropped",
    )

    matting_roi: bool = Field(
        default=True,
        description=(
            "mat the box around the event's expected mask (widened by the ROI margin) instead of the "
            "whole image, so neighbouring products are not cut out with the product"
        ),
    )
    matting_roi_margin: float = Field(
        default=DEFAULT_ROI_MARGIN,
        ge=0.0,
        le=4.0,
        description=(
            "with ROI: how much wider than the product's bounding box the box is on each side, "
            "in product sizes"
        ),
    )

    @field_validator("matting_model", "matting_cache_dir", mode="before")
    @classmethod
    def _name_or_unset(cls, value: Any) -> Any:
        return name_or_unset(value)

    @field_validator("matting_model")
    @classmethod
    def _model_uri_opens(cls, value: str | None) -> str | None:
        return model_uri_opens(value)

    @field_validator("matting_threshold", mode="before")
    @classmethod
    def _one_threshold_error(cls, value: object) -> object:
        """Parse here so a bad value gives one message instead of one per member of the union."""
        if isinstance(value, str) and value.strip().lower() == "otsu":
            return "otsu"
        # Not a str of other scripts' digits: float() reads them, pydantic (every other number) does not.
        if isinstance(value, bool) or not isinstance(value, str | int | float) or not str(value).isascii():
            raise ValueError(_THRESHOLD_HELP)
        try:
            number = float(value)
        except ValueError:
            raise ValueError(_THRESHOLD_HELP) from None
        if not 0.0 < number < 1.0:
            raise ValueError(_THRESHOLD_HELP)
        return number
