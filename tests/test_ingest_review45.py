"""Ingest review 45: photos as they come from phones, catalogues and DAMs, made with Pillow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _sku(root: Path, folder: str, sku_id: str) -> Path:
    path = root / folder
    path.mkdir(parents=True)
    (path / "metadata.json").write_text(
        json.dumps({"sku_id": sku_id, "name": "Oat drink", "category": "carton"})
    )
    return path


def test_a_photo_past_pillows_bomb_threshold_is_one_refusal_not_a_python_warning(tmp_path: Path) -> None:
    # A 90-megapixel scan (past PIL.Image.MAX_IMAGE_PIXELS, under twice it) printed Python's own
    # "PIL/Image.py:...: DecompressionBombWarning: ... could be decompression bomb DOS attack." and
    # "  warnings.warn(" before ingest's refusal: two lines of someone else's source, saying the
    # user's photo might be an attack. Ingest's refusal already names the size and the limit.
    folder = _sku(tmp_path, "scan", "SCAN-1")
    Image.new("1", (10_000, 9_000), 1).save(folder / "scan.png")  # a few kB, 90 MP
    run = subprocess.run(
        [sys.executable, "-m", "skuforge_cli", "ingest", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONWARNINGS": ""},
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert "too_many_pixels: 10000x9000 = 90000000 pixels" in run.stderr, run.stderr
    assert "Warning" not in run.stderr and "warnings.warn" not in run.stderr, run.stderr
