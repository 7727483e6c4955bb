"""How often the captioner's first colour is right on in-store photos, by split and by mask.

    python -m bench.caption_colours --grocery-dataset /data/GroceryStoreDataset/dataset
    python -m bench.caption_colours --grocery-dataset DIR --split train --no-write   # while tuning

In-store phone photos of GroceryStoreDataset are lit by the shop (warm or green casts), unlike the
catalogue photos ``bench.captioner`` scores. Four tables, each photo's acceptable colours labelled
by hand by looking at the photo (bench/data/caption_colours/README.md):

- ``train_hand``: the 28 **train** photos with a hand-drawn product mask (bench/data/matting_real);
- ``train_matted``: the 76 **train** photos of bench/data/captioner_real/dev.csv, masked by the
  default matting session, as the captioner masks them;
- ``val_hand`` and ``val_matted``: the 43 **val** photos with a hand mask, with that mask and with
  the matting session's.

Colour rules are tuned on the train tables only (``--split train``); val is run once for the
reported figure. The test split is never read. A hand mask separates colour naming from matting:
with it a miss is the colour rule's. A row is right when the first colour of the caption (as
``shared.captioning.evaluate.real_accuracy`` composes it) is the label's colour or alt colour.
``--label before|after`` files the run under that name in bench/results/caption_colours.json, each
table stamped with when, at which commit and with which matting model it was measured: a partial run
(``--split val``) replaces only its own tables, and the label's others keep their own stamps. A table
the label holds from another commit is another change's record, which a run refuses to replace (name
the change in the label: ``--label lightness-before``) unless given ``--replace``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.grocery import grocery_dataset_default
from shared.argtypes import MAX_THREADS, int_between, json_file_text, path_argument
from shared.commands import run_command

HERE = Path(__file__).parent
LABELS = HERE / "data" / "caption_colours" / "labels.csv"
DEV_TABLE = HERE / "data" / "captioner_real" / "dev.csv"
HAND_MASKS = HERE / "data" / "matting_real"
HAND_MANIFESTS = ("instore_reserved", "instore_pristine", "instore_fruitveg", "instore_packages")
RESULTS = HERE / "results" / "caption_colours.json"


def read_labels() -> dict[str, tuple[str, ...]]:
    """Acceptable colours per relative photo path: labels.csv, then dev.csv's train rows."""
    labels: dict[str, tuple[str, ...]] = {}
    for table in (LABELS, DEV_TABLE):
        with table.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row["path"].startswith("test/"):
                    raise ValueError(f"{table}: {row['path']} is in the test split, which is never read")
                colours = tuple(c for c in (row["colour"].strip(), row["alt_colour"].strip()) if c)
                labels.setdefault(row["path"], colours)
    return labels


def hand_masked() -> dict[str, Path]:
    """Relative photo path -> hand-drawn mask of the in-store photos with one."""
    masks: dict[str, Path] = {}
    for manifest in HAND_MANIFESTS:
        for entry in json.loads((HAND_MASKS / f"{manifest}.json").read_text()):
            masks[entry["path"]] = HAND_MASKS / "masks" / f"{entry['id']}.png"
    return masks


def tables() -> dict[str, list[tuple[str, Path | None]]]:
    """Each table's (photo path, hand mask or None for the matting session's)."""
    hand = hand_masked()
    with DEV_TABLE.open(newline="", encoding="utf-8") as handle:
        dev = [row["path"] for row in csv.DictReader(handle)]
    train_hand = sorted(path for path in hand if path.startswith("train/"))
    val_hand = sorted(path for path in hand if path.startswith("val/"))
    return {
        "train_hand": [(path, hand[path]) for path in train_hand],
        "train_matted": [(path, None) for path in dev],
        "val_hand": [(path, hand[path]) for path in val_hand],
        "val_matted": [(path, None) for path in val_hand],
    }


def first_colour(image: Image.Image, mask: np.ndarray) -> str | None:
    """The caption's first colour for the product ``mask`` marks, as the real-photo bench composes it."""
    from schemas.common import SkuMetadata
    from shared.captioning.evaluate import REAL_CATEGORY, caption_shape_and_colour

    return caption_shape_and_colour(
        image, mask, SkuMetadata(sku_id="real", name="real", category=REAL_CATEGORY)
    )[1]


def score(
    rows: list[tuple[str, Path | None]],
    labels: dict[str, tuple[str, ...]],
    dataset_dir: Path,
    session: Any,
    mask_cache: Path | None,
) -> dict[str, Any]:
    """Accuracy of one table, with every miss."""
    from shared.images import decode_image

    hits = 0
    misses = []
    for path, hand_mask in rows:
        image = decode_image((dataset_dir / path).read_bytes())
        if hand_mask is not None:
            mask = np.asarray(Image.open(hand_mask)) > 0
        else:
            cached = mask_cache / (path.replace("/", "__") + ".png") if mask_cache else None
            if cached is not None and cached.is_file():
                mask = np.asarray(Image.open(cached)) > 0
            else:
                mask = np.asarray(session.predict([image])[0].mask) > 0
                if cached is not None:
                    Image.fromarray(mask.astype(np.uint8) * 255).save(cached)
        got = first_colour(image, mask)
        if got in labels[path]:
            hits += 1
        else:
            misses.append({"path": path, "truth": list(labels[path]), "got": got})
    return {
        "n_photos": len(rows),
        "hits": hits,
        "colour_accuracy": round(hits / max(len(rows), 1), 4),
        "misses": misses,
    }


def guard_figures(session: Any, dataset_dir: Path) -> dict[str, Any]:
    """What the colour rule must not break: the first colour on the 81 catalogue photos
    (bench/data/captioner_real/truth.csv, plain white backdrops) and on 200 renderer photos with
    their exact masks (``bench.captioner``'s seed; coloured and cluttered backdrops, neutral light)."""
    from bench.captioner import REAL_TRUTH, SEED
    from shared.captioning.evaluate import read_truth_table, real_accuracy, renderer_accuracy

    catalogue = real_accuracy(read_truth_table(REAL_TRUTH), dataset_dir, session=session)
    renderer = renderer_accuracy(200, SEED, session=None, size_px=512)
    return {
        "catalogue_colour_accuracy": catalogue.colour_accuracy,
        "catalogue_colour_misses": catalogue.colour_misses,
        "renderer_exact_mask_colour_accuracy": renderer.colour_accuracy,
        "renderer_colour_misses": renderer.colour_misses,
    }


def measured_commit() -> str | None:
    """The commit the bench runs at, ``-dirty`` when tracked files differ from it; None outside git.
    The results files are left out: a first partial run's figures made the next one's tree dirty."""
    git = ["git", "-C", str(HERE.parent)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", ".", ":(exclude)bench/results"])
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}-dirty" if changed.returncode else head


def filed_runs() -> dict[str, Any]:
    """The runs the results file holds, by label."""
    return dict(json.loads(RESULTS.read_text()).get("runs", {})) if RESULTS.is_file() else {}


def of_other_commits(run: dict[str, Any], names: Collection[str], commit: str | None) -> list[str]:
    """Those of ``names`` the label's ``run`` holds measured at another commit than ``commit`` (or at
    one not recorded): replaced, they would be the record of another change lost."""
    return [name for name in names if name in run and (commit is None or run[name].get("commit") != commit)]


def file_run(run: dict[str, Any], figures: dict[str, Any], stamp: dict[str, Any]) -> dict[str, Any]:
    """The label's ``run`` with ``figures`` in it, each of them stamped with ``stamp`` (measured_at,
    commit, matting model). Its other tables keep their own; a run filed before tables were stamped
    had one ``measured_at`` for the label, which goes into each of its tables."""
    older = {name: table for name, table in run.items() if name != "measured_at"}
    if "measured_at" in run:
        older = {name: {**table, "measured_at": run["measured_at"]} for name, table in older.items()}
    return {**older, **{name: {**table, **stamp} for name, table in figures.items()}}


def main(argv: list[str] | None = None) -> int:
    """Score the tables of ``--split``, print the figures and file them under ``--label``; a setting or
    a committed model that fails says so in a line."""
    return run_command("python -m bench.caption_colours", lambda: _bench(argv))


def _bench(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.caption_colours",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--grocery-dataset",
        type=path_argument("folder"),
        default=grocery_dataset_default(),
        help="GroceryStoreDataset's dataset/ folder (default: $SKUFORGE_GROCERY_DATASET)",
    )
    parser.add_argument(
        "--split", choices=("train", "val", "both", "none"), default="both", help="default both"
    )
    parser.add_argument(
        "--label", default="after", help="name of this run in the results (before, after) (default after)"
    )
    # SKUFORGE_CAPTIONER_MATTING_THREADS's bound: --threads 100000 went to ONNX Runtime as asked.
    parser.add_argument(
        "--threads",
        type=int_between(1, MAX_THREADS),
        default=2,
        help=f"ONNX Runtime threads (1 to {MAX_THREADS}, default 2)",
    )
    parser.add_argument(
        "--mask-cache",
        type=path_argument("folder"),
        default=None,
        help="folder to keep the matting session's masks in between runs",
    )
    parser.add_argument(
        "--guards",
        action="store_true",
        help="also score the catalogue photos and renderer photos (guard_figures)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="replace the label's tables even when measured at another commit (another change's record)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the figures only")
    args = parser.parse_args(argv)
    if args.grocery_dataset is None or not (args.grocery_dataset / "train").is_dir():
        parser.error(
            "--grocery-dataset (or SKUFORGE_GROCERY_DATASET) must name the dataset/ folder with train/"
        )
    chosen = {
        name: rows for name, rows in tables().items() if args.split == "both" or name.startswith(args.split)
    }
    commit = measured_commit()
    # Checked before the run, which takes minutes: refused after it, its figures were lost.
    clash = of_other_commits(
        filed_runs().get(args.label, {}), [*chosen, *(["guards"] if args.guards else [])], commit
    )
    if clash and not args.replace and not args.no_write:
        parser.error(
            f"--label {args.label} holds {', '.join(clash)} measured at another commit than this one "
            f"({commit or 'not a git checkout'}): the record of another change. File this run under a "
            "label of its own (--label <change>-before), or give --replace to discard that record"
        )
    if args.mask_cache is not None:
        args.mask_cache.mkdir(parents=True, exist_ok=True)

    from shared.matting.session import open_tool_session

    session = open_tool_session(None, None, threads=args.threads)
    labels = read_labels()
    figures = {
        name: score(rows, labels, args.grocery_dataset, session, args.mask_cache)
        for name, rows in chosen.items()
    }
    if args.guards:
        figures["guards"] = guard_figures(session, args.grocery_dataset)
    print(
        json.dumps(
            {
                name: f"{table['hits']}/{table['n_photos']}" if "hits" in table else table
                for name, table in figures.items()
            }
        )[:2000]
    )
    if args.no_write:
        return 0
    stamp = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit,
        "matting_model": session.model_id,
    }
    runs = filed_runs()
    runs[args.label] = file_run(runs.get(args.label, {}), figures, stamp)
    result = {
        "machine": f"{platform.node()}: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, ONNX Runtime CPU ({args.threads} threads)",
        "matting_model": session.model_id,
        "runs": runs,
    }
    text = json_file_text(result, label=str(RESULTS))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
