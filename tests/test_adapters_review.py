"""The adapter registry and the generator's diffusion backend agree while adapters change under them.

A generator reuses its registry listing for ``SKUFORGE_DIFFUSION_ADAPTER_REFRESH_S``. Before, an
adapter registered again in that window had its weights overwritten in place: the generator's old
listing failed their checksum and every SKU of the series went to the DLQ. Now each registration's
weights have their own file, and weights gone from under a stale listing are a retry, not bad input.
Also: an adapter id with a trailing newline is refused at start-up and by the registry; an adapter
that cannot be fetched unloads none of those loaded, and one the model cache has no room for (or may
not write) is retried, not dead-lettered.

The pipeline is a stand-in that records which weights were loaded and paints grey: what the adapter
does to the image is ``tests/test_generation_diffusion.py``'s subject.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import struct
import tracemalloc
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from services.generator.protocol import ADAPTER_REFUSALS, BACKEND_UNAVAILABLE_PREFIX
from services.generator.server import GenerationModel
from shared.config import ConfigError, load_settings
from shared.dlq import is_permanent
from shared.errors import BadInput, TransientError
from shared.generation import adapters as adapters_module
from shared.generation.adapters import AdapterRegistry, WeightsRefused
from shared.generation.diffusion import LoraSlots
from shared.generation.settings import GenerationSettings
from shared.store import FileStore
from skuforge_cli.main import main as cli_main
from tests.support.adapters import OtherRegistration, RecordingPipe, backend_on, cola_request, served_adapter
from tests.support.bus import file_store_uri
from tests.support.generation import triton_request
from tests.support.lora import lora_weights


def test_a_generator_with_an_old_listing_serves_the_adapter_re_registered_under_it(tmp_path: Path) -> None:
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    registry.register("cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15")
    backend = backend_on(registry, tmp_path)
    backend.adapters()  # the listing, reused for SKUFORGE_DIFFUSION_ADAPTER_REFRESH_S
    pipe = backend.pipe

    # Retrained weights under the same id (the trainer, or `skuforge adapters register` again).
    registry.register("cola-v", lora_weights(2), kind="specialized", series="Cola", base_model="sd15")

    # Before: ChecksumMismatch (BadInput), so the SKU was dead-lettered. Now the listed bytes are intact.
    assert served_adapter(backend) == "cola-v"
    assert pipe.loaded == [lora_weights(1)]
    # Once the listing is read again, the new weights are what the pipeline gets.
    backend.adapters(refresh=True)
    assert served_adapter(backend) == "cola-v"
    assert pipe.loaded == [lora_weights(1), lora_weights(2)]


def test_weights_gone_from_under_a_stale_listing_are_a_retry_that_then_succeeds(tmp_path: Path) -> None:
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    registry.register("cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15")
    backend = backend_on(registry, tmp_path)
    backend.adapters()
    # Registered twice more within one refresh: the registry keeps the current and the replaced
    # registration's weights only, so the first one's file is gone.
    registry.register("cola-v", lora_weights(2), kind="specialized", series="Cola", base_model="sd15")
    registry.register("cola-v", lora_weights(3), kind="specialized", series="Cola", base_model="sd15")
    weights_files = [p.name for p in (tmp_path / "adapters" / "cola-v").glob("*.safetensors")]
    assert len(weights_files) == 2

    with pytest.raises(TransientError, match="cola-v"):
        backend.generate_many([cola_request()])
    # The listing was read again: the retry is served with the current weights.
    assert served_adapter(backend) == "cola-v"
    assert backend.pipe.loaded == [lora_weights(3)]

    # An adapter removed from the registry under another generator's listing: a retry, then the
    # base model for its series.
    other = backend_on(registry, tmp_path / "other")
    other.adapters()
    shutil.rmtree(tmp_path / "adapters" / "cola-v")
    with pytest.raises(TransientError):
        other.generate_many([cola_request()])
    assert served_adapter(other) is None


def test_an_adapter_whose_listed_weights_are_damaged_is_still_refused(tmp_path: Path) -> None:
    # Not a registration race: the registry lists it unchanged, so retrying would fail forever. Before,
    # the refusal was checksum_mismatch, a damaged photo's reason: the stage drew the variant again from
    # every photo of the SKU, then left it out, and no letter brought it back once the registry was fixed.
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    metadata = registry.register(
        "cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15"
    )
    (tmp_path / "adapters" / "cola-v" / metadata.weight_name).write_bytes(lora_weights(9))
    backend = backend_on(registry, tmp_path)
    (outcome,) = backend.generate_many([cola_request()])
    assert isinstance(outcome, BadInput) and outcome.reason == "adapter_checksum_mismatch"
    assert "cola-v" in outcome.detail and "register it again" in outcome.detail
    # The SKU's letter goes to the DLQ once (ADAPTER_REFUSALS), and a bare replay sends it once the
    # adapter is registered again: then it is served with the new weights.
    assert outcome.reason in ADAPTER_REFUSALS and not is_permanent(outcome.reason)
    registry.register("cola-v", lora_weights(2), kind="specialized", series="Cola", base_model="sd15")
    with pytest.raises(TransientError, match="cola-v"):  # its listing still names the damaged weights
        backend.generate_many([cola_request()])
    assert served_adapter(backend) == "cola-v"
    assert backend.pipe.loaded == [lora_weights(2)]


# --- adapter ids ----------------------------------------------------------------------------------


def test_an_adapter_id_with_a_trailing_newline_is_refused_at_start_up_and_by_the_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, re.match(^...$) took "shelf-general\n": start-up passed, then every diffusion variant
    # was refused one SKU at a time (unknown_adapter).
    monkeypatch.setenv("SKUFORGE_GENERATION_BACKEND", "diffusion")
    monkeypatch.setenv("SKUFORGE_GENERATION_ADAPTER_ID", "shelf-general\n")
    with pytest.raises(ConfigError, match=r"SKUFORGE_GENERATION_ADAPTER_ID: .*spaces around it"):
        load_settings(GenerationSettings)
    monkeypatch.setenv("SKUFORGE_GENERATION_ADAPTER_ID", "shelf-general")
    assert load_settings(GenerationSettings).generation_adapter_id == "shelf-general"

    registry = AdapterRegistry(FileStore(tmp_path))
    with pytest.raises(BadInput, match="invalid_adapter_id"):
        registry.get("shelf-general\n")
    with pytest.raises(BadInput, match="invalid_adapter_id"):
        registry.register("shelf-general\n", lora_weights(1), kind="general", base_model="sd15")


def test_an_adapter_removed_while_the_registry_is_listed_is_left_out(tmp_path: Path) -> None:
    """list() read each metadata.json it had listed: one removed in between raised ObjectMissing, which
    the generator took as bad input and refused every row of the batch with (their SKUs dead-lettered)."""
    store = FileStore(tmp_path / "adapters")
    registry = AdapterRegistry(store)
    for adapter_id in ("a-general", "b-general"):
        registry.register(adapter_id, lora_weights(1), kind="general", base_model="m")
    listed = list(store.list_keys())

    class RemovedMidway(FileStore):
        def list_keys(self, prefix: str = "") -> Any:
            yield from listed

    racing = RemovedMidway(tmp_path / "adapters")
    registry.remove("a-general")
    assert [adapter.adapter_id for adapter in AdapterRegistry(racing).list()] == ["b-general"]


# --- adapter slots ----------------------------------------------------------------------------------


def _full_volume(path: Path, blocks: Iterable[bytes], **_: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as os.write says it: no file name


def test_an_adapter_that_cannot_be_fetched_unloads_none_of_those_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The least recently used adapter was deleted before the new one was fetched: a fetch that then
    # failed (the cache full, the store away) had unloaded it for nothing, to be loaded again next time.
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    cola = registry.register("cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15")
    fanta = registry.register(
        "fanta-v", lora_weights(2), kind="specialized", series="Fanta", base_model="sd15"
    )
    pipe = RecordingPipe()
    slots = LoraSlots(pipe, 1, lambda adapter: registry.fetch_weights(adapter, tmp_path / "cache"))
    slots.activate(cola)

    monkeypatch.setattr(adapters_module, "write_blocks_atomically", _full_volume)
    with pytest.raises(OSError, match="No space left"):
        slots.activate(fanta)

    assert pipe.deleted == [] and slots.loaded == ["cola-v"]
    slots.activate(cola)  # the next Cola variant: no second load
    assert pipe.loaded == [lora_weights(1)]
    monkeypatch.undo()  # room on the volume again: Fanta's takes the slot as before
    slots.activate(fanta)
    assert pipe.deleted == ["cola-v"] and slots.loaded == ["fanta-v"] and slots.active == "fanta-v"


class _MisfitPipe(RecordingPipe):
    """A pipeline on which the adapter of weights ``misfit`` fails half-way through its load, as one
    trained for another model does (diffusers raises on the first layer whose shape differs), or as
    one that runs the GPU out of memory does."""

    def __init__(self, misfit: bytes, error: BaseException) -> None:
        super().__init__()
        self.misfit, self.error = misfit, error

    def load_lora_weights(self, directory: str, *, weight_name: str, **kwargs: Any) -> None:
        super().load_lora_weights(directory, weight_name=weight_name, **kwargs)
        if self.loaded[-1] == self.misfit:
            raise self.error


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (ValueError("size mismatch for down_blocks.0.attentions.0: lora_A"), BadInput),
        (torch.OutOfMemoryError("CUDA out of memory"), torch.OutOfMemoryError),
    ],
    ids=["does_not_fit", "out_of_gpu_memory"],
)
def test_an_adapter_that_fails_to_load_unloads_none_of_those_loaded(
    tmp_path: Path, error: BaseException, raised: type[BaseException]
) -> None:
    # The least recently used adapter was deleted to make room before the new one was loaded: a load
    # that then failed had unloaded it for nothing, and its next variant loaded it again.
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    cola = registry.register("cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15")
    fanta = registry.register(
        "fanta-v", lora_weights(2), kind="specialized", series="Fanta", base_model="sd15"
    )
    pipe = _MisfitPipe(lora_weights(2), error)
    slots = LoraSlots(pipe, 1, lambda adapter: registry.fetch_weights(adapter, tmp_path / "cache"))
    slots.activate(cola)

    with pytest.raises(raised):
        slots.activate(fanta)

    assert pipe.deleted == ["fanta-v"]  # what did get into the UNet of Fanta's, and nothing else
    assert slots.loaded == ["cola-v"]
    slots.activate(cola)  # the next Cola variant: no second load
    assert pipe.loaded == [lora_weights(1), lora_weights(2)] and slots.active == "cola-v"
    pipe.misfit = b""  # Fanta's fits now (its retrained weights, say): it takes the slot as before
    slots.activate(fanta)
    assert pipe.deleted == ["fanta-v", "cola-v"] and slots.loaded == ["fanta-v"] and slots.active == "fanta-v"


@pytest.mark.parametrize(
    "code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES], ids=errno.errorcode.__getitem__
)
def test_an_adapter_copy_the_cache_cannot_hold_is_retried_naming_the_cache_not_dead_lettered(
    code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The OSError of a full or read-only cache volume reached the Triton model bare: a traceback per
    # row and backend_error, so the stage dead-lettered good variants for an operator's problem. Now
    # they wait (backend_unavailable: retried, never dead-lettered) with a line naming the cache.
    def refused(path: Path, blocks: Iterable[bytes], **_: object) -> None:
        raise OSError(code, os.strerror(code))

    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    registry.register("cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15")
    model = GenerationModel(backend_on(registry, tmp_path))
    monkeypatch.setattr(adapters_module, "write_blocks_atomically", refused)

    with caplog.at_level(logging.WARNING):
        (answer,) = model([triton_request([11, 12], series="Cola")])

    for (error,) in answer["error"]:
        assert error.decode().startswith(BACKEND_UNAVAILABLE_PREFIX)
        assert f"{tmp_path / 'cache'} " in error.decode() and "SKUFORGE_DIFFUSION_CACHE_DIR" in error.decode()
    assert any(str(tmp_path / "cache") in record.getMessage() for record in caplog.records)
    assert [record.getMessage() for record in caplog.records if record.exc_info] == []  # no traceback
    # Once the volume has room (or is writable) again, the variants are served with their adapter.
    monkeypatch.undo()
    (answer,) = model([triton_request([11, 12], series="Cola")])
    assert [cell[0] for cell in answer["error"]] == [b"", b""]
    assert [cell[0] for cell in answer["adapter_used"]] == [b"cola-v", b"cola-v"]


def test_an_adapter_copy_the_cache_cannot_hold_names_its_weights_file_and_their_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "cannot copy adapter 'cola-v' into the model cache <dir> ([Errno 28] No space left on device)" named
    # neither which registration's weights (each its own file) nor how much room they need: the operator
    # freeing room looked both up in the registry.
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    metadata = registry.register(
        "cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15"
    )
    backend = backend_on(registry, tmp_path)
    monkeypatch.setattr(adapters_module, "write_blocks_atomically", _full_volume)

    with pytest.raises(TransientError) as refused:
        backend.generate_many([cola_request()])

    said = str(refused.value)
    assert "adapter 'cola-v'" in said and f"into the model cache {tmp_path / 'cache'} " in said
    assert f"{metadata.weight_name}, {len(lora_weights(1))} bytes" in said


@pytest.mark.parametrize(
    "tensors",
    [{"unet.conv_in.weight": (8, 4)}, {}],  # a base model's checkpoint; a file of no tensors at all
    ids=["model-weights", "empty"],
)
def test_a_file_with_no_lora_tensors_is_refused_whatever_rank_is_given(
    tensors: dict[str, tuple[int, ...]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A given --rank stood where the weights state none: a file with no LoRA tensor at all registered
    # (as a general adapter, chosen for every SKU without a series one), and the generator loaded
    # nothing from it, or refused it, for each of them.
    from safetensors.numpy import save

    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    monkeypatch.delenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", raising=False)
    weights = tmp_path / "unet.safetensors"
    weights.write_bytes(save({name: np.zeros(shape, np.float32) for name, shape in tensors.items()}))
    general = ["--kind", "general", "--base-model", "sd15", "--rank", "4"]

    assert cli_main(["adapters", "register", "not-lora", str(weights), *general]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"skuforge adapters register: {weights}: ") and err.count("\n") == 1
    assert "no LoRA tensors" in err
    assert not (tmp_path / "store" / "adapters" / "not-lora").exists()
    # The tiny LoRA files the tests register, with or without a rank, still register.
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    for rank in (None, 4):
        registered = registry.register("tiny", lora_weights(1), kind="general", base_model="sd15", rank=rank)
        assert registered.rank == 4


def test_weights_register_cannot_take_are_refused_naming_the_adapter_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # "not a safetensors file: shorter than its header length" named neither the adapter nor the file:
    # a trainer's log, or a script registering several, left the operator to guess which was refused.
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    monkeypatch.delenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", raising=False)
    general = ["--kind", "general", "--base-model", "sd15"]
    notes, cut = tmp_path / "notes.txt", tmp_path / "cut.safetensors"
    notes.write_text("not LoRA weights\n")
    cut.write_bytes(lora_weights(1)[:-10])
    for weights, said in ((notes, "not a safetensors file"), (cut, "damaged safetensors file")):
        assert cli_main(["adapters", "register", "cola-v", str(weights), *general]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"skuforge adapters register: {weights}: cannot register adapter 'cola-v': ")
        assert said in err and err.count("\n") == 1
    assert cli_main(["adapters", "register", "cola-v", str(cut), *general, "--rank", "4"]) == 2
    assert f"{cut}: cannot register adapter 'cola-v': damaged" in capsys.readouterr().err
    # Registered from a program, its bytes or its file: the adapter is named, and the file when given.
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    with pytest.raises(ValueError, match=r"^cannot register adapter 'cola-v': not a safetensors file"):
        registry.register("cola-v", b"short", kind="general", base_model="sd15")
    with pytest.raises(
        ValueError, match=rf"^cannot register adapter 'cola-v' from {notes}: not a safetensors"
    ):
        registry.register("cola-v", notes, kind="general", base_model="sd15")
    assert not (tmp_path / "adapters" / "cola-v").exists()


def _laid_out(offsets: dict[str, tuple[int, int]], data_bytes: int) -> bytes:
    """A safetensors file of F32 LoRA tensors at the given byte ranges of its data (4 floats a tensor,
    or none where a range is empty), written byte by byte as no saver would write it."""
    header = {
        name: {"dtype": "F32", "shape": [1, (end - start) // 4], "data_offsets": [start, end]}
        for name, (start, end) in offsets.items()
    }
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + bytes(data_bytes)


_A, _B = "unet.to_q.lora_A.weight", "unet.to_q.lora_B.weight"


@pytest.mark.parametrize(
    ("offsets", "data_bytes", "said"),
    [
        (
            {_A: (0, 16), _B: (20, 36)},
            36,
            rf"tensor '{_B}' starts at byte 20 of the data, where the tensor before it \('{_A}'\) ends at 16",
        ),
        (
            {_A: (0, 16), _B: (8, 24)},
            24,
            rf"tensor '{_B}' starts at byte 8 of the data, where the tensor before it \('{_A}'\) ends at 16",
        ),
        (
            {_A: (0, 16), _B: (0, 16)},
            16,
            rf"tensor '{_B}' starts at byte 0 of the data, where the tensor before it \('{_A}'\) ends at 16",
        ),
        (
            {_A: (4, 20)},
            20,
            rf"tensor '{_A}' starts at byte 4 of the data, where the first tensor starts at 0",
        ),
        ({_A: (0, 16), "unet.empty.lora_B": (8, 8)}, 16, r"tensor 'unet.empty.lora_B' starts at byte 8"),
    ],
    ids=["gap", "overlap", "same-bytes", "not-from-0", "empty-inside-another"],
)
def test_weights_whose_tensors_are_not_laid_end_to_end_are_refused_at_registration(
    offsets: dict[str, tuple[int, int]], data_bytes: int, said: str, tmp_path: Path
) -> None:
    # Each tensor's byte count was checked against its dtype and shape, but not where its bytes lie:
    # safetensors refuses a file whose tensors leave a gap, overlap, or do not start at byte 0 ("invalid
    # offset"), so such weights registered and every SKU of their series was refused as adapter_unloadable.
    from safetensors import SafetensorError
    from safetensors.numpy import load

    weights = tmp_path / "laid-out.safetensors"
    weights.write_bytes(_laid_out(offsets, data_bytes))
    with pytest.raises(SafetensorError, match="invalid offset"):
        load(weights.read_bytes())
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    with pytest.raises(WeightsRefused, match=rf"^cannot register adapter 'cola-v' from {weights}: .*{said}"):
        registry.register("cola-v", weights, kind="general", base_model="sd15")
    assert not (tmp_path / "adapters" / "cola-v").exists()


def test_weights_safetensors_loads_register_whatever_order_their_header_names_tensors_in(
    tmp_path: Path,
) -> None:
    # safetensors reads the tensors in the order of their offsets, not the header's; empty tensors may
    # share the byte where the one before them ends. Refusing these would refuse weights that load.
    from safetensors.numpy import load

    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    for offsets in (
        {_B: (16, 32), _A: (0, 16)},
        {"unet.empty.lora_B": (0, 0), _A: (0, 16), "unet.other.lora_B": (16, 16), _B: (16, 32)},
    ):
        weights = _laid_out(offsets, 32)
        assert set(load(weights)) == set(offsets)
        assert registry.register("cola-v", weights, kind="general", base_model="sd15").rank == 1


@pytest.mark.parametrize("metadata", [{"format": 1}, ["pt"]], ids=["number-value", "not-an-object"])
def test_weights_whose_header_metadata_is_not_text_by_name_are_refused_at_registration(
    metadata: object, tmp_path: Path
) -> None:
    # safetensors reads "__metadata__" as names to strings and refuses the file at load otherwise
    # ("invalid JSON in header"): such weights registered and were then adapter_unloadable.
    from safetensors import SafetensorError
    from safetensors.numpy import load

    good = lora_weights(1)
    (length,) = struct.unpack("<Q", good[:8])
    header = {"__metadata__": metadata, **json.loads(good[8 : 8 + length])}
    text = json.dumps(header).encode()
    weights = tmp_path / "metadata.safetensors"
    weights.write_bytes(struct.pack("<Q", len(text)) + text + good[8 + length :])
    with pytest.raises(SafetensorError, match="invalid JSON in header"):
        load(weights.read_bytes())
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    with pytest.raises(
        WeightsRefused,
        match=rf"^cannot register adapter 'cola-v' from {weights}: not a safetensors file: "
        r"its '__metadata__' is",
    ):
        registry.register("cola-v", weights, kind="general", base_model="sd15")
    assert not (tmp_path / "adapters" / "cola-v").exists()
    # A null one safetensors reads as none, and so does the registry.
    text = json.dumps({**header, "__metadata__": None}).encode()
    loadable = struct.pack("<Q", len(text)) + text + good[8 + length :]
    assert set(load(loadable)) == {"unet.to_q.lora_A.weight"}
    assert registry.register("cola-v", loadable, kind="general", base_model="sd15").rank == 4


class _UnfitPipe(RecordingPipe):
    """Refuses every adapter as diffusers refuses one trained for another model (its words name no file)."""

    def load_lora_weights(self, directory: str, *, weight_name: str, **_: Any) -> None:
        raise ValueError("size mismatch for down_blocks.0.attentions.0: lora_A")


def test_an_adapter_that_does_not_fit_is_refused_naming_the_adapter_and_its_file(tmp_path: Path) -> None:
    # "adapter 'cola-v' does not fit this model (base 'sd15'): size mismatch ..." named no file: which of
    # the adapter's registrations (each its own weights file) did not fit was left to guess.
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    metadata = registry.register(
        "cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15"
    )
    backend = backend_on(registry, tmp_path)
    backend.pipe = backend.lora.pipe = _UnfitPipe()
    (outcome,) = backend.generate_many([cola_request()])
    assert isinstance(outcome, BadInput) and outcome.reason == "adapter_unloadable", outcome
    assert "adapter 'cola-v'" in outcome.detail and "size mismatch" in outcome.detail
    assert registry.store.uri_for(f"cola-v/{metadata.weight_name}") in outcome.detail


def _with_header_of(header_bytes: int) -> bytes:
    """``lora_weights(1)`` with its header padded with spaces (as safetensors pads it) to ``header_bytes``."""
    good = lora_weights(1)
    (length,) = struct.unpack("<Q", good[:8])
    header = good[8 : 8 + length] + b" " * (header_bytes - length)
    return struct.pack("<Q", header_bytes) + header + good[8 + length :]


def test_weights_whose_header_is_longer_than_safetensors_reads_are_refused_before_they_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # safetensors refuses a header of more than 100,000,000 bytes at load (HeaderTooLarge): such weights
    # registered, were uploaded whole, and every SKU of their series was then adapter_unloadable.
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    limit = 100_000_000
    weights = tmp_path / "padded.safetensors"
    weights.write_bytes(_with_header_of(limit + 1))
    with pytest.raises(SafetensorError, match="header too large"):
        load_file(weights)
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    said = rf"its header is {limit + 1} bytes, more than the {limit} safetensors reads"
    tracemalloc.start()
    try:
        with pytest.raises(
            WeightsRefused, match=rf"^cannot register adapter 'cola-v' from {weights}: .*{said}"
        ):
            registry.register("cola-v", weights, kind="general", base_model="sd15")
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 1_000_000  # its 8-byte length was read, not the 100 MB after it
    assert not (tmp_path / "adapters" / "cola-v").exists()
    monkeypatch.setenv("SKUFORGE_STORE_URI", file_store_uri(tmp_path / "store"))
    monkeypatch.delenv("SKUFORGE_DIFFUSION_ADAPTERS_URI", raising=False)
    general = ["--kind", "general", "--base-model", "sd15"]
    assert cli_main(["adapters", "register", "cola-v", str(weights), *general]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"skuforge adapters register: {weights}: cannot register adapter 'cola-v': ")
    assert re.search(said, err) and err.count("\n") == 1
    assert not (tmp_path / "store" / "adapters" / "cola-v").exists()
    # A header of exactly the limit loads, and registers.
    weights.write_bytes(_with_header_of(limit))
    assert set(load_file(weights)) == {"unet.to_q.lora_A.weight"}
    assert registry.register("cola-v", weights, kind="general", base_model="sd15").rank == 4


# Every dtype the installed safetensors reads (its Dtype enum), with its bits per element.
_SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip


def _generator_loads(weights: Path) -> bool:
    """Whether the generator's load takes the file's tensors: diffusers reads them with safetensors'
    ``load_file``, and peft copies each into its LoRA layer, of the header's shape, in the model's dtype."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        tensors = load_file(weights)
    except SafetensorError:
        return False
    with safe_open(weights, framework="pt") as header:
        shapes = {name: header.get_slice(name).get_shape() for name in header.keys()}  # noqa: SIM118
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # C64: "Casting complex values to real discards the imaginary part"
            for name, tensor in tensors.items():
                torch.empty(shapes[name], dtype=torch.float32).copy_(tensor)
    except RuntimeError:  # NotImplementedError: torch has no conversion for it
        return False
    return True


@pytest.mark.parametrize("dtype", sorted(_SAFETENSORS_DTYPE_BITS))
def test_weights_of_a_dtype_the_generator_cannot_load_are_refused_at_registration_naming_it(
    dtype: str, tmp_path: Path
) -> None:
    # safetensors reads F4 and the F6 formats, so they registered, but torch has no dtype for F6 (load_file:
    # "Dtype not understood") and holds F4 two to a byte, which it cannot copy into a LoRA layer: every SKU
    # of the series was then adapter_unloadable.
    data_bytes = 32 * _SAFETENSORS_DTYPE_BITS[dtype] // 8  # a rank-4 lora_A of 4 x 8
    text = json.dumps({_A: {"dtype": dtype, "shape": [4, 8], "data_offsets": [0, data_bytes]}}).encode()
    weights = tmp_path / f"{dtype}.safetensors"
    weights.write_bytes(struct.pack("<Q", len(text)) + text + bytes(data_bytes))
    registry = AdapterRegistry(FileStore(tmp_path / "adapters"))
    if dtype in ("F4", "F6_E2M3", "F6_E3M2"):
        assert not _generator_loads(weights)
        with pytest.raises(
            WeightsRefused,
            match=rf"^cannot register adapter 'cola-v' from {weights}: .*'{_A}' has dtype '{dtype}'",
        ):
            registry.register("cola-v", weights, kind="general", base_model="sd15")
        assert not (tmp_path / "adapters" / "cola-v").exists()
    else:
        assert _generator_loads(weights)
        assert registry.register("cola-v", weights, kind="general", base_model="sd15").rank == 4


@pytest.mark.parametrize("between", ["weights_and_metadata", "metadata_and_cleanup"])
def test_two_registrations_of_one_id_at_once_leave_the_registered_weights_in_place(
    tmp_path: Path, between: str
) -> None:
    """Each registration deleted every weights file but its own and the one it replaced: another
    registering the same id at once (the trainer and `skuforge adapters register`) lost its weights,
    or had this one's deleted from under its metadata, and the adapter named weights no longer there."""
    store = FileStore(tmp_path / "adapters")
    registry = AdapterRegistry(store)
    registry.register("cola-v", lora_weights(1), kind="specialized", series="Cola", base_model="sd15")

    other = OtherRegistration(store, lora_weights(3))

    class OtherRegistersMidway(FileStore):
        def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> Any:
            written = key.endswith("metadata.json")
            if between == "metadata_and_cleanup":
                reference = super().put_bytes(key, data, content_type)
            if written:
                other.meanwhile()
            if between == "weights_and_metadata":
                reference = super().put_bytes(key, data, content_type)
            return reference

    AdapterRegistry(OtherRegistersMidway(tmp_path / "adapters")).register(
        "cola-v", lora_weights(2), kind="specialized", series="Cola", base_model="sd15"
    )
    other.thread.join(timeout=60)
    current = registry.get("cola-v")
    assert registry.registered_weights(current)  # ObjectMissing when its weights were deleted
