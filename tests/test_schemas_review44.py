"""Review 44 of the event schemas and the small shared helpers (argtypes, keys, photos)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import JsonValue, ValidationError

from schemas.common import ImageRef
from schemas.events import MAX_MODEL_ID_CHARS
from schemas.jsonschema import JSON_DIR
from schemas.topics import IMAGE_GENERATED, IMAGE_MATTED
from shared.argtypes import file_problem, float_between, non_negative_float, read_json_object
from shared.bus import make_envelope, read_envelope
from tests.support.matting import image_generated


@pytest.mark.parametrize(
    "parse", [non_negative_float, float_between(0.0, 1.0)], ids=["non_negative", "between"]
)
@pytest.mark.parametrize("text", ["-0", "-0.0", "-0e5", "-1e-400"])
def test_a_negative_zero_is_taken_as_zero_not_recorded_as_minus_zero(
    parse: Callable[[str], float], text: str
) -> None:
    # "-0" is 0, so it is taken; kept as -0.0 it was written "-0.0" into results JSON and "-0" in messages.
    value = parse(text)
    assert value == 0.0
    assert math.copysign(1.0, value) == 1.0
    assert json.dumps(value) == "0.0"


def _generated_with(parameters: dict[str, JsonValue]) -> dict[str, Any]:
    image = ImageRef(uri="file:///store/g.png", sha256="0" * 64, bytes=10, width=8, height=8)
    payload = image_generated(image, image).model_copy(update={"parameters": parameters})
    envelope = make_envelope(
        IMAGE_GENERATED, payload, event_id="c" * 32, sku_id="SKU-1", trace_id="t", producer="test"
    )
    return envelope.model_dump(mode="json")


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((JSON_DIR / name).read_text()))


def _embedded_generated() -> jsonschema.Draft202012Validator:
    """The schema of the generated image embedded in an image.matted event."""
    matted = json.loads((JSON_DIR / f"{IMAGE_MATTED.name}.json").read_text())
    return jsonschema.Draft202012Validator(
        {"$schema": matted["$schema"], "$defs": matted["$defs"], "$ref": "#/$defs/ImageGenerated"}
    )


LONG = "x" * (MAX_MODEL_ID_CHARS + 1)


@pytest.mark.parametrize(
    "parameters",
    [{"scene": LONG}, {"scenes": ["a", LONG]}, {"light": {"source": {"name": LONG}}}],
    ids=["a_knob", "in_a_list", "in_an_object"],
)
def test_the_committed_schema_refuses_a_parameter_string_the_model_refuses(
    parameters: dict[str, JsonValue],
) -> None:
    # A producer validating against schemas/json was told nothing of a 1,001-character string in a
    # generated image's parameters, which every consumer then dead-lettered as schema_invalid.
    event = _generated_with({"scene": "ok"})
    event["payload"]["parameters"] = parameters
    with pytest.raises(ValidationError, match=f"at most {MAX_MODEL_ID_CHARS}"):
        read_envelope(IMAGE_GENERATED, json.dumps(event))
    assert not _validator(f"{IMAGE_GENERATED.name}.json").is_valid(event)
    # The item embeds it in every later event: their schemas say the same.
    assert not _embedded_generated().is_valid(event["payload"])


def test_the_committed_schema_takes_parameters_the_model_takes() -> None:
    longest = "x" * MAX_MODEL_ID_CHARS
    event = _generated_with(
        {"scene": longest, "gain": [1.5, 0.9, 1], "light": {"on": True, "name": longest, "off": None}}
    )
    read_envelope(IMAGE_GENERATED, json.dumps(event))
    _validator(f"{IMAGE_GENERATED.name}.json").validate(event)
    _embedded_generated().validate(event["payload"])


def test_a_json_file_nested_past_what_python_reads_is_refused_naming_the_argument(tmp_path: Path) -> None:
    # json.loads raises RecursionError, not a JSONDecodeError: it went out as a traceback.
    path = tmp_path / "evaluation.json"
    path.write_text("[" * 200_000)
    with pytest.raises(ValueError, match=r"^--evaluation x: not a readable JSON file \(.*nested.*\)$"):
        read_json_object(path, label="--evaluation x", missing="run skuforge evaluate")


def test_a_file_argument_with_a_name_too_long_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    # Path.is_dir() raises for a name over the file system's 255 bytes: '--out' of every bench and
    # 'skuforge matting ... --out' went out as an OSError traceback instead of the option's one line.
    path = tmp_path / ("x" * 300)
    problem = file_problem(path, "out.json")
    assert problem is not None
    assert "File name too long" in problem
    assert file_problem(path / "out.json", "out.json") is not None


def test_a_file_name_too_long_under_a_folder_still_to_make_is_a_problem(tmp_path: Path) -> None:
    # With its folder still to make, nothing looked at the file's own name: the check passed and the
    # command failed on writing the file, after its run.
    problem = file_problem(tmp_path / "new" / ("y" * 300), "out.json")
    assert problem is not None
    assert "300 bytes" in problem
    assert not (tmp_path / "new").exists()
    assert file_problem(tmp_path / "new" / ("y" * 255), "out.json") is None
