"""A withdrawal marker deleted by a concurrent ingest while it was read: one read, its absence an answer.

``Withdrawals._recorded_time`` asked the store whether the record existed, then read it: an ingest that
reinstated the photo in between (deleting its marker) made the read raise ``ObjectMissing``, so
``skuforge ingest --withdraw-missing`` or the console's sweep failed on a record that was simply gone.
"""

from __future__ import annotations

import json

from shared.store import ObjectStore, S3Store
from shared.trainstore.manifest import ManifestStore
from shared.trainstore.withdrawals import Withdrawals

PREFIX = "trainstore"
SKU = "SKU-001"


class DeletedOnceLookedUp(S3Store):
    """An S3 store where another writer deletes an object the moment this one has looked it up."""

    def _exists(self, key: str) -> bool:
        found = super()._exists(key)
        if found:
            self._delete(key)
        return found


def test_a_marker_deleted_between_look_up_and_read_is_read_or_missing_never_an_error(
    s3_store: ObjectStore,
    s3_endpoint: str,
) -> None:
    assert isinstance(s3_store, S3Store)
    store = DeletedOnceLookedUp(s3_store.bucket, "pfx", endpoint_url=s3_endpoint, uri_from="the test")
    withdrawals = Withdrawals(ManifestStore(store, PREFIX))
    marker = f"{PREFIX}/withdrawals/{SKU}/photo-1.json"
    record = {"photo_id": "photo-1", "withdrawn_at": "2026-12-01T10:00:00+00:00", "by": "test"}
    store.put_bytes(marker, json.dumps(record).encode(), "application/json")

    assert withdrawals.withdrawn_at(SKU, "photo-1") == "2026-12-01T10:00:00+00:00"


def test_a_missing_marker_reads_as_no_withdrawal(s3_store: ObjectStore) -> None:
    withdrawals = Withdrawals(ManifestStore(s3_store, PREFIX))
    assert withdrawals.withdrawn_at(SKU, "photo-2") == ""
    assert withdrawals.lifted_at(SKU, "photo-2") == ""


def test_a_reinstatement_whose_marker_another_deletes_meanwhile_keeps_what_it_read(
    s3_store: ObjectStore,
    s3_endpoint: str,
) -> None:
    """``reinstate`` asked whether the marker existed, then read it to keep as the lifted record: an
    ingest reinstating the same photo at once deleted it in between, and the read raised ObjectMissing."""
    assert isinstance(s3_store, S3Store)
    store = DeletedOnceLookedUp(s3_store.bucket, "pfx", endpoint_url=s3_endpoint, uri_from="the test")
    withdrawals = Withdrawals(ManifestStore(store, PREFIX))
    marker = f"{PREFIX}/withdrawals/{SKU}/photo-1.json"
    record = {"photo_id": "photo-1", "withdrawn_at": "2026-12-01T10:00:00+00:00", "by": "test"}
    store.put_bytes(marker, json.dumps(record).encode(), "application/json")

    withdrawals.reinstate(SKU, ["photo-1"])

    assert withdrawals.photo_ids(SKU) == set()
    assert withdrawals.lifted_at(SKU, "photo-1") == "2026-12-01T10:00:00+00:00"
