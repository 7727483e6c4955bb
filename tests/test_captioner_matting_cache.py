"""The captioner's matting model from a URI is copied into SKUFORGE_CAPTIONER_MATTING_CACHE_DIR, as the
matting stage's is into SKUFORGE_MATTING_CACHE_DIR."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.captioner.config import CaptionerSettings
from services.captioner.stage import open_models
from shared.config import ConfigError, load_settings
from shared.store import FileStore
from tests.support.matting import copied_into_cache_setting, stand_in_onnx_bytes


def test_the_captioner_copies_its_matting_model_from_a_uri_into_its_cache_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The matting stage's model had SKUFORGE_MATTING_CACHE_DIR, BLIP had its own; the captioner's matting
    model always went to <system temp>/skuforge-models, which only TMPDIR moved."""

    def opened(uri: str) -> object:
        options = load_settings(CaptionerSettings, captioner_matting_model=uri, captioner_use_gpu=False)
        return open_models(options, load_settings())

    copied_into_cache_setting(tmp_path, monkeypatch, "SKUFORGE_CAPTIONER_MATTING_CACHE_DIR", opened)


def test_a_captioner_matting_cache_that_cannot_be_written_names_its_setting(tmp_path: Path) -> None:
    """The refusal said to point TMPDIR elsewhere, the one way there was."""
    ref = FileStore(tmp_path / "store").put_bytes("models/stand-in.onnx", stand_in_onnx_bytes())
    (tmp_path / "a-file").write_text("not a folder")
    options = load_settings(
        CaptionerSettings,
        captioner_matting_model=ref.uri,
        captioner_use_gpu=False,
        captioner_matting_cache_dir=str(tmp_path / "a-file" / "cache"),
    )
    with pytest.raises(ConfigError, match=rf"{tmp_path}/a-file/cache.*SKUFORGE_CAPTIONER_MATTING_CACHE_DIR"):
        open_models(options, load_settings())
