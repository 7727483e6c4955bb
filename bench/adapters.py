"""LoRA switching cost with 2 and with 20 registered adapters: the LRU that deletes vs keeping all.

The diffusers/peft pitfall (huggingface/diffusers#11816): every adapter a pipeline holds makes
``set_adapters`` slower, so a server that never deletes adapters gets slower as the registry
grows. ``LoraSlots`` keeps at most ``--lru`` adapters and deletes the evicted ones. For 2 and 20
registered adapters, on the tiny config-built inpainting pipeline (no downloads, CPU, 1 thread):

- ``lru``: the backend's LRU of ``--lru`` adapters, after every registered adapter was used once;
- ``keep_all``: an LRU as large as the registry, i.e. nothing is ever deleted (the pitfall).

Per configuration, medians over ``--repeats``: ``hit_switch_s`` (``LoraSlots.activate`` to another
adapter that is already loaded: ``set_adapters``), ``miss_switch_s`` (to one that is not: evict,
delete, load from the local cache; ``lru`` only), ``generate_s`` (one 64 px image, 2 steps, with
the adapter active) and the adapters left in the UNet. Writes ``bench/results/adapters.json``; a run
with any option other than its default (a smoke ``--rounds 1``) needs ``--out FILE``.

    python -m bench.adapters [--repeats 15] [--lru 4] [--rounds 3] [--out FILE]
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

from bench.committed import check_out
from shared.argtypes import json_file_text, path_argument, positive_int
from shared.commands import run_command
from shared.config import load_settings

RESULTS = Path(__file__).resolve().parent / "results" / "adapters.json"
REGISTERED = (2, 20)


def _median_s(samples: list[float]) -> float:
    return round(statistics.median(samples), 5)


def measure(work: Path, registered: int, capacity: int, repeats: int) -> dict[str, Any]:
    """Time switches on a fresh backend whose registry holds ``registered`` adapters."""
    from bench.tiny_diffusion import product_photo
    from shared.generation.adapters import AdapterRegistry
    from shared.generation.backend import GenerationRequest
    from shared.generation.diffusion import DiffusionBackend, DiffusionSettings
    from shared.store import FileStore

    store_root = work / f"store-{registered}"
    registry = AdapterRegistry(FileStore(store_root / "adapters"))
    if not registry.list():
        for index in range(registered):
            registry.register(
                f"lora-{index}",
                work / f"lora{index}" / "pytorch_lora_weights.safetensors",
                kind="specialized",
                series=f"s{index}",
                base_model="tiny-sd-inpaint",
            )
    os.environ["SKUFORGE_STORE_URI"] = f"file://{store_root}"
    backend = DiffusionBackend.from_settings(
        load_settings(DiffusionSettings, diffusion_lora_cache_size=capacity), load_settings()
    )
    adapters = backend.adapters()
    slots = backend.lora
    for adapter in adapters:  # every adapter used once (and cached locally): a server that ran a while
        slots.activate(adapter)
    by_id = {a.adapter_id: a for a in adapters}

    hits: list[float] = []
    resident = slots.loaded[-2:] if len(slots.loaded) >= 2 else slots.loaded
    for turn in range(repeats):
        target = by_id[resident[turn % len(resident)]]
        started = time.perf_counter()
        slots.activate(target)
        hits.append(time.perf_counter() - started)

    misses: list[float] = []
    if capacity < registered:
        for turn in range(repeats):
            absent = [a for a in adapters if a.adapter_id not in slots.loaded]
            target = absent[turn % len(absent)]
            started = time.perf_counter()
            slots.activate(target)
            misses.append(time.perf_counter() - started)

    reference, mask = product_photo()
    request = GenerationRequest(
        reference=reference,
        mask=mask,
        prompt="a photo of sks can",
        negative_prompt="",
        seed=1,
        n=1,
        parameters={},
        adapter_id=slots.active,
        size=64,
    )
    generations: list[float] = []
    for _ in range(max(3, repeats // 3)):
        started = time.perf_counter()
        backend.generate(request)
        generations.append(time.perf_counter() - started)
    return {
        "lru_size": capacity,
        "hit_switch_s": _median_s(hits),
        "miss_switch_s": _median_s(misses) if misses else None,
        "generate_s": _median_s(generations),
        "adapters_in_unet": len(backend.pipe.get_list_adapters().get("unet", [])),
    }


def _median_round(rounds: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """``name``'s figures, each the median over the rounds (None where it has none)."""
    out: dict[str, Any] = {}
    for key in rounds[0][name]:
        values = [r[name][key] for r in rounds if r[name][key] is not None]
        out[key] = statistics.median(values) if values else None
    return out


def main(argv: list[str] | None = None) -> int:
    """Time LoRA switching and write bench/results/adapters.json; a refusal (a NaN figure, a bad setting)
    says so in a line."""
    return run_command("python -m bench.adapters", lambda: _bench(argv))


def _bench(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.adapters", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=15, help="switches timed per configuration (default 15)"
    )
    parser.add_argument(
        "--lru", type=positive_int, default=4, help="SKUFORGE_DIFFUSION_LORA_CACHE_SIZE of 'lru' (default 4)"
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="rounds of both configurations, order alternating (default 3)",
    )
    parser.add_argument(
        "--out",
        type=path_argument("file"),
        default=RESULTS,
        help="results JSON (default bench/results/adapters.json, the committed run's; a run with any "
        "other option needs another)",
    )
    args = parser.parse_args(argv)
    # The committed file is the default run's, which docs/diffusion.md cites: a smoke run went over it.
    check_out(parser, args, RESULTS)

    import torch

    from bench.tiny_diffusion import build_tiny_inpaint_pipeline, make_tiny_lora

    with tempfile.TemporaryDirectory(prefix="skuforge-bench-adapters-") as scratch:
        work = Path(scratch)
        model_dir = build_tiny_inpaint_pipeline(work / "tiny-sd-inpaint")
        for index in range(max(REGISTERED)):
            make_tiny_lora(model_dir, work / f"lora{index}", seed=index + 1)
        os.environ.update(
            {
                "SKUFORGE_DIFFUSION_MODEL": str(model_dir),
                "SKUFORGE_DIFFUSION_DEVICE": "cpu",
                "SKUFORGE_DIFFUSION_THREADS": "1",
                "SKUFORGE_DIFFUSION_STEPS": "2",
                "SKUFORGE_DIFFUSION_ADAPTER_REFRESH_S": "3600",
                "SKUFORGE_DIFFUSION_CACHE_DIR": str(work / "cache"),
            }
        )
        results: dict[str, Any] = {}
        for registered in REGISTERED:
            capacities = {"lru": min(args.lru, registered), "keep_all": registered}
            rounds: list[dict[str, Any]] = []
            for round_index in range(args.rounds):
                # Alternating which runs first: measured once each in a fixed order, two identical
                # configurations (2 registered) read 34% apart on switches and 19% on generation.
                order = list(capacities) if round_index % 2 == 0 else list(capacities)[::-1]
                rounds.append(
                    {name: measure(work, registered, capacities[name], args.repeats) for name in order}
                )
            results[str(registered)] = {
                **{name: _median_round(rounds, name) for name in capacities},
                "rounds": rounds,
            }
    figures = {
        "what": "LoRA switching on the tiny inpainting pipeline by adapters registered (bench/adapters.py)",
        "machine": (
            f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores (shared), "
            f"load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, CPU, 1 torch thread"
        ),
        "repeats": args.repeats,
        "registered": results,
    }
    text = json_file_text(figures, label=str(args.out))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
