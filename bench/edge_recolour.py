"""Does the cut-out's recoloured edge make the gate flag more real-photo composites?

The composite backend recolours a cut-out's outer pixels from further in (``decontaminate_edge``):
a catalogue photo's edge pixels are the product blended with its white backdrop, and pasted on a
scene they draw a pale rim that a classifier learns as "synthetic". With the recolour, the test run
of ``make evaluate`` flagged 173 of 2,916 images instead of 91. This bench asks why, on the train
split only (GroceryStoreDataset, MIT): for every class, its catalogue photo (and one train photo,
k = 1, as ``bench/augment.py`` picks them) cut out by the committed matting model, composited on the
train-split scenes ``bench/augment.py`` uses, each variant drawn twice with the same seed, with and
without the recolour; each image is matted as the matting stage does (the box around the expected
mask, margin ``DEFAULT_ROI_MARGIN``) and gated with the default thresholds. Every class needs 5 train
photos (its reference and 4 scenes, ``bench/augment.py``'s default); a dataset with fewer in a class
is refused, naming it, before any composite.

Writes ``bench/results/edge_recolour.json``: ``n_images`` (per arm), ``flagged_with_recolour``,
``flagged_without_recolour``, ``mean_iou_with_recolour``, ``mean_iou_without_recolour``, the
paired differences and the images that differ most.

    python -m bench.edge_recolour --dataset DIR [--variants 6] [--classes N --out FILE]
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

import numpy as np
from PIL import Image

from shared.argtypes import file_problem, int_between, json_file_text, path_argument, positive_int
from shared.commands import run_command
from shared.generation.backend import MAX_SIZE_PX
from shared.generation.composite import MIN_SIZE_PX as COMPOSITE_MIN_SIZE_PX

RESULTS = Path(__file__).parent / "results"
SCENES_PER_CLASS = 4  # train photos per class as scenes: bench/augment.py's default, as make evaluate


def main(argv: list[str] | None = None) -> int:
    """Composite, mat and gate each class with and without the recolour, and write the figures; a
    setting or a committed model that fails says so in a line."""
    return run_command("python -m bench.edge_recolour", lambda: _bench(argv))


def _bench(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.edge_recolour", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--dataset", type=path_argument("folder"), required=True, help="GroceryStoreDataset's dataset/ folder"
    )
    parser.add_argument(
        "--variants", type=positive_int, default=6, help="composites per class and arm (default 6)"
    )
    parser.add_argument(
        "--classes", type=positive_int, default=None, help="only the first N classes (a smoke run)"
    )
    parser.add_argument(
        "--size",
        type=int_between(COMPOSITE_MIN_SIZE_PX, MAX_SIZE_PX),  # below 64 every composite failed
        default=384,
        help=f"generated image side (px, {COMPOSITE_MIN_SIZE_PX} to {MAX_SIZE_PX}), as make evaluate "
        "(default 384)",
    )
    parser.add_argument(
        "--workdir",
        type=path_argument("folder"),
        default=Path("var/edge-recolour"),
        help="default var/edge-recolour",
    )
    parser.add_argument(
        "--out",
        type=path_argument("file"),
        default=RESULTS / "edge_recolour.json",
        help="results JSON (default bench/results/edge_recolour.json, the committed figures; "
        "a --classes smoke run needs another)",
    )
    args = parser.parse_args(argv)
    if args.classes is not None and args.out.resolve() == (RESULTS / "edge_recolour.json").resolve():
        # A smoke run of a few classes replaced the committed figures that docs/evaluation.md cites.
        parser.error("--classes is a smoke run: give --out, so that it does not replace bench/results/")
    if not (args.dataset / "train.txt").is_file():
        parser.error(f"--dataset {args.dataset}: no train.txt (GroceryStoreDataset's dataset/ folder)")
    # Checked before every class is composited, matted and gated twice, not found in a traceback after.
    if problem := file_problem(args.out, "edge_recolour.json"):
        parser.error(f"--out {args.out}: {problem}")

    from bench.augment import (
        TooFewScenePhotos,
        _cached_masks,
        composite_request,
        in_process_scenes,
        read_grocery,
        references,
        scene_photos,
        write_scene_library,
    )
    from shared.captioning.attributes import plain_background_share
    from shared.gate.checks import GateThresholds, evaluate
    from shared.generation.backend import COLOUR_GAIN_KEY
    from shared.generation.composite import CompositeBackend
    from shared.images import decode_image
    from shared.matting.roi import DEFAULT_ROI_MARGIN, product_box
    from shared.matting.session import open_tool_session

    started = time.monotonic()
    # Before the dataset is read and the scenes written: a missing model is said at once.
    session = open_tool_session(None, None, threads=os.cpu_count() or 1)
    data = read_grocery(args.dataset)
    refs = references(data, 1, 0)  # k = 1, seed 0: the SKUs of make evaluate's k = 1 run
    used = {path for paths in refs.values() for path in paths}
    scenes_dir = args.workdir / "scenes"
    if not scenes_dir.is_dir():
        try:
            scenes = scene_photos(data, SCENES_PER_CLASS, 0, used)
        except TooFewScenePhotos as exc:
            # Was a ValueError traceback that said to give --scenes-per-class, an option of augment's only.
            parser.error(
                f"--dataset {args.dataset}: {exc.name} has {exc.left} train photos left after its reference, "
                f"fewer than the {exc.per_class} scenes per class this bench composites on; every class "
                f"needs {exc.per_class} train photos besides its reference"
            )
        write_scene_library(scenes, scenes_dir)
    library = in_process_scenes(scenes_dir.resolve(), 1.0)  # under SKUFORGE_MAX_IMAGE_PIXELS, as augment's
    backends = {
        "with": CompositeBackend(library, 1.0),
        "without": CompositeBackend(library, 1.0, edge_recolour=False),
    }
    thresholds = GateThresholds()
    rows = []
    for name in sorted(refs)[: args.classes]:
        photos = refs[name]
        images = [decode_image(path.read_bytes()) for path in photos]
        for image in images:
            image.thumbnail((1024, 1024), Image.Resampling.LANCZOS)
        masks = _cached_masks(session, images, photos, args.workdir / "masks", f"{session.model_id}|1024")
        # The generator's rule: cut-outs from plain-background photos (the catalogue photo here).
        plain = [plain_background_share(image, mask) for image, mask in zip(images, masks, strict=True)]
        sources = [i for i, share in enumerate(plain) if share >= 0.7] or list(range(len(images)))
        for variant in range(args.variants):
            which = sources[variant % len(sources)]
            request = composite_request(
                images[which], masks[which], f"{name}|{which}|{variant}|0", {}, series=name, size=args.size
            )
            row: dict[str, Any] = {"class": name, "variant": variant}
            for arm, backend in backends.items():  # interleaved, same draw
                sample = backend.generate(request)[0]
                box = product_box(sample.expected_mask, DEFAULT_ROI_MARGIN)
                predicted = session.predict([Image.fromarray(sample.image)], boxes=[box])[0].mask
                gain = sample.parameters.get(COLOUR_GAIN_KEY)
                iou, checks = evaluate(
                    predicted_mask=predicted,
                    expected_mask=sample.expected_mask,
                    image=sample.image,
                    reference_image=request.reference,
                    reference_mask=request.mask,
                    thresholds=thresholds,
                    colour_gain=None if gain is None else tuple(gain),
                )
                row[f"iou_{arm}"] = round(float(iou), 4)
                row[f"failed_{arm}"] = [check.code for check in checks if not check.passed]
            rows.append(row)
        print(f"{name}: {sum(bool(r['failed_with']) for r in rows)} flagged so far", file=sys.stderr)

    difference = np.array([row["iou_with"] - row["iou_without"] for row in rows])
    result = {
        "split": "train (catalogue photos + train photos; scenes: train photos of other classes)",
        "n_classes": len({row["class"] for row in rows}),
        "n_images": len(rows),
        "variants_per_class": args.variants,
        "size_px": args.size,
        "matting_model": session.model_id,
        "iou_min": thresholds.iou_min,
        "flagged_with_recolour": sum(bool(row["failed_with"]) for row in rows),
        "flagged_without_recolour": sum(bool(row["failed_without"]) for row in rows),
        "mean_iou_with_recolour": round(float(np.mean([row["iou_with"] for row in rows])), 4),
        "mean_iou_without_recolour": round(float(np.mean([row["iou_without"] for row in rows])), 4),
        "median_paired_difference": round(float(np.median(difference)), 4),
        "paired_lower_by_001": int((difference < -0.01).sum()),
        "paired_higher_by_001": int((difference > 0.01).sum()),
        "largest_drops": sorted(rows, key=lambda row: row["iou_with"] - row["iou_without"])[:12],
        "seconds": round(time.monotonic() - started, 1),
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        },
    }
    text = json_file_text(result, label=str(args.out), indent=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(json.dumps({key: value for key, value in result.items() if key != "largest_drops"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
