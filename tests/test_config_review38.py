"""Settings a thread or a Triton model config cannot take are refused at start-up, by name."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from services.captioner.config import CaptionerSettings
from services.console.config import ConsoleSettings
from services.gate.config import GateSettings
from services.lora_trainer.config import LoraTrainerSettings
from services.matting.config import MattingSettings
from shared.argtypes import (
    float_between,
    int_between,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from shared.config import ENV_PREFIX, ConfigError, Settings, load_settings
from shared.generation.adapters import AdapterMetadata, resolve_adapter
from shared.generation.diffusion import DiffusionSettings
from shared.generation.settings import GenerationSettings
from shared.store import open_store
from shared.trainstore.settings import TrainstoreSettings
from skuforge_cli.main import main as cli_main


@pytest.mark.parametrize(
    ("model", "overrides", "variable"),
    [
        (Settings, {"flush_timeout_s": 1e10}, "SKUFORGE_FLUSH_TIMEOUT_S"),
        (Settings, {"retry_backoff_max_s": 1e10}, "SKUFORGE_RETRY_BACKOFF_MAX_S"),
        (
            Settings,
            {"retry_backoff_initial_s": 1e10, "retry_backoff_max_s": 1e10},
            "SKUFORGE_RETRY_BACKOFF_INITIAL_S",
        ),
        (Settings, {"group_lag_interval_s": 1e10}, "SKUFORGE_GROUP_LAG_INTERVAL_S"),
        (GenerationSettings, {"generation_triton_timeout_s": 1e10}, "SKUFORGE_GENERATION_TRITON_TIMEOUT_S"),
    ],
)
def test_a_wait_no_thread_can_make_is_refused_at_start_up(
    model: type[BaseSettings], overrides: dict[str, Any], variable: str
) -> None:
    """Each of these is waited on by a thread (the console's decision relay and intake between retries,
    the group-lag watcher between reads, a send's acknowledgement, the Triton workers' closing
    barrier): past threading.TIMEOUT_MAX that wait raised OverflowError, and the thread died long after
    a clean start; the relay's death left every decision unpublished."""
    assert threading.TIMEOUT_MAX < 1e10
    with pytest.raises(OverflowError):
        threading.Event().wait(1e10)
    with pytest.raises(ConfigError, match=variable):
        load_settings(model, **overrides)


def test_a_day_is_still_a_wait() -> None:
    settings = load_settings(retry_backoff_max_s=86400, flush_timeout_s=86400, group_lag_interval_s=86400)
    assert settings.retry_backoff_max_s == settings.flush_timeout_s == settings.group_lag_interval_s == 86400


@pytest.mark.parametrize(
    ("setting", "largest", "batcher"),
    [
        ("generation_max_queue_size", 2**32 - 1, lambda n: {"defaultQueuePolicy": {"maxQueueSize": n}}),
        ("generation_batch_delay_us", 86_400_000_000, lambda n: {"maxQueueDelayMicroseconds": n}),
    ],
)
def test_a_batcher_setting_triton_cannot_hold_is_refused_at_start_up(
    setting: str, largest: int, batcher: Callable[[int], dict[str, Any]]
) -> None:
    """Triton's model config holds the queue size as a uint32 (the delay as a uint64): 2**32 passed
    start-up, and `skuforge serve generator` then died in PyTriton's config writer with a protobuf
    ParseError traceback that named no setting."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    too_many = {"generation_max_queue_size": 2**32, "generation_batch_delay_us": 2**64}[setting]
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict({"dynamicBatching": batcher(too_many)}, model_config_pb2.ModelConfig())
    with pytest.raises(ConfigError, match=ENV_PREFIX + setting.upper()):
        load_settings(GenerationSettings, **{setting: too_many})
    json_format.ParseDict({"dynamicBatching": batcher(largest)}, model_config_pb2.ModelConfig())
    assert getattr(load_settings(GenerationSettings, **{setting: largest}), setting) == largest


@pytest.mark.parametrize(
    ("model", "variable"),
    [
        (GateSettings, "SKUFORGE_GATE_CATEGORY_OVERRIDES"),
        (GenerationSettings, "SKUFORGE_GENERATION_BACKEND_MIX"),
        (GenerationSettings, "SKUFORGE_GENERATION_PARAMETERS"),
    ],
)
@pytest.mark.parametrize("value", ["{bad", " "])
def test_a_json_setting_that_is_no_json_is_named(
    model: type[BaseSettings], variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pydantic-settings decodes a JSON setting before validation, and its SettingsError is no
    ValidationError: every stage reading it, and `skuforge config`, died with a traceback that named the
    field, not the variable, nor what was wrong with it."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"{variable}: not JSON") as refused:
        load_settings(model)
    assert "{}" in str(refused.value)  # what to write for none


@pytest.mark.parametrize(
    ("model", "variable"),
    [
        (GateSettings, "SKUFORGE_GATE_CATEGORY_OVERRIDES"),
        (GenerationSettings, "SKUFORGE_GENERATION_BACKEND_MIX"),
        (GenerationSettings, "SKUFORGE_GENERATION_PARAMETERS"),
        (Settings, "SKUFORGE_TOPIC_PARTITIONS"),
        (Settings, "SKUFORGE_CONSUMER_GROUP_PREFIX"),
        (Settings, "SKUFORGE_STORE_URI"),  # not refused as "empty": unset, it is the default folder too
        (Settings, "SKUFORGE_METRICS_HOST"),  # the default loopback, not every interface
        (ConsoleSettings, "SKUFORGE_CONSOLE_HOST"),
    ],
)
def test_an_empty_variable_is_unset(
    model: type[BaseSettings], variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compose and Helm pass an unset variable as an empty one: SKUFORGE_GATE_CATEGORY_OVERRIDES= (or a
    number's, or a name's) stopped every service reading it at start-up ("not JSON"), for a variable the
    deployment never meant to set."""
    field = variable.removeprefix(ENV_PREFIX).lower()
    monkeypatch.setenv(variable, "")
    assert getattr(load_settings(model), field) == model.model_fields[field].default


def test_skuforge_config_names_a_json_setting_that_is_no_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKUFORGE_GATE_CATEGORY_OVERRIDES", "{'pouch': {'iou_min': 0.8}}")
    assert cli_main(["config"]) == 2
    err = capsys.readouterr().err
    assert "SKUFORGE_GATE_CATEGORY_OVERRIDES: not JSON" in err and "Traceback" not in err


def test_an_empty_diffusion_base_model_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose and Helm pass an unset variable as an empty one: SKUFORGE_DIFFUSION_BASE_MODEL= was the base
    model '', which no adapter declares (its base_model is never empty), so every adapter of the registry
    was passed over without a word and every diffusion variant painted without one."""
    adapter = AdapterMetadata(
        adapter_id="cola-0123456789ab",
        kind="specialized",
        series="cola",
        base_model="sd-inpainting",
        rank=4,
        weights_sha256="0" * 64,
        weights_bytes=1,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    monkeypatch.setenv("SKUFORGE_DIFFUSION_BASE_MODEL", "")
    settings = load_settings(DiffusionSettings)
    assert settings.diffusion_base_model is None
    choice = resolve_adapter([adapter], series="cola", base_model=settings.diffusion_base_model)
    assert choice.adapter == adapter


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"topic_partitions": 2**31}, "SKUFORGE_TOPIC_PARTITIONS"),
        ({"topic_replication": 2**15}, "SKUFORGE_TOPIC_REPLICATION"),
    ],
)
def test_a_topic_shape_kafkas_protocol_cannot_carry_is_refused_at_start_up(
    overrides: dict[str, Any], variable: str
) -> None:
    """CreateTopics carries the partitions as an int32 and the replication as an int16: larger ones passed
    start-up, and `skuforge topics create` died in kafka-python's encoder with a struct.error traceback."""
    with pytest.raises(ConfigError, match=variable):
        load_settings(**overrides)
    assert (
        load_settings(topic_partitions=2**31 - 1, topic_replication=2**15 - 1).topic_replication == 2**15 - 1
    )


def test_a_partitions_flag_kafkas_protocol_cannot_carry_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main(["topics", "create", "--partitions", str(2**31)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--partitions" in err and str(2**31 - 1) in err and "Traceback" not in err


@pytest.mark.parametrize("uri", ["s3:/bucket/prefix", "file:/data/store", "s3:bucket"])
def test_a_store_uri_short_of_its_slashes_is_refused_not_made_a_local_folder(
    uri: str, tmp_path: Path
) -> None:
    """With one '/' (file:/data/store is even RFC 8089's own form) the URI read as a plain path: each
    stage opened a local folder named 's3:' or 'file:' in its working directory and wrote there, and on
    separate machines every stage after ingest dead-lettered each event as object_missing."""
    with pytest.raises(ConfigError, match=r"SKUFORGE_STORE_URI.*'://'"):
        load_settings(store_uri=uri)
    with pytest.raises(ValueError, match="'://'"):
        open_store(uri, uri_from="the test")
    assert list(Path.cwd().glob(uri.partition(":")[0] + ":*")) == []
    assert load_settings(store_uri=f"./{uri}").store_uri == f"./{uri}"  # a local folder so named, said so


@pytest.mark.parametrize("uri", ["ftp://host/scenes", "s3:///scenes", "s3:/scenes"])
def test_a_scene_library_uri_no_store_opens_is_refused_at_start_up(uri: str) -> None:
    """SKUFORGE_SCENES_URI was the one store URI left unchecked: a scheme no store serves passed start-up,
    and `skuforge serve generator` died in open_store with a ValueError traceback naming no variable."""
    with pytest.raises(ConfigError, match="SKUFORGE_SCENES_URI"):
        load_settings(GenerationSettings, scenes_uri=uri)


@pytest.mark.parametrize(
    "parse",
    [
        positive_int,
        non_negative_int,
        int_between(0, 10),
        float_between(0, 10),
        positive_float,
        non_negative_float,
    ],
)
@pytest.mark.parametrize(
    "text", ["\u0663", "\uff13", "\u0969"]
)  # three: Arabic-Indic, full-width, Devanagari
def test_a_number_option_in_other_digits_is_refused(parse: Callable[[str], float], text: str) -> None:
    """int() and float() read the digits of every script ('٣' is 3): an option that reads as a number to
    Python and as none to the user ran as if 3 had been typed."""
    assert int(text) == 3
    with pytest.raises(argparse.ArgumentTypeError, match="ASCII digits"):
        parse(text)
    assert parse("3") == 3


def test_skuforge_synth_refuses_a_count_in_other_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main(
            ["synth", "--out", str(tmp_path / "out"), "--skus", "٣", "--photos-per-sku", "1", "--seed", "0"]
        )
    assert exited.value.code == 2
    assert "--skus" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_partitions_flag_in_other_digits_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`skuforge topics create --partitions \u0663` created every topic with 3 partitions."""
    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nothing listens: no topic is made
    with pytest.raises(SystemExit) as exited:
        cli_main(["topics", "create", "--partitions", "\u0663"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--partitions" in err and "ASCII digits" in err


# The text settings that name something (a URI, a path, a model, a host, an id).
NAMING_SETTINGS = [
    (Settings, "SKUFORGE_CONSUMER_GROUP_PREFIX"),
    (Settings, "SKUFORGE_STORE_URI"),
    (Settings, "SKUFORGE_S3_ENDPOINT_URL"),
    (Settings, "SKUFORGE_METRICS_HOST"),
    (Settings, "SKUFORGE_KAFKA_SSL_CAFILE"),
    (Settings, "SKUFORGE_TOPIC_NAMESPACE"),
    (Settings, "SKUFORGE_GROUP_INSTANCE_ID"),
    (Settings, "SKUFORGE_S3_REGION"),
    (GenerationSettings, "SKUFORGE_GENERATION_TRITON_URL"),
    (TrainstoreSettings, "SKUFORGE_TRAINSTORE_PREFIX"),
    (MattingSettings, "SKUFORGE_MATTING_MODEL"),
    (MattingSettings, "SKUFORGE_MATTING_CACHE_DIR"),
    (CaptionerSettings, "SKUFORGE_CAPTIONER_VLM_MODEL"),
    (CaptionerSettings, "SKUFORGE_CAPTIONER_VLM_CACHE_DIR"),
    (CaptionerSettings, "SKUFORGE_CAPTIONER_MATTING_MODEL"),
    (CaptionerSettings, "SKUFORGE_CAPTIONER_MATTING_CACHE_DIR"),
    (LoraTrainerSettings, "SKUFORGE_LORA_MODEL"),
    (LoraTrainerSettings, "SKUFORGE_LORA_BASE_MODEL"),
    (LoraTrainerSettings, "SKUFORGE_LORA_CLASS_IMAGES_DIR"),
    (ConsoleSettings, "SKUFORGE_CONSOLE_DB_PATH"),
    (ConsoleSettings, "SKUFORGE_CONSOLE_HOST"),
    (GenerationSettings, "SKUFORGE_GENERATION_SERVER_ADDRESS"),
    (GenerationSettings, "SKUFORGE_SCENES_URI"),
    (DiffusionSettings, "SKUFORGE_DIFFUSION_MODEL"),
    (DiffusionSettings, "SKUFORGE_DIFFUSION_CACHE_DIR"),
    (DiffusionSettings, "SKUFORGE_DIFFUSION_ADAPTERS_URI"),
    (DiffusionSettings, "SKUFORGE_DIFFUSION_BASE_MODEL"),
]


@pytest.mark.parametrize(("model", "variable"), NAMING_SETTINGS)
@pytest.mark.parametrize("blank", [" ", "\t", "  \n"])
def test_a_blank_name_or_uri_is_unset(
    model: type[BaseSettings], variable: str, blank: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spaces alone were a value: SKUFORGE_STORE_URI=' ' a store folder named ' ', SKUFORGE_SCENES_URI=' '
    a scene library there (which `skuforge up` reads as unset), SKUFORGE_CONSUMER_GROUP_PREFIX=' ' the
    group ' .gate', SKUFORGE_METRICS_HOST=' ' a server that could not bind. Blank is unset, as empty is."""
    field = variable.removeprefix(ENV_PREFIX).lower()
    monkeypatch.setenv(variable, blank)
    assert getattr(load_settings(model), field) == model.model_fields[field].default


@pytest.mark.parametrize(("model", "variable"), NAMING_SETTINGS)
@pytest.mark.parametrize("around", ["{} ", " {}", "{}\n"])
def test_spaces_around_a_name_or_uri_are_refused_at_start_up(
    model: type[BaseSettings], variable: str, around: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'s3://bucket/prefix ' named a prefix ending in a space, 'skuforge ' a group no other replica of the
    stage joined, '/data/model ' a folder not there: a typo found far from the variable, if at all."""
    monkeypatch.setenv(variable, around.format("x"))
    with pytest.raises(ConfigError, match=f"{variable}: .*spaces around it"):
        load_settings(model)
