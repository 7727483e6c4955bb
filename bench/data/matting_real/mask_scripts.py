"""What the two mask scripts (make_catalogue_masks, make_instore_masks) share: where the photos are
(--data, default SKUFORGE_GROCERY_DATASET as every other bench command reads it) and what to do
without OpenCV."""

import argparse
from pathlib import Path

from bench.grocery import grocery_dataset_default
from shared.argtypes import path_argument

# OpenCV is no skuforge dependency (nothing else needs it), so it is imported where it is used, after the
# command line is read: --help, and a refusal of the options, need none.
NO_OPENCV = (
    "OpenCV (cv2) re-derives the masks and skuforge does not install it: "
    "`.venv/bin/pip install opencv-python-headless`, then run this again "
    "(the committed masks/ need no re-deriving to run the benchmark)"
)


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """--data: GroceryStoreDataset's dataset/ folder; an empty SKUFORGE_GROCERY_DATASET is unset, as
    Compose and Helm pass one."""
    parser.add_argument(
        "--data",
        type=path_argument("folder"),
        default=grocery_dataset_default(),
        help="GroceryStoreDataset's dataset/ folder (default: SKUFORGE_GROCERY_DATASET)",
    )


def dataset_folder(parser: argparse.ArgumentParser, data: Path | None) -> Path:
    """``data``, or the parser's refusal when neither --data nor SKUFORGE_GROCERY_DATASET named one."""
    if data is None:
        parser.error("--data (or SKUFORGE_GROCERY_DATASET) must name GroceryStoreDataset's dataset/ folder")
    return data
