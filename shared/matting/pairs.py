"""Image/mask pairs from the composite generation backend, for fine-tuning the matting model.

The composite backend puts a product's own pixels on shelves, tables and clutter, among other
products and sometimes behind them, and knows exactly where the product is (the expected mask).
Those are the scenes the gate judges, and where a matting model trained on plain renderer photos
also cuts out the neighbours. ``skuforge matting pairs`` writes such scenes with their expected
masks in the layout ``skuforge matting train --extra DIR`` reads::

    skuforge matting pairs --n 900 --out var/matting/composite-pairs     # what the committed model saw

Pair ``i``: product ``i`` of the synthetic catalogue ``--catalogue-seed`` (57 by default: not the
gate benchmark's 31, not the renderer training seeds 1-3, not the held-out 9001 and 424242), its
reference photo ``i % 4`` rendered with the exact mask, one composite variant with generator seed
``seed_base + i``, 512 px (384 px for every third pair).

With ``--roi`` each pair is cropped to the box the matting stage mats (``shared.matting.roi``):
the product's square box, widened by a margin drawn per pair from 0.1-0.6 and its centre moved by
up to 8% of the side, so the model learns to keep the product that fills the box and to leave
the neighbours cut by its edges::

    skuforge matting pairs --roi --n 900 --out var/matting/roi-pairs

A run that stops leaves its marker beside the pairs (``shared.matting.unfinished``): training
refuses that folder until a rerun with the same catalogue seed and crop finishes it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.generation.backend import GenerationRequest
from shared.generation.composite import CompositeBackend
from shared.images import encode_png
from shared.matting.roi import product_box
from shared.matting.unfinished import COMPOSITE_PAIRS, mark_finished, mark_unfinished, resumed_run
from shared.model_cache import write_atomically
from shared.synth import make_product, render_photo

CATALOGUE_SEED = 57
SEED_BASE = 5_000_000_000
ROI_MARGINS = (0.1, 0.6)
ROI_CENTRE_SHIFT = 0.08


@dataclass(frozen=True)
class PairInfo:
    """One written pair: its file name and how its scene was drawn."""

    name: str
    size_px: int
    scene: str
    occluders: int
    mask_fraction: float


def composite_pairs(
    out: Path,
    n: int,
    *,
    catalogue_seed: int = CATALOGUE_SEED,
    seed_base: int = SEED_BASE,
    roi: bool = False,
) -> Iterator[PairInfo]:
    """Write ``out/images/NAME.png`` and ``out/masks/NAME.png`` (0/255) for pairs 0..n-1.

    ``out/index.jsonl`` lists every pair with its scene, a line written once the pair's files are in
    place; the pairs it lists are skipped, so an interrupted (even killed) run continues. Until the
    last pair is written the folder holds the run's marker, which training refuses: a rerun with any
    ``n`` finishes it (pair ``i`` is the same whatever the count). ``roi``: crop each pair to a
    jittered product box. Raises ``ValueError`` for an ``out`` that a run with another catalogue
    seed, seed base or crop stopped in (its part of a set would stay beside this one's), or that
    holds a set of another catalogue seed or crop (one folder is one set), before writing anything.
    """
    options: dict[str, object] = {"n": n, "catalogue_seed": catalogue_seed, "roi": roi}
    options["seed_base"] = seed_base  # not a command option: the rerun names the others
    resumed_run(out, COMPOSITE_PAIRS, options, any_value={"n"})
    _refuse_another_set(out, catalogue_seed=catalogue_seed, roi=roi)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    mark_unfinished(out, COMPOSITE_PAIRS, options)
    backend = CompositeBackend()
    index_path = out / "index.jsonl"
    done = _indexed_names(index_path)
    with index_path.open("a") as index:
        for i in range(n):
            name = _pair_name(roi, catalogue_seed, i)
            # Listed, not merely on disk: a run killed while saving a mask left it truncated under its
            # own name (older runs did), and one killed before its index line left the pair unlisted.
            if name in done and (out / "masks" / f"{name}.png").is_file():
                continue
            size = 384 if i % 3 == 2 else 512
            reference = render_photo(make_product(i, catalogue_seed), i % 4, catalogue_seed, size_px=size)
            request = GenerationRequest(
                reference=np.asarray(reference.image, dtype=np.uint8),
                mask=reference.mask,
                prompt="",
                negative_prompt="",
                seed=seed_base + i,
                n=1,
                parameters={},
                size=size,
            )
            sample = backend.generate(request)[0]
            image, mask = sample.image, sample.expected_mask
            if roi:
                rng = np.random.default_rng([seed_base, i])
                box = product_box(
                    mask,
                    float(rng.uniform(*ROI_MARGINS)),
                    centre_shift=(
                        float(rng.uniform(-ROI_CENTRE_SHIFT, ROI_CENTRE_SHIFT)),
                        float(rng.uniform(-ROI_CENTRE_SHIFT, ROI_CENTRE_SHIFT)),
                    ),
                )
                if box is not None:
                    left, top, right, bottom = box
                    image, mask = image[top:bottom, left:right], mask[top:bottom, left:right]
            write_atomically(out / "images" / f"{name}.png", encode_png(image))
            write_atomically(out / "masks" / f"{name}.png", encode_png(mask))
            info = PairInfo(
                name=name,
                size_px=max(mask.shape),
                scene=str(sample.parameters["scene"]),
                occluders=int(sample.parameters["occluders"]),
                mask_fraction=round(float((mask >= 128).mean()), 4),
            )
            index.write(json.dumps(info.__dict__) + "\n")
            index.flush()  # on disk before the next pair: a killed run's buffer held written pairs' lines
            yield info
    mark_finished(out, COMPOSITE_PAIRS)


def _pair_name(roi: bool, catalogue_seed: int, index: int) -> str:
    return f"{'r' if roi else 'c'}{catalogue_seed}_{index:04d}"


# [0-9], not \d: \d matches any script's digits and int() reads them; no run writes such a name.
_PAIR_NAME = re.compile(r"([cr])([0-9]+)_[0-9]{4,}")


def _refuse_another_set(out: Path, *, catalogue_seed: int, roi: bool) -> None:
    """``ValueError`` when ``out`` holds pairs of another catalogue seed or crop (read off their names):
    a finished set has no marker, and this run's set was written beside it, both trained on as one."""
    index_path = out / "index.jsonl"
    listed = _listed_names(index_path.read_text()) if index_path.is_file() else set()
    names = listed | {path.stem for path in (out / "images").glob("*.png")}
    found = {(match[1] == "r", int(match[2])) for name in names if (match := _PAIR_NAME.fullmatch(name))}
    others = sorted(found - {(roi, catalogue_seed)})
    if others:
        other_roi, other_seed = others[0]
        made_with = f"--catalogue-seed {other_seed}{' --roi' if other_roi else ''}"
        raise ValueError(
            f"--out {out}: holds a pairs set made with {made_with}; give another folder for "
            f"--catalogue-seed {catalogue_seed}{' --roi' if roi else ''}, as one folder is one set"
        )


def _indexed_names(index_path: Path) -> set[str]:
    """The pairs ``index_path`` lists; a line a killed run left unfinished is ended, not read."""
    if not index_path.is_file():
        return set()
    text = index_path.read_text()
    if text and not text.endswith("\n"):
        with index_path.open("a") as index:  # the next line must start a line of its own
            index.write("\n")
    return _listed_names(text)


def _listed_names(index_text: str) -> set[str]:
    """The names an index's text lists; an unfinished line is skipped (its pair is written again)."""
    names = set()
    for line in index_text.splitlines():
        try:
            names.add(str(json.loads(line)["name"]))
        except (ValueError, KeyError, TypeError):
            continue
    return names
