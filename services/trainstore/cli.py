"""``skuforge dataset``: look into the retraining store and export training sets from it.

    skuforge dataset stats [--json]
    skuforge dataset export OUT --format imagefolder|jsonl --size 256 --max-synthetic-per-real K \
        [--min-real 1]
    skuforge dataset compact

The store is ``SKUFORGE_STORE_URI`` (and ``SKUFORGE_S3_ENDPOINT_URL``), the retraining store's root
inside it ``SKUFORGE_TRAINSTORE_PREFIX``. Only manifests are read, except by ``export``, which reads
(and checks) the images it writes out.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from services.trainstore.config import TrainstoreSettings
from shared.config import load_settings
from shared.store import open_store
from shared.trainstore.dataset import EXPORT_FORMATS, export_dataset, sku_stats
from shared.trainstore.manifest import ManifestStore


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _open_manifests() -> ManifestStore:
    settings = load_settings()
    trainstore = load_settings(TrainstoreSettings)
    store = open_store(
        settings.store_uri, s3_endpoint_url=settings.s3_endpoint_url, s3_region=settings.s3_region
    )
    return ManifestStore(store, trainstore.trainstore_prefix)


def main(argv: list[str] | None = None) -> int:
    """Run ``skuforge dataset ...``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="skuforge dataset", description="Inspect and export the retraining store."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    stats = sub.add_parser(
        "stats", help="per SKU: real, synthetic accepted/approved, pending, rejected, mean IoU"
    )
    stats.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    export = sub.add_parser("export", help="write a training set honouring the real:synthetic policy")
    export.add_argument("out", type=Path, help="output directory (new or empty)")
    export.add_argument("--format", choices=EXPORT_FORMATS, required=True, help="imagefolder or jsonl")
    export.add_argument("--size", type=_positive, default=256, help="output side in px (default 256)")
    export.add_argument(
        "--max-synthetic-per-real",
        type=_non_negative,
        required=True,
        help="synthetic images per real one, at most",
    )
    export.add_argument(
        "--min-real", type=_positive, default=1, help="classes with fewer real images are left out"
    )
    export.add_argument("--sku", action="append", default=None, help="export only this SKU (repeatable)")
    sub.add_parser("compact", help="merge every SKU's manifest deltas into one file now")
    args = parser.parse_args(argv)
    manifests = _open_manifests()

    if args.action == "stats":
        rows = sku_stats(manifests.iter_rows())
        if args.json:
            for row in rows:
                print(json.dumps(asdict(row), sort_keys=True))
            return 0
        print(
            f"{'sku_id':<24} {'real':>5} {'accepted':>9} {'approved':>9} "
            f"{'pending':>8} {'rejected':>9} {'mean_iou':>9}"
        )
        for row in rows:
            iou = f"{row.mean_iou:.3f}" if row.mean_iou is not None else "-"
            print(
                f"{row.sku_id:<24} {row.real:>5} {row.synthetic_accepted:>9} {row.synthetic_approved:>9} "
                f"{row.pending:>8} {row.rejected:>9} {iou:>9}"
            )
        print(f"{len(rows)} SKUs")
        return 0
    if args.action == "export":
        try:
            summary = export_dataset(
                manifests,
                args.out,
                fmt=args.format,
                size_px=args.size,
                max_synthetic_per_real=args.max_synthetic_per_real,
                min_real=args.min_real,
                sku_ids=args.sku,
            )
        except (FileExistsError, ValueError) as exc:
            parser.error(str(exc))
        print("\n".join(summary.lines()))
        return 0
    compacted = [sku_id for sku_id in manifests.sku_ids() if manifests.compact(sku_id)]
    print(json.dumps({"compacted": compacted}))
    return 0
