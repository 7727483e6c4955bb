"""The copy check refuses a photo past twice Pillow's limit in the stages' words.

Pillow's own message alone ("Image size (...) exceeds limit of ... could be decompression bomb DOS
attack") was all ``skuforge evaluate`` said of such a photo: not that no setting passes it, so a
reader raised SKUFORGE_MAX_IMAGE_PIXELS for nothing, as ``decode_image``'s refusal says.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.errors import ImageRejected
from shared.evaluation.leakage import heldout_hash, perceptual_hash
from shared.images import PAST_PILLOWS_LIMIT, decode_image


def test_a_photo_past_twice_pillows_limit_is_refused_as_the_stages_refuse_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    data = buffer.getvalue()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 12000 pixels: past twice it, raised at open
    with pytest.raises(ImageRejected) as stage:
        decode_image(data)
    for hashed in (perceptual_hash, heldout_hash):
        with pytest.raises(ImageRejected) as copy_check:
            hashed(data)
        assert str(copy_check.value) == str(stage.value)
        assert PAST_PILLOWS_LIMIT in str(copy_check.value) and copy_check.value.setting is None
