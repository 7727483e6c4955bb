"""Generation faults from the second review, each pinned where an operator would meet it.

``skuforge adapters register`` refuses a safetensors file cut short or with a malformed header, so a
damaged copy never registers and then dead-letters every SKU of its series. A Triton address with a
scheme fails at start-up instead of being retried forever. ``skuforge serve generator`` reports a
missing or empty scene folder and a missing diffusion model in one line, exit 2, not a traceback.
A composite knob of the wrong type (occluders 2.9, scene_seed "7", a bool) is refused, at start-up
and per request, instead of being truncated into another image than the one asked for.
"""

from __future__ import annotations

import errno
import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.config import ConfigError, load_settings
from shared.generation.adapters import AdapterRegistry
from shared.generation.backend import GenerationRequest
from shared.generation.composite import CompositeBackend, CompositeError
from shared.generation.settings import GenerationSettings
from shared.store import FileStore
from skuforge_cli.main import main as cli_main


def lora_file() -> bytes:
    """A real (tiny) LoRA safetensors file, as the safetensors library writes it."""
    from safetensors.numpy import save

    return save(
        {
            "unet.to_q.lora_A.weight": np.ones((4, 16), np.float32),
            "unet.to_q.lora_B.weight": np.ones((16, 4), np.float32),
        }
    )


def safetensors_with_header(header: object, data: bytes = b"") -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


# --- adapter weights -----------------------------------------------------------------------------


def test_a_lora_file_cut_short_by_an_interrupted_copy_is_refused_at_registration(tmp_path: Path) -> None:
    registry = AdapterRegistry(FileStore(tmp_path))
    weights = lora_file()
    for cut in (weights[: len(weights) // 2], weights[:-1], weights + b"\0"):
        with pytest.raises(ValueError, match="damaged safetensors file"):
            registry.register("cola-v1", cut, kind="specialized", series="Cola", base_model="m")
    # A cut inside the header itself says so too, instead of a JSON parse error.
    with pytest.raises(ValueError, match="cut short"):
        registry.register("cola-v1", weights[:20], kind="general", base_model="m")
    assert registry.list() == []
    assert registry.register("cola-v1", weights, kind="general", base_model="m").rank == 4


@pytest.mark.parametrize(
    "entry",
    [
        [1, 2],
        "lora",
        {"dtype": "F32", "data_offsets": [0, 0]},
        {"dtype": "F32", "shape": 4, "data_offsets": [0, 0]},
        {"dtype": "F32", "shape": [4, 8]},
        {"dtype": "F32", "shape": [4, 8], "data_offsets": [0]},
        {"dtype": "F32", "shape": [4, 8], "data_offsets": [8, 0]},
        {"dtype": "F32", "shape": ["4", 8], "data_offsets": [0, 0]},
    ],
)
def test_a_header_entry_that_is_not_a_tensor_description_is_refused_not_a_traceback(
    tmp_path: Path, entry: object
) -> None:
    registry = AdapterRegistry(FileStore(tmp_path))
    weights = safetensors_with_header({"unet.to_q.lora_A.weight": entry})
    for rank in (None, 4):
        with pytest.raises(ValueError, match=r"not a safetensors file: tensor 'unet\.to_q\.lora_A\.weight'"):
            registry.register("cola-v1", weights, kind="general", base_model="m", rank=rank)


@pytest.mark.parametrize(
    ("entry", "data_bytes", "said"),
    [
        ({"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 10]}, 10, "holds 10 bytes, its shape"),
        ({"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 256]}, 256, "holds 256 bytes, its shape"),
        ({"dtype": "XYZ", "shape": [4, 8], "data_offsets": [0, 128]}, 128, "dtype 'XYZ'"),
        ({"shape": [4, 8], "data_offsets": [0, 128]}, 128, "dtype None"),
    ],
    ids=["too-few-bytes", "too-many-bytes", "unknown-dtype", "no-dtype"],
)
def test_a_tensor_safetensors_cannot_read_is_refused_at_registration(
    tmp_path: Path, entry: dict[str, Any], data_bytes: int, said: str
) -> None:
    # Its bytes filled the file, so it registered; safetensors refuses it ("invalid shape, data type, or
    # offset"), so every SKU of its series was then refused as adapter_unloadable, as the docs say a
    # file that is not safetensors never is.
    from safetensors import SafetensorError
    from safetensors.numpy import load

    weights = safetensors_with_header({"unet.to_q.lora_A.weight": entry}, bytes(data_bytes))
    with pytest.raises(SafetensorError):
        load(weights)
    registry = AdapterRegistry(FileStore(tmp_path))
    for rank in (None, 4):
        with pytest.raises(
            ValueError, match=r"not a safetensors file: tensor 'unet\.to_q\.lora_A\.weight'"
        ) as refused:
            registry.register("cola-v1", weights, kind="general", base_model="m", rank=rank)
        assert said in str(refused.value)
    assert not (tmp_path / "cola-v1").exists()


def test_a_header_nested_too_deeply_to_read_is_refused_as_not_safetensors(tmp_path: Path) -> None:
    # Before, json's RecursionError: a traceback from `skuforge adapters register`.
    header = b"[" * 100_000
    nested = struct.pack("<Q", len(header)) + header
    registry = AdapterRegistry(FileStore(tmp_path))
    for rank in (None, 4):
        with pytest.raises(ValueError, match="not a safetensors file: its header is nested too deeply"):
            registry.register("cola-v1", nested, kind="general", base_model="m", rank=rank)


def test_adapters_register_exits_2_naming_a_damaged_file_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    monkeypatch.delenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", raising=False)
    cut = tmp_path / "lora.safetensors"
    cut.write_bytes(lora_file()[:-100])
    argv = ["adapters", "register", "cola-v1", str(cut), "--kind", "general", "--base-model", "m"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"skuforge adapters register: {cut}: cannot register adapter 'cola-v1': damaged safetensors"
    )
    assert "Traceback" not in err
    not_objects = tmp_path / "odd.safetensors"
    not_objects.write_bytes(safetensors_with_header({"lora_A.weight": [1, 2]}))
    assert cli_main([*argv[:3], str(not_objects), *argv[4:]]) == 2
    assert "tensor 'lora_A.weight' is not an object" in capsys.readouterr().err
    assert not (tmp_path / "store" / "adapters" / "cola-v1").exists()


@pytest.mark.parametrize("refused", ["open", "stat"])
def test_adapters_register_exits_2_naming_weights_it_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], refused: str
) -> None:
    # A file this user may not read, or one in a folder this user may not enter (its stat is refused;
    # Path.is_file raises PermissionError): root may do both, so the refusal is made here. Before, a
    # PermissionError traceback.
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    monkeypatch.delenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", raising=False)
    weights = tmp_path / "lora.safetensors"
    weights.write_bytes(lora_file())
    allowed = getattr(Path, refused)

    def unreadable(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path == weights:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return allowed(path, *args, **kwargs)

    monkeypatch.setattr(Path, refused, unreadable)
    argv = ["adapters", "register", "cola-v1", str(weights), "--kind", "general", "--base-model", "m"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"skuforge adapters register: cannot read {weights}: Permission denied\n"
    assert not (tmp_path / "store" / "adapters" / "cola-v1").exists()


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        (["--kind", "general", "--series", "Cola"], "a general adapter has no series"),
        (["--kind", "specialized"], "a specialized adapter needs the series it was trained on"),
        (["--kind", "general", "--base-model", ""], "base_model: String should have at least 1 character"),
    ],
)
def test_adapters_register_refuses_bad_metadata_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    problem: str,
) -> None:
    # Before, pydantic's whole report: several lines, the metadata's dict and a URL to its docs.
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    monkeypatch.delenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", raising=False)
    weights = tmp_path / "lora.safetensors"
    weights.write_bytes(lora_file())
    assert cli_main(["adapters", "register", "cola-v1", str(weights), "--base-model", "m", *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skuforge adapters register: cannot register adapter 'cola-v1': ")
    assert problem in err and err.count("\n") == 1 and "pydantic" not in err
    assert not (tmp_path / "store" / "adapters" / "cola-v1").exists()


# --- generator settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "advice"),
    [
        ("http://triton:8000", "use 'triton:8000' with SKUFORGE_GENERATION_TRITON_PROTOCOL=http"),
        ("grpc://triton:8001", "use 'triton:8001' with SKUFORGE_GENERATION_TRITON_PROTOCOL=grpc"),
        ("triton", "not host:port"),
        ("triton:grpc", "not host:port"),
        ("triton:70000", "not host:port"),
    ],
)
def test_a_triton_url_the_client_cannot_reach_fails_at_start_up_naming_the_variable(
    url: str, advice: str
) -> None:
    with pytest.raises(ConfigError, match="SKUFORGE_GENERATION_TRITON_URL: ") as refused:
        load_settings(GenerationSettings, generation_triton_url=url)
    assert advice in str(refused.value)


def test_a_triton_base_path_is_taken_over_http_only() -> None:
    over_http = load_settings(
        GenerationSettings, generation_triton_url="proxy:8000/triton", generation_triton_protocol="http"
    )
    assert over_http.generation_triton_url == "proxy:8000/triton"
    with pytest.raises(ConfigError, match=r"SKUFORGE_GENERATION_TRITON_PROTOCOL: .*has a path"):
        load_settings(GenerationSettings, generation_triton_url="proxy:8001/triton")
    assert load_settings(GenerationSettings, generation_triton_url="[::1]:8001").generation_triton_url


# --- skuforge serve generator ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "folder", "said"),
    [
        ("SKUFORGE_SCENES_URI", "missing", "/missing does not exist: set SKUFORGE_SCENES_URI"),
        ("SKUFORGE_SCENES_URI", "empty", "no usable scene photo under file://"),
        (
            "SKUFORGE_DIFFUSION_MODEL",
            "missing",
            "/missing (that folder does not exist): expected a save_pretrained",
        ),
        (
            "SKUFORGE_DIFFUSION_MODEL",
            "empty",
            "/empty: expected a save_pretrained folder with model_index.json",
        ),
    ],
)
def test_serve_generator_names_a_missing_or_empty_folder_in_one_line_with_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    setting: str,
    folder: str,
    said: str,
) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("SKUFORGE_METRICS_PORT", "0")  # its own /metrics binds before the models load
    monkeypatch.setenv(setting, str(tmp_path / folder))
    if setting == "SKUFORGE_DIFFUSION_MODEL":
        monkeypatch.setenv("SKUFORGE_GENERATION_BACKEND", "diffusion")
        monkeypatch.setenv("SKUFORGE_DIFFUSION_CACHE_DIR", str(tmp_path / "cache"))
    assert cli_main(["serve", "generator"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skuforge serve: ") and said in err and "Traceback" not in err


# --- composite knobs -----------------------------------------------------------------------------

WRONG_TYPES = [
    ("occluders", 2.9, "occluders=2.9 is not a int"),
    ("scene_seed", 7.99, "scene_seed=7.99 is not a int"),
    ("occluders", "3", "occluders='3' is not a int"),
    ("occluders", True, "occluders=True is not a int"),
    ("blur_px", True, "blur_px=True is not a float"),
    ("blur_px", "0.5", "blur_px='0.5' is not a float"),
    ("shadow", 1, "shadow=1 is not a str"),
]


def composite_request(**parameters: object) -> GenerationRequest:
    reference = np.full((100, 60, 3), 200, np.uint8)
    mask = np.zeros((100, 60), np.uint8)
    mask[10:90, 10:50] = 255
    return GenerationRequest(reference, mask, "", "", seed=1, n=1, parameters=dict(parameters), size=64)


@pytest.mark.parametrize(("key", "value", "said"), WRONG_TYPES)
def test_a_composite_knob_of_the_wrong_type_is_refused_per_request_not_truncated(
    key: str, value: object, said: str
) -> None:
    with pytest.raises(CompositeError, match=f"composite parameter {re.escape(said)}"):
        CompositeBackend().generate(composite_request(**{key: value}))


@pytest.mark.parametrize(("key", "value", "said"), WRONG_TYPES)
def test_a_composite_knob_of_the_wrong_type_fails_at_start_up(key: str, value: object, said: str) -> None:
    with pytest.raises(ConfigError, match="SKUFORGE_GENERATION_PARAMETERS: ") as refused:
        load_settings(GenerationSettings, generation_parameters={key: value})
    assert said in str(refused.value)


def test_a_whole_float_is_a_count_and_an_int_is_a_float() -> None:
    # JSON writers that print every number as a float (2.0) still say what they mean.
    [sample] = CompositeBackend().generate(composite_request(occluders=2.0, scene_seed=7.0, blur_px=1))
    assert (sample.parameters["occluders"], sample.parameters["scene_seed"]) == (2, 7)
    assert isinstance(sample.parameters["occluders"], int) and sample.parameters["blur_px"] == 1.0
    settings = load_settings(GenerationSettings, generation_parameters={"occluders": 1.0, "blur_px": 0})
    assert settings.generation_parameters == {"occluders": 1.0, "blur_px": 0}
