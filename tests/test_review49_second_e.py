"""Review 49, second opinion (e): the LoRA trainer's job lease (``services/lora_trainer/lease.py``).

A lease renewal whose write landed but whose answer did not (S3's own retry of a conditional PUT then
meets its first attempt's write: 412, so ``replace_if`` answers False; or the answer is lost: a
``TransientError``) is still this trainer's lease: taken for lost, the trainer dropped a job it held,
left the lease behind unreleased and unbeaten, and nobody trained the series until it went stale.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from services.lora_trainer import lease as lease_module
from services.lora_trainer.lease import LEASES, JobLeases
from shared.errors import ObjectMissing, TransientError
from shared.store import FileStore


@pytest.fixture(autouse=True)
def no_heartbeat_during_a_test(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test beats the lease itself (``_beat``), so no thread's beat decides an outcome.
    monkeypatch.setattr(lease_module, "LEASE_BEAT_S", 3600.0)


class WriteLandsAnswerLost(FileStore):
    """A file store whose next ``replace_if`` writes, then answers as ``answer`` says: False (a retried
    conditional write meeting its own first attempt) or a ``TransientError`` (the answer lost)."""

    answer: str = ""

    def _replace_if(self, key: str, data: bytes, version: str, content_type: str) -> bool:
        written = super()._replace_if(key, data, version, content_type)
        answer, self.answer = self.answer, ""
        if answer == "false":
            return False
        if answer == "transient":
            raise TransientError("the object store did not answer")
        return written


@pytest.mark.parametrize("answer", ["false", "transient"])
def test_a_renewal_written_but_not_answered_keeps_the_lease(tmp_path: Path, answer: str) -> None:
    store = WriteLandsAnswerLost(tmp_path / "store")
    lease = JobLeases(store).take("general.json")
    assert lease is not None
    try:
        store.answer = answer
        with contextlib.suppress(TransientError):  # the heartbeat thread logs it and beats again
            lease._beat()
        lease.check()  # LeaseLost before: the trainer dropped the job it still held
        lease._beat()  # the next beat renews it again
        lease.check()
    finally:
        lease.release()
    # Released: the next trainer takes it at once (before: left behind, taken only once stale).
    with pytest.raises(ObjectMissing):
        store.get_bytes(f"{LEASES}/general.json")


class TakeLandsAnswerLost(FileStore):
    """A file store whose next ``put_new`` or ``replace_if`` writes, then answers False: a retried
    conditional write meeting its own first attempt (S3's 412)."""

    refuse_after_writing = ""  # "put_new" or "replace_if": the next one that writes answers False

    def _write_new(self, key: str, data: bytes, content_type: str) -> bool:
        written = super()._write_new(key, data, content_type)
        if written and self.refuse_after_writing == "put_new":
            self.refuse_after_writing = ""
            return False
        return written

    def _replace_if(self, key: str, data: bytes, version: str, content_type: str) -> bool:
        written = super()._replace_if(key, data, version, content_type)
        if written and self.refuse_after_writing == "replace_if":
            self.refuse_after_writing = ""
            return False
        return written


def test_a_lease_taken_but_not_answered_is_held(tmp_path: Path) -> None:
    store = TakeLandsAnswerLost(tmp_path / "store")
    store.refuse_after_writing = "put_new"
    lease = JobLeases(store).take("general.json")
    # None before: the trainer took its own lease for another's, skipped the job and waited until the
    # lease it had written went stale (60 s) to take it over.
    assert lease is not None
    lease.check()
    lease.release()
    assert not store.refuse_after_writing  # the write that landed unanswered was made
    with pytest.raises(ObjectMissing):
        store.get_bytes(f"{LEASES}/general.json")


def test_a_takeover_written_but_not_answered_is_held(tmp_path: Path) -> None:
    store = TakeLandsAnswerLost(tmp_path / "store")
    store.put_new(f"{LEASES}/general.json", b'{"run": "a trainer that died"}')
    clock = [1000.0]
    leases = JobLeases(store, clock=lambda: clock[0])
    assert leases.take("general.json") is None  # another's: seen
    clock[0] += lease_module.LEASE_STALE_S
    store.refuse_after_writing = "replace_if"
    lease = leases.take("general.json")
    assert lease is not None  # None before: its own takeover then looked like another's new lease
    lease.check()
    lease.release()
    assert not store.refuse_after_writing  # the write that landed unanswered was made


class TakeLandsThenFails(FileStore):
    """A file store whose next ``put_new`` writes, then raises a ``TransientError`` (its answer lost)."""

    fail_after_writing = False

    def _write_new(self, key: str, data: bytes, content_type: str) -> bool:
        written = super()._write_new(key, data, content_type)
        if written and self.fail_after_writing:
            self.fail_after_writing = False
            raise TransientError("the object store did not answer")
        return written


def test_a_lease_written_when_the_store_did_not_answer_is_taken_at_the_next_poll(tmp_path: Path) -> None:
    store = TakeLandsThenFails(tmp_path / "store")
    store.fail_after_writing = True
    leases = JobLeases(store, clock=lambda: 1000.0)  # a clock that never moves: no lease goes stale
    with pytest.raises(TransientError):
        leases.take("general.json")  # the poll is retried
    # None before: its own lease, written unanswered, was another's, skipped until stale (60 s).
    lease = leases.take("general.json")
    assert lease is not None
    lease.check()
    lease.release()
    with pytest.raises(ObjectMissing):
        store.get_bytes(f"{LEASES}/general.json")
