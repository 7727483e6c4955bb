"""The LoRA trainer, review 49b: a job lease per series (``services/lora_trainer/lease.py``). Two trainers
on one store trained every job twice, each writing over the other's checkpoints; now the second skips a
job the first holds, takes over a lease left unchanged for ``LEASE_STALE_S`` (on its own clock), and a
holder whose lease was taken over writes nothing more of the job.

Two real trainers (training stubbed: ``stub_training``) on a file store and on S3 (moto's server). Time
never decides an outcome: staleness is a clock the test moves, and heartbeats are set far apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.events import AdapterPublished
from services.lora_trainer import lease as lease_module
from services.lora_trainer import stage as lora_stage
from services.lora_trainer.lease import LEASES, JobLeases
from services.lora_trainer.stage import PREFIX, LoraTrainer
from shared.lora_training.train import TrainingResult
from shared.store import FileStore, ObjectStore
from tests.support.captioning import captioned_sku
from tests.support.lora import lora_weights, model_folder, record, trainer_on
from tests.support.s3 import file_or_s3_store


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def no_heartbeat_during_a_test(monkeypatch: pytest.MonkeyPatch) -> None:
    # A beat between two looks at a lease is a trainer alive: the test decides when one is stale.
    monkeypatch.setattr(lease_module, "LEASE_BEAT_S", 3600.0)


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return file_or_s3_store(request, tmp_path / "store")


def _trainers(store: ObjectStore, tmp_path: Path) -> tuple[LoraTrainer, LoraTrainer, Clock]:
    """Two trainers of the series "cola" on one store, publishing into their own lists (``sent``), the
    second on a clock the test moves."""
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    model = model_folder(tmp_path, "m")
    first = trainer_on(store, model, lora_class_images=0)  # type: ignore[arg-type]
    second = trainer_on(store, model, lora_class_images=0)  # type: ignore[arg-type]
    clock = Clock()
    second.leases.clock = clock
    for trainer in (first, second):
        sent: list[AdapterPublished] = []
        trainer.publish = sent.append
        trainer.sent = sent  # type: ignore[attr-defined]
    return first, second, clock


def _sent(trainer: LoraTrainer) -> list[AdapterPublished]:
    sent: list[AdapterPublished] = trainer.sent  # type: ignore[attr-defined]
    return sent


def _retried(trainer: LoraTrainer) -> float:
    value: float = trainer.metrics.jobs.labels("retried")._value.get()
    return value


def _leases(store: ObjectStore) -> list[str]:
    return sorted(store.list_keys(LEASES))


@pytest.fixture
def training(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Training stubbed; ``during[0]``, when set, runs inside the first training (while its trainer holds
    the lease). Yields ``[during, trained]``: trained counts the trainings."""
    during: list[Any] = []
    trained: list[Path] = []

    def train_lora(model_dir: Path, *_: Any, **__: Any) -> TrainingResult:
        trained.append(model_dir)
        if during and len(trained) == 1:
            during[0]()
        return TrainingResult(
            weights=lora_weights(), steps=1, final_loss=0.1, resumed_from_step=0, stopped_early=False
        )

    monkeypatch.setattr(lora_stage, "train_lora", train_lora)
    yield [during, trained]


def test_a_second_trainer_skips_a_job_the_first_holds(
    store: ObjectStore, tmp_path: Path, training: list[Any]
) -> None:
    """Before, the second trainer planned and trained the job too (each adapter trained twice)."""
    during, trained = training
    first, second, _ = _trainers(store, tmp_path)
    during.append(second.poll)  # the second polls while the first trains

    first.poll()

    assert len(trained) == 1
    assert len(_sent(first)) == 1 and _sent(second) == []
    assert _retried(second) == 0 and second.last_error is None  # a skip is no failure
    assert _leases(store) == []  # released once published
    second.poll()  # the lease released: the job is published, nothing to do
    assert len(trained) == 1 and _sent(second) == []


def test_a_lease_left_by_a_crash_is_taken_over_once_unchanged_for_stale_s(
    store: ObjectStore, tmp_path: Path, training: list[Any]
) -> None:
    """A trainer killed mid-job leaves its lease: the next (the same trainer restarted, or another)
    skips the job until the lease has stood unchanged for LEASE_STALE_S on its clock, then trains it."""
    _, trained = training
    _, restarted, clock = _trainers(store, tmp_path)
    name = restarted._current_key(restarted.plan()[0]).rsplit("/", 1)[1]
    left = {"run": "0" * 32, "host": "gone", "pid": 1, "started_at": "2026-01-01T00:00:00+00:00"}
    assert store.put_new(f"{LEASES}/{name}", json.dumps(left).encode())

    restarted.poll()
    clock.now += lease_module.LEASE_STALE_S - 1
    restarted.poll()
    assert trained == [] and _sent(restarted) == [] and _retried(restarted) == 0

    clock.now += 1
    restarted.poll()

    assert len(trained) == 1 and len(_sent(restarted)) == 1
    assert restarted.last_error is None and _leases(store) == []


def test_a_lease_beaten_meanwhile_is_not_taken_over(
    store: ObjectStore, tmp_path: Path, training: list[Any]
) -> None:
    """Stale is unchanged for LEASE_STALE_S: a lease its holder rewrote since it was first seen is alive."""
    _, trained = training
    _, second, clock = _trainers(store, tmp_path)
    key = f"{LEASES}/{second._current_key(second.plan()[0]).rsplit('/', 1)[1]}"
    assert store.put_new(key, b'{"beats": 0}')

    second.poll()
    clock.now += lease_module.LEASE_STALE_S
    store.put_bytes(key, b'{"beats": 1}')  # its holder's heartbeat
    second.poll()

    assert trained == [] and _sent(second) == []


def test_a_trainer_that_lost_its_lease_writes_no_result_and_no_pointer(
    store: ObjectStore, tmp_path: Path, training: list[Any]
) -> None:
    """A trainer paused past LEASE_STALE_S mid-training (its lease taken over meanwhile) went on to write
    the job's weights, result, registration, event and pointer over the other's."""
    during, trained = training
    first, _, clock = _trainers(store, tmp_path)
    job = first.plan()[0]
    name = first._current_key(job).rsplit("/", 1)[1]
    other = JobLeases(store, clock=clock)

    def taken_over() -> None:
        assert other.take(name) is None  # seen
        clock.now += lease_module.LEASE_STALE_S
        assert other.take(name) is not None  # taken over (left held: the other trainer runs the job)

    during.append(taken_over)
    first.poll()

    assert len(trained) == 1 and _sent(first) == []
    job_prefix = f"{PREFIX}/jobs/{job.sha256}"
    assert not store.exists(f"{job_prefix}/result.json")
    assert not store.exists(first._current_key(job))
    assert not store.exists(f"{PREFIX}/published/{job.adapter_id}.json")
    assert not store.exists(f"{job_prefix}/attempts.json")  # not counted as a failed attempt
    assert first.last_error is None and _retried(first) == 0
    assert _leases(store) == [f"{LEASES}/{name}"]  # the other's, not released by the one that lost it


def test_a_lease_lost_after_the_send_writes_no_pointer(
    store: ObjectStore, tmp_path: Path, training: list[Any]
) -> None:
    """Taken over while the event was sent: the pointer and the marker are the new holder's to write."""
    first, _, clock = _trainers(store, tmp_path)
    job = first.plan()[0]
    name = first._current_key(job).rsplit("/", 1)[1]
    other = JobLeases(store, clock=clock)
    sent: list[AdapterPublished] = []

    def send_then_lose(event: AdapterPublished) -> None:
        sent.append(event)
        assert other.take(name) is None
        clock.now += lease_module.LEASE_STALE_S
        assert other.take(name) is not None

    first.publish = send_then_lose
    first.poll()

    assert len(sent) == 1
    assert not store.exists(first._current_key(job))
    assert not store.exists(f"{PREFIX}/published/{job.adapter_id}.json")
    assert first.last_error is None and _retried(first) == 0


def test_a_released_lease_lets_the_other_trainer_train(tmp_path: Path, training: list[Any]) -> None:
    """A job interrupted (SIGTERM) releases its lease: the other trainer takes the job at its next poll,
    without waiting LEASE_STALE_S."""
    during, trained = training
    first, second, _ = _trainers(FileStore(tmp_path / "store"), tmp_path)

    def interrupted() -> None:
        raise lora_stage.TrainingInterrupted("stopped at step 1; the checkpoint holds it")

    during.append(interrupted)
    with pytest.raises(lora_stage.TrainingInterrupted):
        first.run_pending()
    assert _leases(first.store) == []

    second.poll()

    assert len(trained) == 2 and len(_sent(second)) == 1
