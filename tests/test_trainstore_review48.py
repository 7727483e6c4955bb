"""Trainstore, review 48: a row an older version wrote again without ``rejected_at``.

During a rolling upgrade an older pod may write an item's row again (its own acceptance of the item,
remembering the renders reviewers rejected, ``rejected_renders``) without the times this version
records (``rejected_at``): the older one does not know that field on a row it builds. This version
reads such a row, writes it again, and decides by it as by its own.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from schemas.topics import CORRECTION_RESOLVED
from shared.trainstore.loader import load_manifest
from tests.support.gate import resolved
from tests.support.trainstore import (
    PREFIX,
    SKU,
    T0,
    accepted_then_rejected,
    gate_accepted,
    produced_envelope,
)


def test_a_row_an_older_version_wrote_again_without_rejection_times_reads_and_is_written_again(
    tmp_path: Path,
) -> None:
    store, manifests, trainstore, ctx, first, second, rejection = accepted_then_rejected(tmp_path, "b")
    item_id = first.generated.item_id
    ours = manifests.read_sku(SKU)[item_id]
    assert ours.rejected_at == {second.generated.image.sha256: T0 + timedelta(minutes=60)}

    # An older pod takes the first render's acceptance again (a restarted gate, dated later) and
    # writes the row it builds: the rejected render remembered, its time not.
    older = ours.model_copy(update={"rejected_at": {}, "produced_at": T0 + timedelta(minutes=70)})
    manifests.append(SKU, [older])
    assert b"rejected_at" not in store.get_bytes(manifests.parts(SKU)[1][-1][1])
    row = manifests.read_sku(SKU)[item_id]
    assert (row.rejected_renders, row.rejected_at) == ([second.generated.image.sha256], {})

    # The gate's acceptance of the rejected render, replayed, still never replaces the row.
    trainstore.accepted(gate_accepted(second, "c", 90), ctx)
    row = manifests.read_sku(SKU)[item_id]
    assert (row.status, row.image_sha256) == ("accepted", first.generated.image.sha256)
    assert row.rejected_renders == [second.generated.image.sha256]

    # The rejection delivered again gives the row its time back; a compaction keeps it.
    trainstore.resolved(rejection, ctx)
    manifests.compact(SKU)
    row = manifests.read_sku(SKU)[item_id]
    assert row.rejected_at == {second.generated.image.sha256: T0 + timedelta(minutes=60)}
    (loaded_at,) = load_manifest(store, prefix=PREFIX, trainable_only=False).column("rejected_at")
    assert loaded_at == {second.generated.image.sha256: "2026-11-22T09:00:00Z"}

    # A reviewer's approval of the rejected render, later, is stored as this version stores it.
    approval = produced_envelope(CORRECTION_RESOLVED, resolved(store, second, "approve_expected"), "d", 120)
    trainstore.resolved(approval, ctx)
    row = manifests.read_sku(SKU)[item_id]
    assert (row.status, row.image_sha256) == ("approved", second.generated.image.sha256)
    assert (row.rejected_renders, row.rejected_at) == ([], {})
