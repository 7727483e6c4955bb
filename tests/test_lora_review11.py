"""The LoRA trainer, eleventh review: how an SDXL folder is told from an SD 1.x one, and a stop request
(SIGTERM) while a class image is painted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.lora_training.train import TrainingError, check_trainable
from tests.support.lora import model_folder


@pytest.mark.parametrize(
    ("index", "refused"),
    [
        # An SD 1.5 inpainting folder its maker named with "XL" in it (a repository name, a comment).
        ({"_class_name": "StableDiffusionInpaintPipeline", "_name_or_path": "acme/XL-shelf-inpaint"}, False),
        ({"_class_name": "StableDiffusionInpaintPipeline", "_diffusers_version": "0.42.0"}, False),
        ({"_class_name": "StableDiffusionXLInpaintPipeline"}, True),
        # A pipeline class of its own, with the second text encoder SDXL has.
        ({"_class_name": "ShelfInpaintPipeline", "text_encoder_2": ["transformers", "CLIPTextModel"]}, True),
    ],
)
def test_an_sdxl_folder_is_told_by_its_pipeline_not_by_xl_anywhere_in_its_index(
    tmp_path: Path, index: dict[str, object], refused: bool
) -> None:
    """``"XL" in model_index.json``'s text refused an SD 1.x inpainting folder whose recorded name held
    "XL" (``_name_or_path``) as an SDXL pipeline, and an SDXL folder under a class name of its own
    trained until its first step failed on the missing text-time conditioning."""
    model = model_folder(tmp_path, "m")
    (model / "model_index.json").write_text(json.dumps(index))

    if refused:
        with pytest.raises(TrainingError, match="is an SDXL pipeline"):
            check_trainable(model)
    else:
        check_trainable(model)


@pytest.mark.parametrize("text", ["{", "[]"])
def test_a_model_index_that_is_no_json_object_is_refused_naming_it(tmp_path: Path, text: str) -> None:
    model = model_folder(tmp_path, "m")
    (model / "model_index.json").write_text(text)

    with pytest.raises(TrainingError, match=r"model_index\.json cannot be read"):
        check_trainable(model)
