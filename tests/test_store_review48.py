"""An object key refuses what an event's object URI refuses.

Since review 48 an event's object URIs refuse control characters (C0, DEL and C1), the line and paragraph
separators and the bidirectional controls. The store's key check refused only C0 and DEL: a key holding
U+0085 or U+202E was written, and its URI was then one no event could carry (the event built from it was
refused), and a foreign object so named in a shared bucket was listed as addressable.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest

from shared.errors import BadInput
from shared.store import ObjectStore, check_key
from tests.support.s3 import file_or_s3_store

# (the character, how the refusal names it)
REFUSED = [
    ("\x85", "U+0085"),  # C1: NEXT LINE
    ("\x9b", "U+009B"),  # C1: the 8-bit terminal escape (CSI)
    ("\u202e", "U+202E"),
    ("\u2066", "U+2066"),
    ("\u2028", "U+2028"),
    ("\u2029", "U+2029"),
]


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return file_or_s3_store(request, tmp_path / "store")


@pytest.mark.parametrize(("char", "code_point"), REFUSED)
def test_a_key_holding_a_character_an_event_s_uri_refuses_is_refused_and_nothing_is_written(
    store: ObjectStore, char: str, code_point: str
) -> None:
    key = f"photos/shelf{char}gnp.png"
    with pytest.raises(ValueError, match=re.escape(code_point)) as refused:
        store.put_bytes(key, b"png")
    assert char not in str(refused.value)  # named and shown escaped, never echoed
    assert list(store.list_keys()) == []
    with pytest.raises(ValueError, match=re.escape(code_point)):
        store.uri_for(key)
    with pytest.raises(ValueError, match=re.escape(code_point)):
        list(store.list_keys(f"photos/shelf{char}"))
    with pytest.raises(BadInput, match=re.escape(code_point)):
        store.key_for(f"{store.base_uri}/{key}")


@pytest.mark.parametrize(("char", "code_point"), REFUSED)
def test_check_key_names_the_character(char: str, code_point: str) -> None:
    with pytest.raises(
        ValueError, match=rf"key 'a{re.escape(repr(char)[1:-1])}b\.png' .*{re.escape(code_point)}"
    ):
        check_key(f"a{char}b.png")


def test_a_key_with_spaces_and_accents_is_still_a_key(store: ObjectStore) -> None:
    key = "photos/café au lait ☕.png"
    ref = store.put_bytes(key, b"png")
    assert ref.uri == store.uri_for(key)
    assert store.get_bytes(key) == b"png"


def put_foreign(store: Any, key: str) -> None:
    """An object written by another tool straight into the bucket, past the store's key check."""
    store.client.put_object(Bucket=store.bucket, Key=store._key_prefix + key, Body=b"{}")


def test_a_foreign_object_so_named_in_a_shared_bucket_is_left_out_of_the_addressable_keys(
    s3_store: ObjectStore, caplog: pytest.LogCaptureFixture
) -> None:
    s3_store.put_bytes("adapters/cola.json", b"{}")
    put_foreign(s3_store, "adapters/co\u202ela.json")
    with caplog.at_level(logging.WARNING, logger="skuforge.store"):
        assert list(s3_store.list_addressable("adapters/")) == ["adapters/cola.json"]
    assert "U+202E" in caplog.text
