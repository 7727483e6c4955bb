"""Review 48 of ingest: the article before a misnamed photo's format, the cut of a failure's message
in ``IngestIncomplete``, and synth's ``masks/`` beside its ``skus/``."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from schemas.envelope import clipped
from schemas.topics import SKU_INGESTED
from services.ingest.ingest import IngestError, IngestIncomplete, ingest_path, prepare_all
from shared.config import load_settings
from shared.store import FileStore
from shared.synth import write_sku_folders
from tests.support.bus import create_topics, file_store_uri, isolated_settings

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


@pytest.mark.kafka
def test_a_long_failure_is_cut_at_a_word_and_says_how_much_was_left_out(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A failure after the checks is quoted in ``IngestIncomplete``, cut at 300 characters: mid-word
    (or mid-escape, ``\\x1`` of ``\\x1b``), and with nothing to say that more had been said, so the count
    of failed writes at its end was gone without a trace. It is now cut at a word, and says how many
    characters were left out."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    create_topics(settings, SKU_INGESTED)
    write_sku_folders(tmp_path / "synth", skus=2, photos_per_sku=1, seed=7, size_px=64)
    batch = tmp_path / "synth" / "skus"
    second = sorted(json.loads(path.read_text())["sku_id"] for path in batch.glob("*/metadata.json"))[1]
    failure = "the volume went away while writing " + "photographs " * 40 + "(3 of 3 writes failed)"

    class FailsOnTheSecond(FileStore):
        def _write(self, key: str, data: bytes, content_type: str) -> None:
            if f"/{second}/" in key:
                raise OSError(5, failure)
            super()._write(key, data, content_type)

    with pytest.raises(IngestIncomplete) as stopped:
        ingest_path(batch, settings, store=FailsOnTheSecond(tmp_path / "store"))
    message = str(stopped.value)
    quoted = re.search(r"\(OSError: (.*?)\.\.\. \[(\d+) more characters cut\]\); published: ", message)
    assert quoted is not None, message
    kept, left_out = quoted.group(1), int(quoted.group(2))
    whole = str(OSError(5, failure))
    assert whole.startswith(kept) and len(kept) + left_out == len(whole), message
    assert whole[len(kept)] == " ", message  # cut between words
    assert len(kept) + len(f"... [{left_out} more characters cut]") <= 300, message


def test_a_cut_at_a_word_leaves_an_escape_whole() -> None:
    """A file name written escaped (``\\x1b``) in a failure's message was cut inside its escape."""
    text = "cannot write " + "caf\\x1b\\u202e.png " * 40
    cut = clipped(text, 300, at_word=True)
    kept, mark = cut.split("... [")
    assert kept.endswith(".png") and len(cut) <= 300
    assert mark == f"{len(text) - len(kept)} more characters cut]"


def test_synths_masks_beside_its_skus_is_named_in_one_line(tmp_path: Path) -> None:
    """`skuforge ingest var/synth` named skus/ first, with the folder to ingest, and then synth's masks/
    beside it in a line per SKU folder of masks ("a folder inside a SKU folder; move its photos into
    var/synth/masks"), a missing metadata.json and "no photos": advice nobody should follow, a line a
    SKU. masks/ is now one line: no SKU folder either."""
    write_sku_folders(tmp_path, skus=3, photos_per_sku=1, seed=1, size_px=64)
    with pytest.raises(IngestError) as refused:
        prepare_all(tmp_path, load_settings())
    problems = [line.strip() for line in str(refused.value).splitlines()[1:]]
    assert len(problems) == 2, problems
    assert problems[0].startswith(
        f"{tmp_path / 'skus'}: holds SKU folders (SYN-1-0001, SYN-1-0002, SYN-1-0003)"
    )
    assert problems[1] == (
        f"{tmp_path / 'masks'}: not a SKU folder either (no metadata.json); nothing in it was checked"
    )
