"""Second-opinion review #2 of review 46's later changes: what they left half done, held by tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest

from schemas.events import CorrectionPending
from services.console.tasks import TaskFilter
from services.console.withdrawn import WithdrawalSweep
from shared.errors import TransientError
from shared.trainstore.manifest import ManifestStore
from shared.trainstore.withdrawals import Withdrawals
from tests.support.console import ConsoleParts, build_console, flag_made_from


def _state(parts: ConsoleParts, pending: CorrectionPending) -> str:
    (task,) = [
        task
        for task in parts.tasks.query(TaskFilter(state=None))
        if task.item_id == pending.matted.generated.item_id
    ]
    return task.state


def test_a_put_back_record_the_store_cannot_read_now_loses_no_count_of_the_tasks_closed_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep closes the tasks of photos withdrawn now, then reads the ``.lifted`` record of each
    photo put back (7de50fa2). That read, failing (the store away a moment), raised out of the sweep
    after the first tasks were closed: they were never counted in
    skuforge_console_tasks_withdrawn_total nor logged. Now they are, and the put-back photo is
    looked at again at the next sweep."""
    parts = build_console(tmp_path, lease_s=60.0)
    withdrawals = Withdrawals(ManifestStore(parts.store, "trainstore"))
    put_back = flag_made_from(parts, 0, "p1")
    withdrawn_now = flag_made_from(parts, 1, "p2")
    withdrawals.withdraw("SKU-A", "soda can", ["p1"], by="owner")
    withdrawals.reinstate("SKU-A", ["p1"])
    withdrawals.withdraw("SKU-A", "soda can", ["p2"], by="owner")
    sweep = WithdrawalSweep(parts.tasks, withdrawals, parts.console.metrics)

    get_bytes = parts.store.get_bytes

    def store_away_for_records(key: str) -> bytes:
        if key.endswith(".lifted"):
            raise TransientError(f"store unavailable reading {key}")
        return get_bytes(key)

    monkeypatch.setattr(parts.store, "get_bytes", store_away_for_records)
    assert len(sweep.sweep()) == 1
    assert (_state(parts, withdrawn_now), _state(parts, put_back)) == ("withdrawn", "pending")
    metrics = generate_latest(parts.console.metrics.registry).decode()
    assert "skuforge_console_tasks_withdrawn_total 1.0" in metrics

    monkeypatch.setattr(parts.store, "get_bytes", get_bytes)  # the store back
    assert len(sweep.sweep()) == 1
    assert _state(parts, put_back) == "withdrawn"
    metrics = generate_latest(parts.console.metrics.registry).decode()
    assert "skuforge_console_tasks_withdrawn_total 2.0" in metrics
