"""The evaluation's feature cache is keyed by what changes the answer: the byte limit a photo is decoded
under (with a warm cache, a photo over a lowered SKUFORGE_MAX_IMAGE_BYTES was used, not refused) and
the device the backbone computes on (a GPU's features and the CPU's shared entries)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.errors import ImageRejected
from shared.evaluation.backbone import BackboneSpec, FeatureCache, open_backbone
from shared.evaluation.experiment import Featurizer, Photo, photo_from_bytes
from shared.images import encode_png
from tests.support.evaluation import one_torch_thread  # noqa: F401 (autouse)


def _photo() -> Photo:
    pixels = np.random.default_rng(3).integers(0, 256, (48, 48, 3), np.uint8)
    return photo_from_bytes("SKU-RED", "real", "SKU-RED/real-0.png", encode_png(Image.fromarray(pixels)))


def test_a_photo_over_a_lowered_byte_limit_is_refused_with_a_warm_cache(tmp_path: Path) -> None:
    backbone = open_backbone(BackboneSpec(name="tiny", image_px=32))
    photo = _photo()
    cache = FeatureCache(tmp_path / "features")
    Featurizer(backbone, cache).of([photo])  # warm, under the default limits
    Featurizer(backbone, cache).of_classic([photo], seed=0, size_px=32)
    lowered = Featurizer(backbone, cache, max_bytes=len(photo.read()) - 1)
    for features_of in (lambda: lowered.of([photo]), lambda: lowered.of_classic([photo], seed=0, size_px=32)):
        with pytest.raises(ImageRejected) as refused:
            features_of()
        assert refused.value.reason == "too_large_bytes", refused.value
        assert refused.value.setting == "SKUFORGE_MAX_IMAGE_BYTES"


def test_a_byte_limit_the_photos_pass_gives_the_cold_run_s_features(tmp_path: Path) -> None:
    backbone = open_backbone(BackboneSpec(name="tiny", image_px=32))
    photo = _photo()
    raised = len(photo.read()) * 4
    uncached = Featurizer(backbone, FeatureCache(None), max_bytes=raised).of([photo])
    cache = FeatureCache(tmp_path / "features")
    cold = Featurizer(backbone, cache, max_bytes=raised).of([photo])
    warm = Featurizer(backbone, cache, max_bytes=raised).of([photo])
    assert np.array_equal(uncached, cold) and np.array_equal(cold, warm)


def test_a_backbone_on_another_device_does_not_read_this_device_s_features(tmp_path: Path) -> None:
    photo = _photo()
    cache = FeatureCache(tmp_path / "features")
    Featurizer(open_backbone(BackboneSpec(name="tiny", image_px=32, device="cpu")), cache).of([photo])
    # The same weights on another device (PyTorch's "meta" device: shapes without numbers, as no GPU
    # need be here) must compute its own features; it read the CPU's from the cache instead. Computing
    # is all it can then do, and a meta tensor has no numbers to hand back.
    elsewhere = open_backbone(BackboneSpec(name="tiny", image_px=32, device="meta"))
    with pytest.raises(NotImplementedError, match="meta"):
        Featurizer(elsewhere, cache).of([photo])
