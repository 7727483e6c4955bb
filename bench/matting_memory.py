"""Matting stage memory: peak RSS of one micro-batch, up to max_batch images at the pixel limit.

Each configuration runs in a fresh child process: the stage's own ``handle_batch`` on events whose
images (synthetic: a product on a gradient, its expected mask the product's shape) sit in a
``FileStore`` in a temporary folder, with the committed U2-NetP on the CPU provider and the
stage's defaults (``max_batch``, ROI margin, threshold, clean-up). So the figure includes what the
stage holds for a batch: the decoded images, the model input and activations, the
post-processing, the masks, and the PNG encoding of masks and cut-outs.

The peak is the process's VmHWM over ``handle_batch`` alone: it is reset (``/proc/self/clear_refs``)
after the session is opened and has run a full batch of small images, and the inputs are
written, so the figure is what one
batch adds on a warm stage, not the set-up. ``baseline_rss_mb`` is the RSS at that reset.

``--before DIR``: a checkout of the code before a change (checked up front: it must hold
``services/matting/stage.py``); each configuration then also runs
against it (PYTHONPATH), rounds interleaved, and the masks' sha256s of the two are compared. Each
child reports the files its project modules came from: one that imported any from outside its tree
(a partial checkout falls back on the installed one) fails the run, its figures not that tree's.
``--speed-rounds N``: also time ``session.predict`` as ``bench/matting.py`` does (32 renderer photos
of 512 px, batch 8), N interleaved rounds per code tree. Writes bench/results/matting_memory.json,
whose figures docs/matting.md cites, only from a run of the committed kind (``--before DIR
--speed-rounds 3``, every configuration, 2 threads); any other run (a plain one, some ``--config``
only, other ``--threads``) needs ``--out FILE``.

    python -m bench.matting_memory --before DIR --speed-rounds 3 [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.argtypes import (
    MAX_THREADS,
    file_problem,
    int_between,
    json_file_text,
    non_negative_int,
    path_argument,
)

if TYPE_CHECKING:
    from schemas.envelope import Envelope
    from shared.store import ObjectStore

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
MB = 2**20
# The committed file's speed figures: three interleaved rounds per code tree.
COMMITTED_SPEED_ROUNDS = 3
# What a --before checkout must hold: the stage whose handle_batch is measured.
BEFORE_STAGE = Path("services/matting/stage.py")
# The project's top-level packages: a child imports every module of theirs from the tree it measures.
PACKAGES = ("bench", "schemas", "services", "shared")
# (name, images, width, height): the limit is SKUFORGE_MAX_IMAGE_PIXELS (40 MP = 8000x5000 by default).
CONFIGS = {
    "1mp_x1": (1, 1250, 800),
    "1mp_xbatch": (None, 1250, 800),
    "limit_x1": (1, None, None),
    "limit_xbatch": (None, None, None),
}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _synthetic(width: int, height: int) -> tuple[Any, Any]:
    """A product (an ellipse 60% of the image's width and height, with stripes) on a gradient, and
    its mask. Smooth on purpose: a 40 MP photo of noise would be refused as too many bytes."""
    import numpy as np
    from PIL import Image, ImageDraw

    ramp_x = np.linspace(60, 200, width, dtype=np.float32)[None, :]
    ramp_y = np.linspace(40, 120, height, dtype=np.float32)[:, None]
    image = Image.fromarray(
        np.stack([ramp_x + 0 * ramp_y, ramp_y + 0 * ramp_x, (ramp_x + ramp_y) / 2], axis=2).astype(np.uint8)
    )
    mask = Image.new("L", (width, height), 0)
    box = (int(width * 0.2), int(height * 0.2), int(width * 0.8), int(height * 0.8))
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    stripes = Image.new("RGB", (width, height), (200, 30, 40))
    ImageDraw.Draw(stripes).rectangle(
        (0, height // 2 - height // 20, width, height // 2 + height // 20), (240, 240, 230)
    )
    image.paste(stripes, (0, 0), mask)
    return image, np.asarray(mask)


def generated_events(store: ObjectStore, count: int, *, width: int, height: int) -> list[Envelope[Any]]:
    """``count`` image.generated events of one SKU, all of one synthetic image (``_synthetic``) stored
    in ``store``; its pixels are dropped on return, so the peak measured after is the batch's."""
    from schemas.common import SkuMetadata
    from schemas.envelope import derive_id
    from schemas.events import ImageGenerated
    from schemas.topics import IMAGE_GENERATED
    from shared import keys
    from shared.bus import make_envelope

    image, mask = _synthetic(width, height)
    image_ref = store.put_image(keys.generated_key("SKU-1", "synthetic"), image)
    mask_ref = store.put_image(keys.expected_mask_key("SKU-1", "synthetic"), mask)
    return [
        make_envelope(
            IMAGE_GENERATED,
            ImageGenerated(
                item_id=f"item-{index}",
                sku=SkuMetadata(sku_id="SKU-1", name="One", category="soda can"),
                reference_photo_id="p1",
                reference_image=image_ref,
                reference_mask=mask_ref,
                image=image_ref,
                expected_mask=mask_ref,
                backend="composite",
                model_id="synth",
                seed=index,
                variant_index=index,
            ),
            event_id=derive_id("bench", str(index)),
            sku_id="SKU-1",
            trace_id="bench",
            producer="bench",
        )
        for index in range(count)
    ]


def memory_worker(images: int | None, width: int | None, height: int | None, threads: int) -> dict[str, Any]:
    """One ``handle_batch`` of the stage in this process; returns peak RSS, time and mask digests."""
    import logging

    from PIL import Image

    from schemas.events import ImageMatted
    from services.matting.config import MattingSettings
    from services.matting.stage import handle_batch, open_matting_session
    from shared.config import load_settings
    from shared.errors import BadInput
    from shared.images import decode_mask
    from shared.observability import StageMetrics
    from shared.runtime import Context
    from shared.store import FileStore

    matting = load_settings(MattingSettings, matting_threads=threads, matting_use_gpu=False)
    with tempfile.TemporaryDirectory(prefix="matting-memory-") as folder:
        store = FileStore(Path(folder) / "store")
        settings = load_settings(store_uri=store.base_uri)
        if width is None or height is None:
            width, height = 8000, settings.max_image_pixels // 8000
        count = matting.matting_max_batch if images is None else images
        session = open_matting_session(matting, settings, store)
        events = generated_events(store, count, width=width, height=height)
        ctx = Context("matting", store, settings, StageMetrics("matting"), logging.getLogger("bench"))
        roi_margin = matting.matting_roi_margin if matting.matting_roi else None
        # A warm stage has already run full batches: grow ONNX Runtime's arena to them first, so the
        # figure below is what images of this size add.
        session.predict([Image.new("RGB", (session.size_px, session.size_px))] * count)
        baseline_kb = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        started = time.perf_counter()
        results = handle_batch(events, ctx, session=session, roi_margin=roi_margin)
        elapsed = time.perf_counter() - started
        peak_kb = _status_kb("VmHWM")
        refused = [result for result in results if isinstance(result, BadInput)]
        if refused:
            raise RuntimeError(f"refused: {refused}")
        masks = [
            emit.payload.predicted_mask
            for emits in results
            if isinstance(emits, list)
            for emit in emits
            if isinstance(emit.payload, ImageMatted)
        ]
        digests = sorted(
            {hashlib.sha256(decode_mask(store.read_verified(ref)).tobytes()).hexdigest() for ref in masks}
        )
    return {
        "images": count,
        "width": width,
        "height": height,
        "image_mb": round(width * height * 3 / MB, 1),
        "baseline_rss_mb": round(baseline_kb / 1024, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "batch_adds_mb": round((peak_kb - baseline_kb) / 1024, 1),
        "seconds": round(elapsed, 2),
        "mask_sha256": digests,
    }


def speed_worker(threads: int) -> dict[str, Any]:
    """``bench/matting.py``'s ort_fp32 batch-8 timing (32 renderer photos of 512 px), in this code tree."""
    from bench.matting import FP32, worker

    return {"images_per_s": round(worker("ort_fp32", 8, 32, threads, {"fp32": FP32})["images_per_s"], 3)}


def _modules_loaded() -> dict[str, str]:
    """The project's modules this process has imported (``PACKAGES``), each with the file it came from."""
    return {
        name: str(Path(file).resolve())
        for name, module in sorted(sys.modules.items())
        if name.partition(".")[0] in PACKAGES and (file := getattr(module, "__file__", None))
    }


def _child(code: Path, args: list[str]) -> dict[str, Any]:
    """Run this file's ``--worker`` ``args`` in a child process on the tree ``code``; its result.

    Raises ``RuntimeError`` when the child fails, or imported a project module from outside ``code``.
    """
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        env=env,
        cwd=code,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {args} in {code} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    modules: dict[str, str] = result.pop("modules")
    outside = {name: file for name, file in modules.items() if not Path(file).is_relative_to(code.resolve())}
    if outside:
        # The import system looks past a tree for what it lacks (the installed checkout's modules).
        raise RuntimeError(
            f"worker {args} in {code} imported {', '.join(outside)} from outside it (e.g. "
            f"{next(iter(outside.values()))}): its figures would not be that tree's; give a whole checkout"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the configurations (and the speed check), each in a child process; write the JSON. A refusal of
    the run (a NaN figure, a bad setting) says so in a line."""
    if "--worker" in (sys.argv[1:] if argv is None else argv):
        # A child of the run, which reports one that fails. It stays off shared.commands and what that
        # imports (pydantic, schemas): they were counted as modules of the tree measured, and a --before
        # checkout may be older than shared.commands.
        return _bench(argv)
    from shared.commands import run_command

    return run_command("python -m bench.matting_memory", lambda: _bench(argv))


def _bench(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.matting_memory",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--worker", choices=["memory", "speed"], default=None)
    parser.add_argument("--config", choices=list(CONFIGS), action="append")
    # SKUFORGE_MATTING_THREADS's bound: --threads 100000 went to ONNX Runtime as asked.
    parser.add_argument(
        "--threads",
        type=int_between(1, MAX_THREADS),
        default=2,
        help=f"ONNX Runtime threads (1 to {MAX_THREADS}, default 2)",
    )
    parser.add_argument(
        "--before",
        type=path_argument("folder"),
        default=None,
        help=f"a checkout of the code before a change (holds {BEFORE_STAGE})",
    )
    parser.add_argument("--speed-rounds", type=non_negative_int, default=0)
    parser.add_argument(
        "--out",
        type=path_argument("file"),
        default=RESULTS / "matting_memory.json",
        help="results JSON (default bench/results/matting_memory.json, the committed run's: --before "
        f"DIR --speed-rounds {COMMITTED_SPEED_ROUNDS}, every configuration, 2 threads; any other run "
        "needs another)",
    )
    args = parser.parse_args(argv)
    if args.worker == "memory" and not args.config:
        parser.error(f"--worker memory needs --config (one of {', '.join(CONFIGS)})")
    if args.worker == "memory":
        images, width, height = CONFIGS[args.config[0]]
        print(
            json.dumps({**memory_worker(images, width, height, args.threads), "modules": _modules_loaded()})
        )
        return 0
    if args.worker == "speed":
        print(json.dumps({**speed_worker(args.threads), "modules": _modules_loaded()}))
        return 0

    # The committed file compares every configuration before and after a change, at 2 threads, with
    # speed figures, which docs/matting.md cites: a run of one --config went over it, the others' figures
    # gone, and a plain run (no --before, no --speed-rounds) left "after" figures alone.
    changed = [
        f"--{name}" for name in ("config", "threads") if getattr(args, name) != parser.get_default(name)
    ]
    if args.before is None:
        changed.append("no --before")
    if args.speed_rounds != COMMITTED_SPEED_ROUNDS:
        changed.append(f"--speed-rounds {args.speed_rounds}")
    if changed and args.out.resolve() == (RESULTS / "matting_memory.json").resolve():
        parser.error(
            f"{', '.join(changed)}: not the committed run (--before DIR --speed-rounds "
            f"{COMMITTED_SPEED_ROUNDS}, every configuration, 2 threads): give --out, so that its figures "
            "do not replace the committed bench/results/matting_memory.json"
        )
    # Checked before minutes of matting in child processes, not found in a traceback after them.
    if problem := file_problem(args.out, "matting_memory.json"):
        parser.error(f"--out {args.out}: {problem}")
    # A missing folder failed as the first child started; one without the stage's code ran, silently,
    # whatever `shared` the interpreter found (an installed checkout) and called that "before".
    if args.before is not None and not (args.before / BEFORE_STAGE).is_file():
        parser.error(
            f"--before {args.before}: no {BEFORE_STAGE} there; give a checkout of the code before the "
            "change, e.g. `git worktree add DIR HEAD~1`"
        )

    trees = {"after": ROOT} if args.before is None else {"before": args.before.resolve(), "after": ROOT}
    memory: dict[str, dict[str, Any]] = {name: {} for name in trees}
    for config in args.config or list(CONFIGS):
        for name, code in trees.items():
            result = _child(code, ["--worker", "memory", "--config", config, "--threads", str(args.threads)])
            memory[name][config] = result
            print(
                f"{name:6s} {config:12s} {result['images']} x {result['width']}x{result['height']}: "
                f"peak {result['peak_rss_mb']:.0f} MB (batch adds {result['batch_adds_mb']:.0f} MB), "
                f"{result['seconds']:.1f} s",
                flush=True,
            )
    speed: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.speed_rounds):
        for name, code in trees.items():
            speed[name].append(
                _child(code, ["--worker", "speed", "--threads", str(args.threads)])["images_per_s"]
            )
        print("speed", {name: values[-1] for name, values in speed.items()}, flush=True)

    report: dict[str, Any] = {
        "setup": {
            "stage": "services.matting.stage.handle_batch, FileStore in a temp folder, stage defaults "
            "(ROI on), committed U2-NetP fp32 on the CPU provider",
            "images": "synthetic: a striped ellipse 60% of the image on a gradient; its ROI box is "
            "90% of a 40 MP image",
            "peak": "VmHWM over handle_batch alone (reset after set-up); batch_adds = peak - RSS at reset",
            "configs": {
                name: {"images": i or "max_batch", "size": f"{w}x{h}" if w else "pixel limit"}
                for name, (i, w, h) in CONFIGS.items()
            },
            "threads": args.threads,
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB",
        "measured_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    for name in trees:
        report[name] = memory[name]
    if "before" in trees:
        report["masks_identical"] = all(
            memory["before"][config]["mask_sha256"] == memory["after"][config]["mask_sha256"]
            for config in memory["after"]
        )
    if args.speed_rounds:
        report["speed_b8_images_per_s"] = {
            name: {"rounds": values, "median": statistics.median(values)} for name, values in speed.items()
        }
    text = json_file_text(report, label=str(args.out))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
