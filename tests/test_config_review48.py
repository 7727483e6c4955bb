"""Settings whose text ends up in an event's model id or object URI refuse what the event refuses.

Since review 48 an event's model ids and object URIs refuse control characters, the line and paragraph
separators and the bidirectional controls. A store root or a model setting holding one passed start-up,
and then every event the stage built from it was refused, one by one: it is refused as the settings
load, naming the variable and the code point.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from schemas.events import MAX_MODEL_ID_CHARS
from services.captioner.config import CaptionerSettings
from services.lora_trainer.config import LoraTrainerSettings
from services.matting.config import MattingSettings
from shared.config import ConfigError, Settings, load_settings
from shared.generation.adapters import MAX_ADAPTER_ID_CHARS
from shared.generation.diffusion import DiffusionSettings
from shared.generation.settings import GenerationSettings
from shared.store import MAX_SEGMENT_BYTES, check_store_uri, open_store

# (the character, how the refusal names it)
REFUSED = [
    ("\u202e", "U+202E"),
    ("\x1b", "U+001B"),
    ("\n", "U+000A"),
    ("\u2028", "U+2028"),
    ("\x85", "U+0085"),
]


@pytest.mark.parametrize(("char", "code_point"), REFUSED)
@pytest.mark.parametrize("root", ["/data/st{}ore", "file:///data/st{}ore", "s3://skuforge/st{}ore"])
def test_a_store_root_holding_a_control_character_is_refused_at_start_up(
    root: str, char: str, code_point: str
) -> None:
    with pytest.raises(ConfigError, match=f"SKUFORGE_STORE_URI: .*{re.escape(code_point)}") as refused:
        load_settings(Settings, store_uri=root.format(char))
    assert char not in str(refused.value).partition("SKUFORGE_STORE_URI:")[2]  # named, never echoed
    with pytest.raises(ValueError, match=re.escape(code_point)):
        check_store_uri(root.format(char))
    with pytest.raises(ValueError, match=rf"{re.escape(code_point)}.*\(from the test\)"):
        open_store(root.format(char), uri_from="the test")


def test_a_store_root_with_a_space_is_still_a_store_root() -> None:
    assert load_settings(Settings, store_uri="/data/my store").store_uri == "/data/my store"
    assert check_store_uri("s3://skuforge/my store") == ("s3", "skuforge/my store")


@pytest.mark.parametrize(
    ("model", "setting", "variable"),
    [
        (DiffusionSettings, "diffusion_adapters_uri", "SKUFORGE_DIFFUSION_ADAPTERS_URI"),
        (GenerationSettings, "scenes_uri", "SKUFORGE_SCENES_URI"),
    ],
)
def test_every_store_uri_setting_refuses_a_bidi_control(
    model: type[DiffusionSettings | GenerationSettings], setting: str, variable: str
) -> None:
    with pytest.raises(ConfigError, match=f"{variable}: .*U\\+202E"):
        load_settings(model, **{setting: "s3://skuforge/sc\u202eenes"})


@pytest.mark.parametrize(
    ("model", "setting", "variable", "others"),
    [
        (DiffusionSettings, "diffusion_base_model", "SKUFORGE_DIFFUSION_BASE_MODEL", {}),
        (LoraTrainerSettings, "lora_base_model", "SKUFORGE_LORA_BASE_MODEL", {}),
        (LoraTrainerSettings, "lora_model", "SKUFORGE_LORA_MODEL", {}),
        (DiffusionSettings, "diffusion_model", "SKUFORGE_DIFFUSION_MODEL", {}),
        (MattingSettings, "matting_model", "SKUFORGE_MATTING_MODEL", {}),
        (CaptionerSettings, "captioner_matting_model", "SKUFORGE_CAPTIONER_MATTING_MODEL", {}),
        (
            CaptionerSettings,
            "captioner_vlm_model",
            "SKUFORGE_CAPTIONER_VLM_MODEL",
            {"captioner_backend": "vlm"},
        ),
    ],
)
@pytest.mark.parametrize(("char", "code_point"), REFUSED)
def test_a_model_setting_an_event_s_model_id_is_made_of_refuses_what_the_event_refuses(
    model: type[BaseSettings], setting: str, variable: str, others: dict[str, str], char: str, code_point: str
) -> None:
    # The base model goes into adapter.published's base_model; the model folders' names into the
    # generator's, the matting stage's and the captioner's model ids.
    with pytest.raises(ConfigError, match=f"{variable}: .*{re.escape(code_point)}") as refused:
        load_settings(model, **others, **{setting: f"sd15{char}-inpaint"})
    assert char not in str(refused.value).partition(f"{variable}:")[2]  # named, never echoed
    assert getattr(load_settings(model, **others, **{setting: "sd15 inpaint"}), setting) == "sd15 inpaint"


@pytest.mark.parametrize(
    ("model", "setting", "variable"),
    [
        (DiffusionSettings, "diffusion_base_model", "SKUFORGE_DIFFUSION_BASE_MODEL"),
        (LoraTrainerSettings, "lora_base_model", "SKUFORGE_LORA_BASE_MODEL"),
    ],
)
def test_a_base_model_name_longer_than_an_event_s_model_id_is_refused(
    model: type[BaseSettings], setting: str, variable: str
) -> None:
    with pytest.raises(ConfigError, match=f"{variable}: .*1000"):
        load_settings(model, **{setting: "m" * (MAX_MODEL_ID_CHARS + 1)})
    assert (
        len(getattr(load_settings(model, **{setting: "m" * MAX_MODEL_ID_CHARS}), setting))
        == MAX_MODEL_ID_CHARS
    )


def _root_of_uri_length(base: Path, length: int) -> Path:
    """A folder under ``base`` whose FileStore URI (``file://`` and its absolute path) is ``length`` long."""
    room = length - len("file://") - len(str(base))
    segments = [MAX_SEGMENT_BYTES - 1] * (room // MAX_SEGMENT_BYTES) + [room % MAX_SEGMENT_BYTES - 1]
    root = base.joinpath(*("r" * size for size in segments))
    assert len(f"file://{root}") == length
    return root


def test_an_adapter_registry_root_no_registry_uri_fits_is_refused_before_anything_is_trained(
    tmp_path: Path,
) -> None:
    # adapter.published's registry_uri is the registry's root, '/' and an adapter id of up to 64
    # characters: a model id, at most 1000. A longer root trained, then every publication was refused.
    most = MAX_MODEL_ID_CHARS - 1 - MAX_ADAPTER_ID_CHARS
    shared = load_settings(Settings, store_uri=str(tmp_path / "store"))
    too_long = load_settings(
        DiffusionSettings, diffusion_adapters_uri=str(_root_of_uri_length(tmp_path, most + 1))
    )
    with pytest.raises(ConfigError, match=f"SKUFORGE_DIFFUSION_ADAPTERS_URI.*{most + 1}.*{most}"):
        too_long.adapters_store(shared)
    fits = load_settings(DiffusionSettings, diffusion_adapters_uri=str(_root_of_uri_length(tmp_path, most)))
    assert len(fits.adapters_store(shared).uri_for("a" * MAX_ADAPTER_ID_CHARS)) == MAX_MODEL_ID_CHARS
    # The registry's default root, <SKUFORGE_STORE_URI>/adapters, names the store's setting.
    store_root = _root_of_uri_length(tmp_path, most + 1 - len("/adapters"))
    with pytest.raises(ConfigError, match="SKUFORGE_STORE_URI"):
        load_settings(DiffusionSettings).adapters_store(load_settings(Settings, store_uri=str(store_root)))


@pytest.mark.parametrize(
    ("model", "setting", "variable"),
    [
        (DiffusionSettings, "diffusion_model", "SKUFORGE_DIFFUSION_MODEL"),
        (MattingSettings, "matting_model", "SKUFORGE_MATTING_MODEL"),
        (CaptionerSettings, "captioner_matting_model", "SKUFORGE_CAPTIONER_MATTING_MODEL"),
    ],
)
@pytest.mark.parametrize(
    ("given", "called"),
    [
        ("var/models/u2\u202enet.onnx", "model path"),
        ("file:///models/u2\u202enet.onnx", "model URI"),
        ("s3://skuforge/models/u2\u202enet.onnx", "model URI"),
    ],
)
def test_a_refused_model_setting_is_called_what_was_given_a_path_or_a_uri(
    model: type[BaseSettings], setting: str, variable: str, given: str, called: str
) -> None:
    # A model file's path was refused as an "object-store URI", which it is not.
    with pytest.raises(ConfigError, match=f"{variable}: .*{called} contains .*U\\+202E") as refused:
        load_settings(model, **{setting: given})
    assert "object-store" not in str(refused.value)


@pytest.mark.parametrize(
    ("given", "called"),
    [("/data/st\u202eore", "object-store path"), ("s3://skuforge/st\u202eore", "object-store URI")],
)
def test_a_refused_store_root_is_called_what_was_given_a_path_or_a_uri(given: str, called: str) -> None:
    with pytest.raises(ConfigError, match=f"SKUFORGE_STORE_URI: .*{called} contains .*U\\+202E"):
        load_settings(Settings, store_uri=given)
