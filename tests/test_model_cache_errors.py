"""A model URI with a typo in it (a file or folder the store does not have) stops the stage with a line
that names the setting the URI came from: a host runs several stages, each with a model setting or two.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.captioner.config import CaptionerSettings
from services.captioner.stage import open_models
from shared.config import ConfigError, load_settings
from shared.model_cache import fetch_directory
from shared.store import ObjectStore
from tests.support.model_cache import publish_folder


def test_a_missing_model_file_names_the_setting_it_came_from(tmp_path: Path, s3_store: ObjectStore) -> None:
    # The captioner names two models; "no matting model at s3://..." said neither which nor where to fix it.
    options = load_settings(
        CaptionerSettings, captioner_matting_model=f"{s3_store.base_uri}/models/u2netp-typo.onnx"
    )
    with pytest.raises(ConfigError, match="SKUFORGE_CAPTIONER_MATTING_MODEL") as refusal:
        open_models(options, load_settings(), s3_store)
    assert "u2netp-typo.onnx" in str(refusal.value)


def test_a_missing_model_folder_is_said_to_be_missing_naming_the_setting(tmp_path: Path) -> None:
    # It was "holds no config.json: not a save_pretrained folder (keys: [])", naming no setting.
    typo = (tmp_path / "store" / "blip-typo").as_uri()
    with pytest.raises(ValueError, match="nothing is stored under") as refusal:
        fetch_directory(
            typo, tmp_path / "cache", uri_from="SKUFORGE_CAPTIONER_VLM_MODEL", required_file="config.json"
        )
    assert "SKUFORGE_CAPTIONER_VLM_MODEL" in str(refusal.value)


def test_a_folder_that_is_no_model_names_the_setting(tmp_path: Path) -> None:
    uri = publish_folder(tmp_path / "store", "blip", {"weights.bin": b"w"})
    with pytest.raises(ValueError, match=r"holds no config\.json") as refusal:
        fetch_directory(
            uri, tmp_path / "cache", uri_from="SKUFORGE_CAPTIONER_VLM_MODEL", required_file="config.json"
        )
    assert "SKUFORGE_CAPTIONER_VLM_MODEL" in str(refusal.value)
