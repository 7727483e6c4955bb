"""The LoRA trainer, ninth review: what a job left in the store damaged before a restart (its
training set's records, its checkpoint). Each is only a step on the way to the adapter: built or
trained again, never the job failed for good.

Training is stubbed where what is trained is not the point (``stub_training``).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from services.lora_trainer.stage import PREFIX
from shared.lora_training.dataset import TrainingRecipe, TrainingSet, build_training_set, load_training_set
from shared.lora_training.train import TrainingInterrupted, TrainingResult, checkpoint_key, train_lora
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


def _damage_and_resume(
    store: FileStore,
    damage: Callable[[dict[str, Any]], None],
    tiny_model: Path,
    training_set: TrainingSet,
    recipe: TrainingRecipe,
    uninterrupted: TrainingResult,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Damage job "job"'s checkpoint with ``damage``, train again: it starts from step 0, says so, and
    ends as the uninterrupted run ended."""
    key = checkpoint_key("job")
    state = torch.load(io.BytesIO(store.get_bytes(key)), weights_only=True)
    damage(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    store.put_bytes(key, buffer.getvalue())
    with caplog.at_level(logging.WARNING, logger="skuforge.lora_training"):
        again = train_lora(tiny_model, training_set, recipe, store, "job")
    assert (again.resumed_from_step, again.steps) == (0, 2)
    assert again.weights == uninterrupted.weights
    [warning] = [r for r in caplog.records if r.getMessage().startswith("checkpoint cannot be read")]
    assert warning.checkpoint == key  # type: ignore[attr-defined]


def _optimizer_of_another_job(state: dict[str, Any]) -> None:
    """AdamW's state of a job with half the parameters (another job's checkpoint copied in by hand)."""
    [group] = state["optimizer"]["param_groups"]
    group["params"] = group["params"][: len(group["params"]) // 2]


def _lora_of_another_rank(state: dict[str, Any]) -> None:
    state["lora"] = {
        name: torch.zeros(tensor.shape[0] + 1, *tensor.shape[1:]) for name, tensor in state["lora"].items()
    }


@pytest.mark.slow  # trains the tiny model two steps, twice
@pytest.mark.parametrize("damage", [_optimizer_of_another_job, _lora_of_another_rank])
def test_a_checkpoint_that_does_not_fit_the_model_starts_the_job_again_from_step_0(
    tiny_model: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[dict[str, Any]], None],
) -> None:
    """A checkpoint torch.load reads whole but whose optimizer state or LoRA weights do not fit the job's
    model (copied from another job, damaged in a way torch accepts) raised ValueError or RuntimeError
    outside the guard that restarts a job whose checkpoint cannot be read: the job was retried and
    failed for good. It starts again from step 0, from the job's own initial weights (none the
    checkpoint loaded before the mismatch was found), and ends as an uninterrupted run ends."""
    store = FileStore(tmp_path / "store")
    recipe = TrainingRecipe(
        resolution=64, scenes_per_photo=1, class_images=0, max_steps=2, checkpoint_every=1
    )
    training_set = build_training_set(store, "set", "0" * 64, [one_photo_source(store)], recipe)
    uninterrupted = train_lora(tiny_model, training_set, recipe, store, "job")

    _damage_and_resume(store, damage, tiny_model, training_set, recipe, uninterrupted, caplog)


def _moments_of_another_rank(state: dict[str, Any]) -> None:
    """AdamW's moments one row longer than their parameters (a LoRA of another rank), as many of them."""
    for moments in state["optimizer"]["state"].values():
        for name in ("exp_avg", "exp_avg_sq"):
            moments[name] = torch.zeros(moments[name].shape[0] + 1, *moments[name].shape[1:])


def _moments_missing(state: dict[str, Any]) -> None:
    for moments in state["optimizer"]["state"].values():
        del moments["exp_avg_sq"]


@pytest.mark.slow  # trains the tiny model two steps, then one, then two
@pytest.mark.parametrize("damage", [_moments_of_another_rank, _moments_missing])
def test_a_checkpoint_whose_optimizer_moments_do_not_fit_starts_the_job_again_from_step_0(
    tiny_model: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[dict[str, Any]], None],
) -> None:
    """``optimizer.load_state_dict`` checks the parameter groups' sizes, not the moments' shapes: a
    checkpoint with as many moments as parameters but of other shapes (or without one) loaded, and
    AdamW raised at the next step, counted as the job's fault, so the job failed for good after its
    attempts. It starts again from step 0, as a checkpoint that does not fit otherwise does."""
    store = FileStore(tmp_path / "store")
    recipe = TrainingRecipe(
        resolution=64, scenes_per_photo=1, class_images=0, max_steps=2, checkpoint_every=1
    )
    training_set = build_training_set(store, "set", "0" * 64, [one_photo_source(store)], recipe)
    uninterrupted = train_lora(tiny_model, training_set, recipe, store, "whole")
    stepped: list[int] = []  # SIGTERM after the first step: the checkpoint holds step 1 of 2
    with pytest.raises(TrainingInterrupted):
        train_lora(
            tiny_model, training_set, recipe, store, "job",
            on_step=lambda step, loss: stepped.append(step), should_stop=lambda: bool(stepped),
        )  # fmt: skip

    _damage_and_resume(store, damage, tiny_model, training_set, recipe, uninterrupted, caplog)
