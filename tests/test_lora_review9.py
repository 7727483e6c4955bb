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
from shared.lora_training.dataset import build_training_set, load_training_set
from tests.support.lora import one_series, served


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
