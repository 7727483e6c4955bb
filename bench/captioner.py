"""Captioner accuracy benchmark: how often the caption's first colour and the shape are right.

    python -m bench.captioner                      # 200 products, committed U2-NetP masks, 512 px
    python -m bench.captioner --grocery-dataset /data/GroceryStoreDataset/dataset   # plus real photos
    python -m bench.captioner --real-only --matting-model var/models/u2netp-official.onnx \
        --out var/captioner-official.json          # another model's figures go beside, not over ours

Renderer part: products of a held-out synthetic catalogue (seed 31337: not the shape tree's fitting
seed 4242, not the matting model's training seeds) go through the captioner's real path, renderer
photo → matting mask → attributes → caption (``shared/captioning/evaluate.py``). The same products
with the renderer's exact masks are scored too, so matting errors and attribute errors can be told
apart.

Real part (``"real"``): the 81 catalogue photos of GroceryStoreDataset (Klasson et al., MIT; see
bench/data/captioner_real/README.md), labelled by hand in bench/data/captioner_real/truth.csv with
their colour and packaging, go through the same path. The dataset comes from ``--grocery-dataset``
or ``SKUFORGE_GROCERY_DATASET`` (the folder holding ``iconic-images-and-descriptions/``); without
either the real part is skipped, saying so, and the previous "real" figures are kept.

Development table (``"real"["dev"]``): bench/data/captioner_real/dev.csv labels 76 in-store photos
of the dataset's train split the same way. Captioner rules are chosen on it, so the 81-photo table
stays an evaluation: ``--dev-only`` scores the development table alone (nothing else is run or
changed) and appends the figure, with ``--note`` saying what was tried, to ``"dev"["tries"]``.

Both parts use the default matting session unless ``--matting-model`` names another model.
Writes bench/results/captioner.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench.grocery import grocery_dataset_default
from shared.argtypes import (
    MAX_THREADS,
    file_problem,
    int_between,
    json_file_text,
    model_location,
    path_argument,
    positive_int,
    read_json_object,
)
from shared.commands import run_command
from skuforge_cli.synth import CATALOGUE_SEED, photo_size_px

RESULTS = Path(__file__).parent / "results"
REAL_TRUTH = Path(__file__).parent / "data" / "captioner_real" / "truth.csv"
REAL_DEV = Path(__file__).parent / "data" / "captioner_real" / "dev.csv"
SEED = 31337
RENDERER_TARGETS = {"colour_accuracy": 0.9, "shape_accuracy": 0.85}
REAL_TARGETS = {"colour_accuracy": 0.85, "packaging_accuracy": 0.8}


def renderer_figures(session: Any, products: int, seed: int, size_px: int) -> dict[str, Any]:
    """The renderer part: predicted and exact masks on ``products`` products of catalogue ``seed``."""
    from shared.captioning.attributes import shape_tree_id
    from shared.captioning.evaluate import renderer_accuracy

    predicted = renderer_accuracy(products, seed, session=session, size_px=size_px)
    exact = renderer_accuracy(products, seed, session=None, size_px=size_px)
    return {
        "colour_accuracy": predicted.colour_accuracy,
        "shape_accuracy": predicted.shape_accuracy,
        "n_products": predicted.n_products,
        "shape_confusion": predicted.shape_confusion,
        "with_exact_masks": {
            "colour_accuracy": exact.colour_accuracy,
            "shape_accuracy": exact.shape_accuracy,
            "shape_confusion": exact.shape_confusion,
        },
        "seconds_per_photo": predicted.seconds_per_photo,
        "colour_misses": predicted.colour_misses,
        "shape_misses": predicted.shape_misses,
        "setup": {
            "seed": seed,
            "size_px": size_px,
            "photos_per_product": 1,
            "matting_model": session.model_id,
            "shape_tree": shape_tree_id(),
            "targets": RENDERER_TARGETS,
        },
    }


def real_figures(session: Any, dataset_dir: Path, truth: Path) -> dict[str, Any]:
    """The real part: every row of the truth table through the real path."""
    from shared.captioning.evaluate import read_truth_table, real_accuracy

    report = real_accuracy(read_truth_table(truth), dataset_dir, session=session)
    return {
        "n_real_products": report.n_real_products,
        "colour_accuracy": report.colour_accuracy,
        "packaging_accuracy": report.packaging_accuracy,
        "seconds_per_photo": report.seconds_per_photo,
        "matting_model": session.model_id,
        "truth_table": str(truth.relative_to(Path(__file__).parent.parent)),
        "targets": REAL_TARGETS,
        "colour_misses": report.colour_misses,
        "packaging_misses": report.packaging_misses,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def dev_figures(
    session: Any, dataset_dir: Path, previous_dev: dict[str, Any], note: str | None
) -> dict[str, Any]:
    """The development table's figures, with the earlier tries; ``note`` adds this run as a try."""
    from shared.captioning.attributes import shape_tree_id

    figures = real_figures(session, dataset_dir, REAL_DEV)
    del figures["targets"]
    tries = list(previous_dev.get("tries", []))
    if note:
        tries.append(
            {
                "note": note,
                "packaging_accuracy": figures["packaging_accuracy"],
                "colour_accuracy": figures["colour_accuracy"],
                "shape_tree": shape_tree_id(),
                "measured_at": figures["measured_at"],
            }
        )
    return {**figures, "tries": tries}


def write_figures(results_file: Path, result: dict[str, Any]) -> None:
    """Write ``result`` to ``results_file`` (read back by the next run, which keeps its other figures).
    A figure that is NaN or infinite is ``NonFiniteFigure``, naming it, and the file is left as it was."""
    text = json_file_text(result, label=str(results_file))
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Score the captions, print and write the figures; a setting, a --matting-model or a store that
    fails says so in a line."""
    return run_command("python -m bench.captioner", lambda: _bench(argv))


def _bench(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.captioner",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--products", type=positive_int, default=200, help="default 200")
    # The renderer's bounds, as `skuforge synth` checks them: -1 or 32 failed after the model opened.
    parser.add_argument("--seed", type=CATALOGUE_SEED, default=SEED, help=f"default {SEED}")
    parser.add_argument(
        "--size-px", type=photo_size_px, default=512, help="photo side (64 to 4096 px) (default 512)"
    )
    # SKUFORGE_CAPTIONER_MATTING_THREADS's bound (services/captioner/config.py): --threads 100000 went to
    # ONNX Runtime as asked.
    parser.add_argument(
        "--threads",
        type=int_between(1, MAX_THREADS),
        default=2,
        help=f"ONNX Runtime threads (1 to {MAX_THREADS}, default 2)",
    )
    parser.add_argument(
        "--matting-model",
        type=model_location,
        default=None,
        help="matting model for both parts (default: the default session's)",
    )
    parser.add_argument(
        "--grocery-dataset",
        type=path_argument("folder"),
        default=grocery_dataset_default(),
        help="GroceryStoreDataset's dataset/ folder (default: $SKUFORGE_GROCERY_DATASET)",
    )
    parser.add_argument("--real-only", action="store_true", help="skip the renderer part, keep its figures")
    parser.add_argument(
        "--dev-only",
        action="store_true",
        help="score only the development table (dev.csv), keep every other figure",
    )
    parser.add_argument("--note", default=None, help="with --dev-only: what this try is, kept in dev.tries")
    parser.add_argument(
        "--out",
        type=path_argument("file"),
        default=RESULTS / "captioner.json",
        help="results JSON, updated in place (default bench/results/captioner.json, the committed figures)",
    )
    args = parser.parse_args(argv)
    if args.matting_model is not None and args.out.resolve() == (RESULTS / "captioner.json").resolve():
        # The committed figures are the default model's: another model's replaced them.
        parser.error(
            "--matting-model scores another model: give --out, so that it does not replace the "
            "committed bench/results/captioner.json"
        )
    # Checked before minutes of scoring, not found in an IsADirectoryError after them.
    if problem := file_problem(args.out, "captioner.json"):
        parser.error(f"--out {args.out}: {problem}")
    if (args.real_only or args.dev_only) and args.grocery_dataset is None:
        parser.error("--real-only and --dev-only need --grocery-dataset or SKUFORGE_GROCERY_DATASET")
    if args.grocery_dataset is not None:
        try:
            iconic = (args.grocery_dataset / "iconic-images-and-descriptions").is_dir()
        except OSError as exc:  # a name too long, a folder this user may not look into: not False
            parser.error(f"--grocery-dataset {args.grocery_dataset}: cannot reach it ({exc.strerror or exc})")
        if not iconic:
            parser.error(
                f"{args.grocery_dataset} has no iconic-images-and-descriptions/: "
                "pass GroceryStoreDataset's dataset/ folder"
            )
    results_file: Path = args.out
    # Updated in place: read before the model opens. A file that is not a JSON object was a
    # JSONDecodeError (or, a list, an AttributeError) traceback.
    previous: dict[str, Any] = {}
    if results_file.is_file():
        try:
            previous = read_json_object(
                results_file, label=f"--out {results_file}", missing="gone while it was read"
            )
        except ValueError as exc:
            parser.error(str(exc))
    # They keep the other figures of --out: from a file without them, the results lacked the renderer's.
    keeping = "--real-only" if args.real_only else "--dev-only" if args.dev_only else None
    if keeping is not None and not previous:
        parser.error(
            f"{keeping} keeps the figures of --out {results_file}, which has none: run without it first "
            "(or give --out a results file of an earlier run)"
        )

    from shared.matting.session import open_tool_session

    session = open_tool_session(args.matting_model, "--matting-model", threads=args.threads)
    started = time.monotonic()
    previous_dev: dict[str, Any] = previous.get("real", {}).get("dev", {})
    if args.dev_only:
        result = dict(previous)
        dev = dev_figures(session, args.grocery_dataset, previous_dev, args.note)
        result["real"] = {**previous.get("real", {}), "dev": dev}
        write_figures(results_file, result)
        print(
            json.dumps(
                {key: dev[key] for key in ("colour_accuracy", "packaging_accuracy", "n_real_products")}
            )
        )
        return 0
    if args.real_only:
        result = {key: value for key, value in previous.items() if key != "real"}
    else:
        result = renderer_figures(session, args.products, args.seed, args.size_px)
    if args.grocery_dataset is not None:
        result["real"] = real_figures(session, args.grocery_dataset, REAL_TRUTH)
        result["real"]["dev"] = dev_figures(session, args.grocery_dataset, previous_dev, None)
        # Its own machine and time: with --real-only the top-level ones are the renderer part's.
        result["real"]["machine"] = (
            f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"ONNX Runtime CPU ({args.threads} threads)"
        )
        result["real"]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    else:
        print(
            "no GroceryStoreDataset (--grocery-dataset or SKUFORGE_GROCERY_DATASET): real part skipped, "
            "previous real figures kept",
            file=sys.stderr,
        )
        if "real" in previous:
            result["real"] = previous["real"]
    if not args.real_only:
        result["machine"] = (
            f"{platform.node()}: {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}, "
            f"ONNX Runtime CPU ({args.threads} threads)"
        )
        result["seconds"] = round(time.monotonic() - started, 1)
        result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_figures(results_file, result)
    summary = {key: result.get(key) for key in ("colour_accuracy", "shape_accuracy", "n_products")}
    if "real" in result:
        summary["real"] = {
            key: result["real"][key] for key in ("colour_accuracy", "packaging_accuracy", "n_real_products")
        }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
