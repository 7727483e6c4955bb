"""The LoRA trainer, review 36: the adapter.published producer made before the worker is closed when the
worker cannot be opened; in-store photos train on their largest blob, as the generator cuts them; a
store or registry fault in a job is logged naming what failed, not as a training job that failed.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from services.lora_trainer.config import LoraTrainerSettings
from services.lora_trainer.stage import build_stage
from shared.config import ConfigError, load_settings
from shared.generation.diffusion import DiffusionSettings
from tests.support.bus import file_store_uri, isolated_settings


def producer_threads() -> set[threading.Thread]:
    """The live sender threads of the trainer's producers (kafka-python names them by client id)."""
    return {t for t in threading.enumerate() if t.name.startswith("skuforge-lora-trainer") and t.is_alive()}


@pytest.mark.kafka
def test_a_worker_that_cannot_open_closes_the_producer_made_for_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """build_stage made the adapter.published producer, then open_trainer refused the settings (here no
    model folder): the producer was left to the garbage collector or the exit hooks, and while the
    refusal was held (its traceback keeps build_stage's frame, a caller reporting it), its sender thread
    and broker connection stayed open. It is closed before the refusal is raised."""
    shared = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    before = producer_threads()
    with pytest.raises(ConfigError, match=r"model_index\.json") as refused:
        build_stage(
            settings=shared,
            trainer=load_settings(LoraTrainerSettings, lora_model=str(tmp_path / "no-model")),
            diffusion=load_settings(DiffusionSettings, diffusion_cache_dir=str(tmp_path / "cache")),
        )
    assert refused.traceback  # held, as a caller reporting it holds it
    assert producer_threads() - before == set()
