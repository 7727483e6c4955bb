"""The LoRA trainer, third review: what an operator following the docs met.

Training is stubbed where what is trained is not the point (``stub_training``), so this file runs on
CPU in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.lora_trainer.config import LoraTrainerSettings
from services.lora_trainer.stage import PREFIX, adapter_base_model
from shared.config import ConfigError, load_settings
from shared.generation.diffusion import DiffusionSettings
from shared.store import FileStore
from tests.support.lora import (
    _class_images,
    _trainer,
    generator_settings,
    model_folder,
    one_series,
    open_on,
    served,
)


def test_a_roll_back_to_an_adapter_whose_job_folder_expired_makes_it_current_again(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """docs/ops.md lets ``lora-trainer/jobs/`` expire once a job is published. A roll-back to that job
    then read its result from the expired folder: ObjectMissing at every poll, and the generator kept
    serving the newer adapter."""
    store, trainer = one_series(tmp_path)

    [first] = trainer(4).run_pending()
    for key in [*store.list_keys(f"{PREFIX}/jobs/"), *store.list_keys(f"{PREFIX}/sets/")]:
        store.delete(key)  # expired, as the retention table allows
    [second] = trainer(8).run_pending()
    assert served(store) == second.adapter_id

    [again] = trainer(4).run_pending()  # rolled back

    assert served(store) == first.adapter_id and len(stub_training) == 2  # current again, not trained again
    assert again.model_dump(include={"weights_sha256", "steps", "sku_ids", "training_prompts"}) == (
        first.model_dump(include={"weights_sha256", "steps", "sku_ids", "training_prompts"})
    )


def test_a_large_class_folder_is_read_only_as_far_as_the_recipe_uses_it(tmp_path: Path) -> None:
    """Every file of every class folder was decoded at start-up and kept, though a job trains on the
    first SKUFORGE_LORA_CLASS_IMAGES of each: a folder of a few thousand real photos held gigabytes,
    and a broken file no job would use refused the start."""
    classes = tmp_path / "class-images"
    _class_images(classes, "can", 6)
    (classes / "can" / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # sorts last

    trainer = _trainer(FileStore(tmp_path / "store"), lora_class_images_dir=str(classes), lora_class_images=2)

    assert [len(images) for images in trainer._class_folder.images.values()] == [2]


@pytest.mark.parametrize(("lora_model", "diffusion_model"), [(".", None), (None, "."), (None, "./")])
def test_a_model_folder_given_as_dot_labels_adapters_with_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lora_model: str | None, diffusion_model: str | None
) -> None:
    """SKUFORGE_LORA_MODEL=. (or the generator's SKUFORGE_DIFFUSION_MODEL=.), run from the model folder,
    labelled every adapter "": each job trained, then the registry refused it at every poll."""
    monkeypatch.chdir(model_folder(tmp_path, "sd15-inpaint"))
    trainer = load_settings(LoraTrainerSettings, lora_model=lora_model)
    diffusion = load_settings(DiffusionSettings, diffusion_model=diffusion_model)

    assert adapter_base_model(trainer, diffusion) == "sd15-inpaint"


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_a_model_that_does_not_predict_the_noise_is_refused_at_start_up(
    tmp_path: Path, prediction_type: str
) -> None:
    """The loop's loss is the noise MSE. A v-prediction inpainting model (9 channels, one text encoder)
    passed every check, and each of its adapters was trained towards the noise: published, served,
    and pulling the model's predictions off target."""
    model = model_folder(tmp_path, "sd2-inpaint-v")
    (model / "scheduler").mkdir()
    scheduler_config = {"_class_name": "PNDMScheduler", "prediction_type": prediction_type}
    (model / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config))
    trainer = load_settings(LoraTrainerSettings, lora_base_model="sd2-inpaint-v")

    with pytest.raises(ConfigError, match=f"prediction_type '{prediction_type}'"):
        open_on(tmp_path, trainer, generator_settings(model, tmp_path))
