"""The LoRA trainer, review 46b: a failed publication's try is logged once, not twice; an accepted/
request file left out is looked at again while the general publication backs off; the runbook says how
unreadable request files are logged.

Training is stubbed (``stub_training``); the publish callable stands in for a broker that is away.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from schemas.events import AdapterPublished
from services.lora_trainer.stage import PREFIX, PublicationFailed
from shared.errors import TransientError
from tests.support.captioning import captioned_sku
from tests.support.lora import (
    CountingStore,
    gate_accepted,
    model_folder,
    record,
    record_accepted_event,
    trainer_on,
)


def test_a_failed_publication_try_is_logged_once(
    tmp_path: Path, stub_training: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Each try of an adapter's publication that the broker did not take was logged twice: a warning
    from the poll's jobs ("... the others go on") and an error from the poll itself, the same fault, the
    same adapter. The operator counted two failures per try. Now one line, an error, says it."""
    store = CountingStore(tmp_path / "store")
    record(store, captioned_sku(store, 1, usable_photos=1, series="cola"))
    trainer = trainer_on(store, model_folder(tmp_path, "m"), lora_class_images=0)

    def away(event: AdapterPublished) -> None:
        raise TransientError("the broker is away")

    trainer.publish = away
    with caplog.at_level(logging.WARNING, logger="skuforge.lora-trainer"):
        trainer.poll()

    logged = [r for r in caplog.records if r.name == "skuforge.lora-trainer" and r.levelno >= logging.WARNING]
    [line] = logged
    assert line.levelno == logging.ERROR
    assert "not sent" in line.getMessage() and "the broker did not take it" in line.getMessage()
    assert getattr(line, "adapter_id", None) == trainer.last_error.adapter_id  # type: ignore[union-attr]
    assert trainer.metrics.jobs.labels("retried")._value.get() == 1


def test_an_accepted_file_left_out_is_looked_at_again_while_the_general_publication_backs_off(
    tmp_path: Path, stub_training: list[Path]
) -> None:
    """docs/diffusion.md says an ``accepted/`` file left out is looked at again at each poll. While the
    general adapter's publication waited out its backoff (up to about 5 minutes) its plan was skipped, and
    ``skuforge_lora_requests_unreadable{kind="accepted"}`` stayed up after the operator deleted the file.
    Now each poll reads the remembered files alone, and the gauge falls at the next poll."""
    store = CountingStore(tmp_path / "store")
    for variant in (0, 1):
        record_accepted_event(store, gate_accepted(store, variant))
    broken = f"{PREFIX}/accepted/hand-edited.json"
    store.put_bytes(broken, b"not json")
    trainer = trainer_on(
        store, model_folder(tmp_path, "m"), lora_class_images=0, lora_general_after_accepted=1
    )

    def away(event: AdapterPublished) -> None:
        raise TransientError("the broker is away")

    trainer.publish = away
    unreadable = trainer.metrics.unreadable.labels("accepted")
    trainer.poll()
    assert isinstance(trainer.last_error, PublicationFailed) and trainer.last_error.tried
    assert unreadable._value.get() == 1

    store.delete(broken)  # what the log says to do
    trainer.poll()  # waits out the backoff: the general job is not planned
    assert isinstance(trainer.last_error, PublicationFailed) and not trainer.last_error.tried
    assert unreadable._value.get() == 0
    assert not [key for key in store.listed if key.startswith(f"{PREFIX}/accepted")][1:]  # listed once


def test_the_runbook_says_how_each_unreadable_request_file_is_logged() -> None:
    """The runbook said "each poll logs an error naming the file" for every kind; a ``captioned`` or
    ``accepted`` request file is logged as a warning, "request file skipped", and an ``accepted`` one
    only when the general job is planned. The operator searching the errors found nothing."""
    runbook = Path("docs/ops.md").read_text()
    section = runbook.split("### SkuforgeLoraRequestsUnreadable", 1)[1].split("###", 1)[0]
    flat = " ".join(section.split())
    assert "each poll logs an error naming the file" not in flat
    assert '"request file skipped"' in flat and "warning" in flat
    assert "when the general job is planned" in flat
