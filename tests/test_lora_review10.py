"""The LoRA trainer, tenth review: knobs whose out-of-range values were accepted (each refused at
start-up now, naming its variable), and a stop request (SIGTERM) while a job builds or encodes its
training set, which the worker did not see until the first training step.

Training is stubbed where what is trained is not the point (``stub_training``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.lora_trainer import stage as lora_stage
from services.lora_trainer.config import LoraTrainerSettings
from services.lora_trainer.stage import PREFIX
from shared.config import ConfigError, load_settings
from shared.images import UInt8Array, decode_image, pixel_array
from shared.lora_training.dataset import TrainingRecipe, build_training_set, slug
from shared.lora_training.train import TrainingError, TrainingInterrupted, checkpoint_key, train_lora
from shared.store import FileStore
from tests.support.captioning import captioned_sku
from tests.support.lora import _class_images, model_folder, one_photo_source, record, trainer_on
from tests.support.threads import one_torch_thread  # noqa: F401 (autouse: the tiny model trains on one thread)

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


# --- a stop request while the set is built or encoded -----------------------------------------------


def _stop_after(calls: int) -> Callable[[], bool]:
    """A ``should_stop`` that answers True from its ``calls + 1``-th call on (a SIGTERM arriving then)."""
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > calls

    return should_stop


@pytest.mark.slow  # trains the tiny model two steps
def test_a_stop_while_the_set_is_encoded_ends_the_job_before_training_and_it_resumes_whole(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Encoding every item (VAE and text encoder, one item at a time) never looked at the stop flag: on
    a large general set SIGTERM waited out the worker's 120 s and the job was killed. It stops between
    items now, before any step: nothing is written, and the job encodes again when it resumes."""
    store = FileStore(tmp_path / "store")
    recipe = TrainingRecipe(resolution=64, scenes_per_photo=3, class_images=0, max_steps=2)
    training_set = build_training_set(store, "set", "0" * 64, [one_photo_source(store)], recipe)
    assert len(training_set.items) == 3
    one_item_encoded = _stop_after(1)
    with pytest.raises(TrainingInterrupted, match="encoding the training set: 1 of 3 items"):
        train_lora(tiny_model, training_set, recipe, store, "job", should_stop=one_item_encoded)
    assert not store.exists(checkpoint_key("job"))  # no step was taken

    resumed = train_lora(tiny_model, training_set, recipe, store, "job")
    assert (resumed.resumed_from_step, resumed.steps) == (0, 2)


def test_a_stop_while_the_set_is_composited_leaves_no_set_and_the_restart_builds_it_whole(
    tmp_path: Path,
) -> None:
    """Compositing each photo onto its scenes (up to 200 a photo) never looked at the stop flag either.
    It stops between photos now; the set is not marked complete, so the restart builds it again."""
    store = FileStore(tmp_path / "store")
    recipe = TrainingRecipe(resolution=64, scenes_per_photo=2, class_images=0)
    first, second = one_photo_source(store), one_photo_source(store)
    second = type(second)(**{**second.__dict__, "photo_id": "p2"})
    with pytest.raises(TrainingInterrupted, match="building the training set: 1 of 2 photos"):
        build_training_set(store, "set", "0" * 64, [first, second], recipe, should_stop=_stop_after(1))
    assert not store.exists("set/complete.json")
    assert len(list(store.list_keys("set/images/instance/"))) == 2  # the first photo's scenes only

    whole = build_training_set(store, "set", "0" * 64, [first, second], recipe)
    assert len(whole.items) == 4 and store.exists("set/complete.json")


@pytest.mark.slow  # paints with the tiny model
def test_a_stop_while_class_images_are_painted_ends_the_job_and_the_restart_paints_them_again(
    tiny_model: Path, tmp_path: Path, stub_training: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Painting class images (25 denoising steps each, up to 2000 a class) never looked at the stop flag:
    SIGTERM waited out the 120 s and the worker was killed mid-set. It stops at the next step now: the job
    counts as interrupted, the set is not marked complete, and a restart paints it whole."""
    store = FileStore(tmp_path / "store")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    small = {"lora_class_images": 3, "lora_resolution": 64, "lora_scenes_per_photo": 1}
    trainer = trainer_on(store, tiny_model, **small)
    painted: list[int] = []
    paint = lora_stage.paint_finite

    def sigterm_during_the_first_image(*args: Any, **kwargs: Any) -> object:
        painted.append(1)
        if len(painted) == 1:
            trainer.stop()  # what SIGTERM does: main() stops the worker
        return paint(*args, **kwargs)

    monkeypatch.setattr(lora_stage, "paint_finite", sigterm_during_the_first_image)
    with pytest.raises(TrainingInterrupted, match="painting class images: 0 of 3"):  # at its first step
        trainer.run_pending()
    assert len(painted) == 1 and stub_training == []
    assert not [key for key in store.list_keys(f"{PREFIX}/sets/") if key.endswith("complete.json")]
    assert trainer.metrics.jobs.labels("interrupted")._value.get() == 1
    assert trainer._painter is None  # the pipeline is let go

    restarted = trainer_on(store, tiny_model, **small)
    (event,) = restarted.run_pending()
    assert event.class_images == 3 and len(painted) == 4 and len(stub_training) == 1


def test_a_stop_between_jobs_starts_no_other_job(tmp_path: Path, stub_training: list[Path]) -> None:
    """After a job published, the next series' job began (its set built, composited and painted) though
    the worker had been asked to stop: each job now checks the flag before it starts."""
    store = FileStore(tmp_path / "store")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    record(store, captioned_sku(store, 2, usable_photos=1, series="lemonade"))
    trainer = trainer_on(store, model_folder(tmp_path, "m"), lora_class_images=0)
    trainer.publish = lambda event: trainer.stop()  # SIGTERM while the first adapter is published

    published = trainer.run_pending()
    assert len(published) == 1 and len(stub_training) == 1
    assert len(trainer.plan()) == 2  # the other series is still there for the restart


# --- a prior loss weight of 0 ------------------------------------------------------------------------


def test_with_a_prior_loss_weight_of_0_no_class_image_is_painted_and_the_event_counts_none(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """A class item is never drawn when SKUFORGE_LORA_PRIOR_LOSS_WEIGHT is 0, yet the set was given
    SKUFORGE_LORA_CLASS_IMAGES of them per class (painted by the base model: 25 steps each, minutes on a
    GPU, then encoded), and ``adapter.published`` said the adapter trained on them."""
    store = FileStore(tmp_path / "store")
    recipe = TrainingRecipe(resolution=64, scenes_per_photo=1, class_images=2, prior_loss_weight=0.0)
    painted: list[str] = []

    def paint(prompt: str, count: int, seed: int, size: int) -> list[UInt8Array]:
        painted.append(prompt)
        return [source_pixels(store)] * count

    training_set = build_training_set(
        store, "set", "0" * 64, [one_photo_source(store)], recipe, paint_class_images=paint
    )
    assert painted == [] and training_set.class_items == []

    captioned = captioned_sku(store, 1, usable_photos=1, series="cola")
    record(store, captioned)
    classes = tmp_path / "class-images"
    _class_images(classes, slug(captioned.class_noun), 2)
    trainer = trainer_on(
        store, model_folder(tmp_path, "m"), lora_class_images=2, lora_prior_loss_weight=0.0,
        lora_class_images_dir=str(classes),
    )  # fmt: skip
    (job,) = trainer.plan()
    # A set built by an earlier release for this job (same hash) holds class items: not counted either.
    with_classes = trainer.recipe.model_copy(update={"prior_loss_weight": 1.0})
    old = build_training_set(
        store, f"{PREFIX}/sets/{job.sha256}", job.sha256, job.sources, with_classes,
        class_folder=trainer._class_folder.images,
    )  # fmt: skip
    assert len(old.class_items) == 2
    (event,) = trainer.run_pending()
    assert event.class_images == 0 and captioned.class_prompt not in event.training_prompts
