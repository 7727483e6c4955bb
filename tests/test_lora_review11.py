"""The LoRA trainer, eleventh review: how an SDXL folder is told from an SD 1.x one, and a stop request
(SIGTERM) while a class image is painted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from services.lora_trainer.stage import PREFIX
from shared.errors import BadInput
from shared.generation.diffusion import load_inpaint_pipeline
from shared.lora_training.train import TrainingError, TrainingInterrupted, check_trainable
from shared.store import FileStore
from tests.support.captioning import captioned_sku
from tests.support.lora import (
    gate_accepted,
    model_folder,
    record,
    record_accepted_event,
    trainer_on,
)
from tests.support.threads import one_torch_thread  # noqa: F401 (autouse: the tiny model paints on one thread)


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


# --- a stop while a class image is painted ------------------------------------------------------------


@pytest.mark.slow  # paints with the tiny model
def test_a_stop_during_a_class_image_ends_its_painting_at_that_step(tiny_model: Path, tmp_path: Path) -> None:
    """A stop was heard between class images only, and one image is 25 denoising steps: a 2048-px one
    on a CPU outlasts stop()'s 120 s, and the worker was killed mid-set. The flag is read after every
    step now: the painting ends there, and the job counts as interrupted."""
    store = FileStore(tmp_path / "store")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    trainer = trainer_on(store, tiny_model, lora_class_images=2, lora_resolution=64, lora_scenes_per_photo=1)
    steps_reached = 0

    def count_steps(*_: object) -> None:
        nonlocal steps_reached
        steps_reached += 1
        if steps_reached == 1:
            trainer.stop()  # what SIGTERM does: main() stops the worker

    # The painter the job would load, loaded first, so each step's one UNet call is counted.
    trainer._painter = load_inpaint_pipeline(
        tiny_model, architecture="sd", device=torch.device("cpu"), dtype=torch.float32
    )
    trainer._painter.unet.register_forward_pre_hook(count_steps)

    with pytest.raises(TrainingInterrupted, match="painting class images: 0 of 2"):
        trainer.run_pending()

    assert steps_reached == 1  # not the image's 25
    assert trainer.metrics.jobs.labels("interrupted")._value.get() == 1
    assert not [key for key in store.list_keys(f"{PREFIX}/sets/") if key.endswith("complete.json")]


# --- accepted images deleted after a general job ------------------------------------------------------


def test_accepted_images_deleted_after_a_general_job_do_not_hold_back_the_next(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """New images were counted as the accepted ones now recorded less the number the last job covered: one
    it covered and a replay then found unreadable (its record deleted) took one off every later count, so
    the next general job waited for more new images than SKUFORGE_LORA_GENERAL_AFTER_ACCEPTED."""
    store = FileStore(tmp_path / "store")
    for variant in range(3):
        record_accepted_event(store, gate_accepted(store, variant))
    trainer = trainer_on(
        store, model_folder(tmp_path, "m"), lora_class_images=0, lora_general_after_accepted=3
    )
    [first] = trainer.run_pending()
    assert first.kind == "general"

    replayed = gate_accepted(store, 0)
    store.delete(store.key_for(replayed.matted.generated.image.uri))  # gone before a replay
    with pytest.raises(BadInput):
        record_accepted_event(store, replayed)  # its record is deleted
    for variant in (3, 4):
        record_accepted_event(store, gate_accepted(store, variant))
    assert trainer.plan() == []  # two new: below the 3 that start one

    record_accepted_event(store, gate_accepted(store, 5))
    [job] = trainer.plan()  # three new
    assert job.kind == "general" and len(job.sources) == 5
