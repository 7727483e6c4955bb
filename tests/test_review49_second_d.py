"""Review 49, second opinion (store reads of keys refused since review 48, the LoRA per-SKU index, the
columnar copy repair): what the first pass left wrong."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from shared.errors import BadInput, StoreMisconfigured
from shared.observability import escape_control_characters
from shared.store import FileStore, S3Store


@pytest.mark.parametrize("char", ["\u202e", "\x9b", "\u2028"], ids=["bidi", "c1_escape", "line_separator"])
def test_a_key_too_long_for_the_server_counts_a_read_keys_bytes_not_its_escape(char: str) -> None:
    # A key written before review 48 is read again, and messages name its URI escaped ("\\u202e", six
    # characters for one of three bytes). A server taking fewer bytes than S3 answers KeyTooLongError, and
    # the store told the key's bytes from the escaped URI: "its key is 210 bytes" of a key of 207.
    client = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    store = S3Store("any-bucket", "pfx", client=client, uri_from="the test")
    key = "k" * 200 + char
    sent = len(f"pfx/{key}".encode())
    with Stubber(client) as s3:
        s3.add_client_error("get_object", "KeyTooLongError", "Your key is too long", 400)
        with pytest.raises(StoreMisconfigured) as info:
            store.get_bytes(f"{store.base_uri}/{key}")
    said = str(info.value)
    assert f"its key is {sent} bytes" in said, said
    assert char not in said, said  # the URI is still named escaped


@pytest.mark.parametrize("char", ["\u202e", "\x9b", "\x1b"], ids=["bidi", "c1_escape", "c0_escape"])
def test_a_key_too_long_is_named_escaped(tmp_path: Path, char: str) -> None:
    # Every message of the store names a key's URI escaped since 5cb00d2b, a refusal its repr, but for
    # one: a key past the store's room was told by its size first, naming its start and end as written, so
    # a U+202E or ESC in it reached a dead letter's reason, a log line or a terminal as itself.
    store = FileStore(tmp_path)
    key = "/".join(["k" * 200] * 5) + "/" + char + "k" * 30
    for call in (lambda: store.get_bytes(key), lambda: store.exists(key), lambda: store.put_bytes(key, b"x")):
        with pytest.raises(BadInput) as info:
            call()
        said = str(info.value)
        assert info.value.reason == "key_too_long", said
        assert char not in said and escape_control_characters(char) in said, said
