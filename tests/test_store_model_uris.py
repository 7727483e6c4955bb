"""A model setting's URI is checked when the settings load, as the other URI settings are: a bucket name
S3 refuses, or a scheme no store serves, was found only when the stage fetched the model."""

from __future__ import annotations

import pytest
from pydantic_settings import BaseSettings

from services.captioner.config import CaptionerSettings
from services.matting.config import MattingSettings
from shared.config import ConfigError, load_settings
from shared.generation.diffusion import DiffusionSettings

# Each model setting, with what else it needs set to be read.
MODEL_SETTINGS: list[tuple[type[BaseSettings], str, dict[str, str]]] = [
    (DiffusionSettings, "diffusion_model", {}),
    (MattingSettings, "matting_model", {}),
    (CaptionerSettings, "captioner_matting_model", {}),
    (CaptionerSettings, "captioner_vlm_model", {"captioner_backend": "vlm"}),
]


@pytest.mark.parametrize(("settings", "field", "needs"), MODEL_SETTINGS)
@pytest.mark.parametrize("uri", ["s3://x/models/m.onnx", "gs://models/m.onnx"])
def test_a_model_uri_no_store_opens_is_refused_when_the_settings_load_naming_the_setting(
    settings: type[BaseSettings], field: str, needs: dict[str, str], uri: str
) -> None:
    with pytest.raises(ConfigError, match=rf"SKUFORGE_{field.upper()}: .*'{uri}'"):
        load_settings(settings, **needs, **{field: uri})


@pytest.mark.parametrize(("settings", "field", "needs"), MODEL_SETTINGS)
def test_a_model_uri_with_a_long_prefix_or_a_local_path_loads(
    settings: type[BaseSettings], field: str, needs: dict[str, str]
) -> None:
    # Only read: a model's folder need not leave the flow's keys room (202b5db).
    folder = "/".join(["m" * 250, "m" * 250, "m" * 100])
    for model in (f"s3://models/{folder}/m.onnx", "models/m.onnx", "u2netp"):
        assert getattr(load_settings(settings, **needs, **{field: model}), field) == model
