"""A bidirectional control in a photo's file name is written escaped, as a control character is.

The contract refuses one in ``original_filename`` (it reorders the text shown after it, Trojan Source);
``skuforge ingest`` escaped only control characters, so a photo named so on disk failed the batch.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from services.ingest import ingest
from services.ingest.ingest import prepare_all
from shared.config import load_settings
from shared.store import FileStore


def test_a_bidirectional_control_in_a_photos_file_name_is_escaped_not_a_refusal(tmp_path: Path) -> None:
    folder = tmp_path / "A"
    folder.mkdir()
    (folder / "metadata.json").write_text(
        json.dumps({"sku_id": "A-1", "name": "Oat drink", "category": "carton"})
    )
    Image.new("RGB", (64, 64), (90, 40, 80)).save(folder / "shelf\u202egnp.exe\u202c.png")

    [sku] = prepare_all(tmp_path, load_settings())

    [photo] = sku.photos
    assert photo.original_filename == "shelf\\u202egnp.exe\\u202c.png"
    ingested = ingest.upload_sku(sku, FileStore(tmp_path / "store"))
    assert [photo.original_filename for photo in ingested.photos] == [photo.original_filename]
