"""The generator stage, reviewed again: settings under which every image it stores is refused later,
and a generation server whose answer the stage cannot announce."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tritonclient.http

from services.generator.client import GeneratorFailed, variant_result
from services.generator.stage import build_stage
from shared.config import ConfigError, load_settings
from shared.generation.settings import GenerationSettings
from skuforge_cli.main import main as cli_main
from tests.support.bus import file_store_uri, isolated_settings
from tests.support.generation import answered_variant


def test_a_size_whose_images_have_more_pixels_than_every_stage_reads_is_refused_at_start(
    tmp_path: Path,
) -> None:
    """SKUFORGE_GENERATION_SIZE_PX=512 beside SKUFORGE_MAX_IMAGE_PIXELS=200000: the stage started, drew
    and stored every variant, and the matting dead-lettered each one (too_many_pixels), a stage late and
    naming neither setting; the size that just fits starts."""
    store_uri = file_store_uri(tmp_path / "store")
    generation = load_settings(GenerationSettings, generation_size_px=512)
    limited = isolated_settings("127.0.0.1:1", store_uri, max_image_pixels=200_000)
    with pytest.raises(ConfigError) as refused:
        build_stage(settings=limited, generation=generation)
    message = str(refused.value)
    assert "SKUFORGE_GENERATION_SIZE_PX" in message and "SKUFORGE_MAX_IMAGE_PIXELS" in message
    assert "447" in message  # the largest side that fits: 447 x 447 = 199809 pixels

    fits = isolated_settings("127.0.0.1:1", store_uri, max_image_pixels=512 * 512)
    stage = build_stage(settings=fits, generation=generation)
    (route,) = stage._routes.values()
    assert route.handle_batch is not None
    route.handle_batch.keywords["generator"].close()  # type: ignore[attr-defined]


def test_skuforge_config_refuses_a_size_whose_images_have_more_pixels_than_every_stage_reads(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``skuforge config`` (and ``skuforge up``, which checks the same before anything starts) passed the
    pair that the generator now refuses at its start; with diffusion the size it names is a multiple of 8."""
    monkeypatch.setenv("SKUFORGE_GENERATION_SIZE_PX", "512")
    monkeypatch.setenv("SKUFORGE_MAX_IMAGE_PIXELS", "200000")
    monkeypatch.setenv("SKUFORGE_GENERATION_BACKEND", "diffusion")
    assert cli_main(["config"]) == 2
    err = capsys.readouterr().err
    assert "SKUFORGE_GENERATION_SIZE_PX=512" in err and "SKUFORGE_MAX_IMAGE_PIXELS (200000)" in err, err
    assert "at most 440" in err and "Traceback" not in err, err
    monkeypatch.setenv("SKUFORGE_MAX_IMAGE_PIXELS", str(512 * 512))
    assert cli_main(["config"]) == 0


SIZE = 8


def _answer(parameters_used: str) -> Any:
    """A Triton HTTP response body of one row of the generation model, with ``parameters_used``, read by
    tritonclient as the client reads every answer."""

    def output(name: str, datatype: str, shape: tuple[int, ...], data: list[Any]) -> dict[str, Any]:
        return {"name": name, "datatype": datatype, "shape": list(shape), "data": data}

    body = {
        "model_name": "skuforge_generator_composite",
        "outputs": [
            output("image", "UINT8", (1, SIZE, SIZE, 3), [128] * (SIZE * SIZE * 3)),
            output("expected_mask", "UINT8", (1, SIZE, SIZE), [255] * (SIZE * SIZE)),
            output("parameters_used", "BYTES", (1, 1), [parameters_used]),
            output("adapter_used", "BYTES", (1, 1), [""]),
            output("model_id", "BYTES", (1, 1), ["composite@1"]),
            output("error", "BYTES", (1, 1), [""]),
        ],
    }
    return tritonclient.http.InferResult.from_response_body(json.dumps(body).encode())


@pytest.mark.parametrize(
    "parameters_used",
    ['["scene", "shelf"]', '{"scene": ', '{"scale": NaN}', '"shelf"'],
    ids=["a_list", "cut_off", "nan", "a_string"],
)
def test_an_answer_whose_parameters_are_no_json_object_fails_as_the_servers_fault(
    parameters_used: str,
) -> None:
    """skuforge's server sends the parameters a backend used as a JSON object (``allow_nan=False``);
    another server may not, and the client took its answer as the variant drawn: the stage failed
    building the event (AttributeError, JSONDecodeError; a NaN's validation error once the image and its
    mask were written), retried it as a handler error and dead-lettered the SKU with a letter naming
    neither the server nor its answer. It fails as the server's fault, as an image of another size does."""
    variant = answered_variant(SIZE)
    assert json.loads(variant_result(_answer('{"scene": "shelf"}'), variant, "m").parameters_json) == {
        "scene": "shelf"
    }
    with pytest.raises(GeneratorFailed) as failed:
        variant_result(_answer(parameters_used), variant, "skuforge_generator_composite")
    message = str(failed.value)
    assert "skuforge_generator_composite" in message and "seed 7" in message
    assert "parameters_used" in message and "JSON object" in message
