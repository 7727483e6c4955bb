"""Review 49: a manifest row's caption is read as before through the printable-ASCII fast path, and a
columnar copy written before captions were ruled one line hands out its captions escaped, as the JSONL
part they copy reads."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.common import (
    NOT_ONE_LINE,
    NOT_PLAIN,
    READ_FROM_TOPIC,
    check_one_line,
    check_plain_text,
    escaped_within,
)
from shared.store import FileStore
from shared.trainstore.loader import load_manifest
from shared.trainstore.manifest import ManifestRow, ManifestStore
from tests.support.trainstore import manifest_row

# Text the fast path must take or leave exactly as the scans do: the edges of printable ASCII (space,
# '~', DEL, US), each kind of character the rules refuse, and text beyond ASCII with none of them.
TRICKY = [
    "",
    " ",
    "a photo of a red soda can, #12 ~ (front)",
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "nul\x00",
    "escape \x1b[31m",
    "us\x1f",
    "del\x7f",
    "c1 \x85 next line",
    "c1 \x9b csi",
    "line\u2028separator",
    "paragraph\u2029separator",
    "bidi \u202eoverride",
    "bidi \u202a embedding",
    "isolate \u2066x\u2069",
    "Äpfel aus Südtirol",
    "日本のお茶",
    "no-break\u00a0space",
    "zero\u200bwidth",
    "emoji 👩\u200d💻",
    "plain then \u202e at the end",
]


def scanned(rule: re.Pattern[str], text: str) -> str | None:
    """The first character ``rule`` finds in ``text``, the scans' answer without any fast path."""
    found = rule.search(text)
    return None if found is None else found.group()


@pytest.mark.parametrize("text", TRICKY)
def test_a_check_takes_and_refuses_what_its_scan_does(text: str) -> None:
    for check, rule in ((check_plain_text, NOT_PLAIN), (check_one_line, NOT_ONE_LINE)):
        refused = scanned(rule, text)
        if refused is None:
            assert check(text) == text
        else:
            with pytest.raises(ValueError, match=f"U\\+{ord(refused):04X} at character"):
                check(text)


@pytest.mark.parametrize("text", TRICKY)
def test_a_rows_caption_reads_and_builds_as_its_scan_says(text: str) -> None:
    base = manifest_row("a").model_dump(mode="json")
    row = ManifestRow.model_validate({**base, "caption": text}, context=READ_FROM_TOPIC)
    refused = scanned(NOT_ONE_LINE, text)
    assert row.caption == (text if refused is None else escaped_within(text, sys.maxsize, NOT_ONE_LINE))
    if refused is None:
        assert manifest_row("a", caption=text).caption == text
    else:
        with pytest.raises(ValidationError, match=f"U\\+{ord(refused):04X}"):
            manifest_row("a", caption=text)


def test_a_columnar_copy_written_before_the_caption_rule_reads_its_captions_escaped(tmp_path: Path) -> None:
    manifests = ManifestStore(FileStore(tmp_path), "ts")
    manifests.append("SKU-1", [manifest_row("a", caption="CAPTION-A"), manifest_row("b", caption="plain")])
    manifests.compact("SKU-1")
    # What an older version compacted: the caption as the writer sent it, in the part and in its copy
    # (JSON's own escape there, "\u202e", which json.loads reads back as the character).
    for key in manifests.store.list_keys("ts/manifests/SKU-1/"):
        data = manifests.store.get_bytes(key)
        raw = "\u202e".encode() if key.endswith(".jsonl") else rb"\u202e"
        manifests.store.put_bytes(key, data.replace(b"CAPTION-A", b"evil " + raw + b"gpj.exe"))
    from_part = {item_id: row.caption for item_id, row in manifests.read_sku("SKU-1").items()}
    assert from_part == {"a": "evil \\u202egpj.exe", "b": "plain"}
    loaded = load_manifest(manifests.store, prefix="ts", trainable_only=False)
    assert {row["item_id"]: row["caption"] for row in loaded} == from_part


@pytest.mark.parametrize("field", ["image", "width", "caption", "reasons"])
def test_a_columnar_copy_without_a_column_every_copy_has_reads_its_jsonl_part(
    tmp_path: Path, field: str
) -> None:
    """Only a field added since the first columnar copies may be missing from one (it holds its default
    in every row then); a copy without another column is damaged, and its part is read instead. An image,
    a size or reasons missing so read as None or empty in every row: a training set without images."""
    manifests = ManifestStore(FileStore(tmp_path), "ts")
    rows = [
        manifest_row(
            item_id,
            image=f"images/SKU-1/synthetic/{item_id}.png",
            width=640,
            height=480,
            caption=f"a can, {item_id}",
            reasons=["edge"],
        )
        for item_id in ("a", "b")
    ]
    manifests.append("SKU-1", rows)
    manifests.compact("SKU-1")
    expected = load_manifest(manifests.store, prefix="ts")
    (columns_key,) = manifests.store.list_keys("ts/manifests/SKU-1/columns-")
    document = json.loads(manifests.store.get_bytes(columns_key))
    for part in ("common", "columns"):
        document[part].pop(field, None)
    manifests.store.put_bytes(columns_key, json.dumps(document).encode())
    assert load_manifest(manifests.store, prefix="ts") == expected
