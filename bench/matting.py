"""Matting benchmark: our ONNX Runtime session vs PyTorch eager vs rembg, same weights, same images.

Each measurement runs in a fresh subprocess (so peak RSS is that configuration's own), and the
configurations are interleaved round by round so a busy neighbour slows them all alike; medians
are reported. Every configuration turns the same 512x512 renderer photos into masks at the
original size, including its own pre- and post-processing:

- ``ort_fp32`` / ``ort_int8``: ``shared.matting.session`` at batch 1 and 8 (one ORT call per batch);
- ``torch``: the same weights (``.pth``) in PyTorch eager, with the same pre/post-processing;
- ``rembg``: rembg's ``u2net_custom`` session on the same ONNX file (one image per call: rembg has
  no batch API). rembg is installed only for this benchmark, in a venv of its own (var/bench-rembg).

Also recomputes the held-out IoU/MAE of both committed models. Writes bench/results/matting.json;
a run with other models or any other option (a smoke ``--rounds 1 --images 8``) needs ``--out FILE``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.rounds import median_round_ratio
from shared.argtypes import (
    MAX_THREADS,
    file_problem,
    int_between,
    json_file_text,
    path_argument,
    positive_int,
)

RESULTS = Path(__file__).parent / "results"
MODELS = Path(__file__).resolve().parents[1] / "shared" / "matting" / "models"
FP32 = MODELS / "u2netp-skuforge.onnx"
INT8 = MODELS / "u2netp-skuforge-int8.onnx"
WEIGHTS = MODELS / "u2netp-skuforge.pth"
KINDS = ("ort_fp32", "ort_int8", "torch", "rembg")


def _images(n: int) -> list:
    from shared.synth import render_dataset

    return [photo.image for photo in render_dataset(n, seed=777, size_px=512)]


def worker(kind: str, batch: int, n_images: int, threads: int, models: dict[str, Path]) -> dict[str, float]:
    """Time one configuration in this process; returns images/s and peak RSS."""
    images = _images(n_images)
    if kind in ("ort_fp32", "ort_int8"):
        from shared.matting.session import U2NetPSession

        session = U2NetPSession(
            models["fp32"] if kind == "ort_fp32" else models["int8"],
            threads=threads,
            use_gpu=False,
            max_batch=batch,
        )

        def run(chunk: list) -> None:
            session.predict(chunk)
    elif kind == "torch":
        import torch

        from shared.matting.session import U2NetPSession, u2net_preprocess
        from shared.matting.u2net import build_model

        torch.set_num_threads(threads)
        model = build_model("u2netp")
        model.load_state_dict(torch.load(models["weights"], map_location="cpu", weights_only=True))
        model.eval()
        # Post-processing is the session's (resize back, threshold, clean-up), so only the network
        # differs; the ONNX session object it borrows adds a few MB to this worker's peak RSS.
        post = U2NetPSession(models["fp32"], threads=1, use_gpu=False)

        def run(chunk: list) -> None:
            with torch.inference_mode():
                d0 = model(torch.from_numpy(u2net_preprocess(chunk)))[0].numpy()
            post.postprocess(d0, [image.size for image in chunk])

    elif kind == "rembg":
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        # rembg only opens custom models from inside its model home.
        os.environ["U2NET_HOME"] = str(Path(models["fp32"]).resolve().parent)
        from rembg import new_session

        rembg_session = new_session("u2net_custom", model_path=str(models["fp32"]))
        # rembg builds its own SessionOptions; give it the same thread count as ours.
        rembg_session.inner_session.set_providers(["CPUExecutionProvider"])

        def run(chunk: list) -> None:
            for image in chunk:
                rembg_session.predict(image)
    else:
        raise ValueError(kind)

    run(images[:batch])  # warm-up: graph optimisation, allocations
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        run(images[start : start + batch])
    elapsed = time.perf_counter() - started
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images_per_s": len(images) / elapsed, "peak_rss_mb": peak_rss_mb}


def _run_worker(
    kind: str, batch: int, n_images: int, threads: int, models: dict[str, Path]
) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # rembg wants numpy >= 2.3 and PyTriton numpy < 2, so rembg lives in a venv of its own
    # (`make bench` makes it: var/bench-rembg); its worker imports only the renderer from here.
    python = os.environ.get("REMBG_PYTHON", sys.executable) if kind == "rembg" else sys.executable
    out = subprocess.run(
        [
            python,
            "-m",
            "bench.matting",
            "--worker",
            kind,
            "--batch",
            str(batch),
            "--images",
            str(n_images),
            "--threads",
            str(threads),
            "--fp32",
            str(models["fp32"]),
            "--int8",
            str(models["int8"]),
            "--weights",
            str(models["weights"]),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    if out.returncode != 0:
        raise SystemExit(f"bench.matting: the {kind} b{batch} worker failed:\n{out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or one worker) and write bench/results/matting.json; a refusal of the run (a NaN
    figure, a bad setting) says so in a line."""
    if "--worker" in (sys.argv[1:] if argv is None else argv):
        # A child of the run, which reports one that fails. It stays off shared.commands and what that
        # imports (pydantic, the settings): they were counted in its peak RSS, and the rembg worker's venv
        # (var/bench-rembg) has no pydantic.
        return _bench(argv)
    from shared.commands import run_command

    return run_command("python -m bench.matting", lambda: _bench(argv))


def _bench(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.matting",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--worker", default=None, choices=KINDS)
    parser.add_argument(
        "--batch",
        type=positive_int,
        default=None,
        help="images per call, for one --worker (default 8); a full run times batches 1 and 8",
    )
    parser.add_argument("--images", type=positive_int, default=32, help="default 32")
    # SKUFORGE_MATTING_THREADS's bound: --threads 100000 went to ONNX Runtime as asked.
    parser.add_argument(
        "--threads",
        type=int_between(1, MAX_THREADS),
        default=2,
        help=f"ONNX Runtime threads (1 to {MAX_THREADS}, default 2)",
    )
    parser.add_argument("--rounds", type=positive_int, default=3, help="default 3")
    parser.add_argument("--heldout", type=positive_int, default=200, help="default 200")
    parser.add_argument(
        "--fp32",
        type=path_argument("file"),
        default=FP32,
        help="fp32 ONNX model (default: the committed one)",
    )
    parser.add_argument(
        "--int8",
        type=path_argument("file"),
        default=INT8,
        help="int8 ONNX model (default: the committed one)",
    )
    parser.add_argument(
        "--weights",
        type=path_argument("file"),
        default=WEIGHTS,
        help="the fp32 model's PyTorch weights (default: committed)",
    )
    parser.add_argument(
        "--out",
        type=path_argument("file"),
        default=RESULTS / "matting.json",
        help="results JSON (default bench/results/matting.json, the committed models' figures; "
        "other models, or any other option, need another)",
    )
    args = parser.parse_args(argv)
    models = {"fp32": args.fp32, "int8": args.int8, "weights": args.weights}
    if args.worker:
        batch = 8 if args.batch is None else args.batch
        print(json.dumps(worker(args.worker, batch, args.images, args.threads, models)))
        return 0
    # Was accepted and ignored: a full run times fixed batches (1 and 8), as the committed figures do.
    if args.batch is not None:
        parser.error("--batch is for one --worker: a full run times every configuration at batches 1 and 8")
    # Checked before the rounds: a missing --weights failed in round 1's torch worker, after the ORT
    # workers; another model's figures replaced the committed ones, with nothing saying whose they were.
    for name, path in models.items():
        try:
            is_file = path.is_file()
        except OSError as exc:  # a name too long, a folder this user may not look into: not False
            parser.error(f"--{name} {path}: cannot reach it ({exc.strerror or exc})")
        if not is_file:
            parser.error(f"--{name} {path} is not a file")
    # A smoke run (fewer --images or --rounds) went over the committed figures as well.
    committed = {"fp32": FP32, "int8": INT8, "weights": WEIGHTS}
    changed = [f"--{name}" for name, path in models.items() if path.resolve() != committed[name].resolve()]
    changed += [
        f"--{name}"
        for name in ("images", "threads", "rounds", "heldout")
        if getattr(args, name) != parser.get_default(name)
    ]
    if changed and args.out.resolve() == (RESULTS / "matting.json").resolve():
        parser.error(
            f"{', '.join(changed)}: not the committed run (its models, every other option at its default): "
            "give --out, so that its figures do not replace the committed bench/results/matting.json"
        )
    if problem := file_problem(args.out, "matting.json"):
        parser.error(f"--out {args.out}: {problem}")

    rembg_python = os.environ.get("REMBG_PYTHON", sys.executable)
    try:
        probe = subprocess.run([rembg_python, "-c", "import rembg"], capture_output=True)
        probe_failed = probe.returncode != 0
    except OSError:  # no such interpreter
        probe_failed = True
    if probe_failed:
        # Found after the first round's other workers, as a CalledProcessError that hid the reason.
        parser.error(
            f"{rembg_python} cannot import rembg (the baseline): run `make bench`, which makes its venv "
            "(var/bench-rembg), or set REMBG_PYTHON to a Python that has it"
        )
    kinds = list(KINDS)
    runs: dict[str, list[dict[str, float]]] = {f"{k}_b{b}": [] for k in kinds for b in (1, 8)}
    for round_index in range(args.rounds):
        # Reversed every other round, so no configuration always runs in the same slot.
        for kind in kinds if round_index % 2 == 0 else kinds[::-1]:
            for batch in (1, 8):
                measured = _run_worker(kind, batch, args.images, args.threads, models)
                runs[f"{kind}_b{batch}"].append(measured)
                print(
                    f"round {round_index + 1} {kind} b{batch}: {measured['images_per_s']:.2f} img/s, "
                    f"{measured['peak_rss_mb']:.0f} MB",
                    flush=True,
                )

    def ips(name: str) -> float:
        return statistics.median(r["images_per_s"] for r in runs[name])

    def speedup(ours: str, theirs: str) -> float:
        # The ratio within each round (the two ran minutes apart), then the median over rounds:
        # steadier than a ratio of medians when the machine's load changes between rounds.
        return median_round_ratio(
            [r["images_per_s"] for r in runs[ours]], [r["images_per_s"] for r in runs[theirs]], digits=3
        )

    from shared.matting.train import evaluate

    fp32_eval = evaluate(args.fp32, args.heldout, 9001)
    int8_eval = evaluate(args.int8, args.heldout, 9001)
    result: dict[str, Any] = {
        "heldout_iou": fp32_eval.mean_iou,
        "heldout_iou_int8": int8_eval.mean_iou,
        "heldout_mae": fp32_eval.mae,
        "heldout_mae_int8": int8_eval.mae,
        "heldout_images": fp32_eval.n_images,
        "speedup_vs_torch_b8": speedup("ort_fp32_b8", "torch_b8"),
        "speedup_vs_rembg_b8": speedup("ort_fp32_b8", "rembg_b8"),
        "speedup_int8_vs_rembg_b8": speedup("ort_int8_b8", "rembg_b8"),
        "speedup_int8_vs_fp32_b8": speedup("ort_int8_b8", "ort_fp32_b8"),
        "peak_rss_mb": round(
            max(r["peak_rss_mb"] for name in runs if name.startswith("ort") for r in runs[name]), 1
        ),
        "images_per_s": {name: round(ips(name), 3) for name in runs},
        # Each round's figures, in run order within the round (reversed every other round), so the
        # per-round ratios behind the speedups can be checked.
        "runs": {name: [{k: round(v, 3) for k, v in r.items()} for r in rs] for name, rs in runs.items()},
        "peak_rss_mb_by_config": {
            name: round(max(r["peak_rss_mb"] for r in rs), 1) for name, rs in runs.items()
        },
        "setup": {
            "images": args.images,
            "size_px": 512,
            "rounds": args.rounds,
            "threads": args.threads,
            "models": {name: f"{path.name} ({path.stat().st_size} bytes)" for name, path in models.items()},
            "note": "rembg has no batch API: its b8 figure is 8 single-image calls",
        },
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
        f"Python {platform.python_version()}, "
        "CPU execution provider",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = json_file_text(result, label=str(args.out))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
