"""A model URI with a typo in it (a file or folder the store does not have) stops the stage with a line
that names the setting the URI came from: a host runs several stages, each with a model setting or two.
A cache volume that is full stops it naming the folder to free.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from services.captioner.config import CaptionerSettings
from services.captioner.stage import open_models
from services.matting.config import MattingSettings
from services.matting.stage import open_matting_session
from shared import model_cache
from shared.captioning.vlm import VlmModelError, fetch_model_dir
from shared.config import ConfigError, load_settings
from shared.generation.diffusion import DiffusionBackend, DiffusionModelError, DiffusionSettings
from shared.model_cache import fetch_directory
from shared.store import ObjectStore
from tests.support.model_cache import publish, publish_folder


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


def _full_volume(path: Path, blocks: Iterable[bytes]) -> tuple[int, str]:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as os.write says it: no file name


def test_a_full_cache_volume_stops_the_matting_stage_naming_the_folder_to_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It said "(<system temp>/skuforge-models) ... make that folder writable by this user": not the folder
    # TMPDIR made it, nor that room was what it lacked.
    uri = publish(tmp_path / "store", "u2netp.onnx", b"weights " * 100)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr(model_cache, "_write_durably", _full_volume)
    with pytest.raises(ConfigError) as refusal:
        open_matting_session(load_settings(MattingSettings, matting_model=uri), load_settings())
    message = str(refusal.value)
    assert str(tmp_path / "tmp" / "skuforge-models") in message and "free room" in message
    assert "\n" not in message


def test_a_full_cache_volume_stops_the_captioner_naming_the_folder_to_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, cache = publish_folder(tmp_path / "store", "blip"), tmp_path / "vlm-cache"
    monkeypatch.setattr(model_cache, "_write_durably", _full_volume)
    with pytest.raises(VlmModelError) as refusal:
        fetch_model_dir(uri, cache, uri_from="SKUFORGE_CAPTIONER_VLM_MODEL")
    message = str(refusal.value)
    assert str(cache) in message and "free room" in message and "SKUFORGE_CAPTIONER_VLM_CACHE_DIR" in message


def test_a_diffusion_model_uri_naming_no_pipeline_is_refused_before_anything_is_copied(
    tmp_path: Path,
) -> None:
    # SKUFORGE_DIFFUSION_MODEL=s3://models/ (the folder of every model, a typo) was copied whole, gigabytes
    # per model, before model_index.json was looked for in the copy.
    store = tmp_path / "store"
    publish_folder(store, "models/sd15-inpaint", {"model_index.json": b"{}", "unet/weights.bin": b"w" * 1000})
    cache = tmp_path / "cache"
    diffusion = load_settings(
        DiffusionSettings, diffusion_model=(store / "models").as_uri(), diffusion_cache_dir=str(cache)
    )
    with pytest.raises(DiffusionModelError, match=r"model_index\.json") as refusal:
        DiffusionBackend.from_settings(diffusion, load_settings(store_uri=(tmp_path / "flow").as_uri()))
    assert "SKUFORGE_DIFFUSION_MODEL" in str(refusal.value)
    assert list(cache.iterdir()) == []
