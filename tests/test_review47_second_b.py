"""Second look at this session's console, trainstore and chart changes (review 47): what they broke."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest

from schemas.topics import CORRECTION_RESOLVED
from shared.trainstore.loader import load_manifest
from tests.support.gate import resolved
from tests.support.trainstore import (
    PREFIX,
    SKU,
    gate_accepted,
    produced_envelope,
    trainstore_stage,
    two_renders,
)


def test_a_loaded_manifest_pickles_and_its_rejection_times_dump_as_json(tmp_path: Path) -> None:
    """``rejected_at`` loaded as ``MappingProxyType``s: a Manifest no longer pickled (a training
    Dataset holding it, sent to DataLoader workers) nor deep-copied, and its column did not dump as JSON,
    even in a store with no rejection at all. The times stay read-only, and now travel."""
    store, manifests, trainstore, ctx = trainstore_stage(tmp_path, compact_after_parts=16)
    first, second = two_renders(store)
    trainstore.accepted(gate_accepted(first, "a", 0), ctx)
    trainstore.resolved(
        produced_envelope(CORRECTION_RESOLVED, resolved(store, second, "reject"), "c", 60), ctx
    )
    manifests.compact(SKU)
    loaded = load_manifest(store, prefix=PREFIX, trainable_only=False)
    times = loaded.column("rejected_at")
    assert json.loads(json.dumps(times)) == [{second.generated.image.sha256: "2026-11-22T09:00:00Z"}]
    with pytest.raises(TypeError):  # still read-only: one value may be shared down the column
        times[0][second.generated.image.sha256] = "changed"
    for travelled in (pickle.loads(pickle.dumps(loaded)), copy.deepcopy(loaded)):
        assert travelled.columns == loaded.columns
        assert list(travelled) == list(loaded)
