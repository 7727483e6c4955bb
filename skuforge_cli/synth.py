"""``skuforge synth``: write a synthetic catalogue (photos, exact masks, truth) to a folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from shared.synth.photo import MIN_SIZE, write_sku_folders


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _size(text: str) -> int:
    value = int(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_SIZE}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run ``skuforge synth --out DIR --skus N --photos-per-sku K --seed S [--size 512]``."""
    parser = argparse.ArgumentParser(
        prog="skuforge synth",
        description="Render synthetic SKU folders (photos + metadata.json), exact masks and truth.jsonl. "
        "Same arguments, same bytes.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (skus/, masks/, truth.jsonl)")
    parser.add_argument("--skus", type=_positive, required=True, help="number of SKUs")
    parser.add_argument("--photos-per-sku", type=_positive, required=True, help="photos per SKU")
    parser.add_argument(
        "--seed", type=_non_negative, required=True, help="catalogue seed (ids are SYN-<seed>-NNNN)"
    )
    parser.add_argument(
        "--size", type=_size, default=512, help="photo width and height in pixels (default 512)"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    folders = write_sku_folders(args.out, args.skus, args.photos_per_sku, args.seed, args.size)
    elapsed = time.perf_counter() - start
    photos = len(folders) * args.photos_per_sku
    print(
        f"synth: wrote {photos} photos of {len(folders)} SKUs ({args.size}px, seed {args.seed}) "
        f"to {args.out} in {elapsed:.1f}s; truth in {args.out / 'truth.jsonl'}"
    )
    return 0
