"""The LoRA trainer, ninth review: what a job left in the store damaged before a restart (its
training set's records, its checkpoint). Each is only a step on the way to the adapter: built or
trained again, never the job failed for good.

Training is stubbed where what is trained is not the point (``stub_training``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.lora_trainer.stage import PREFIX
from shared.lora_training.dataset import TrainingRecipe, build_training_set, load_training_set
from shared.lora_training.train import TrainingInterrupted, checkpoint_key, train_lora
from shared.store import FileStore
from tests.support.lora import one_photo_source, one_series, served
from tests.support.threads import one_torch_thread  # noqa: F401 (autouse: the tiny model trains on one thread)


def _cut_short(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize("record", ["complete.json", "index/"])
def test_a_training_set_whose_records_are_cut_short_is_built_again_and_the_job_publishes(
    tmp_path: Path, stub_training: list[Path], record: str
) -> None:
    """``load_training_set`` read ``complete.json`` and the class indexes with ``json.loads``: one cut
    short (a copy of the store interrupted, a disk full) raised ValueError, which the trainer takes for
    the job's own refusal: the job was marked failed at once, and the series had no adapter until its
    photos changed."""
    store, trainer = one_series(tmp_path)
    [job] = trainer(4).plan()
    set_prefix = f"{PREFIX}/sets/{job.sha256}"
    build_training_set(store, set_prefix, job.sha256, job.sources, trainer(4).recipe)
    [damaged] = [key for key in store.list_keys(set_prefix) if key[len(set_prefix) + 1 :].startswith(record)]
    store.put_bytes(damaged, _cut_short(store.get_bytes(damaged)))
    assert load_training_set(store, set_prefix, job.sha256) is None  # built again, not trained on

    [event] = trainer(4).run_pending()
    assert event.adapter_id == job.adapter_id and served(store) == job.adapter_id
    assert not store.exists(f"{PREFIX}/jobs/{job.sha256}/failed.json")
    assert json.loads(store.get_bytes(f"{set_prefix}/complete.json"))["training_set_sha256"] == job.sha256


@pytest.mark.slow  # trains the tiny model three times
def test_a_checkpoint_that_cannot_be_read_starts_the_job_again_and_a_whole_one_resumes(
    tiny_model: Path, tmp_path: Path
) -> None:
    """``torch.load`` of a checkpoint cut short raised a RuntimeError: counted as the job's fault, the
    job was failed for good after three polls, though the checkpoint only saves time (a job started
    again from step 0 ends with the weights an uninterrupted one ends with)."""
    store = FileStore(tmp_path / "store")
    recipe = TrainingRecipe(
        resolution=64, scenes_per_photo=1, class_images=0, max_steps=3, checkpoint_every=1
    )
    training_set = build_training_set(store, "set", "0" * 64, [one_photo_source(store)], recipe)
    stepped: list[int] = []  # SIGTERM after the first step
    with pytest.raises(TrainingInterrupted):
        train_lora(
            tiny_model, training_set, recipe, store, "job",
            on_step=lambda step, loss: stepped.append(step), should_stop=lambda: bool(stepped),
        )  # fmt: skip
    resumed = train_lora(tiny_model, training_set, recipe, store, "job")
    assert (resumed.resumed_from_step, resumed.steps) == (1, 3)  # a whole checkpoint is resumed

    key = checkpoint_key("job")
    store.put_bytes(key, _cut_short(store.get_bytes(key)))
    again = train_lora(tiny_model, training_set, recipe, store, "job")
    assert (again.resumed_from_step, again.steps) == (0, 3)
