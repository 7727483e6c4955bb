"""Review 48 of ingest: the article before a misnamed photo's format, the cut of a failure's message
in ``IngestIncomplete``, and synth's ``masks/`` beside its ``skus/``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from services.ingest.ingest import IngestError, prepare_all
from shared.config import load_settings

# An AVIF's ftyp box (major brand avif, compatible mif1 and avif), then a meta box's header.
AVIF_HEADER = bytes.fromhex(
    "0000001c 66747970 61766966 00000000 6d696631 61766966 6d696166 0000022e 6d657461"
)
# An iPhone's HEIC: ftyp box (major brand heic, compatible mif1 and heic), then the meta box's header.
HEIC_HEADER = bytes.fromhex("00000018 66747970 68656963 00000000 6d696631 68656963 0000022e 6d657461")


def _ico() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="ICO", sizes=[(64, 64)])
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (AVIF_HEADER + bytes(512), "but it holds an AVIF"),
        (_ico(), "but it holds an ICO"),
        (HEIC_HEADER + bytes(512), "but it holds a HEIC"),  # read "heek"
    ],
)
def test_a_misnamed_photo_is_told_what_it_holds_with_the_right_article(
    tmp_path: Path, content: bytes, said: str
) -> None:
    """An AVIF saved as photo.jpg was told "its name ends in .jpg, but it holds a AVIF"."""
    folder = tmp_path / "A"
    folder.mkdir()
    (folder / "metadata.json").write_text(
        json.dumps({"sku_id": "A-1", "name": "Oat drink", "category": "carton"})
    )
    (folder / "photo.jpg").write_bytes(content)
    Image.new("RGB", (96, 96), (10, 40, 80)).save(folder / "other.png")
    with pytest.raises(IngestError) as refused:
        prepare_all(tmp_path, load_settings())
    [line] = [line for line in str(refused.value).splitlines() if "photo.jpg" in line]
    assert f"its name ends in .jpg, {said}" in line, line
