"""Matting on real product photos: our U2-NetP (fp32, int8) beside the official U2-NetP, same photos.

    python -m bench.matting_real --dataset /path/to/GroceryStoreDataset/dataset [--sheet out.png]

The evaluation set is committed in ``bench/data/matting_real/``: which GroceryStoreDataset (MIT)
photos, their sha256 (the photo read from the dataset must be byte-identical, so the set rebuilds
exactly) and a reference mask per photo made without any learnt model (border flood fill on the
catalogue photos; polygons refined with GrabCut on the in-store ones; each checked by eye, see the
README there). Catalogue photos are the iconic images held out of every training run
(``split.json``); in-store photos are from the val split, which no training run reads, and from
the train-split photos ``split.json`` reserves.

Every model runs through the same session code the matting stage uses (resize to 320, predict,
min-max, resize back, threshold 0.5, clean-up), on the whole photo. Also recomputes the renderer
held-out IoU (200 renderer photos, seed 9001) of each model. Writes bench/results/matting_real.json;
another ``--ours``/``--ours-int8`` model, or ``--renderer`` other than 200, needs ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.grocery import grocery_dataset_default
from shared.argtypes import (
    MAX_THREADS,
    file_problem,
    int_between,
    json_file_text,
    non_negative_int,
    path_argument,
)
from shared.arith.masks import mask_iou
from shared.commands import run_command

DATA = Path(__file__).parent / "data" / "matting_real"
RESULTS = Path(__file__).parent / "results"
MODELS = Path(__file__).resolve().parents[1] / "shared" / "matting" / "models"
OURS = MODELS / "u2netp-skuforge.onnx"
OURS_INT8 = MODELS / "u2netp-skuforge-int8.onnx"
RENDERER_HELDOUT = 200
MANIFESTS = ("catalogue.json", "instore_fruitveg.json", "instore_packages.json", "instore_reserved.json")
# Masks made after the model was final: photos no recipe decision ever looked at (see the README there).
PRISTINE = "instore_pristine.json"


def load_items(dataset: Path) -> list[dict[str, Any]]:
    """The evaluation items with their photo and reference mask; refuses a photo that differs.

    Photos are decoded as skuforge decodes what ingest takes in (``shared.images.decode_image``: EXIF
    orientation, the ICC profile to sRGB), so the models see what they see in production: 56 of the
    81 catalogue photos are Adobe RGB (until 2026-12-03 they were read with their numbers unconverted)."""
    from shared.images import decode_image

    # Checked before any photo is decoded: a photo missing (a partial clone) was a FileNotFoundError.
    if missing := missing_photos(dataset):
        raise SystemExit(
            f"--dataset {dataset}: {missing[0]} is missing ({len(missing)} of the set's photos are): the "
            "set needs a full clone of GroceryStoreDataset's dataset folder"
        )
    items: list[dict[str, Any]] = []
    for name, entries in _manifests().items():
        for entry in entries:
            data = (dataset / entry["path"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise SystemExit(f"{dataset / entry['path']}: not the photo the reference mask was made for")
            mask = np.asarray(Image.open(DATA / "masks" / f"{entry['id']}.png").convert("L")) >= 128
            image = decode_image(data)  # as ingest decodes it: an Adobe RGB catalogue photo in sRGB
            if image.size != (mask.shape[1], mask.shape[0]):
                raise SystemExit(f"{entry['id']}: mask {mask.shape[::-1]} vs photo {image.size}")
            items.append({**entry, "image": image, "mask": mask, "pristine": name == PRISTINE})
    return items


def _manifests() -> dict[str, list[dict[str, Any]]]:
    """Each manifest of the set by its file name, and its entries."""
    names = [*MANIFESTS, *([PRISTINE] if (DATA / PRISTINE).is_file() else [])]
    return {name: json.loads((DATA / name).read_text()) for name in names}


def missing_photos(dataset: Path) -> list[Path]:
    """The set's photos that are not under ``dataset``."""
    paths = [dataset / entry["path"] for entries in _manifests().values() for entry in entries]
    return [path for path in paths if not path.is_file()]


def score(model: Path | bytes, label: str, items: list[dict[str, Any]], threads: int) -> list[float]:
    """Per-item IoU of one model (its file, or bytes already read and checked) through the matting
    session; each item keeps its mask under ``label`` for the contact sheet."""
    from shared.matting.session import MaskOptions, U2NetPSession

    session = U2NetPSession(model, threads=threads, use_gpu=False, max_batch=8, mask=MaskOptions())
    ious = []
    for start in range(0, len(items), 8):
        chunk = items[start : start + 8]
        for item, result in zip(chunk, session.predict([i["image"] for i in chunk]), strict=True):
            ious.append(mask_iou(result.mask >= 128, item["mask"]))
            item.setdefault("predicted", {})[label] = result.mask >= 128
    return ious


def contact_sheet(items: list[dict[str, Any]], models: list[str], path: Path, cell: int = 150) -> None:
    """Photo with the reference outline, then each model's mask (green = agrees, red = wrong);
    ``models`` are the labels ``score`` kept the masks under."""
    columns = 1 + len(models)
    sheet = Image.new("RGB", (cell * columns * 2, cell * ((len(items) + 1) // 2)), "white")
    for index, item in enumerate(items):
        tiles = [item["image"]]
        truth = item["mask"]
        for model in models:
            predicted = item["predicted"][model]
            view = np.asarray(item["image"]).astype(np.float32) * 0.35
            view[predicted & truth] = (40, 200, 40)
            view[predicted & ~truth] = (230, 30, 30)
            view[~predicted & truth] = (250, 150, 0)
            tiles.append(Image.fromarray(view.astype(np.uint8)))
        x0 = (index % 2) * cell * columns
        for column, tile in enumerate(tiles):
            thumb = tile.resize((cell, cell))
            sheet.paste(thumb, (x0 + column * cell, (index // 2) * cell))
    sheet.save(path)


def summarise(items: list[dict[str, Any]], ious: dict[str, list[float]]) -> dict[str, Any]:
    kinds = np.array([item["kind"] for item in items])
    out: dict[str, Any] = {
        "n_real": len(items),
        "n_catalogue": int((kinds == "catalogue").sum()),
        "n_instore": int((kinds == "instore").sum()),
    }
    pristine = np.array([item["pristine"] for item in items])
    out["n_pristine"] = int(pristine.sum())
    for label, values in ious.items():
        array = np.array(values)
        if pristine.any():
            out[f"pristine_iou_{label}"] = round(float(array[pristine].mean()), 4)
        out[f"real_iou_{label}"] = round(float(array.mean()), 4)
        out[f"real_frac_ge_090_{label}"] = round(float((array >= 0.9).mean()), 4)
        for kind in ("catalogue", "instore"):
            part = array[kinds == kind]
            out[f"{kind}_iou_{label}"] = round(float(part.mean()), 4)
            out[f"{kind}_median_iou_{label}"] = round(float(np.median(part)), 4)
            out[f"{kind}_frac_ge_090_{label}"] = round(float((part >= 0.9).mean()), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    """Score the models on the real photos and write bench/results/matting_real.json; a refusal (a NaN
    figure, a bad setting) says so in a line."""
    return run_command("python -m bench.matting_real", lambda: _bench(argv))


def _bench(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.matting_real",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # An empty SKUFORGE_GROCERY_DATASET is unset, as Compose and Helm pass one; an empty --dataset is
    # refused: Path("") was the current folder.
    parser.add_argument(
        "--dataset",
        type=path_argument("folder"),
        default=grocery_dataset_default(),
        help="GroceryStoreDataset's dataset folder (default: SKUFORGE_GROCERY_DATASET)",
    )
    parser.add_argument(
        "--ours", type=path_argument("file"), default=OURS, help="default: the committed model"
    )
    parser.add_argument(
        "--ours-int8", type=path_argument("file"), default=OURS_INT8, help="default: the committed model"
    )
    parser.add_argument(
        "--official", type=path_argument("file"), default=None, help="default: set-up's checked copy"
    )
    # SKUFORGE_MATTING_THREADS's bound: --threads 100000 went to ONNX Runtime as asked.
    parser.add_argument(
        "--threads",
        type=int_between(1, MAX_THREADS),
        default=2,
        help=f"ONNX Runtime threads (1 to {MAX_THREADS}, default 2)",
    )
    parser.add_argument(
        "--renderer",
        type=non_negative_int,
        default=RENDERER_HELDOUT,
        help=f"renderer held-out photos (0: skip; other than {RENDERER_HELDOUT}: needs --out; "
        f"default {RENDERER_HELDOUT})",
    )
    parser.add_argument(
        "--sheet",
        type=path_argument("file"),
        default=None,
        help="write a contact sheet of every mask here (.png, .jpg, ...)",
    )
    parser.add_argument(
        "--out",
        type=path_argument("file"),
        default=RESULTS / "matting_real.json",
        help="results JSON (default bench/results/matting_real.json, the committed models' figures; "
        "other models need another)",
    )
    args = parser.parse_args(argv)
    if args.dataset is None or not (args.dataset / "val.txt").is_file():
        parser.error("--dataset (or SKUFORGE_GROCERY_DATASET) must be GroceryStoreDataset's dataset folder")

    from shared.matting.official import default_official_onnx, verify_md5
    from shared.matting.train import evaluate

    official = args.official or default_official_onnx()
    models = {"ours": args.ours, "ours_int8": args.ours_int8, "official": official}
    for name, path in models.items():
        if not path.is_file():
            parser.error(f"{name}: {path} is not a file (the official model: make setup fetches it)")
    # The committed file is the committed models' full run, which docs/matting.md cites: a candidate's
    # figures (or a run without the renderer's) went over it. The official model is md5-checked below.
    if (
        args.ours.resolve() != OURS.resolve()
        or args.ours_int8.resolve() != OURS_INT8.resolve()
        or args.renderer != RENDERER_HELDOUT
    ) and args.out.resolve() == (RESULTS / "matting_real.json").resolve():
        parser.error(
            "--ours, --ours-int8 or --renderer differs from the committed run: give --out, so that its "
            "figures do not replace the committed bench/results/matting_real.json"
        )
    # Checked before minutes of scoring, not found in a traceback after them; a missing folder is made.
    for option, path, example in (
        ("--out", args.out, "matting_real.json"),
        ("--sheet", args.sheet, "sheet.png"),
    ):
        if path is None:
            continue
        if problem := file_problem(path, example):
            parser.error(f"{option} {path}: {problem}")
    if (
        args.sheet is not None
        and Image.registered_extensions().get(args.sheet.suffix.lower()) not in Image.SAVE
    ):
        parser.error(f"--sheet {args.sheet}: name an image file (.png, .jpg, ...); its suffix is the format")
    official_bytes = official.read_bytes()
    verify_md5(official_bytes, source=str(official))
    # The official model runs from the bytes checked: opened by its path again, a file replaced after
    # the check became the baseline of the figures unchecked.
    runs: dict[str, Path | bytes] = {**models, "official": official_bytes}

    started = time.monotonic()
    items = load_items(args.dataset)
    ious = {label: score(model, label, items, args.threads) for label, model in runs.items()}
    result = summarise(items, ious)
    result["int8_minus_fp32_real_iou"] = round(result["real_iou_ours_int8"] - result["real_iou_ours"], 4)
    # The mean difference hides photos that move both ways: the paired per-photo differences too.
    paired = np.abs(np.array(ious["ours_int8"]) - np.array(ious["ours"]))
    result["int8_fp32_mean_abs_diff"] = round(float(paired.mean()), 4)
    result["int8_fp32_max_abs_diff"] = round(float(paired.max()), 4)
    result["int8_fp32_n_photos_over_005"] = int((paired > 0.05).sum())
    if args.renderer:
        for label, model in runs.items():
            held_out = evaluate(model, args.renderer, 9001, threads=args.threads)
            result[f"renderer_heldout_iou_{label}"] = held_out.mean_iou
    result["targets"] = {
        "real_iou_ours >= real_iou_official + 0.02": result["real_iou_ours"]
        >= result["real_iou_official"] + 0.02,
        "instore_iou_ours >= instore_iou_official + 0.02": result["instore_iou_ours"]
        >= result["instore_iou_official"] + 0.02,
        "catalogue_frac_ge_090_ours >= 0.95": result["catalogue_frac_ge_090_ours"] >= 0.95,
        "int8 mean real IoU within 0.5 pt of fp32": abs(result["int8_minus_fp32_real_iou"]) <= 0.005,
    }
    result["per_image"] = [
        {"id": item["id"], "kind": item["kind"], **{label: round(ious[label][i], 4) for label in models}}
        for i, item in enumerate(items)
    ]
    result["models"] = {
        label: f"{path.name} ({len(model) if isinstance(model, bytes) else path.stat().st_size} bytes)"
        for (label, path), model in zip(models.items(), runs.values(), strict=True)
    }
    result["protocol"] = (
        "whole photo through shared.matting.session.U2NetPSession (resize 320, min-max, resize back, "
        "threshold 0.5, clean-up) for every model; reference masks from bench/data/matting_real"
    )
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    result["seconds"] = round(time.monotonic() - started, 1)
    text = json_file_text(result, label=str(args.out))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if args.sheet is not None:
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(items, list(runs), args.sheet)
    print(json.dumps({k: v for k, v in result.items() if k != "per_image"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
