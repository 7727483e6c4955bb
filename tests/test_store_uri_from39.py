"""An S3 refusal names the setting its URI came from (review 39, after 715978a): the adapters registry
and the models are opened from settings of their own, but a refusal blamed SKUFORGE_STORE_URI."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from services.captioner.config import CaptionerSettings
from services.captioner.stage import open_models
from services.matting.config import MattingSettings
from services.matting.stage import open_matting_session
from shared.config import load_settings
from shared.errors import StoreMisconfigured
from shared.generation.diffusion import DiffusionBackend, DiffusionSettings
from skuforge_cli.main import main as cli_main
from tests.support.bus import file_store_uri
from tests.support.s3 import free_port


def test_an_s3_adapters_registry_that_refuses_names_the_adapters_setting(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The bucket is missing: the refusal said to check "the bucket name in SKUFORGE_STORE_URI", a file
    # store here, and the hint after it to check SKUFORGE_STORE_URI again.
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    adapters = f"s3://missing-{uuid.uuid4().hex[:12]}/adapters"
    monkeypatch.setenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", adapters)
    monkeypatch.setenv("SKUFORGE_S3_ENDPOINT_URL", s3_endpoint)
    assert cli_main(["adapters", "list"]) == 1
    said = capsys.readouterr().err
    assert "the bucket name in SKUFORGE_DIFFUSION_ADAPTERS_URI" in said, said
    assert "SKUFORGE_STORE_URI" not in said, said


def test_an_s3_adapters_registry_out_of_reach_is_not_blamed_on_the_store_setting(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens at the endpoint: the hint said to check SKUFORGE_STORE_URI, a file store here.
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    adapters = f"s3://adapters-{uuid.uuid4().hex[:12]}/adapters"
    monkeypatch.setenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", adapters)
    monkeypatch.setenv("SKUFORGE_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    assert cli_main(["adapters", "list"]) == 1
    said = capsys.readouterr().err
    assert f"S3 unreachable for {adapters}/ (from SKUFORGE_DIFFUSION_ADAPTERS_URI)" in said, said
    assert "SKUFORGE_S3_ENDPOINT_URL" in said, said
    assert "SKUFORGE_STORE_URI" not in said, said


@pytest.fixture
def missing_bucket(tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """An S3 bucket nobody made, at the test server; the object store is a file store."""
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    monkeypatch.setenv("SKUFORGE_S3_ENDPOINT_URL", s3_endpoint)
    return f"s3://missing-{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize(
    "setting", ["SKUFORGE_MATTING_MODEL", "SKUFORGE_CAPTIONER_MATTING_MODEL", "SKUFORGE_CAPTIONER_VLM_MODEL"]
)
def test_a_model_in_a_refusing_bucket_names_the_model_setting(
    setting: str, missing_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each said to check "the bucket name in SKUFORGE_STORE_URI", a file store here.
    model = f"{missing_bucket}/models/blip" if "VLM" in setting else f"{missing_bucket}/models/m.onnx"
    monkeypatch.setenv(setting, model)
    monkeypatch.setenv("SKUFORGE_CAPTIONER_BACKEND", "vlm" if "VLM" in setting else "attributes")
    monkeypatch.setenv("SKUFORGE_CAPTIONER_VLM_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(StoreMisconfigured, match=f"the bucket name in {setting} "):
        if setting == "SKUFORGE_MATTING_MODEL":
            open_matting_session(load_settings(MattingSettings), load_settings())
        else:
            open_models(load_settings(CaptionerSettings), load_settings())


def test_a_diffusion_model_in_a_refusing_bucket_names_the_model_setting(
    missing_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKUFORGE_DIFFUSION_MODEL", f"{missing_bucket}/models/inpaint")
    monkeypatch.setenv("SKUFORGE_DIFFUSION_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(StoreMisconfigured, match="the bucket name in SKUFORGE_DIFFUSION_MODEL "):
        DiffusionBackend.from_settings(load_settings(DiffusionSettings), load_settings())
