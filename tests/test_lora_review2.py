"""The LoRA trainer, second review: what a user met between a setting and a served adapter.

An adapter trained with alpha above its rank is served at the strength it was trained at; a base
model that is not an inpainting one is refused at start-up, not by every job; an empty
``SKUFORGE_LORA_*`` setting is unset, as in the other settings; a trainer without torch says what to
install; the general adapter names its class the way the captioner does. Everything runs on the
tiny config-built pipeline on CPU, or without a model at all.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from bench.tiny_diffusion import product_photo
from schemas.events import GateAccepted
from services.lora_trainer.config import LoraTrainerSettings
from services.lora_trainer.stage import PREFIX
from shared.captioning.prompts import sku_prompts
from shared.config import ConfigError, load_settings
from shared.generation.adapters import AdapterRegistry, safetensors_header
from shared.generation.diffusion import LoraSlots, load_inpaint_pipeline
from shared.images import encode_png
from shared.lora_training.dataset import TrainingRecipe, build_training_set, slug
from shared.lora_training.train import LORA_TARGETS, TrainingError, adapter_weights, train_lora
from shared.store import FileStore
from tests.support.lora import (
    gate_accepted,
    generator_settings,
    model_folder,
    one_photo_source,
    open_on,
    record_accepted_event,
    trainer_on,
)
from tests.support.threads import one_torch_thread  # noqa: F401 (autouse: the tiny model trains on one thread)

# --- 1. the served strength -----------------------------------------------------------------------


def test_an_adapter_trained_with_alpha_above_its_rank_is_served_at_alpha_over_rank(
    tiny_model: Path, tmp_path: Path
) -> None:
    # Before, the weights carried no LoraConfig and diffusers' load_lora_weights took alpha = rank:
    # an adapter trained at scale 16/4 = 4 was painted by the generator at scale 1.
    store = FileStore(tmp_path / "store")
    recipe = TrainingRecipe(rank=4, alpha=16, resolution=64, scenes_per_photo=1, class_images=0, max_steps=1)
    training_set = build_training_set(store, "set", "0" * 64, [one_photo_source(store)], recipe)
    result = train_lora(tiny_model, training_set, recipe, store, "job")

    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    adapter = registry.register(
        "cola-000000000000", result.weights, kind="specialized", base_model="tiny", series="Cola"
    )
    pipe = load_inpaint_pipeline(
        tiny_model, architecture="sd", device=torch.device("cpu"), dtype=torch.float32
    )
    slots = LoraSlots(pipe, 1, lambda metadata: registry.fetch_weights(metadata, tmp_path / "cache"))
    slots.activate(adapter)

    served = {
        module.scaling[adapter.adapter_id]
        for module in pipe.unet.modules()
        if isinstance(getattr(module, "scaling", None), dict) and adapter.adapter_id in module.scaling
    }
    assert served == {4.0}


def test_an_adapter_saved_again_is_the_same_file(tiny_model: Path) -> None:
    # With the LoraConfig in the header there are two metadata keys, which safetensors writes in an
    # order that changes from save to save: a resumed job's weights differed from the uninterrupted
    # job's, and the registry named one adapter by several sha256s.
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet", local_files_only=True)
    torch.manual_seed(0)
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=16, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
    )
    saved = {adapter_weights(unet) for _ in range(12)}
    assert len(saved) == 1
    assert (
        json.loads(safetensors_header(saved.pop())["__metadata__"]["lora_adapter_metadata"])[
            "unet.lora_alpha"
        ]
        == 16
    )


# --- 2. a base model that is no inpainting model ---------------------------------------------------


def test_a_base_model_that_is_not_an_inpainting_model_is_refused_at_start_up(tmp_path: Path) -> None:
    # Before, a text-to-image folder (UNet in_channels 4) passed start-up, and every job then crashed
    # at its first step on a 9-channel input, was retried, and failed after its attempts.
    text_to_image = model_folder(tmp_path, "sd15", in_channels=4)
    trainer = load_settings(LoraTrainerSettings, lora_base_model="sd15")
    with pytest.raises(ConfigError, match="inpainting") as refused:
        open_on(tmp_path, trainer, generator_settings(text_to_image, tmp_path))
    assert "in_channels 4" in str(refused.value)
    # Swapped in under a running trainer, its jobs fail with the reason before anything is loaded.
    store = FileStore(tmp_path / "jobs")
    recipe = TrainingRecipe(resolution=64, scenes_per_photo=1, class_images=0, max_steps=1)
    training_set = build_training_set(store, "set", "0" * 64, [one_photo_source(store)], recipe)
    with pytest.raises(TrainingError, match="inpainting"):
        train_lora(text_to_image, training_set, recipe, store, "job")


# --- 3. an empty setting is an unset one ------------------------------------------------------------


def test_empty_lora_settings_are_unset_as_compose_and_helm_pass_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, SKUFORGE_LORA_MODEL= labelled every adapter "" (the registry refused it at every poll,
    # for ever) and SKUFORGE_LORA_CLASS_IMAGES_DIR= read the working directory as the class images.
    generator_model = model_folder(tmp_path, "sd15-inpaint")
    work_dir = tmp_path / "work"
    (work_dir / "soda-can").mkdir(parents=True)
    photo, _ = product_photo(64)
    (work_dir / "soda-can" / "shelf.png").write_bytes(encode_png(photo))
    monkeypatch.chdir(work_dir)
    for name in ("SKUFORGE_LORA_MODEL", "SKUFORGE_LORA_BASE_MODEL", "SKUFORGE_LORA_CLASS_IMAGES_DIR"):
        monkeypatch.setenv(name, "")
    trainer = open_on(
        tmp_path, load_settings(LoraTrainerSettings), generator_settings(generator_model, tmp_path)
    )
    assert trainer.model_dir == generator_model and trainer.base_model == "sd15-inpaint"
    assert trainer.settings.lora_class_images_dir is None and trainer._class_folder.images == {}


# --- 4. a trainer without torch ---------------------------------------------------------------------


class _NoBroker:
    """kafka_publisher's stand-in: publishes nothing, and closes (build_stage closes it when the worker
    cannot be opened, as here)."""

    def __call__(self, event: object) -> None:
        return None

    def close(self) -> None:
        return None


def test_running_the_trainer_without_torch_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, `skuforge run lora-trainer` on an install without the diffusion extra (the CPU image)
    # ended in a ModuleNotFoundError traceback from open_trainer's `import torch`.
    from services.lora_trainer import stage as lora_stage
    from skuforge_cli.main import main as cli_main

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ModuleNotFoundError
    monkeypatch.setattr(lora_stage, "kafka_publisher", lambda shared: _NoBroker())  # no broker
    monkeypatch.setenv("SKUFORGE_METRICS_PORT", "0")
    assert cli_main(["run", "lora-trainer"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skuforge run: the LoRA trainer needs torch")
    assert "pip install 'skuforge[diffusion]'" in err and "Traceback" not in err


# --- 5. the general adapter's class words ----------------------------------------------------------


def with_category(accepted: GateAccepted, category: str) -> GateAccepted:
    generated = accepted.matted.generated
    sku = generated.sku.model_copy(update={"category": category})
    matted = accepted.matted.model_copy(update={"generated": generated.model_copy(update={"sku": sku})})
    return accepted.model_copy(update={"matted": matted})


@pytest.mark.parametrize("category", ["Aubergine", "Crème fraîche", "The Papaya"])
def test_the_general_adapter_names_a_class_as_the_captioner_does(tmp_path: Path, category: str) -> None:
    # Before, it used the raw category: "a photo of a Aubergine", and the class images of "Crème
    # fraîche" were looked up in cr-me-fra-che/, where the series adapters read creme-fraiche/.
    store = FileStore(tmp_path / "store")
    accepted = with_category(gate_accepted(store, 1), category)
    record_accepted_event(store, accepted)
    words = sku_prompts(accepted.matted.generated.sku)
    classes = tmp_path / "class-images" / slug(words.class_noun)
    classes.mkdir(parents=True)
    photo, _ = product_photo(64)
    (classes / "shelf.png").write_bytes(encode_png(photo))
    model = model_folder(tmp_path, "sd15-inpaint")
    settings = {"lora_general_after_accepted": 1, "lora_class_images_dir": str(classes.parent)}
    trainer = trainer_on(store, model, **settings)

    (job,) = trainer.plan()

    (source,) = job.sources
    assert (source.class_noun, source.class_prompt) == (words.class_noun, words.class_prompt)
    # The folder the captioner's noun names is the one this job trains on (its images are in its identity).
    (classes / "shelf.png").unlink()
    assert trainer_on(store, model, **settings).plan()[0].sha256 != job.sha256


def test_an_accepted_record_without_a_class_word_is_skipped_and_the_general_job_still_plans(
    tmp_path: Path,
) -> None:
    # Worded by class_noun, a null class would raise AttributeError and stop every plan; before, it
    # trained as "a photo of a None".
    store = FileStore(tmp_path / "store")
    for variant in (1, 2):
        record_accepted_event(store, gate_accepted(store, variant))
    broken_key = sorted(store.list_keys(f"{PREFIX}/accepted/"))[0]
    store.put_json(broken_key, {**json.loads(store.get_bytes(broken_key)), "class_noun": None})
    trainer = trainer_on(store, model_folder(tmp_path, "sd15-inpaint"), lora_general_after_accepted=2)

    (job,) = trainer.plan()

    assert len(job.sources) == 1 and job.accepted_count == 2
