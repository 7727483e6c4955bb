"""The LoRA trainer, tenth review: knobs whose out-of-range values were accepted (each refused at
start-up now, naming its variable).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.lora_trainer.config import LoraTrainerSettings
from shared.config import ConfigError, load_settings
from shared.images import UInt8Array, decode_image, pixel_array
from shared.lora_training.dataset import TrainingRecipe, build_training_set
from shared.lora_training.train import TrainingError, train_lora
from shared.store import FileStore
from tests.support.diffusion import build_tiny_inpaint_pipeline
from tests.support.lora import one_photo_source
from tests.support.threads import one_torch_thread  # noqa: F401 (autouse: the tiny model trains on one thread)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_inpaint_pipeline(tmp_path_factory.mktemp("lora-review10") / "tiny-sd-inpaint")


# --- knobs out of range -----------------------------------------------------------------------------


@pytest.mark.slow  # trains the tiny model a step
def test_a_prior_loss_weight_past_its_bound_is_refused_at_start_up_not_reported_as_divergence(
    tiny_model: Path, tmp_path: Path
) -> None:
    """SKUFORGE_LORA_PRIOR_LOSS_WEIGHT had no upper bound: 1e308 was accepted, the float32 loss was inf
    at the first step, and every job failed for good as "training diverged" with advice to lower the
    learning rate or alpha, neither of which was the cause."""
    store = FileStore(tmp_path / "store")
    recipe = TrainingRecipe(resolution=64, scenes_per_photo=1, class_images=0, max_steps=2)
    source = one_photo_source(store)
    training_set = build_training_set(
        store, "set", "0" * 64, [source], recipe.model_copy(update={"class_images": 1}),
        paint_class_images=lambda prompt, count, seed, size: [source_pixels(store)] * count,
    )  # fmt: skip
    assert training_set.class_items  # the weight is in play
    unbounded = TrainingRecipe.model_construct(**{**recipe.model_dump(), "prior_loss_weight": 1e308})
    with pytest.raises(TrainingError, match="diverged: the loss is inf"):
        train_lora(tiny_model, training_set, unbounded, store, "job")

    with pytest.raises(ConfigError, match="SKUFORGE_LORA_PRIOR_LOSS_WEIGHT") as refused:
        load_settings(LoraTrainerSettings, lora_prior_loss_weight=1e308)
    assert "less than or equal to 10" in str(refused.value)
    assert load_settings(LoraTrainerSettings, lora_prior_loss_weight=10.0).lora_prior_loss_weight == 10.0
    with pytest.raises(ValidationError):  # a recipe built elsewhere holds the same rule
        TrainingRecipe(prior_loss_weight=1e308)


def source_pixels(store: FileStore) -> UInt8Array:
    """The product photo ``one_photo_source`` wrote, as pixels (a stand-in class image)."""
    return pixel_array(decode_image(store.get_bytes("photo.png")))


def test_an_early_stop_min_delta_above_any_loss_improvement_is_refused_at_start_up() -> None:
    """The loss is a noise MSE (below 1 for any model worth training): a min delta of 1 or more is
    never reached, so every job silently stopped "early" at SKUFORGE_LORA_EARLY_STOP_PATIENCE + 1 steps
    and published an adapter that had barely trained."""
    with pytest.raises(ConfigError, match="SKUFORGE_LORA_EARLY_STOP_MIN_DELTA"):
        load_settings(LoraTrainerSettings, lora_early_stop_min_delta=5.0)
    assert load_settings(LoraTrainerSettings, lora_early_stop_min_delta=1.0).lora_early_stop_min_delta == 1.0
    with pytest.raises(ValidationError):
        TrainingRecipe(early_stop_min_delta=5.0)


@pytest.mark.parametrize("resolution", [100, 4096])
def test_a_recipe_holds_the_settings_rule_for_the_resolution(resolution: int) -> None:
    """``TrainingRecipe.resolution`` had only ``ge=64``: a recipe built elsewhere than the settings (a
    bench, a script) took 100 (diffusers refuses a size that is not a multiple of 8 when painting class
    images, failing the job for good) or 4096 (every job out of GPU memory, retried for ever)."""
    with pytest.raises(ValidationError, match="resolution"):
        TrainingRecipe(resolution=resolution)
    assert TrainingRecipe(resolution=2048).resolution == 2048
