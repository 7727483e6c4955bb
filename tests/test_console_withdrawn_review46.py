"""Found in review 46: the console's withdrawal sweep and a photo withdrawn and put back between sweeps.

The sweep read only the withdrawal markers there were at the time. An owner who withdrew a photo and
put it back between two sweeps (30 s), or while the console was down, left the console's tasks of the
images made from it before waiting; the trainstore keeps those images withdrawn for good
(``services/trainstore/stage.py`` ``_stays_withdrawn``), so a reviewer's decision on them was lost.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest

from schemas.events import CorrectionPending
from services.console.tasks import TaskFilter
from services.console.withdrawn import WithdrawalSweep
from shared.trainstore.manifest import ManifestStore
from shared.trainstore.withdrawals import Withdrawals
from tests.support.console import ConsoleParts, build_console, flag_made_from, record_listings


@pytest.fixture
def parts(tmp_path: Path) -> ConsoleParts:
    return build_console(tmp_path, lease_s=60.0)


def manifests_of(parts: ConsoleParts) -> ManifestStore:
    return ManifestStore(parts.store, "trainstore")


def state_of(parts: ConsoleParts, pending: CorrectionPending) -> str:
    everything = parts.tasks.query(TaskFilter(state=None))
    (task,) = [task for task in everything if task.item_id == pending.matted.generated.item_id]
    return task.state


def test_a_task_of_a_photo_withdrawn_and_put_back_between_sweeps_is_closed_as_withdrawn(
    parts: ConsoleParts,
) -> None:
    withdrawals = Withdrawals(manifests_of(parts))
    made_before = flag_made_from(parts, 0)
    other_photo = flag_made_from(parts, 1, photo_id="p2")
    sweep = WithdrawalSweep(parts.tasks, withdrawals, parts.console.metrics)
    assert sweep.sweep() == []

    # The owner withdraws the photo and puts it back between two sweeps (or while the console is down).
    withdrawals.withdraw("SKU-A", "soda can", ["p1"], by="owner")
    withdrawals.reinstate("SKU-A", ["p1"])
    assert withdrawals.by_sku() == {}
    # The trainstore keeps the image withdrawn for good, whatever a reviewer decides ...
    assert manifests_of(parts).read_sku("SKU-A")["item-0000"].status == "withdrawn"

    # ... so the sweep closes its task as it closes those of a photo withdrawn now.
    closed = sweep.sweep()

    assert len(closed) == 1
    assert state_of(parts, made_before) == "withdrawn"
    assert state_of(parts, other_photo) == "pending"  # of another photo
    audit = parts.tasks.audit(closed[0])[-1]
    assert (audit.action, audit.previous_state, audit.new_state) == ("withdrawn", "pending", "withdrawn")
    assert "p1 withdrawn by its owner" in audit.detail and "put back since" in audit.detail
    assert parts.tasks.unpublished() == []  # no decision event: the trainstore withdrew the item itself
    assert (
        "skuforge_console_tasks_withdrawn_total 1.0"
        in generate_latest(parts.console.metrics.registry).decode()
    )
    assert sweep.sweep() == []


def test_a_console_started_after_the_photo_was_put_back_closes_the_task_at_its_first_sweep(
    parts: ConsoleParts,
) -> None:
    withdrawals = Withdrawals(manifests_of(parts))
    pending = flag_made_from(parts, 0)
    withdrawals.withdraw("SKU-A", "soda can", ["p1"], by="owner")
    withdrawals.reinstate("SKU-A", ["p1"])

    # A console down while it happened: a new sweep, nothing remembered.
    assert len(WithdrawalSweep(parts.tasks, withdrawals).sweep()) == 1
    assert state_of(parts, pending) == "withdrawn"


def test_a_task_of_an_image_the_store_takes_after_the_photo_was_put_back_stays_and_is_read_once(
    parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    withdrawals = Withdrawals(manifests_of(parts))
    withdrawals.withdraw("SKU-A", "soda can", ["p1"], by="owner")
    withdrawals.reinstate("SKU-A", ["p1"])
    # Made after the photo was put back (its row pending), and one whose row the trainstore has not
    # written yet (it will store it: there is no withdrawal now).
    made_after = flag_made_from(parts, 0)
    not_stored_yet = flag_made_from(parts, 1, stored=False)
    sweep = WithdrawalSweep(parts.tasks, withdrawals)

    assert sweep.sweep() == []
    assert (state_of(parts, made_after), state_of(parts, not_stored_yet)) == ("pending", "pending")

    listed = record_listings(parts, monkeypatch)
    assert sweep.sweep() == []
    # Remembered: the next sweeps list the withdrawal records alone, not the SKU's manifests again.
    assert listed == ["trainstore/withdrawals/"]


def test_a_photo_withdrawn_and_put_back_again_after_a_sweep_kept_its_task_is_looked_at_again(
    parts: ConsoleParts,
) -> None:
    withdrawals = Withdrawals(manifests_of(parts))
    withdrawals.withdraw("SKU-A", "soda can", ["p1"], by="owner")
    withdrawals.reinstate("SKU-A", ["p1"])
    pending = flag_made_from(parts, 0)  # made after: stays
    sweep = WithdrawalSweep(parts.tasks, withdrawals)
    assert sweep.sweep() == []

    # A second withdrawal of the photo, lifted again before the next sweep, takes this image too.
    withdrawals.withdraw("SKU-A", "soda can", ["p1"], by="owner")
    withdrawals.reinstate("SKU-A", ["p1"])

    assert len(sweep.sweep()) == 1
    assert state_of(parts, pending) == "withdrawn"
