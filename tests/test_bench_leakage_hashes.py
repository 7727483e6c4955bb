"""``bench.augment``'s leakage check hashes its photos as ``skuforge evaluate`` does: under
SKUFORGE_MAX_IMAGE_PIXELS. Before, it hashed under the default limit whatever the setting, so a large
JPEG's hash was not evaluate's (its product's larger decode, given up near the limit, moves it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import augment
from services.trainstore.evaluation import heldout_hashes, scene_files
from shared.evaluation.experiment import Photo
from shared.store import sha256_hex
from tests.support.evaluation import large_product_shot


def test_the_bench_hashes_as_skuforge_evaluate_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKUFORGE_MAX_IMAGE_PIXELS", "1000000")  # the product's larger decode is past it
    scene = large_product_shot(tmp_path / "scenes" / "shelves" / "product.jpg")
    assert augment._hashed([scene]) == scene_files(f"file://{tmp_path / 'scenes'}")[1]
    photo = Photo("SKU-1", "real", str(scene), sha256_hex(scene.read_bytes()), scene.read_bytes)
    assert augment._hashed([scene], heldout=True) == heldout_hashes([photo], None)[0]
