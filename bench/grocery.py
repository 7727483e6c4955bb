"""Where the real-photo benchmarks find GroceryStoreDataset's ``dataset/`` folder when no option names it:
``SKUFORGE_GROCERY_DATASET``, read here for every bench command (matting_real, captioner,
caption_colours, the mask scripts)."""

from __future__ import annotations

import os


def grocery_dataset_default() -> str | None:
    """``SKUFORGE_GROCERY_DATASET``, the default of a bench option naming GroceryStoreDataset's
    ``dataset/`` folder; None when it is unset or empty (Compose and Helm pass an empty one), which
    read as ``Path("")`` was the current folder."""
    return os.environ.get("SKUFORGE_GROCERY_DATASET") or None
