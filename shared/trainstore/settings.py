"""Settings of the trainstore stage and the dataset tools: environment variables ``SKUFORGE_TRAINSTORE_*``.

Like the other stages' settings they sit beside the shared ``Settings``, with field names carrying
the ``trainstore_`` prefix under ``SKUFORGE_`` so configuration errors name the right variable.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from shared import keys
from shared.config import SETTINGS_CONFIG, name_or_unset
from shared.store import MAX_SEGMENT_BYTES


class TrainstoreSettings(BaseSettings):
    """Where the retraining store lives inside the object store, and when manifests are compacted."""

    model_config = SETTINGS_CONFIG

    trainstore_prefix: str = Field(
        default="trainstore",
        pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$",
        description="root of the retraining store inside SKUFORGE_STORE_URI (images/, masks/, manifests/); "
        f"refused inside a folder of the flow's ({', '.join(keys.Folder)}): a lifecycle rule for that folder "
        "(docs/ops.md) would expire the retraining store with it",
    )
    trainstore_compact_after_parts: int = Field(
        default=16,
        ge=1,
        le=10_000,
        description="a SKU's manifest deltas are merged into one compacted part once there are this many",
    )
    trainstore_max_clock_ahead_s: float = Field(
        default=300.0,
        ge=0,
        le=86_400,
        description="an event produced more than this far ahead of the stage's clock is dead-lettered "
        "(clock_skew): the event's time orders an item's rows, so it would outrank every later event",
    )
    trainstore_sweep_grace_s: float = Field(
        default=86_400.0,
        ge=0,
        le=31_536_000,
        description="objects of a replaced item that no manifest row names (left by a writer whose row "
        "lost, or a deletion cut short) are deleted when the item is replaced again, or by skuforge "
        "dataset sweep --delete, once written this long before (the store's times: S3's LastModified); "
        "younger ones may be a writer's whose row is on its way",
    )

    @field_validator("trainstore_prefix", mode="before")
    @classmethod
    def _name_or_unset(cls, value: Any) -> Any:
        return name_or_unset(value)

    @field_validator("trainstore_prefix")
    @classmethod
    def _prefix_has_no_dot_segments(cls, value: str) -> str:
        # The pattern lets "." and ".." through; the object store refuses them in every key, so the
        # stage would fail (and dead-letter) every event instead of refusing to start.
        if any(segment in (".", "..") for segment in value.split("/")):
            raise ValueError("must not have a '.' or '..' segment (the default is 'trainstore')")
        return value

    @field_validator("trainstore_prefix")
    @classmethod
    def _prefix_folders_are_nameable(cls, value: str) -> str:
        # The store refuses a key with a longer folder name (no file system names it): the stage retried
        # and dead-lettered every event as handler_error, and `dataset stats` ended in a traceback.
        if any(len(segment) > MAX_SEGMENT_BYTES for segment in value.split("/")):
            raise ValueError(
                f"has a folder name longer than {MAX_SEGMENT_BYTES} bytes (the default is 'trainstore')"
            )
        return value

    @field_validator("trainstore_prefix")
    @classmethod
    def _prefix_outside_the_flows_folders(cls, value: str) -> str:
        # Inside a flow folder, the lifecycle rule docs/ops.md gives that folder expires the product with
        # it (and ingest reads incoming/<x>/ as SKU x's photos). A prefix holding flow folders ("masks")
        # harms nothing: the store reads and sweeps only its own images/, masks/, manifests/.
        if folder := keys.folder_of(f"{value}/"):
            raise ValueError(
                f"must not be inside the flow's folder {folder} (shared/keys.py): a lifecycle rule for that "
                "folder (docs/ops.md) would expire the retraining store with it (the default is 'trainstore')"
            )
        return value
