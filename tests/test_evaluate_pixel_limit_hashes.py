"""The leakage hashes of ``skuforge evaluate`` are cached apart per SKUFORGE_MAX_IMAGE_PIXELS, as its
as-ingested answers are.

A hash depends on the limit: past it an image is refused, and near it a large JPEG's second, larger
decode (for a narrow product on a plain background) is given up, which moves the hash by a few bits.
Before, the cache was named by the image's sha256 alone, so a hash cached under one limit was read
under another (a scene file past the lowered limit was compared, not noted as skipped as the generator
skips it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.trainstore.evaluation import scene_files
from tests.support.evaluation import large_product_shot

# Within it ``large_product_shot`` decodes at 1/8 for its frame, and is refused whole for its product.
LOW_LIMIT = "1000000"


def test_a_scene_hash_cached_under_one_limit_is_not_read_under_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenes = tmp_path / "scenes"
    large_product_shot(scenes / "shelves" / "product.jpg")
    cache = tmp_path / "cache"
    _, default_hashes, _ = scene_files(f"file://{scenes}", cache)
    monkeypatch.setenv("SKUFORGE_MAX_IMAGE_PIXELS", LOW_LIMIT)
    _, uncached, _ = scene_files(f"file://{scenes}")
    assert uncached != default_hashes  # the limit moves this image's hash
    assert scene_files(f"file://{scenes}", cache)[1] == uncached


def test_a_scene_hash_cached_under_a_higher_limit_does_not_pass_a_file_past_a_lower_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenes = tmp_path / "scenes"
    (scenes / "shelves").mkdir(parents=True)
    wide = scenes / "shelves" / "wide.png"
    blocks = np.random.default_rng(0).integers(0, 256, (12, 24, 3), dtype=np.uint8)  # detail to hash
    Image.fromarray(blocks).resize((2000, 1001), Image.Resampling.NEAREST).save(wide)
    cache = tmp_path / "cache"
    _, hashes, notes = scene_files(f"file://{scenes}", cache)
    assert len(hashes) == 1 and not notes
    monkeypatch.setenv("SKUFORGE_MAX_IMAGE_PIXELS", "2000000")
    _, hashes, notes = scene_files(f"file://{scenes}", cache)
    assert not hashes
    assert len(notes) == 1 and f"scene file {wide} not checked: too_many_pixels: 2000x1001" in notes[0], notes
