"""Captioner accuracy benchmark: how often the caption's first colour and the shape are right.

    python -m bench.captioner                      # 200 products, committed U2-NetP masks, 512 px

Products of a held-out synthetic catalogue (seed 31337: not the shape tree's fitting seed 4242,
not the matting model's training seeds) go through the captioner's real path, renderer photo →
U2-NetP mask → attributes → caption (``shared/captioning/evaluate.py``). The same products with
the renderer's exact masks are scored too, so matting errors and attribute errors can be told
apart. Writes bench/results/captioner.json.
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

RESULTS = Path(__file__).parent / "results"
SEED = 31337


def main(argv: list[str] | None = None) -> int:
    """Score the captions, print and write the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.captioner", description=__doc__)
    parser.add_argument("--products", type=int, default=200)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--size-px", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    from shared.captioning.attributes import shape_tree_id
    from shared.captioning.evaluate import renderer_accuracy
    from shared.matting.session import open_session

    session = open_session(None, threads=args.threads, use_gpu=False, store=None)
    started = time.monotonic()
    predicted = renderer_accuracy(args.products, args.seed, session=session, size_px=args.size_px)
    exact = renderer_accuracy(args.products, args.seed, session=None, size_px=args.size_px)
    result: dict[str, Any] = {
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
            "seed": args.seed,
            "size_px": args.size_px,
            "photos_per_product": 1,
            "matting_model": session.model_id,
            "shape_tree": shape_tree_id(),
            "targets": {"colour_accuracy": 0.9, "shape_accuracy": 0.85},
        },
        "machine": f"{platform.node()}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"ONNX Runtime CPU ({args.threads} threads)",
        "seconds": round(time.monotonic() - started, 1),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "captioner.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("colour_accuracy", "shape_accuracy", "n_products")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
