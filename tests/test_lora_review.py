"""The LoRA trainer trains what the generator will serve, and only that.

Each test pins one fault a review found, at the smallest level that shows it: two class nouns with
one slug no longer shrink a resumed job's training set; adapters are labelled with the model they
were trained on, and a job's identity includes that model; a SKU moved to another series (or out of
every series) leaves its old series' training; a checkpoint cadence is not a new job; and the trainer
trains on the photos the generator cuts products from. Training itself is stubbed where what is
trained is not the point, so this file runs on CPU in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schemas.events import MAX_ADAPTER_SKUS, SkuCaptioned
from services.lora_trainer import stage as lora_stage
from services.lora_trainer.config import MAX_LORA_RESOLUTION, LoraTrainerSettings
from services.lora_trainer.stage import (
    PREFIX,
    LoraTrainer,
)
from shared.config import ConfigError, load_settings
from shared.errors import BadInput
from shared.generation.adapters import AdapterRegistry
from shared.generation.backend import GenerationRequest
from shared.generation.diffusion import DiffusionBackend
from shared.lora_training.dataset import (
    InstanceSource,
    TrainingRecipe,
    build_training_set,
    load_training_set,
    slug,
)
from shared.lora_training.train import TrainingResult
from shared.store import FileStore
from tests.support.captioning import captioned_sku
from tests.support.lora import (
    gate_accepted,
    generator_settings,
    lora_weights,
    model_folder,
    open_on,
    record,
    record_accepted_event,
    trainer_on,
)

# --- helpers --------------------------------------------------------------------------------------


def in_series(captioned: SkuCaptioned, series: str) -> SkuCaptioned:
    return captioned.model_copy(update={"sku": captioned.sku.model_copy(update={"series": series})})


# --- 1. class nouns that share a slug -------------------------------------------------------------


def test_a_resumed_job_loads_the_set_it_built_when_two_class_nouns_share_a_slug(tmp_path: Path) -> None:
    # Before, both classes wrote index/soda-can.json: a job resumed after SIGTERM/SIGKILL read back one
    # class's items and resumed a full-set checkpoint on them; its adapter lacked SKU-1.
    store = FileStore(tmp_path)
    image = np.zeros((96, 96, 3), np.uint8)
    image[24:72, 24:72] = (200, 30, 30)
    mask = np.zeros((96, 96), np.uint8)
    mask[24:72, 24:72] = 255
    sources = []
    for sku_id, noun in (("SKU-1", "soda can"), ("SKU-2", "soda-can"), ("SKU-3", "soda can")):
        photo, matte = store.put_image(f"in/{sku_id}.png", image), store.put_image(f"in/{sku_id}-m.png", mask)
        prompt = f"a photo of a {noun}"
        sources.append(
            InstanceSource(
                sku_id, "p1", photo.uri, photo.sha256, matte.uri, matte.sha256, "shs", noun, prompt
            )
        )

    def painter(prompt: str, count: int, seed: int, size: int) -> list[np.ndarray]:
        shade = 60 if "soda-can" in prompt else 180  # each class its own pixels
        return [np.full((size, size, 3), shade, np.uint8)] * count

    recipe = TrainingRecipe(scenes_per_photo=2, class_images=1, resolution=64)
    built = build_training_set(store, "sets/h", "h", sources, recipe, paint_class_images=painter)
    loaded = load_training_set(store, "sets/h", "h")

    assert loaded is not None
    assert {item.sku_id for item in loaded.instance_items} == {"SKU-1", "SKU-2", "SKU-3"}
    # Exactly the built set, in the built order (the loop draws items by position).
    assert [item.to_json() for item in loaded.items] == [item.to_json() for item in built.items]
    # Each class keeps its own class images: one did not overwrite the other's.
    class_pixels = {item.class_noun: store.get_bytes(item.image) for item in loaded.class_items}
    assert set(class_pixels) == {"soda can", "soda-can"}
    assert class_pixels["soda can"] != class_pixels["soda-can"]


def test_a_set_written_before_class_keys_had_a_hash_is_built_again(tmp_path: Path) -> None:
    # An older complete.json lists no item ids: what its indexes hold cannot be checked, so it is
    # rebuilt rather than trained on as if whole.
    store = FileStore(tmp_path)
    store.put_json("sets/h/complete.json", {"training_set_sha256": "h", "classes": ["soda-can"]})
    store.put_json(
        "sets/h/index/soda-can.json",
        {
            "class_noun": "soda-can",
            "class_prompt": "p",
            "training_set_sha256": "h",
            "items": [
                {"item_id": "a", "kind": "instance", "image": "i.png", "prompt": "p", "class_noun": "x"}
            ],
        },
    )
    assert load_training_set(store, "sets/h", "h") is None


# --- 2. the base model adapters are labelled with ------------------------------------------------


def test_training_another_model_than_the_generators_is_refused_at_start_up_without_its_label(
    tmp_path: Path,
) -> None:
    # Before, adapters trained on sd2-inpaint were registered as sd15-inpaint (the generator's label):
    # the generator loaded them and dead-lettered every SKU of the series (adapter_unloadable).
    generator_model = model_folder(tmp_path, "sd15-inpaint")
    other_model = model_folder(tmp_path, "sd2-inpaint", unet_channels=64)
    diffusion = generator_settings(generator_model, tmp_path)
    with pytest.raises(ConfigError, match="set SKUFORGE_LORA_BASE_MODEL") as refused:
        open_on(tmp_path, load_settings(LoraTrainerSettings, lora_model=str(other_model)), diffusion)
    assert str(other_model) in str(refused.value) and "SKUFORGE_DIFFUSION_BASE_MODEL=sd15-inpaint" in str(
        refused.value
    )
    # The generator's own folder, spelt another way, is the generator's model: its label, no refusal.
    same = open_on(tmp_path, load_settings(LoraTrainerSettings, lora_model=f"{generator_model}/"), diffusion)
    assert same.base_model == "sd15-inpaint"
    # A local copy of the generator's model, said to be one.
    copy = model_folder(tmp_path / "local", "sd15-copy")
    labelled = load_settings(LoraTrainerSettings, lora_model=str(copy), lora_base_model="sd15-inpaint")
    assert open_on(tmp_path, labelled, diffusion).base_model == "sd15-inpaint"


def test_adapters_of_another_model_carry_its_label_and_the_generator_falls_back(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    generator_model = model_folder(tmp_path, "sd15-inpaint")
    other_model = model_folder(tmp_path, "sd2-inpaint", unet_channels=64)
    diffusion = generator_settings(generator_model, tmp_path)
    trainer = open_on(
        tmp_path,
        load_settings(
            LoraTrainerSettings,
            lora_model=str(other_model),
            lora_base_model="sd2-inpaint",
            lora_class_images=0,
            lora_scenes_per_photo=1,
            lora_resolution=64,
        ),
        diffusion,
    )
    captioned = captioned_sku(trainer.store, 1, usable_photos=1, series="cola")
    record(trainer.store, captioned)

    (event,) = trainer.run_pending()

    assert stub_training == [other_model] and event.base_model == "sd2-inpaint"
    (registered,) = trainer.registry.list()
    assert registered.base_model == "sd2-inpaint"
    # The generator on sd15-inpaint does not pick it for the series: the base model, not a refusal.
    generator = DiffusionBackend(
        object(),
        model_id="m",
        registry=trainer.registry,
        settings=diffusion,
        cache_dir=tmp_path,
        device="cpu",  # type: ignore[arg-type]  # choosing an adapter never touches it
    )
    photo = np.zeros((64, 64, 3), np.uint8)
    request = GenerationRequest(
        reference=photo, mask=photo[..., 0], prompt="p", negative_prompt="", seed=1, n=1, parameters={},
        series="cola", size=64,
    )  # fmt: skip
    choice = generator.choose_adapter(request)
    assert (choice.adapter_id, choice.reason) == (None, "none")


def test_a_job_on_another_model_under_the_same_label_is_another_job(tmp_path: Path) -> None:
    # Before, the hash saw the label only: switching the folder trained resumed the old UNet's
    # checkpoint into the new UNet and published it under the old job's adapter id.
    store = FileStore(tmp_path / "store")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    (on_small,) = trainer_on(store, model_folder(tmp_path, "a")).plan()
    copy = model_folder(tmp_path, "copy-of-a")
    (copy / ".cache" / "download").mkdir(parents=True)  # what a download tool leaves: timestamps
    (copy / ".cache" / "download" / "unet.metadata").write_text("etag 1 fetched 2025-01-01T10:00:00")
    (on_same_small,) = trainer_on(store, copy).plan()
    (on_large,) = trainer_on(store, model_folder(tmp_path, "b", unet_channels=64)).plan()
    assert on_small.sha256 == on_same_small.sha256  # the same model in another folder: the same job
    assert on_large.sha256 != on_small.sha256 and on_large.adapter_id != on_small.adapter_id


# --- 3. a SKU belongs to one series ---------------------------------------------------------------


def test_a_sku_moved_to_another_series_leaves_the_old_series(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    trainer = trainer_on(store, model_folder(tmp_path, "m"))
    first, second, third = (captioned_sku(store, i, usable_photos=1) for i in (1, 2, 3))
    record(store, in_series(first, "Cola"))
    record(store, in_series(third, "Cola"))
    record(store, in_series(second, "Pepsi"))
    record(store, in_series(first, "Pepsi"))  # the catalogue was wrong: re-ingested, re-captioned

    def members() -> dict[str | None, set[str]]:
        return {job.series: {s.sku_id for s in job.sources} for job in trainer.plan()}

    assert members() == {"Cola": {third.sku.sku_id}, "Pepsi": {first.sku.sku_id, second.sku.sku_id}}
    record(store, in_series(third, "  "))  # its series cleared: no series trains on it any more
    assert members() == {"Pepsi": {first.sku.sku_id, second.sku.sku_id}}
    assert not any(key.endswith(f"/{third.sku.sku_id}.json") for key in store.list_keys(f"{PREFIX}/series/"))


# --- 5. what does not change the weights is not a new job -----------------------------------------


def test_a_new_checkpoint_cadence_is_the_same_job_and_a_new_step_cap_is_not(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    model = model_folder(tmp_path, "m")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    (every_50,) = trainer_on(store, model, lora_checkpoint_every=50).plan()
    (every_10,) = trainer_on(store, model, lora_checkpoint_every=10).plan()
    (longer,) = trainer_on(store, model, lora_checkpoint_every=50, lora_max_steps=900).plan()
    assert every_10.sha256 == every_50.sha256 and every_10.adapter_id == every_50.adapter_id
    assert longer.sha256 != every_50.sha256


# --- 6. the generator's cut-out rule --------------------------------------------------------------


def with_plain_backgrounds(captioned: SkuCaptioned, values: list[float | None]) -> SkuCaptioned:
    photos = [
        p.model_copy(update={"plain_background": v}) for p, v in zip(captioned.photos, values, strict=True)
    ]
    return captioned.model_copy(update={"photos": photos})


def test_the_trainer_trains_on_the_photos_the_generator_cuts_products_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, an in-store photo (plain_background 0.2) was trained on: its cut-out is often a hand
    # or the next product, which the generator never pastes.
    store = FileStore(tmp_path / "store")
    model = model_folder(tmp_path, "m")
    studio_and_shelf = with_plain_backgrounds(
        captioned_sku(store, 1, usable_photos=2, series="cola"), [0.9, 0.2]
    )
    shelf_only = with_plain_backgrounds(captioned_sku(store, 2, usable_photos=1, series="pepsi"), [0.2])
    record(store, studio_and_shelf)
    record(store, shelf_only)

    def photos_by_series(trainer: LoraTrainer) -> dict[str | None, list[str]]:
        return {job.series: sorted(s.photo_id for s in job.sources) for job in trainer.plan()}

    # With SKUFORGE_GENERATION_MIN_PLAIN_BACKGROUND, read where the generator reads it.
    monkeypatch.setenv("SKUFORGE_GENERATION_MIN_PLAIN_BACKGROUND", "0.5")
    trainer = open_on(tmp_path, load_settings(LoraTrainerSettings), generator_settings(model, tmp_path))
    # The shelf photo is left out; a SKU with no plain photo keeps all (as in the generator).
    assert photos_by_series(trainer) == {"cola": ["p0"], "pepsi": ["p0"]}
    monkeypatch.setenv("SKUFORGE_GENERATION_MIN_PLAIN_BACKGROUND", "0.1")
    trainer = open_on(tmp_path, load_settings(LoraTrainerSettings), generator_settings(model, tmp_path))
    assert photos_by_series(trainer) == {"cola": ["p0", "p1"], "pepsi": ["p0"]}


def test_slug_collisions_are_what_the_class_key_exists_for() -> None:
    # The premise of the first test, pinned: if slug() stopped colliding, that test would prove nothing.
    assert slug("soda can") == slug("soda-can")


# --- 7. a training set rolled back ----------------------------------------------------------------


def test_a_recipe_rolled_back_makes_its_earlier_adapter_current_again(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """Its job had been published, so nothing happened, and the generator kept serving the adapter of
    the recipe that was rolled back (the newest in the registry)."""
    from shared.generation.adapters import resolve_adapter

    store = FileStore(tmp_path / "store")
    model = model_folder(tmp_path, "m")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    published: list[str] = []

    def trainer(rank: int) -> LoraTrainer:
        trainer = trainer_on(store, model, lora_rank=rank, lora_class_images=0)
        trainer.publish = lambda event: published.append(event.adapter_id)
        return trainer

    def served() -> str | None:
        choice = resolve_adapter(AdapterRegistry(store).list(), series="cola", base_model="sd15-inpaint")
        return choice.adapter.adapter_id if choice.adapter else None

    [first] = [event.adapter_id for event in trainer(4).run_pending()]
    [second] = [event.adapter_id for event in trainer(8).run_pending()]
    assert first != second and served() == second
    assert [event.adapter_id for event in trainer(4).run_pending()] == [first]  # rolled back
    assert served() == first and len(stub_training) == 2  # not trained again
    assert trainer(4).run_pending() == []  # current: nothing more
    assert published == [first, second, first]


# --- 8. one SKU's fault is its own ----------------------------------------------------------------


def test_one_skus_altered_photo_leaves_it_out_and_its_series_still_trains(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """It failed the series' job for good, and every later job of the series (each still holding that
    SKU): the series never got an adapter until the photo was fixed."""
    from bench.tiny_diffusion import product_photo
    from shared.images import encode_png

    store = FileStore(tmp_path / "store")
    good, altered = (captioned_sku(store, index, usable_photos=1, series="cola") for index in (1, 2))
    record(store, good)
    record(store, altered)
    store.put_bytes(store.key_for(altered.photos[0].image.uri), encode_png(product_photo(seed=7)[0]))
    trainer = trainer_on(store, model_folder(tmp_path, "m"), lora_class_images=0)
    [event] = trainer.run_pending()
    assert event.series == "cola" and event.sku_ids == [good.sku.sku_id]  # what it trained on
    [job] = trainer.plan()
    trained = load_training_set(store, f"{PREFIX}/sets/{job.sha256}", job.sha256)
    assert trained is not None and {item.sku_id for item in trained.items} == {good.sku.sku_id}


def test_a_sku_recaptioned_with_no_usable_photo_leaves_its_series(tmp_path: Path) -> None:
    """The refusal came before the clean-up: its old request stayed, and the series kept training on
    photos the captioner now refuses."""
    store = FileStore(tmp_path / "store")
    captioned = captioned_sku(store, 1, usable_photos=1, series="cola")
    record(store, captioned)
    assert [job.series for job in trainer_on(store, model_folder(tmp_path, "m")).plan()] == ["cola"]
    unusable = [photo.model_copy(update={"usable": False}) for photo in captioned.photos]
    with pytest.raises(BadInput, match="no_usable_photos"):
        record(store, captioned.model_copy(update={"photos": unusable}))
    assert trainer_on(store, model_folder(tmp_path, "m2")).plan() == []


def test_a_training_resolution_diffusers_cannot_paint_is_a_settings_error() -> None:
    with pytest.raises(ConfigError, match="multiple of 8"):
        load_settings(LoraTrainerSettings, lora_resolution=500)


def test_an_absurd_training_resolution_is_refused_at_start_up_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only "at least 64, a multiple of 8": SKUFORGE_LORA_RESOLUTION=100000 started, squared every class
    # image to 100000 px at start-up, and on a GPU ran every job out of memory, retried uncounted for ever.
    monkeypatch.setenv("SKUFORGE_LORA_RESOLUTION", "100000")
    with pytest.raises(ConfigError, match=r"\n  SKUFORGE_LORA_RESOLUTION: .*2048 \(got '100000'\)$"):
        load_settings(LoraTrainerSettings)  # its line in the start-up error, as every setting's
    monkeypatch.setenv("SKUFORGE_LORA_RESOLUTION", str(MAX_LORA_RESOLUTION))  # SD's sizes fit
    assert load_settings(LoraTrainerSettings).lora_resolution == MAX_LORA_RESOLUTION == 2048


def test_a_general_adapter_cap_its_published_event_cannot_name_is_a_settings_error() -> None:
    # Above 50,000 the general adapter trained for hours on one SKU per image, then its
    # AdapterPublished (sku_ids, at most MAX_ADAPTER_SKUS) failed to build: nothing was published.
    with pytest.raises(ConfigError, match="SKUFORGE_LORA_GENERAL_MAX_IMAGES"):
        load_settings(LoraTrainerSettings, lora_general_max_images=MAX_ADAPTER_SKUS + 1)
    settings = load_settings(LoraTrainerSettings, lora_general_max_images=MAX_ADAPTER_SKUS)
    assert settings.lora_general_max_images == MAX_ADAPTER_SKUS


# --- an accepted image that cannot be read --------------------------------------------------------


def test_an_accepted_image_that_is_gone_is_dead_lettered_and_its_earlier_record_deleted(
    tmp_path: Path,
) -> None:
    """Recorded without a look, it counted towards SKUFORGE_LORA_GENERAL_AFTER_ACCEPTED and was only
    dropped at training time with a log line; now the handler refuses it (a DLQ letter with the reason)."""
    store = FileStore(tmp_path)
    accepted = gate_accepted(store, 0)
    key = f"{PREFIX}/accepted/{accepted.matted.generated.item_id}.json"
    assert record_accepted_event(store, accepted) == [] and store.exists(key)

    store.delete(store.key_for(accepted.matted.generated.image.uri))  # gone before a replay
    with pytest.raises(BadInput) as refused:
        record_accepted_event(store, accepted)
    assert refused.value.reason == "object_missing"
    assert not store.exists(key)


# --- a general job interrupted while accepted images keep coming ----------------------------------


def test_an_interrupted_general_job_is_finished_on_its_images_when_more_came_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its identity hashed every accepted image at plan time: after a SIGTERM (a redeploy), one more
    accepted image made the restarted plan another job, whose training began again at step 0 (and the
    first job's checkpoint was never used or deleted). With the generator running, that is any restart."""
    from shared.lora_training.train import TrainingInterrupted

    store = FileStore(tmp_path / "store")
    for variant in range(3):
        record_accepted_event(store, gate_accepted(store, variant))
    settings = {"lora_class_images": 0, "lora_general_after_accepted": 3}
    trainer = trainer_on(store, model_folder(tmp_path, "m"), **settings)
    [started] = trainer.plan()

    def interrupted(*_: Any, **__: Any) -> TrainingResult:
        raise TrainingInterrupted("stopped at step 1")

    monkeypatch.setattr(lora_stage, "train_lora", interrupted)
    with pytest.raises(TrainingInterrupted):
        trainer.run_pending()
    record_accepted_event(store, gate_accepted(store, 3))  # the generator went on meanwhile

    trained: list[int] = []

    def train_lora(model_dir: Path, training_set: Any, *_: Any, **__: Any) -> TrainingResult:
        trained.append(len(training_set.instance_items))
        return TrainingResult(
            weights=lora_weights(), steps=1, final_loss=0.1, resumed_from_step=1, stopped_early=False
        )

    monkeypatch.setattr(lora_stage, "train_lora", train_lora)
    restarted = trainer_on(store, model_folder(tmp_path, "m2"), **settings)
    [event] = restarted.run_pending()
    assert event.adapter_id == started.adapter_id and trained == [3]
    # The image that came meanwhile is new for the next job: one, below the 3 that start one.
    assert restarted.plan() == []
