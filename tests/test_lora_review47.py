"""The LoRA trainer, review 47: a job stopped by the store (``StoreFailed``), a registration another took
over (``RegistrationTakenOver``) and a training job that failed are each logged once, with the adapter,
the reason and (a failed job) its traceback: they were logged where the job's fault was met and again by
the poll that caught it (a failed job three times: where its attempt was counted too), and the operator
counted two or three failures for one.

Training is stubbed (``stub_training``); the stores are folders that refuse what a bucket's policy would.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from services.lora_trainer import stage as lora_stage
from services.lora_trainer.stage import JOB_MAX_ATTEMPTS, PREFIX, LoraTrainer
from shared.errors import StoreMisconfigured
from shared.generation import adapters as adapters_module
from shared.generation.adapters import AdapterRegistry
from shared.store import FileStore
from tests.support.lora import cola_trainer, lora_weights

LOGGER = "skuforge.lora-trainer"


class RefusingJobWrites(FileStore):
    """A store that refuses every write under the jobs' folder, as a bucket whose policy denies them."""

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        if key.startswith(f"{PREFIX}/jobs/"):
            raise StoreMisconfigured(f"refused {self.uri_for(key)}: AccessDenied (HTTP 403)")
        super()._write(key, data, content_type)


class TakenOverAtTheWeights(FileStore):
    """A registry folder on which a registration pauses, holding the lock, at its look at its weights
    (the lock made stale at once): meanwhile another registration of the adapter takes it over."""

    taken_over = False

    def _exists(self, key: str) -> bool:
        if key.endswith(".safetensors") and not self.taken_over:
            self.taken_over = True
            AdapterRegistry(FileStore(self.root)).register(
                key.split("/")[0], lora_weights(3), kind="specialized", series="cola", base_model="sd15"
            )
        return super()._exists(key)


def one_poll_logged(trainer: LoraTrainer, caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The trainer's warnings and errors of one poll."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        trainer.poll()
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def test_a_job_the_store_stopped_is_logged_once(
    tmp_path: Path, stub_training: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A warning from the poll's jobs ("... failed the job ... the others go on") and an error from the
    poll ("... failed a job ..."), the same fault of the same job. Now one error names the store, the
    adapter and the uri the store refused."""
    store = RefusingJobWrites(tmp_path / "store")
    trainer = cola_trainer(store, FileStore(tmp_path / "registry"), tmp_path)

    [line] = one_poll_logged(trainer, caplog)
    assert line.levelno == logging.ERROR
    assert "object store (SKUFORGE_STORE_URI) failed a job" in line.getMessage()
    assert "training is not at fault" in line.getMessage()
    assert getattr(line, "adapter_id", None)
    assert f"{store.base_uri}/{PREFIX}/jobs/" in getattr(line, "reason", "")
    assert trainer.metrics.jobs.labels("retried")._value.get() == 1


def test_a_registration_taken_over_is_logged_once(
    tmp_path: Path,
    stub_training: list[Path],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Said once by the poll's jobs with the adapter, and again by the poll without it."""
    monkeypatch.setattr(adapters_module, "REGISTER_LOCK_STALE_S", 0.0)
    registry = TakenOverAtTheWeights(tmp_path / "registry")
    trainer = cola_trainer(FileStore(tmp_path / "store"), registry, tmp_path)

    [line] = one_poll_logged(trainer, caplog)
    assert registry.taken_over
    assert line.levelno == logging.WARNING
    assert "another registration" in line.getMessage() and "not trained again" in line.getMessage()
    assert getattr(line, "adapter_id", None)
    assert getattr(line, "reason", "")
    assert trainer.metrics.jobs.labels("retried")._value.get() == 1


def test_a_failed_training_job_is_logged_once_with_its_attempt_and_traceback(
    tmp_path: Path,
    stub_training: list[Path],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A training job that raised (a bug, NaN paint) was logged three times: where its attempt was
    counted, by the poll's jobs ("the others go on", with the traceback) and by the poll (the traceback
    again). Now one error per attempt, with the adapter, the attempt and the traceback; the attempt
    that marks it failed for good says so once, and raises nothing for the poll to log again."""

    def diverged(*_: Any, **__: Any) -> None:
        raise RuntimeError("the loss is NaN")

    monkeypatch.setattr(lora_stage, "train_lora", diverged)
    trainer = cola_trainer(FileStore(tmp_path / "store"), FileStore(tmp_path / "registry"), tmp_path)

    for attempt in range(1, JOB_MAX_ATTEMPTS):
        [line] = one_poll_logged(trainer, caplog)
        assert line.levelno == logging.ERROR
        assert "training job failed" in line.getMessage()
        assert getattr(line, "adapter_id", None)
        reason = getattr(line, "reason", "")
        assert "RuntimeError: the loss is NaN" in reason
        assert f"attempt {attempt} of {JOB_MAX_ATTEMPTS}" in reason
        assert line.exc_info is not None and line.exc_info[0] is RuntimeError

    [line] = one_poll_logged(trainer, caplog)
    assert line.getMessage() == "training job cannot run"
    assert f"{JOB_MAX_ATTEMPTS} attempts failed" in getattr(line, "reason", "")
    assert trainer.metrics.jobs.labels("failed")._value.get() == 1
