"""The room an S3 prefix leaves the keys (``MIN_KEY_ROOM_BYTES``), where a URI is built or only read.

A store's prefix must leave the flow's keys 512 of S3's 1024 bytes. ``<SKUFORGE_STORE_URI>/adapters`` is
built, not set, so the settings' check of the store passed a prefix the adapter registry's refused; and a
model's folder or the scene library, which the flow only reads, was held to the room of a folder it writes
in.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import pytest
from prometheus_client import CollectorRegistry

from services.generator.server import load_scenes
from services.lora_trainer.config import LoraTrainerSettings
from services.lora_trainer.stage import LoraTrainerMetrics, open_trainer
from services.trainstore.evaluation import EvaluateRefused, scene_files
from shared.config import ConfigError, load_settings
from shared.evaluation.experiment import encode_jpeg
from shared.generation.diffusion import DiffusionBackend, DiffusionSettings
from shared.generation.settings import GenerationSettings
from shared.model_cache import fetch_directory, fetch_file
from shared.store import FileStore
from shared.trainstore.loader import load_manifest
from shared.trainstore.manifest import ManifestStore
from skuforge_cli.main import main as cli_main
from tests.support.evaluation import shelf_photo
from tests.support.lora import model_folder
from tests.support.trainstore import add_item

# 506 bytes: the store's prefix fits (at most 511), the adapter registry's under it (516) does not.
LONG_PREFIX = "/".join(["p" * 250, "p" * 255])
STORE_URI = f"s3://bucket/{LONG_PREFIX}"


def test_adapters_cli_refuses_a_store_prefix_that_leaves_the_registry_no_room_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was a ValueError traceback: the store's prefix passed SKUFORGE_STORE_URI's check, and the
    registry's, ``/adapters`` after it, was refused only when `skuforge adapters` opened it."""
    monkeypatch.setenv("SKUFORGE_STORE_URI", STORE_URI)
    monkeypatch.delenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", raising=False)
    assert cli_main(["adapters", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skuforge adapters: SKUFORGE_STORE_URI")
    assert "prefix is 516 bytes" in err and "SKUFORGE_DIFFUSION_ADAPTERS_URI" in err
    assert "Traceback" not in err


def test_the_generator_refuses_a_store_prefix_that_leaves_the_registry_no_room_before_the_model(
    tmp_path: Path,
) -> None:
    """The generator opened the registry once the pipeline had loaded (minutes on a CPU), and died in a
    ValueError traceback: now a ConfigError naming the setting, before the model is looked at."""
    diffusion = load_settings(
        DiffusionSettings,
        diffusion_model=str(tmp_path / "no-model"),
        diffusion_cache_dir=str(tmp_path / "cache"),
        diffusion_device="cpu",
    )
    with pytest.raises(ConfigError, match=r"^SKUFORGE_STORE_URI.*prefix is 516 bytes"):
        DiffusionBackend.from_settings(diffusion, load_settings(store_uri=STORE_URI))


def test_the_lora_trainer_names_the_setting_the_registry_s_uri_came_from_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said ``SKUFORGE_DIFFUSION_ADAPTERS_URI=<uri>`` for a URI built from SKUFORGE_STORE_URI, with
    the unset setting blamed and the one to fix named after it ('(from SKUFORGE_STORE_URI)')."""
    monkeypatch.setenv("SKUFORGE_DIFFUSION_MODEL", str(model_folder(tmp_path, "sd15-inpaint")))
    monkeypatch.delenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", raising=False)
    with pytest.raises(ConfigError) as refused:
        open_trainer(
            load_settings(store_uri=STORE_URI),
            metrics=LoraTrainerMetrics(CollectorRegistry()),
            publish=lambda event: None,
            trainer=load_settings(LoraTrainerSettings, lora_device="cpu"),
        )
    message = str(refused.value)
    assert message.startswith("SKUFORGE_STORE_URI") and message.count("SKUFORGE_STORE_URI") == 1
    assert "SKUFORGE_DIFFUSION_ADAPTERS_URI=" not in message


def test_a_scenes_uri_refused_names_the_option_once() -> None:
    """It read '--scenes URI: ... (from --scenes)': the option twice. It leads, as in the other refusals
    of the scene library."""
    with pytest.raises(EvaluateRefused) as refused:
        scene_files("s3://x/scenes")
    assert str(refused.value) == "--scenes s3://x/scenes: s3 URI 's3://x/scenes': invalid S3 bucket name 'x'"


def test_a_model_in_a_folder_with_a_long_prefix_is_fetched(s3_endpoint: str, tmp_path: Path) -> None:
    """The model cache opened the model's folder as a store, so a folder of over 511 bytes was refused
    for leaving the flow's keys too little room, though the flow writes nothing there and S3 serves it."""
    folder = "/".join(["m" * 250, "m" * 250, "m" * 100])  # 602 bytes
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key=f"{folder}/model.onnx", Body=b"weights")
    uri = f"s3://{bucket}/{folder}"
    copy = fetch_file(
        f"{uri}/model.onnx", tmp_path / "cache", s3_endpoint_url=s3_endpoint, uri_from="the test"
    )
    assert copy.read_bytes() == b"weights"
    local = fetch_directory(uri, tmp_path / "cache", s3_endpoint_url=s3_endpoint, uri_from="the test")
    assert (local / "model.onnx").read_bytes() == b"weights"


def test_a_scene_library_in_a_folder_with_a_long_prefix_is_read(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generator and `skuforge evaluate --scenes` only read the scene library, yet
    SKUFORGE_SCENES_URI and --scenes were held to the room of a store the flow writes in: a folder of over
    511 bytes was refused at start-up, though S3 serves its photos."""
    folder = "/".join(["s" * 250, "s" * 250, "s" * 100])  # 602 bytes
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"scenes-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key=f"{folder}/shelf.jpg", Body=encode_jpeg(shelf_photo(1)))
    uri = f"s3://{bucket}/{folder}"
    generation = load_settings(GenerationSettings, scenes_uri=uri)
    library = load_scenes(generation, load_settings(s3_endpoint_url=s3_endpoint))
    assert library is not None and len(library) == 1 and "shelf.jpg" in library
    monkeypatch.setenv("SKUFORGE_S3_ENDPOINT_URL", s3_endpoint)
    files, _, notes = scene_files(uri)
    assert [name for name, _ in files] == [f"{uri}/shelf.jpg"] and not notes


def test_a_retraining_store_in_a_folder_with_a_long_prefix_is_read(s3_endpoint: str, tmp_path: Path) -> None:
    """``load_manifest`` only reads, yet held its URI to the room of a store the flow writes in: a
    retraining store copied to a folder of over 511 bytes was refused, though S3 serves its manifests."""
    add_item(ManifestStore(FileStore(tmp_path / "store"), "trainstore"), "SKU-1", "i0", "real", "reference")
    folder = "/".join(["t" * 250, "t" * 250, "t" * 100])  # 602 bytes
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"trainstore-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    for path in (tmp_path / "store").rglob("*"):
        if path.is_file():
            key = f"{folder}/{path.relative_to(tmp_path / 'store').as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    loaded = load_manifest(f"s3://{bucket}/{folder}", s3_endpoint_url=s3_endpoint, uri_from="--store")
    assert loaded.column("item_id") == ["i0"]
