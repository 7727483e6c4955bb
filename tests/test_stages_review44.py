"""Review 44 of the least recently touched stage files: withdrawals, the gate's settings, the generator's
protocol, the console's withdrawal sweep, the committed shape tree.

What a user would notice: a withdrawal run again (``running the same command again finishes it``) is
the same withdrawal, so the record of when it was made and by whom does not move.
"""

from __future__ import annotations

from pathlib import Path

from shared.store import FileStore
from shared.trainstore.manifest import ManifestStore
from shared.trainstore.withdrawals import Withdrawals

SKU = "SKU-001"


def test_a_withdrawal_run_again_keeps_its_record_of_when_and_by_whom(tmp_path: Path) -> None:
    # Before, every run rewrote the marker with the time of that run: a withdrawal stopped half-way
    # and finished by a second run recorded the second run's time, though it was one withdrawal.
    withdrawals = Withdrawals(ManifestStore(FileStore(tmp_path / "store"), "trainstore"))
    withdrawals.withdraw(SKU, "soda", ["p0"], by="skuforge ingest")
    first = withdrawals.withdrawn_at(SKU, "p0")
    marker = withdrawals.manifests.key(f"withdrawals/{SKU}/p0.json")
    record = withdrawals.manifests.store.get_bytes(marker)

    assert withdrawals.withdraw(SKU, "soda", ["p0", "p1"], by="someone else") == [
        row for row in withdrawals.manifests.read_sku(SKU).values() if row.item_id == "p1"
    ], "only the new photo's row is written"

    assert withdrawals.withdrawn_at(SKU, "p0") == first
    assert withdrawals.manifests.store.get_bytes(marker) == record
    assert withdrawals.photo_ids(SKU) == {"p0", "p1"}


def test_a_withdrawal_over_an_unreadable_marker_writes_it_again(tmp_path: Path) -> None:
    """A marker that records no time (cut short, hand-edited) is replaced, so the withdrawal says when."""
    withdrawals = Withdrawals(ManifestStore(FileStore(tmp_path / "store"), "trainstore"))
    marker = withdrawals.manifests.key(f"withdrawals/{SKU}/p0.json")
    withdrawals.manifests.store.put_bytes(marker, b"{")
    withdrawals.withdraw(SKU, "soda", ["p0"], by="skuforge ingest")
    assert withdrawals.withdrawn_at(SKU, "p0")
