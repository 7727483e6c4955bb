"""The benchmark's in-process path (``bench/augment.py:_generate_all``, the composite backend called
directly) chose its cut-out photos by its own rule: of a class with no photo on a plain background it
drew round-robin from every photo, each whole mask, where the generator stage cuts each mask's largest
blob and draws from the photos whose blob is one object, the others only for a variant refused from
all of those (``SkuDraws``); and a refused variant stopped the run."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench import augment
from shared.generation.composite import CompositeBackend
from tests.support.in_store import PHOTO_PX, chain, disc, hair

VARIANTS = 3


class Session:
    """The matting model's masks: each class's photos', in the order the classes are asked for."""

    model_id = "drawn"

    def __init__(self, masks: dict[str, list[np.ndarray]]) -> None:
        self.masks = iter(masks.values())

    def predict(self, images: list[Image.Image]) -> list[Any]:
        masks = next(self.masks)
        assert len(masks) == len(images)
        return [argparse.Namespace(mask=np.where(mask, 255, 0).astype(np.uint8)) for mask in masks]


class Drawn:
    """The compositor, and the requests it drew an image for."""

    def __init__(self) -> None:
        self.backend, self.drawn = CompositeBackend(None), []  # type: ignore[var-annotated]

    def generate(self, request: Any) -> list[Any]:
        samples = self.backend.generate(request)
        self.drawn.append(request)
        return samples


def test_in_process_cut_outs_are_the_generator_stages_of_in_store_photos(tmp_path: Path) -> None:
    tag = disc(12, (30, 290))  # a price tag beside the apple
    masks = {
        # One apple (and its price tag) after a chain of three: the apple alone is drawn from.
        "Apple": [chain(), disc(50, (160, 160)) | tag],
        # One object the compositor refuses for every variant: its variants go to the chain.
        "Pear": [hair(), chain()],
    }
    rng = np.random.default_rng(38)
    refs: dict[str, list[Path]] = {}
    for name, photos in masks.items():
        refs[name] = []
        for index, mask in enumerate(photos):
            pixels = rng.integers(0, 256, (PHOTO_PX, PHOTO_PX, 3), dtype=np.uint8)  # a cluttered shelf
            pixels[mask] = (200, 30, 30)
            path = tmp_path / "photos" / name / f"{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            refs[name].append(path)
    args = argparse.Namespace(
        series_of={name: name for name in masks},
        max_reference_px=PHOTO_PX,
        min_plain_background=0.7,
        min_cutout_solidity=0.0,
        pile_share=0.0,
        own_scene_share=0.0,
        own_scene_blur=None,
        variants_per_sku=VARIANTS,
        seed=0,
        size=128,
    )
    backend = Drawn()

    made = augment._generate_all(refs, args, tmp_path / "generated", Session(masks), backend, {}, k=1)

    assert {name: len(paths) for name, paths in made.items()} == {"Apple": VARIANTS, "Pear": VARIANTS}

    def seed(name: str, photo: int, variant: int) -> int:  # composite_request's, of that photo
        return int(hashlib.sha256(f"{name}|{photo}|{variant}|0".encode()).hexdigest()[:8], 16)

    assert [(request.series, request.seed) for request in backend.drawn] == [
        (name, seed(name, 1, variant)) for name in masks for variant in range(VARIANTS)
    ]
    apple = np.where(disc(50, (160, 160)), 255, 0).astype(np.uint8)
    for request in backend.drawn[:VARIANTS]:
        assert np.array_equal(request.mask, apple)  # cut to its largest blob: no price tag
