"""Generation throughput through the real Triton server, and LoRA switching cost.

Starts ``skuforge serve generator`` (PyTriton, CPU here) with the ``composite`` backend and, when
torch and diffusers are installed, the ``diffusion`` backend on the tiny config-built inpainting
pipeline of ``bench/tiny_diffusion.py`` (no downloads). Each backend is called through
tritonclient (gRPC), one request per image, at concurrency 1 and 8, in interleaved rounds (median
reported, each round's figure kept); Triton's dynamic batcher merges concurrent requests, and its
statistics give the largest batch it executed. ``diffusion_rows_per_call_max``: the most rows one
diffusion pipeline call painted (each image's ``pipeline_batch_rows``).

``lora_switch_s``: with N adapters registered and loaded (LRU large enough to keep them), the
median seconds of a request that switches to another adapter and of one that keeps the adapter of
the request before it (tiny model, CPU), the two interleaved in rounds (which runs first alternating),
and the median of the rounds' switch/same ratios, by N (2 or more: one adapter has nothing to switch
to): switching cost should stay flat as adapters accumulate.

Writes ``bench/results/generation.json`` (``--out``: another file). A run with any option other than
its default (``--no-diffusion``, which measures the composite backend only, or a smoke ``--images 2
--rounds 1``) needs ``--out``, so that it does not replace the committed figures.

    python -m bench.generation [--size 512] [--images 40] [--diffusion-size 64] [--no-diffusion] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.committed import check_out
from bench.rounds import median_round_ratio
from bench.triton import TritonServerProcess, max_batch_executed
from services.generator.client import TritonGenerator
from services.generator.protocol import VariantRequest, VariantResult
from services.generator.stage import crop_to_product
from shared.argtypes import int_between, json_file_text, path_argument, positive_int, whole_number
from shared.commands import run_command
from shared.generation.backend import MAX_SIZE_PX
from shared.generation.composite import MIN_SIZE_PX as COMPOSITE_MIN_SIZE_PX
from shared.generation.diffusion import MIN_SIZE_PX as DIFFUSION_MIN_SIZE_PX
from shared.generation.diffusion import SIZE_STEP_PX as DIFFUSION_SIZE_STEP_PX
from shared.synth import make_product, render_photo

RESULTS = Path(__file__).resolve().parent / "results" / "generation.json"
CONCURRENCIES = (1, 8)


def _variants(count: int, size_px: int, reference_px: int) -> list[VariantRequest]:
    photo = render_photo(make_product(1, seed=2026), 0, seed=2026, size_px=reference_px)
    reference, mask = crop_to_product(np.asarray(photo.image), photo.mask)  # as the stage sends it
    return [
        VariantRequest(
            reference=reference,
            mask=mask,
            prompt="a photo of sks can",
            negative_prompt="",
            seed=seed,
            parameters_json="{}",
            adapter_id=None,
            series=None,
            size=size_px,
        )
        for seed in range(count)
    ]


def images_per_s(
    server: TritonServerProcess, backend: str, variants: list[VariantRequest], concurrency: int
) -> tuple[float, int]:
    """Images per second for ``variants`` sent with ``concurrency`` requests in flight (after a warm-up),
    and the most rows one pipeline call painted (``pipeline_batch_rows``; 0 if the backend has none)."""
    client = TritonGenerator(server.grpc_url, concurrency=concurrency, timeout_s=600)
    try:
        warm_up = variants[: max(2, concurrency)]
        client.generate(backend, warm_up)  # warm-up: connections, first calls
        client.forget(backend, warm_up)  # else the timed call would take the warm-up's answers, not draw them
        started = time.perf_counter()
        results = client.generate(backend, variants)
        elapsed = time.perf_counter() - started
    finally:
        client.close()
    rows = 0
    for result in results:
        if not isinstance(result, VariantResult):
            raise RuntimeError(f"{backend}: some variants were refused: {results}")
        rows = max(rows, int(json.loads(result.parameters_json).get("pipeline_batch_rows", 0)))
    return len(variants) / elapsed, rows


def bench_backend(
    work: Path,
    backend: str,
    size_px: int,
    images: int,
    reference_px: int,
    rounds: int,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Images/s at each concurrency: the median of ``rounds`` rounds, concurrencies interleaved in each
    round, so a neighbour's load on the shared machine hits both alike."""
    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    server = TritonServerProcess(work, backends=(backend,), max_batch_size=8, batch_delay_us=5_000)
    per_round: dict[int, list[float]] = {c: [] for c in CONCURRENCIES}
    rows: dict[int, int] = dict.fromkeys(CONCURRENCIES, 0)
    try:
        server.start()
        variants = _variants(images, size_px, reference_px)
        for _ in range(rounds):
            for concurrency in CONCURRENCIES:
                rate, most = images_per_s(server, backend, variants, concurrency)
                per_round[concurrency].append(round(rate, 2))
                rows[concurrency] = max(rows[concurrency], most)
        batch = max_batch_executed(server.statistics(backend))
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    result: dict[str, Any] = {
        f"{backend}_images_per_s_c{c}": round(statistics.median(rates), 2) for c, rates in per_round.items()
    }
    result[f"{backend}_images_per_s_rounds"] = {f"c{c}": rates for c, rates in per_round.items()}
    result[f"{backend}_size_px"] = size_px
    result[f"{backend}_max_batch_seen"] = batch
    if backend == "diffusion":
        result["diffusion_rows_per_call_max"] = max(rows.values())
        result["diffusion_rows_per_call_max_by_concurrency"] = {f"c{c}": n for c, n in rows.items()}
    return result


def lora_switch_seconds(
    model_dir: Path, work: Path, counts: tuple[int, ...] = (2, 4, 8), rounds: int = 3
) -> dict[str, dict[str, float]]:
    """Seconds of a request that switches adapter vs one that keeps it, by adapters loaded (in-process):
    medians of ``rounds`` rounds, each timing one of either kind, and of the rounds' ratios."""
    if min(counts) < 2:
        raise ValueError(f"a switch needs at least 2 adapters loaded, got counts {counts}")
    from bench.tiny_diffusion import TINY_BASE_MODEL, make_tiny_lora, product_photo
    from shared.config import load_settings
    from shared.generation.adapters import AdapterRegistry
    from shared.generation.backend import GenerationRequest
    from shared.generation.diffusion import DiffusionBackend, DiffusionSettings
    from shared.store import FileStore

    store_root = work / "lora-store"
    registry = AdapterRegistry(FileStore(store_root / "adapters"))
    most = max(counts)
    for index in range(most + 1):
        weights = make_tiny_lora(model_dir, work / f"lora{index}", seed=index + 1)
        registry.register(
            f"lora-{index}", weights, kind="specialized", series=f"s{index}", base_model=TINY_BASE_MODEL
        )
    os.environ.update(
        {
            "SKUFORGE_DIFFUSION_LORA_CACHE_SIZE": str(most + 1),
            "SKUFORGE_DIFFUSION_ADAPTER_REFRESH_S": "3600",
            "SKUFORGE_STORE_URI": f"file://{store_root}",
        }
    )
    backend = DiffusionBackend.from_settings(load_settings(DiffusionSettings), load_settings())
    reference, mask = product_photo(96, seed=3)

    def timed(series: str) -> float:
        request = GenerationRequest(
            reference=np.asarray(reference),
            mask=np.asarray(mask),
            prompt="a photo of sks can",
            negative_prompt="",
            seed=1,
            n=1,
            parameters={},
            series=series,
            size=64,
        )
        started = time.perf_counter()
        backend.generate(request)
        return time.perf_counter() - started

    out: dict[str, dict[str, float]] = {}
    loaded = current = 0  # current: the adapter of the last request
    for count in counts:
        while loaded < count:  # load adapters 0..count-1 (first use loads them)
            timed(f"s{loaded}")
            current, loaded = loaded, loaded + 1
        same: list[float] = []
        switch: list[float] = []
        # Interleaved, which runs first alternating, so a neighbour's load on the shared machine hits
        # both alike: all the "same" requests ran first, then all the "switch" ones.
        for round_index in range(rounds):
            for kind in ("same", "switch") if round_index % 2 == 0 else ("switch", "same"):
                if kind == "switch":
                    current = (current + 1) % count
                    switch.append(timed(f"s{current}"))
                else:
                    same.append(timed(f"s{current}"))
        out[str(count)] = {
            "switch_request_s": round(statistics.median(switch), 4),
            "same_adapter_request_s": round(statistics.median(same), 4),
            "switch_over_same": median_round_ratio(switch, same),
        }
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _diffusion_side_px(text: str) -> int:
    """An argparse type: a side the diffusion backend paints (a multiple of 8, 64 to 2048)."""
    value = whole_number(text)
    if value % DIFFUSION_SIZE_STEP_PX or not DIFFUSION_MIN_SIZE_PX <= value <= MAX_SIZE_PX:
        raise argparse.ArgumentTypeError(
            f"must be a multiple of {DIFFUSION_SIZE_STEP_PX} from {DIFFUSION_MIN_SIZE_PX} to "
            f"{MAX_SIZE_PX}, got {value}"
        )
    return value


def main(argv: list[str] | None = None) -> int:
    """Time the generator's backends on Triton and write bench/results/generation.json; a refusal (a NaN
    figure, the store) says so in a line."""
    return run_command("python -m bench.generation", lambda: _bench(argv))


def _bench(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.generation", description=__doc__.splitlines()[0])
    # Sides the backend draws: the server or backend refused others in a traceback after the server had
    # started, a --diffusion-size only after the composite rounds had run.
    parser.add_argument(
        "--size",
        type=int_between(COMPOSITE_MIN_SIZE_PX, MAX_SIZE_PX),
        default=512,
        help=f"composite output side (px), {COMPOSITE_MIN_SIZE_PX} to {MAX_SIZE_PX} (default 512)",
    )
    parser.add_argument("--images", type=positive_int, default=40, help="images per measurement (default 40)")
    parser.add_argument(
        "--diffusion-size",
        type=_diffusion_side_px,
        default=64,
        help=f"diffusion output side (px), a multiple of {DIFFUSION_SIZE_STEP_PX} from "
        f"{DIFFUSION_MIN_SIZE_PX} to {MAX_SIZE_PX} (tiny model: 64) (default 64)",
    )
    parser.add_argument("--diffusion-images", type=positive_int, default=16, help="default 16")
    parser.add_argument(
        "--no-diffusion",
        action="store_true",
        help="composite only; needs --out, as any other option does (the committed file keeps its diffusion "
        "figures)",
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=3, help="interleaved rounds per backend (median) (default 3)"
    )
    parser.add_argument(
        "--out",
        type=path_argument("file"),
        default=RESULTS,
        help="results JSON (default bench/results/generation.json, the committed run's; a run with any "
        "other option needs another)",
    )
    args = parser.parse_args(argv)
    # The committed file is the default run's (`make bench`): a composite-only file replaced it, its
    # diffusion and LoRA-switch figures gone, and a smoke run (`--images 2 --rounds 1`) went over it.
    check_out(parser, args, RESULTS)
    results: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}",
        "cpu_model": _cpu_model(),
        "device": "cpu",
        # The machine is shared: its load at the start says how far the figures are from an idle machine.
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "concurrencies": list(CONCURRENCIES),
        "triton": "PyTriton-bundled Triton, 1 model instance, max_batch_size 8, batch delay 5 ms, gRPC",
        "rounds": args.rounds,
        "method": "per backend: rounds x (c1 then c8) on one server, median per concurrency",
    }
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as tmp:
        work = Path(tmp)
        results.update(
            bench_backend(work, "composite", args.size, args.images, reference_px=512, rounds=args.rounds)
        )
        print(json.dumps(results), flush=True)
        if not args.no_diffusion:
            from bench.tiny_diffusion import build_tiny_inpaint_pipeline

            model_dir = build_tiny_inpaint_pipeline(work / "tiny-sd-inpaint")
            env = {
                "SKUFORGE_DIFFUSION_MODEL": str(model_dir),
                "SKUFORGE_DIFFUSION_DEVICE": "cpu",
                "SKUFORGE_DIFFUSION_THREADS": "1",
                "SKUFORGE_DIFFUSION_STEPS": "2",
                # As many rows per pipeline call as Triton's max batch, so a full batch is one call.
                "SKUFORGE_DIFFUSION_MAX_BATCH": "8",
                "SKUFORGE_DIFFUSION_CACHE_DIR": str(work / "cache"),
                "SKUFORGE_STORE_URI": f"file://{work / 'store'}",
            }
            results.update(
                bench_backend(
                    work, "diffusion", args.diffusion_size, args.diffusion_images, 96, args.rounds, env=env
                )
            )
            results["diffusion_model"] = (
                "tiny config-built SD inpainting pipeline, 2 steps, up to 8 rows per pipeline call "
                "(bench/tiny_diffusion.py)"
            )
            results["diffusion_speedup_c8_over_c1"] = median_round_ratio(
                results["diffusion_images_per_s_rounds"]["c8"], results["diffusion_images_per_s_rounds"]["c1"]
            )
            os.environ.update(env)
            results["lora_switch_s"] = lora_switch_seconds(model_dir, work)
    results["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    results["max_batch_seen"] = max(v for k, v in results.items() if k.endswith("_max_batch_seen"))
    text = json_file_text(results, label=str(args.out))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
