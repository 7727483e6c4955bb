"""What ``skuforge_trainstore_images_stored_total`` and ``skuforge_trainstore_items_withdrawn_total``
leave out, as docs/ops.md says: the images (the withdrawn rows) of a manifest write that raised but
landed, when the stage restarts before the event's retry.

Such a write's rows are counted by the retry, which finds them written (``_count_landed``), from what
this process remembers of the write; a restarted stage (or the member a rebalance hands the partition
to) has no such memory, so the retry counts nothing. The metrics' help (and docs/ops.md's table, made
from it) did not say so.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from schemas.events import GateAccepted
from schemas.topics import GATE_ACCEPTED, SKU_CAPTIONED
from services.trainstore.stage import Trainstore
from shared.bus import make_envelope
from shared.errors import TransientError
from shared.trainstore.withdrawals import Withdrawals
from tests.support.docs import ROOT
from tests.support.gate import captioned, matted_item
from tests.support.trainstore import TimesOutOnce, trainstore_stage


def test_a_restart_before_the_retry_of_a_landed_write_leaves_its_images_uncounted_as_documented(
    tmp_path: Path,
) -> None:
    store = TimesOutOnce(tmp_path / "store")
    _, manifests, _, ctx = trainstore_stage(tmp_path, compact_after_parts=16, store=store)
    item = matted_item(store, 1, 0)
    envelope = make_envelope(
        GATE_ACCEPTED,
        GateAccepted(matted=item, iou=1.0, checks=[]),
        event_id="a" * 32,
        sku_id="SKU-001",
        trace_id="t" * 32,
        producer="gate",
    )
    store.armed = True
    with pytest.raises(TransientError):
        Trainstore(manifests, compact_after_parts=16).accepted(envelope, ctx)  # written, the answer lost
    registry = CollectorRegistry()
    Trainstore(manifests, compact_after_parts=16, registry=registry).accepted(envelope, ctx)  # restarted
    assert manifests.read_sku("SKU-001")[item.generated.item_id].status == "accepted"
    stored = registry.get_sample_value("skuforge_trainstore_images_stored_total", {"source": "synthetic"})
    assert stored == 0.0
    assert "restart" in _ops_row("skuforge_trainstore_images_stored_total")


def test_a_restart_before_the_retry_of_a_landed_withdrawal_leaves_its_rows_uncounted_as_documented(
    tmp_path: Path,
) -> None:
    store = TimesOutOnce(tmp_path / "store")
    _, manifests, _, ctx = trainstore_stage(tmp_path, compact_after_parts=16, store=store)
    event = captioned(store, 1, photos=2)
    Withdrawals(manifests).withdraw("SKU-001", event.sku.category, ["p0"], by="test")
    envelope = make_envelope(
        SKU_CAPTIONED, event, event_id="a" * 32, sku_id="SKU-001", trace_id="t" * 32, producer="test"
    )
    store.armed = True
    with pytest.raises(TransientError):
        Trainstore(manifests, compact_after_parts=16).captioned(envelope, ctx)  # written, the answer lost
    registry = CollectorRegistry()
    Trainstore(manifests, compact_after_parts=16, registry=registry).captioned(envelope, ctx)  # restarted
    assert manifests.read_sku("SKU-001")["p0"].status == "withdrawn"
    withdrawn = registry.get_sample_value("skuforge_trainstore_items_withdrawn_total", {"source": "real"})
    assert withdrawn == 0.0
    assert "restart" in _ops_row("skuforge_trainstore_items_withdrawn_total")


def _ops_row(metric: str) -> str:
    """docs/ops.md's table row of ``metric``."""
    (row,) = (
        line
        for line in (ROOT / "docs" / "ops.md").read_text(encoding="utf-8").splitlines()
        if line.startswith(f"| `{metric}`")
    )
    return row
