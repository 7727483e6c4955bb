"""``skuforge synth``: write a synthetic catalogue (photos, exact masks, truth) to a folder."""

from __future__ import annotations

import argparse
import sys
import time

from shared.argtypes import int_between, path_argument, positive_int, whole_number
from shared.synth.photo import MIN_SIZE, write_sku_folders
from shared.synth.products import sku_id_for

# The largest photo side: 4096 x 4096 is within ingest's default 40-megapixel limit. Before, --size had
# no top: 100000 was a MemoryError traceback, and above 6324 px ingest refused every photo.
MAX_SIZE = 4096


def photo_size_px(text: str) -> int:
    """An argparse type: a photo side the renderer draws (``MIN_SIZE`` to ``MAX_SIZE`` px)."""
    value = whole_number(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_SIZE}")
    if value > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SIZE} (ingest's default pixel limit)")
    return value


# A larger seed made SKU ids longer than the 64 characters an id may have: a traceback after parsing.
CATALOGUE_SEED = int_between(0, 2**63 - 1)


def catalogue_id_problem(skus: int, seed: int) -> str | None:
    """Why ``skus`` SKUs of catalogue ``seed`` cannot be written, or None: ids are SYN-<seed>-NNNN, and
    the last one must fit the 64 characters an id may have (checked before anything is rendered)."""
    try:
        sku_id_for(skus - 1, seed)
    except ValueError as exc:
        return f"the last SKU's {exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run ``skuforge synth --out DIR --skus N --photos-per-sku K --seed S [--size 512]``."""
    parser = argparse.ArgumentParser(
        prog="skuforge synth",
        description="Render synthetic SKU folders (photos + metadata.json), exact masks and truth.jsonl. "
        "Same arguments, same bytes.",
    )
    parser.add_argument(
        "--out",
        type=path_argument("folder"),
        required=True,
        help="output folder (skus/, masks/, truth.jsonl); SKU folders of an earlier, bigger run or another "
        "seed stay there and `skuforge ingest OUT/skus` would read them too: use a fresh folder",
    )
    parser.add_argument("--skus", type=positive_int, required=True, help="number of SKUs")
    parser.add_argument("--photos-per-sku", type=positive_int, required=True, help="photos per SKU")
    parser.add_argument(
        "--seed",
        type=CATALOGUE_SEED,
        required=True,
        help="catalogue seed, 0 to 2^63-1 (ids are SYN-<seed>-NNNN)",
    )
    parser.add_argument(
        "--size",
        type=photo_size_px,
        default=512,
        help=f"photo width and height in pixels, {MIN_SIZE} to {MAX_SIZE} (default 512)",
    )
    args = parser.parse_args(argv)
    problem = catalogue_id_problem(args.skus, args.seed)
    if problem:
        parser.error(f"--skus {args.skus} with --seed {args.seed}: {problem}")
    start = time.perf_counter()
    try:
        folders = write_sku_folders(args.out, args.skus, args.photos_per_sku, args.seed, args.size)
    except OSError as exc:  # a file where a folder goes, no permission, a full disk
        where = f" ({exc.filename})" if exc.filename else ""
        print(
            f"skuforge synth: cannot write under --out {args.out}: {exc.strerror or exc}{where}",
            file=sys.stderr,
        )
        return 2
    elapsed = time.perf_counter() - start
    photos = len(folders) * args.photos_per_sku
    print(
        f"synth: wrote {photos} photos of {len(folders)} SKUs ({args.size}px, seed {args.seed}) "
        f"to {args.out} in {elapsed:.1f}s; truth in {args.out / 'truth.jsonl'}"
    )
    return 0
