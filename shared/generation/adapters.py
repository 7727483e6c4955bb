"""The LoRA adapter registry: trained adapters in the object store, chosen per request by series.

Layout, under the registry's root (by default ``<SKUFORGE_STORE_URI>/adapters``)::

    <adapter_id>/pytorch_lora_weights-<sha256>.safetensors   diffusers LoRA weights (save_lora_weights)
    <adapter_id>/metadata.json                               AdapterMetadata: base model, kind, series,
                                                             rank, weight_name, weights_sha256...
    _registering/<adapter_id>.json                           while a registration writes its metadata

``metadata.json`` is written last, so an adapter whose upload broke half-way is never listed. The
weights file is named by its content (``weight_name`` in the metadata): registering an id again
writes a new file beside the old one, so a generator still holding the old listing (it is reused for
``SKUFORGE_DIFFUSION_ADAPTER_REFRESH_S``) fetches intact old bytes instead of failing their
checksum. The weights of the registration before the current one are kept; older ones are deleted.
Adapters registered before this layout name ``pytorch_lora_weights.safetensors`` and still load.
Two kinds exist, as in the field report (docs/architecture.md): a ``general`` adapter trained on
all shelf images, and ``specialized`` adapters trained on one product series. For a request the
choice is: the newest specialised adapter of the SKU's series, else the newest general one, else
none (``resolve_adapter``)::

    registry = AdapterRegistry(open_store("s3://models/adapters", uri_from="SKUFORGE_DIFFUSION_ADAPTERS_URI"))
    registry.register("shelf-general", Path("lora.safetensors"), kind="general", base_model="sd15-inpaint")
    choice = resolve_adapter(registry.list(), series="cola-330ml", base_model="sd15-inpaint")
    choice.adapter, choice.reason              # AdapterMetadata or None; "series", "general" or "none"
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import struct
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeGuard

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.common import Sha256Hex
from shared.errors import BadInput, ChecksumMismatch, ObjectMissing, StoreMisconfigured, TransientError
from shared.model_cache import (
    DEFAULT_UNUSED_DAYS,
    check_owner,
    copied_and_held,
    file_sha256,
    prune_unused,
    repair_folder_mode,
    writable_by_everyone,
    write_blocks_atomically,
)
from shared.store import ObjectStore, sha256_hex

__all__ = [
    "ADAPTER_ID_PATTERN",
    "METADATA_FILE",
    "NO_ADAPTER",
    "REGISTER_LOCKS",
    "REGISTER_LOCK_STALE_S",
    "WEIGHTS_FILE",
    "AdapterChoice",
    "AdapterKind",
    "AdapterMetadata",
    "AdapterRegistry",
    "NotLoraWeights",
    "RegistrationTakenOver",
    "RegistryLockBlocked",
    "RegistryStoreFailed",
    "WeightsRefused",
    "lora_rank",
    "read_weights",
    "resolve_adapter",
    "weights_file_name",
]

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' save_lora_weights writes
_WEIGHTS_SUFFIX = ".safetensors"
# The weights files register() writes: the content-addressed name, and the name it used before.
_REGISTRY_WEIGHTS = re.compile(r"pytorch_lora_weights(?:-[0-9a-f]{64})?\.safetensors")
METADATA_FILE = "metadata.json"
# One registration of an adapter id at a time writes its metadata and deletes old weights (a removal too):
# each holds ``_registering/<adapter_id>.json`` for that, having uploaded its weights before. (Not in the
# adapter's folder: a FileStore leaves a hidden file beside a key it compares and swaps, and a removed
# adapter's folder kept it.) A registration running whole between another's last look at the metadata and
# its delete lost its weights to that delete, and its metadata named none. Under the lock a clean-up still
# deletes the weights of one that is uploading or waiting, as no metadata names them yet; that one writes
# them again under the lock. The lock is held for a few small requests: one seen unchanged for
# REGISTER_LOCK_STALE_S (its registration killed) is taken over, so a killed registration holds the next
# ones up that long, not for ever. One paused that long, its lock taken over, looks at the lock right
# before each write it cannot undo (the metadata, a delete) and stops there; before, it wrote its metadata
# over the registration that took over, which had landed. (A pause between that look and the write still
# races, as any two did before; the store has no write conditional on another object that would close it.)
REGISTER_LOCKS = "_registering"  # no adapter id starts with '_'
REGISTER_LOCK_STALE_S = 120.0
_REGISTER_LOCK_POLL_S = 0.2
# A lock seen there, then not, this many times in a row is no lock at all (``_registering``).
_REGISTER_LOCK_MISSES = 5
# An explicit request for the base model, with no adapter (an adapter_id of None means "choose").
NO_ADAPTER = "none"
# Adapter ids double as peft adapter names, which are torch ModuleDict keys: no '.', no '/'.
ADAPTER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
MAX_ADAPTER_ID_CHARS = 64  # the pattern's
_ADAPTER_ID = re.compile(ADAPTER_ID_PATTERN)
# The down-projection ("A") tensors in the diffusers, peft and kohya namings.
_LORA_DOWN = re.compile(r"lora[._](?:A|down)\b")

AdapterKind = Literal["general", "specialized"]


class AdapterMetadata(BaseModel):
    """What ``metadata.json`` says about one adapter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    adapter_id: str = Field(pattern=ADAPTER_ID_PATTERN)
    kind: AdapterKind
    series: str | None = Field(default=None, description="the product series a specialised adapter is for")
    base_model: str = Field(min_length=1, description="name of the model the adapter was trained on")
    rank: int = Field(ge=1, description="LoRA rank")
    training_prompts: list[str] = Field(default_factory=list)
    # A file name inside the adapter's folder, never a path: it names the object fetched and cached.
    weight_name: str = Field(default=WEIGHTS_FILE, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    weights_sha256: Sha256Hex
    weights_bytes: int = Field(ge=1)
    created_at: datetime
    training_set_sha256: Sha256Hex | None = Field(
        default=None,
        description="content hash of the training set, when skuforge's trainer made it (lora-trainer)",
    )

    @field_validator("adapter_id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.lower() == NO_ADAPTER:
            raise ValueError(f"{NO_ADAPTER!r} is reserved: it asks for the base model without an adapter")
        return value

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        # Newest-first sorting compares these; one naive time among aware ones would raise there.
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _series_matches_kind(self) -> AdapterMetadata:
        if self.kind == "specialized" and not (self.series and self.series.strip()):
            raise ValueError("a specialized adapter needs the series it was trained on")
        if self.kind == "general" and self.series is not None:
            raise ValueError("a general adapter has no series (use kind='specialized')")
        return self


@dataclass(frozen=True)
class AdapterChoice:
    """The adapter a request gets, and why: recorded with every generated image."""

    adapter: AdapterMetadata | None
    reason: Literal["explicit", "series", "general", "none"]

    @property
    def adapter_id(self) -> str | None:
        return self.adapter.adapter_id if self.adapter else None


def _same_series(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.strip().casefold() == b.strip().casefold()


def resolve_adapter(
    adapters: Sequence[AdapterMetadata],
    *,
    series: str | None,
    adapter_id: str | None = None,
    base_model: str | None = None,
) -> AdapterChoice:
    """Pick the adapter for one request (a pure function of the registry's listing).

    ``adapter_id`` set: that adapter (``NO_ADAPTER`` = none), else ``BadInput('unknown_adapter')``.
    Otherwise the newest specialised adapter of ``series`` (compared case-insensitively), else the
    newest general adapter, else none. With ``base_model`` set, adapters trained on another base
    model are never chosen automatically, and asking for one explicitly is ``BadInput``.
    """
    if adapter_id is not None:
        if adapter_id.strip().lower() == NO_ADAPTER:
            return AdapterChoice(None, "explicit")
        found = next((a for a in adapters if a.adapter_id == adapter_id), None)
        if found is None:
            raise BadInput(
                "unknown_adapter",
                f"no adapter {adapter_id!r} in the registry (registered: "
                f"{', '.join(sorted(a.adapter_id for a in adapters)) or 'none'})",
            )
        if base_model is not None and found.base_model != base_model:
            raise BadInput(
                "adapter_base_mismatch",
                f"adapter {adapter_id!r} was trained on {found.base_model!r}, this model is {base_model!r}",
            )
        return AdapterChoice(found, "explicit")
    usable = [a for a in adapters if base_model is None or a.base_model == base_model]
    newest_first = sorted(usable, key=lambda a: (a.created_at, a.adapter_id), reverse=True)
    for adapter in newest_first:
        if adapter.kind == "specialized" and _same_series(adapter.series, series):
            return AdapterChoice(adapter, "series")
    for adapter in newest_first:
        if adapter.kind == "general":
            return AdapterChoice(adapter, "general")
    return AdapterChoice(None, "none")


def weights_file_name(weights_sha256: str) -> str:
    """The name a registration stores its weights under: named by content, never overwritten."""
    return f"{WEIGHTS_FILE.removesuffix(_WEIGHTS_SUFFIX)}-{weights_sha256}{_WEIGHTS_SUFFIX}"


# The longest header safetensors reads (its MAX_HEADER_SIZE); a longer one is HeaderTooLarge at load.
_MAX_HEADER_BYTES = 100_000_000


def _check_header_length(header_len: int) -> None:
    """``ValueError`` for a header length safetensors refuses at load ("header too large")."""
    if header_len > _MAX_HEADER_BYTES:
        raise ValueError(
            f"not a safetensors file safetensors loads: its header is {header_len} bytes, more than the "
            f"{_MAX_HEADER_BYTES} safetensors reads"
        )


def read_weights(path: Path) -> bytes:
    """The bytes of a weights file, read once its 8-byte header length is one safetensors loads;
    ``ValueError`` before the rest is read otherwise: a header of hundreds of MB was read whole, and
    registered, though no generator could load it."""
    with path.open("rb") as file:
        length = file.read(8)
        if len(length) == 8:
            _check_header_length(struct.unpack("<Q", length)[0])
        return length + file.read()


def safetensors_header(weights: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors file (8-byte length, then JSON); ``ValueError`` for anything
    else. Reads no tensor, so no torch is needed, but checks that the tensors the header names fill
    the rest of the file, laid end to end as safetensors loads them: a copy cut short registered and
    then every SKU of its series failed."""
    if len(weights) < 8:
        raise ValueError("not a safetensors file: shorter than its header length")
    (header_len,) = struct.unpack("<Q", weights[:8])
    _check_header_length(header_len)
    if header_len > len(weights) - 8:
        raise ValueError(
            f"not a safetensors file, or one cut short: its header says {header_len} bytes, "
            f"the file has {len(weights) - 8} after the length"
        )
    try:
        header = json.loads(weights[8 : 8 + header_len])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a safetensors file: {exc}") from None
    except RecursionError:  # '[[[[...' deeper than the parser recurses: a traceback from the CLI
        raise ValueError("not a safetensors file: its header is nested too deeply to read") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file: its header is not a JSON object")
    metadata = header.get("__metadata__")
    # safetensors reads it as names to strings, or none (null), and refuses any other at load ("invalid
    # JSON in header"): such weights registered and were then adapter_unloadable.
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(text, str) for text in metadata.values())
    ):
        raise ValueError(
            f"not a safetensors file: its '__metadata__' is {json.dumps(metadata)[:80]}, not an object "
            "of strings by name"
        )
    data_end = _tensors_end(
        {name: _tensor_offsets(name, info) for name, info in header.items() if name != "__metadata__"}
    )
    data_bytes = len(weights) - 8 - header_len
    if data_end != data_bytes:
        raise ValueError(
            f"damaged safetensors file (an interrupted copy?): its tensors need {data_end} bytes "
            f"after the header, the file has {data_bytes}"
        )
    return header


# Bits per element of each dtype the safetensors format names (its Dtype enum).
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
# Dtypes safetensors reads but the generator cannot load (torch 2.15, safetensors 0.8): torch has no F6
# dtype (safetensors.torch: "Dtype not understood"), and holds F4 two to a byte (float4_e2m1fn_x2, of
# half the shape the header gives), which it cannot convert into a LoRA layer of the model's dtype.
_UNLOADABLE_DTYPES = frozenset({"F4", "F6_E2M3", "F6_E3M2"})


def _tensors_end(offsets: dict[str, tuple[int, int]]) -> int:
    """Where the last tensor ends in the data after the header; ``ValueError`` unless, taken in the
    order of their offsets, the tensors start at byte 0 and each starts where the one before it ends.
    safetensors refuses any other file at load ("invalid offset"): a gap or an overlap registered,
    and every SKU of its series was then refused as ``adapter_unloadable``."""
    end, before = 0, None
    # Sorted as safetensors sorts them (by start, then end); the name only makes ties reproducible.
    for name, (start, stop) in sorted(offsets.items(), key=lambda item: (item[1], item[0])):
        if start != end:
            where = (
                f"the tensor before it ({before!r}) ends at {end}"
                if before is not None
                else "the first tensor starts at 0"
            )
            raise ValueError(
                f"not a safetensors file: tensor {name!r} starts at byte {start} of the data, where {where} "
                "(safetensors loads only tensors laid end to end, without gaps or overlaps)"
            )
        end, before = stop, name
    return end


def _tensor_offsets(name: str, info: Any) -> tuple[int, int]:
    """Where a header entry's tensor starts and ends in the data after the header; ``ValueError`` for an entry
    that is not a tensor description (before, ``[1, 2]`` was an AttributeError traceback), or one whose
    bytes are not its dtype and shape's: safetensors refuses such a file at load, so it registered and
    every SKU of its series was then refused as ``adapter_unloadable``."""
    if isinstance(info, dict):
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if (
            _whole_numbers(shape)
            and _whole_numbers(offsets)
            and len(offsets) == 2
            and offsets[0] <= offsets[1]
        ):
            dtype = info.get("dtype")
            if not isinstance(dtype, str) or dtype not in _DTYPE_BITS:
                raise ValueError(
                    f"not a safetensors file: tensor {name!r} has dtype {dtype!r}, none safetensors reads"
                )
            if dtype in _UNLOADABLE_DTYPES:
                raise ValueError(
                    f"tensor {name!r} has dtype {dtype!r}, which the generator's torch cannot load into a "
                    "LoRA layer (save the weights as F32, F16 or BF16)"
                )
            held, bits = offsets[1] - offsets[0], math.prod(shape) * _DTYPE_BITS[dtype]
            if held != bits / 8:
                raise ValueError(
                    f"not a safetensors file: tensor {name!r} holds {held} bytes, its shape {shape} "
                    f"of {dtype} needs {bits / 8:g}"
                )
            return offsets[0], offsets[1]
    raise ValueError(
        f"not a safetensors file: tensor {name!r} is not an object with a list 'shape' of sizes "
        "and two 'data_offsets'"
    )


def _whole_numbers(value: Any) -> TypeGuard[list[int]]:
    """Whether ``value`` is a JSON list of whole numbers from 0 (a shape, or data offsets)."""
    return isinstance(value, list) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value
    )


class _NamesAnotherAdapter(ObjectMissing):
    """A ``metadata.json`` that names another adapter than its folder: none is registered there."""

    def __init__(self, uri: str, named: str) -> None:
        # ObjectMissing's own detail ("no object at ...") would deny a file its owner can see.
        BadInput.__init__(
            self,
            "object_missing",
            f"{uri} names adapter {named!r}, not its folder's: no adapter is registered there "
            "(a folder copied by hand? register the adapter under its own id)",
        )


class WeightsRefused(ValueError):
    """Weights ``AdapterRegistry.register`` cannot take (not a safetensors file, cut short, no LoRA
    tensors, another rank than given): the message names the adapter, and the file when one was given;
    ``skuforge adapters register`` names its file before it."""


class NotLoraWeights(ValueError):
    """A safetensors file that holds no LoRA weights the registry can take (``skuforge adapters
    register`` names the file)."""


def lora_rank(weights: bytes) -> int:
    """The LoRA rank of a safetensors file: the smallest dimension of its down-projection tensors.

    Reads only the safetensors header, so no torch is needed.
    """
    rank = _header_rank(safetensors_header(weights))
    if rank is None:
        raise NotLoraWeights("no lora_A / lora.down tensors in the file: not LoRA weights")
    return rank


def _header_rank(header: dict[str, Any]) -> int | None:
    """The rank a safetensors header's down-projection tensors give; None when it has none."""
    ranks = {
        min(info["shape"])
        for name, info in header.items()
        if name != "__metadata__" and _LORA_DOWN.search(name) and info.get("shape")
    }
    return max(ranks) if ranks else None


def _checked_rank(weights: bytes, rank: int | None) -> int:
    """``rank``, or the weights' own; a given rank is checked against them where they say one. Given
    without a check, a text file registered (as a general adapter, chosen for every SKU without a
    series one) and the generator refused it for each of them.

    A given rank stands for weights whose down-projections are named in a way not read here, but not
    for a file with no LoRA tensor at all (a base model's weights, none): no loader takes that."""
    if rank is None:
        return lora_rank(weights)
    header = safetensors_header(weights)  # ValueError: not a safetensors file
    if not any("lora" in name.lower() for name in header if name != "__metadata__"):
        raise NotLoraWeights("no LoRA tensors in the file (no tensor name holds 'lora'): not LoRA weights")
    found = _header_rank(header)
    if found is not None and found != rank:
        raise ValueError(f"rank {rank} was given, but the weights' rank is {found}")
    return rank


def _field_problem(location: tuple[int | str, ...], message: str) -> str:
    """One problem pydantic found in ``AdapterMetadata``: ``field: message``, or the message alone
    when it is about the whole metadata (a series for a general adapter)."""
    return f"{'.'.join(map(str, location))}: {message}" if location else message


class RegistryStoreFailed(TransientError):
    """The registry's store failed (away, or refusing a read or a write): its own words, raised from
    them. A type of its own, so that a caller holding two stores (the LoRA trainer's object store, whose
    folder may lie inside the registry's or hold it) can tell which one failed; told by the uri in the
    words, a fault of an object store inside the registry's folder was taken for the registry's."""


class RegistryLockBlocked(RegistryStoreFailed, StoreMisconfigured):
    """Something that is no object stands at a registration lock's path: the registry's, but no store
    away: its words say what to remove, and the CLI's "could not be reached ... try again" misled."""


class RegistrationTakenOver(RegistryStoreFailed):
    """A registration or removal paused past ``REGISTER_LOCK_STALE_S`` holding its lock, which another
    took over meanwhile: it stopped before writing over that one's work. The registry's, and retried
    (the LoRA trainer registers again); the CLI says so, not that the store could not be reached."""


class AdapterRegistry:
    """Adapters stored under one object-store root: list, register, get, remove, fetch weights.

    The store's faults (``TransientError``) come out of its methods as ``RegistryStoreFailed``."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @contextmanager
    def _store_faults(self) -> Iterator[None]:
        """The store's ``TransientError`` raised as the registry's (``RegistryStoreFailed``)."""
        try:
            yield
        except RegistryStoreFailed:
            raise
        except TransientError as exc:
            raise RegistryStoreFailed(str(exc)) from exc

    def list(self) -> list[AdapterMetadata]:
        """Every registered adapter, sorted by id; unreadable metadata is logged and skipped.

        One broken ``metadata.json`` must not stop generation for every SKU.
        """
        adapters: list[AdapterMetadata] = []
        with self._store_faults():
            for key in self.store.list_addressable():
                parts = key.split("/")
                if len(parts) != 2 or parts[1] != METADATA_FILE:
                    continue
                try:
                    metadata = AdapterMetadata.model_validate_json(self.store.get_bytes(key))
                except ValidationError as exc:
                    logger.warning("skipping adapter %s: invalid %s: %s", parts[0], METADATA_FILE, exc)
                    continue
                except ObjectMissing:  # removed between the listing and the read: not registered now
                    continue
                if metadata.adapter_id != parts[0]:
                    logger.warning(
                        "skipping adapter %s: its metadata names %s", parts[0], metadata.adapter_id
                    )
                    continue
                adapters.append(metadata)
        return sorted(adapters, key=lambda a: a.adapter_id)

    def get(self, adapter_id: str) -> AdapterMetadata:
        """The metadata of one adapter; ``ObjectMissing`` if it is not registered (no ``metadata.json``,
        or one that names another adapter, as a folder copied by hand holds: ``list`` skips it too),
        pydantic's ``ValidationError`` if its ``metadata.json`` does not read (not JSON, written by hand
        or by a newer version): ``list`` skips such an adapter, ``remove`` removes it all the same."""
        self._check_id(adapter_id)
        metadata_key = f"{adapter_id}/{METADATA_FILE}"
        with self._store_faults():
            data = self.store.get_bytes(metadata_key)
        metadata = AdapterMetadata.model_validate_json(data)
        if metadata.adapter_id != adapter_id:
            raise _NamesAnotherAdapter(self.store.uri_for(metadata_key), metadata.adapter_id)
        return metadata

    def register(
        self,
        adapter_id: str,
        weights: bytes | Path,
        *,
        kind: AdapterKind,
        base_model: str,
        series: str | None = None,
        rank: int | None = None,
        training_prompts: Sequence[str] = (),
        training_set_sha256: str | None = None,
    ) -> AdapterMetadata:
        """Upload LoRA weights and their metadata (metadata last); replaces an adapter of the same id.

        ``rank`` defaults to the one read from the weights. Invalid metadata raises ``ValueError``
        before anything is written, weights it cannot take ``WeightsRefused`` (naming the adapter, and
        ``weights`` when a path). The weights go to a file named by their sha256, so the
        replaced registration's weights stay readable for generators that have not listed again; weights
        the store holds whole already (``ObjectStore.holds``) are not uploaded again. Registrations of
        one id write their metadata one at a time (``REGISTER_LOCKS``): this one waits for another, for
        a killed one's lock up to ``REGISTER_LOCK_STALE_S``.
        """
        self._check_id(adapter_id)
        try:
            data = read_weights(weights) if isinstance(weights, Path) else weights
            checked_rank = _checked_rank(data, rank)
        except ValueError as exc:
            source = f" from {weights}" if isinstance(weights, Path) else ""
            raise WeightsRefused(f"cannot register adapter {adapter_id!r}{source}: {exc}") from None
        weights_sha256 = sha256_hex(data)
        try:
            metadata = AdapterMetadata(
                adapter_id=adapter_id,
                kind=kind,
                series=series,
                base_model=base_model,
                rank=checked_rank,
                training_prompts=list(training_prompts),
                weight_name=weights_file_name(weights_sha256),
                weights_sha256=weights_sha256,
                weights_bytes=len(data),
                created_at=datetime.now(UTC),
                training_set_sha256=training_set_sha256,
            )
        except ValidationError as exc:
            # In one line (the CLI prints it): pydantic's own report spans lines, echoes the whole
            # metadata and links its docs.
            problems = "; ".join(_field_problem(error["loc"], error["msg"]) for error in exc.errors())
            raise ValueError(f"cannot register adapter {adapter_id!r}: {problems}") from None
        weights_key = f"{adapter_id}/{metadata.weight_name}"
        with self._store_faults():
            # Named by their sha256, weights registered before are there already: checked, not sent again
            # (hundreds of MB). Damaged ones are written again: registering them is how they are mended.
            if not self.store.holds(weights_key, data):
                self.store.put_bytes(weights_key, data)
            with self._registering(adapter_id) as holding:
                replaced = self._registered(adapter_id)
                # A registration holding the lock while ours uploaded or checked them (or waited) deleted
                # them: no metadata named them.
                if not self.store.exists(weights_key):
                    self.store.put_bytes(weights_key, data)
                holding.check("published nothing")
                self.store.put_json(f"{adapter_id}/{METADATA_FILE}", metadata.model_dump(mode="json"))
                # Keep the replaced registration's weights: generators' cached listings point at them. Older
                # ones only a listing from before the replaced registration names; such a generator lists
                # again and retries (DiffusionBackend). Only files this registry names itself are deleted.
                # Once taken over, the clean-up is the one that took over's: our metadata stands, and a
                # delete here could take the weights it names.
                keep = {metadata.weight_name, *([replaced.weight_name] if replaced is not None else [])}
                for key in list(self.store.list_addressable(f"{adapter_id}/")):
                    name = key.removeprefix(f"{adapter_id}/")
                    if _REGISTRY_WEIGHTS.fullmatch(name) and name not in keep and holding.held():
                        self.store.delete(key)
        return metadata

    @contextmanager
    def _registering(self, adapter_id: str) -> Iterator[_RegisterLock]:
        """Hold the adapter's registration lock (under ``REGISTER_LOCKS``) inside: wait while another
        registration holds it, and take over one seen unchanged for ``REGISTER_LOCK_STALE_S``. Yields
        the lock, to look before each write that cannot be undone whether it is still this one's."""
        key = f"{REGISTER_LOCKS}/{adapter_id}.json"
        holder = {"registration": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        body = json.dumps(holder, sort_keys=True).encode()
        seen: tuple[str, float] | None = None  # the other's lock: its version, and since when it stands
        missing = 0  # tries in a row that found something at the key, then no object there
        while not self.store.put_new(key, body):
            try:
                _, version = self.store.get_versioned(key)
            except ObjectMissing:
                # Released between the two, once; every time, something that is no object stands there
                # (a folder, a link to nothing): tried again at once, that spun forever without a word.
                missing += 1
                if missing >= _REGISTER_LOCK_MISSES:
                    raise RegistryLockBlocked(
                        f"cannot take the registration lock {self.store.uri_for(key)} of adapter "
                        f"{adapter_id}: something that is no object stands there (a folder, or a link to "
                        "nothing?); remove it"
                    ) from None
                time.sleep(_REGISTER_LOCK_POLL_S)
                continue
            missing = 0
            # Aged on this process's clock: no other machine's clock is read, so none skewed makes a lock
            # look stale early.
            now = time.monotonic()
            if seen is None or seen[0] != version:
                # A WARNING: `skuforge adapters register` sets no logging up, and Python shows only
                # those; at INFO its user waited out a killed registration's lock without a word.
                if seen is None:
                    logger.warning(
                        "waiting for another registration of adapter %s (lock %s; one left by a killed "
                        "registration is taken over once unchanged for %.0fs)",
                        adapter_id,
                        self.store.uri_for(key),
                        REGISTER_LOCK_STALE_S,
                    )
                seen = (version, now)
            elif now - seen[1] >= REGISTER_LOCK_STALE_S and self.store.replace_if(key, body, version):
                logger.warning(
                    "took over the registration lock %s of adapter %s, unchanged for %.0fs",
                    self.store.uri_for(key),
                    adapter_id,
                    REGISTER_LOCK_STALE_S,
                )
                break
            time.sleep(_REGISTER_LOCK_POLL_S)
        try:
            yield _RegisterLock(self.store, key, body, adapter_id)
        finally:
            self._release(key, body)

    def _release(self, key: str, body: bytes) -> None:
        """Remove the registration lock ``body`` wrote, never one that took it over. A store failing
        here fails no registration (its metadata stands): the lock left is taken over once stale."""
        try:
            held, version = self.store.get_versioned(key)
            if held == body:
                self.store.delete_if(key, version)
        except ObjectMissing:
            pass
        except TransientError as exc:
            logger.warning(
                "could not remove the registration lock %s (%s): the next registration of its adapter "
                "takes it over after %.0fs",
                self.store.uri_for(key),
                exc,
                REGISTER_LOCK_STALE_S,
            )

    def remove(self, adapter_id: str) -> AdapterMetadata | None:
        """Take an adapter out of the registry: its metadata first (no listing names it from then on),
        then every weights file this registry wrote for it; other files under its folder stay.

        Returns the removed metadata, or None when it was unreadable (such an adapter is never listed,
        but its files are still removed). ``ObjectMissing`` when no adapter of that id is registered;
        weights files left in its folder all the same (by a removal cut short) are removed first, logged.
        A generator whose listing still names it serves it until its listing is read again
        (``SKUFORGE_DIFFUSION_ADAPTER_REFRESH_S``); if it must load the weights before that, the
        request is retried with a fresh listing (``DiffusionBackend``). It waits for a registration of
        the id under way, as registrations wait for each other.
        """
        self._check_id(adapter_id)
        metadata_key = f"{adapter_id}/{METADATA_FILE}"
        # Under the registration lock: a registration running whole between the metadata's delete and
        # the listing lost its weights to the deletes that followed, its metadata naming none.
        with self._store_faults(), self._registering(adapter_id) as holding:
            if not self.store.exists(metadata_key):
                # Weights no metadata names: a removal killed, or taken over, past the metadata's delete
                # left them, and nothing else ever deleted them. (A registration under way that uploaded
                # its own before the lock uploads them again once it holds it.)
                left = self._delete_weights(adapter_id, holding)
                if left:
                    logger.warning(
                        "adapter %s is not registered, but %d weights files no metadata names were left in "
                        "its folder (by a removal cut short): removed %s",
                        adapter_id,
                        len(left),
                        ", ".join(map(self.store.uri_for, left)),
                    )
                raise ObjectMissing(self.store.uri_for(metadata_key))
            removed = self._registered(adapter_id)
            holding.check("removed nothing")
            self.store.delete(metadata_key)
            self._delete_weights(adapter_id, holding)
        return removed

    def _delete_weights(self, adapter_id: str, holding: _RegisterLock) -> tuple[str, ...]:
        """Delete the weights files this registry wrote in the adapter's folder while ``holding`` is
        held, and return their keys. Taken over, by a registration: the weights are those it names, and
        it deletes the rest; by a removal: that one deletes them."""
        deleted = []
        for key in list(self.store.list_addressable(f"{adapter_id}/")):
            if _REGISTRY_WEIGHTS.fullmatch(key.removeprefix(f"{adapter_id}/")) and holding.held():
                self.store.delete(key)
                deleted.append(key)
        return tuple(deleted)

    def is_registered(self, adapter_id: str) -> bool:
        """Whether ``adapter_id`` has a ``metadata.json`` (read or not: ``get`` says whether it reads)."""
        with self._store_faults():
            return self.store.exists(f"{adapter_id}/{METADATA_FILE}")

    def registered_weights(self, metadata: AdapterMetadata) -> bytes:
        """The weights ``metadata`` names, as the registry holds them: ``ObjectMissing`` when lost,
        ``ChecksumMismatch`` when they do not match its sha256."""
        with self._store_faults():
            return self.store.read_checked(
                f"{metadata.adapter_id}/{metadata.weight_name}", metadata.weights_sha256
            )

    def _registered(self, adapter_id: str) -> AdapterMetadata | None:
        """The adapter's current metadata, or None when it has none (or none this version reads)."""
        try:
            return self.get(adapter_id)
        except (ObjectMissing, ValidationError):
            return None

    def fetch_weights(
        self, metadata: AdapterMetadata, cache_dir: Path, *, unused_days: float = DEFAULT_UNUSED_DAYS
    ) -> Path:
        """A local directory holding the adapter's weights file, checked against its sha256.

        Cached by sha256, so a re-registered adapter (new weights, same id) is fetched again; held in
        the cache (``shared/model_cache.py:hold``), so no pruning deletes it, until this process exits
        or releases it (``shared/model_cache.py:release``, as ``LoraSlots`` does on eviction). Before a
        copy is made, the cache's copies not used for ``unused_days`` are deleted (``prune_unused``).
        """
        target = cache_dir / f"lora-{metadata.weights_sha256[:16]}"
        check_owner(target)  # its owner could swap the file between our check and the load
        path = target / metadata.weight_name
        # A folder made before the cache masked everyone's write bit keeps no planted file from now on;
        # a file so made is written again below.
        repair_folder_mode(target)

        def whole() -> bool:
            # A cached copy is checked as a fetched one is: one damaged (or planted) at the same size
            # was loaded as it was.
            return (
                path.is_file()
                and not writable_by_everyone(path)
                and path.stat().st_size == metadata.weights_bytes
                and file_sha256(path) == metadata.weights_sha256
            )

        key = f"{metadata.adapter_id}/{metadata.weight_name}"

        def as_registered(size: int, sha256: str) -> None:
            if sha256 != metadata.weights_sha256:
                raise ChecksumMismatch(self.weights_uri(metadata), metadata.weights_sha256, sha256)

        # In blocks, checked before renamed into place: concurrent fetchers never see half a file, and
        # weights of hundreds of MB are not held in memory (read whole, they were, twice over at load).
        def copy() -> None:
            # Room first, as fetch_directory makes it, and here too, not only when the diffusion model is
            # fetched at start-up: a generator given a local model fetched none, and every adapter it was
            # ever asked for stayed in the cache. Not before a whole copy is reused, which stays held.
            prune_unused(cache_dir, unused_days)
            write_blocks_atomically(path, self.store.iter_bytes(key), check=as_registered)

        # Held as the cache's own copies are: a pruner in another process that found the folder old
        # just before the weights landed moves it aside just after (hold says so), and the folder
        # returned was gone, held by nobody. Copied again then. A whole copy is checked once, not twice.
        with self._store_faults():
            copied_and_held(target, whole=whole, copy=copy)
        return target

    def weights_uri(self, metadata: AdapterMetadata) -> str:
        """Where the adapter's weights file lies in the registry: what a refusal of them names."""
        return self.store.uri_for(f"{metadata.adapter_id}/{metadata.weight_name}")

    @staticmethod
    def _check_id(adapter_id: str) -> None:
        # fullmatch: with match, '$' also matches before a trailing newline ("id\n" passed).
        if not _ADAPTER_ID.fullmatch(adapter_id):
            raise BadInput(
                "invalid_adapter_id",
                f"{adapter_id!r} is not an adapter id (letters, digits, '_' and '-', at most 64)",
            )


@dataclass(frozen=True)
class _RegisterLock:
    """A registration lock this process took (``AdapterRegistry._registering``): ``body`` at ``key``."""

    store: ObjectStore
    key: str
    body: bytes
    adapter_id: str

    def held(self) -> bool:
        """Whether the lock is still this one's, not taken over (or released) by another since."""
        try:
            return self.store.get_bytes(self.key) == self.body
        except ObjectMissing:
            return False

    def check(self, outcome: str) -> None:
        """``RegistrationTakenOver`` (saying ``outcome``: what this one did not do) once it is not held."""
        if not self.held():
            raise RegistrationTakenOver(
                f"adapter {self.adapter_id}: paused for {REGISTER_LOCK_STALE_S:.0f}s or more holding the "
                f"registration lock {self.store.uri_for(self.key)}, which another registration took over "
                f"meanwhile; {outcome}, so as not to undo its work (run this again if it should stand)"
            )
