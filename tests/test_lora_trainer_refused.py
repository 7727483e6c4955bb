"""The LoRA trainer, an ``adapter.published`` its topic refuses for good (a record over the topic's
max.message.bytes): every try fails alike until the limit is raised, and the log says so and what to
raise, not only that the next poll publishes it; the tries come on a growing interval, not every poll.

Training is stubbed (``stub_training``); the publication goes to the real broker, through the real
``kafka_publisher``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from schemas.events import AdapterPublished
from services.lora_trainer.stage import LoraTrainer, PublicationFailed
from shared.store import FileStore
from tests.support.lora import (
    gate_accepted,
    model_folder,
    one_series,
    record_accepted_event,
    refused_publication,
    refusing_publisher,
    served,
    trainer_on,
)

pytestmark = pytest.mark.kafka


def test_a_publication_the_topic_refuses_for_good_names_the_limit_to_raise(
    tmp_path: Path, stub_training: list[Path], kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the trainer logged "the next poll publishes it" at every poll (every 5 s) for ever, and
    the operator read an outage that would pass, where only raising the topic's max.message.bytes ends
    it. An outage (the broker away) still reads as one that passes."""
    store, trainer, job, _, _ = refused_publication(tmp_path, kafka_bootstrap)

    with caplog.at_level(logging.WARNING, logger="skuforge.lora-trainer"):
        trainer.poll()
        trainer.poll()
    logged = [r for r in caplog.records if r.name == "skuforge.lora-trainer" and r.levelno >= logging.WARNING]
    assert logged  # one line per try; the second poll waits out the backoff, silent
    for entry in logged:
        message = entry.getMessage()
        assert "refused for good" in message and "max.message.bytes" in message, message
        assert "next poll publishes it" not in message, message
        assert getattr(entry, "adapter_id", None) == job.adapter_id
    assert served(store) == job.adapter_id and len(stub_training) == 1  # registered, trained once


def test_a_publication_the_topic_refuses_for_good_is_tried_again_on_a_growing_interval(
    tmp_path: Path, stub_training: list[Path], kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, every poll (every 5 s) sent the event again for as long as the topic refused it: each send
    opened a new producer (its connections, a metadata fetch) that the refusal stopped for good, and logged
    its closing. Now the n-th refusal in a row waits 2**(n-1) polls before the next try; the polls between
    keep the fault (``last_error``) and log no new refusal."""
    store, trainer, job, _, _ = refused_publication(tmp_path, kafka_bootstrap)
    send = trainer.publish
    sent_at: list[int] = []
    poll = 0

    def counted(event: AdapterPublished) -> None:
        sent_at.append(poll)
        send(event)

    trainer.publish = counted
    closed_at: list[int] = []
    with caplog.at_level(logging.ERROR, logger="shared.bus"):
        for poll in range(1, 12):
            caplog.clear()
            trainer.poll()
            assert isinstance(trainer.last_error, PublicationFailed), trainer.last_error
            closed_at += [poll for r in caplog.records if "stopped for good" in r.getMessage()]
    assert sent_at == [1, 3, 6, 11]
    assert closed_at == sent_at  # a producer opened (and closed) for each try, none for the polls between
    assert trainer.metrics.jobs.labels("retried")._value.get() == len(sent_at)
    assert served(store) == job.adapter_id and len(stub_training) == 1  # registered, trained once


def test_a_series_rolled_forward_while_its_roll_back_is_refused_is_served_its_adapter_again(
    tmp_path: Path, stub_training: list[Path], kafka_bootstrap: str
) -> None:
    """A roll-back registers its adapter again (the generator then serves it) before it sends its event.
    Refused for good, the series' pointer still named the later adapter: the set rolled forward to that
    adapter's found it current and did nothing, and the generator served the rolled-back one for good."""
    store, trainer_at = one_series(tmp_path)
    [first] = trainer_at(4).run_pending()
    [second] = trainer_at(8).run_pending()
    rolled_back = trainer_at(4)
    rolled_back.publish, _, _ = refusing_publisher(tmp_path, kafka_bootstrap)
    with pytest.raises(PublicationFailed, match="MessageSizeTooLarge"):
        rolled_back.run_pending()
    assert served(store) == first.adapter_id  # registered again, its event refused

    [again] = trainer_at(8).run_pending()  # rolled forward again, to a topic that takes the event

    assert again.adapter_id == second.adapter_id and again.publication == 2
    assert served(store) == second.adapter_id and len(stub_training) == 2  # not trained again
    assert trainer_at(8).run_pending() == []  # and current from then on


def test_a_general_adapter_rolled_forward_while_its_roll_back_is_refused_is_served_again(
    tmp_path: Path, stub_training: list[Path], kafka_bootstrap: str
) -> None:
    """The general adapter alike: its roll-back refused, new accepted images that planned the later
    adapter's set again found it current (and counted them covered), while the generator served the
    rolled-back adapter to every SKU without a series one."""
    store = FileStore(tmp_path / "store")
    model = model_folder(tmp_path, "m")

    def trainer(rank: int) -> LoraTrainer:  # a general job of the first and the last accepted image
        return trainer_on(
            store, model, lora_rank=rank, lora_class_images=0, lora_general_after_accepted=1,
            lora_general_max_images=2,
        )  # fmt: skip

    for variant in (0, 2, 4):
        record_accepted_event(store, gate_accepted(store, variant))
    [first] = trainer(4).run_pending()
    record_accepted_event(store, gate_accepted(store, 1))  # sorts between the first and the last
    [second] = trainer(8).run_pending()
    record_accepted_event(store, gate_accepted(store, 3))
    rolled_back = trainer(4)
    rolled_back.publish, _, _ = refusing_publisher(tmp_path, kafka_bootstrap)
    with pytest.raises(PublicationFailed, match="MessageSizeTooLarge"):
        rolled_back.run_pending()
    assert served(store, "any") == first.adapter_id  # registered again, its event refused

    [again] = trainer(8).run_pending()  # the same images planned under the later recipe again

    assert again.adapter_id == second.adapter_id and again.publication == 2
    assert served(store, "any") == second.adapter_id and len(stub_training) == 2  # not trained again
    assert trainer(8).plan() == []  # the images are covered: not planned again
