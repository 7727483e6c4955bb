"""Review 49: records stored before review 48 whose object ``uri`` holds a character the contract now
refuses there (a C1 control, a line separator, a bidirectional control), outside the console.

A series request the LoRA trainer stored from such a ``sku.captioned`` no longer read: "request file
skipped", and the accepted work was dropped from its series' adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schemas.common import ImageRef, SkuMetadata
from schemas.events import CaptionedPhoto, SkuCaptioned
from services.lora_trainer.stage import PREFIX
from shared.store import FileStore
from tests.support.lora import _trainer

# What the contract refuses in a uri since review 48 and a store wrote under a key before it (C0 and DEL
# were refused in a key always): a bidirectional override, the 8-bit terminal escape, a line separator.
STORED_BEFORE = [("\u202e", "U+202E"), ("\x9b", "U+009B"), ("\u2028", "U+2028")]
IDS = ["bidi", "c1_escape", "line_separator"]


def _series_request(store: FileStore, char: str) -> tuple[dict[str, Any], str]:
    """A captioned SKU as stored before review 48, its one photo's and mask's uri holding ``char`` (as
    JSON: the contract refuses it now); and that uri."""
    ref = ImageRef(uri=store.uri_for("incoming/shelf.png"), sha256="0" * 64, bytes=1, width=1, height=1)
    captioned = SkuCaptioned(
        sku=SkuMetadata(sku_id="SKU-1", name="n", category="soda can", series="Cola"),
        photos=[CaptionedPhoto(photo_id="p", image=ref, mask=ref, usable=True)],
        instance_token="shs",
        class_noun="can",
        instance_prompt="a photo of shs can",
        class_prompt="a photo of a can",
        captioner="test",
    ).model_dump(mode="json")
    uri = ref.uri.replace("shelf.png", f"shelf{char}gnp.png")
    for field in ("image", "mask"):
        captioned["photos"][0][field]["uri"] = uri
    return captioned, uri


@pytest.mark.parametrize(("char", "named"), STORED_BEFORE, ids=IDS)
def test_a_series_request_stored_with_one_stays_in_its_series_plan(
    tmp_path: Path, char: str, named: str
) -> None:
    # Since review 48 the request no longer read ("request file skipped"): its SKU's photos were dropped
    # from the series' adapter, though the request was accepted and is still in the store.
    store = FileStore(tmp_path)
    request, uri = _series_request(store, char)
    store.put_json(f"{PREFIX}/series/cola/SKU-1.json", request)
    trainer = _trainer(store)

    jobs = trainer.plan()

    assert [job.series for job in jobs] == ["Cola"]
    assert [source.image_uri for source in jobs[0].sources] == [uri]  # as stored, not escaped
