"""The model cache's cost to a long-running process: memory while it copies, file handles after.

A diffusion pipeline's weights are gigabytes, and a generator serving many adapters fetches one copy
after another for days: neither the size of a file nor the number of copies fetched may set what the
process holds.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from shared.model_cache import COMPLETE_MARKER, fetch_directory
from shared.store import sha256_hex
from tests.support.model_cache import publish_folder

WEIGHTS_BYTES = 32 << 20


def test_a_folder_copy_takes_a_few_blocks_of_memory_whatever_its_files_size(tmp_path: Path) -> None:
    # Each file was read whole into memory before it was written: a 5 GB UNet needed 5 GB more.
    weights = bytes(range(256)) * (WEIGHTS_BYTES // 256)
    uri = publish_folder(
        tmp_path / "store", "pipeline", {"model_index.json": b"{}", "unet/model.safetensors": weights}
    )

    tracemalloc.start()
    try:
        copy = fetch_directory(uri, tmp_path / "cache")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < WEIGHTS_BYTES // 8, f"copying a {WEIGHTS_BYTES >> 20} MiB file took {peak >> 20} MiB"
    assert (copy / "unet" / "model.safetensors").read_bytes() == weights
    marker = json.loads((copy / COMPLETE_MARKER).read_text())
    assert marker["sizes"]["unet/model.safetensors"] == WEIGHTS_BYTES
    assert marker["sha256"]["unet/model.safetensors"] == sha256_hex(weights)
