"""The generator stage, reviewed again: settings under which every image it stores is refused later."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.generator.stage import build_stage
from shared.config import ConfigError, load_settings
from shared.generation.settings import GenerationSettings
from tests.support.bus import file_store_uri, isolated_settings


def test_a_size_whose_images_have_more_pixels_than_every_stage_reads_is_refused_at_start(
    tmp_path: Path,
) -> None:
    """SKUFORGE_GENERATION_SIZE_PX=512 beside SKUFORGE_MAX_IMAGE_PIXELS=200000: the stage started, drew
    and stored every variant, and the matting dead-lettered each one (too_many_pixels), a stage late and
    naming neither setting; the size that just fits starts."""
    store_uri = file_store_uri(tmp_path / "store")
    generation = load_settings(GenerationSettings, generation_size_px=512)
    limited = isolated_settings("127.0.0.1:1", store_uri, max_image_pixels=200_000)
    with pytest.raises(ConfigError) as refused:
        build_stage(settings=limited, generation=generation)
    message = str(refused.value)
    assert "SKUFORGE_GENERATION_SIZE_PX" in message and "SKUFORGE_MAX_IMAGE_PIXELS" in message
    assert "447" in message  # the largest side that fits: 447 x 447 = 199809 pixels

    fits = isolated_settings("127.0.0.1:1", store_uri, max_image_pixels=512 * 512)
    stage = build_stage(settings=fits, generation=generation)
    (route,) = stage._routes.values()
    assert route.handle_batch is not None
    route.handle_batch.keywords["generator"].close()  # type: ignore[attr-defined]
