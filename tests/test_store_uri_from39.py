"""An S3 refusal names the setting its URI came from (review 39, after 715978a): the adapters registry
and the models are opened from settings of their own, but a refusal blamed SKUFORGE_STORE_URI."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

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
