"""Review 44 of the least recently touched stage files: withdrawals, the gate's settings, the generator's
protocol, the console's withdrawal sweep, the committed shape tree.

What a user would notice: a withdrawal run again (``running the same command again finishes it``) is
the same withdrawal, so the record of when it was made and by whom does not move; a gate override
given twice in its JSON is refused at start-up, not half dropped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.gate.config import GateSettings
from shared.config import ConfigError, load_settings
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


@pytest.mark.parametrize(
    ("overrides", "repeated"),
    [
        ('{"pouch": {"iou_min": 0.8}, "pouch": {"drift_tolerance": 30}}', "'pouch'"),
        ('{"pouch": {"iou_min": 0.8, "iou_min": 0.95}}', "'iou_min'"),
    ],
)
def test_a_category_or_threshold_given_twice_is_refused_at_start_up(
    overrides: str, repeated: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, JSON kept the last of two equal keys without a word: the pouch's iou_min override of the
    # first entry was dropped, while " Pouch" beside "pouch" was refused as the same category.
    monkeypatch.setenv("SKUFORGE_GATE_CATEGORY_OVERRIDES", overrides)
    with pytest.raises(ConfigError, match=rf"SKUFORGE_GATE_CATEGORY_OVERRIDES: .*{repeated} given 2 times"):
        load_settings(GateSettings)


def test_overrides_given_once_each_still_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SKUFORGE_GATE_CATEGORY_OVERRIDES", '{"pouch": {"iou_min": 0.8}, "can": {"iou_min": 0.95}}'
    )
    gate = load_settings(GateSettings)
    assert gate.thresholds_for("Pouch").iou_min == 0.8 and gate.thresholds_for("can").iou_min == 0.95
    given = load_settings(GateSettings, gate_category_overrides={"pouch": {"iou_min": 0.7}})
    assert given.thresholds_for("pouch").iou_min == 0.7
