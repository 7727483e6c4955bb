"""Ingest: a folder per SKU (photos + metadata.json) → object store → ``sku.ingested``.

Consumes: a directory on disk (``skuforge ingest DIR``).
Produces: one ``sku.ingested`` event per SKU, after its photos are stored.
Bad input: every SKU folder is checked first (metadata, safe sku_id, photo count, each photo
decodes within the limits); if any is bad, the command names every problem and uploads and
publishes nothing, so bad input never half-publishes a batch. Should the broker or the store fail
after the checks, the command says which SKUs were published and which not (exit 1); running it
again finishes the batch under the same keys and event ids. Checked photos wait as PNG files in a
temporary folder, not in memory (``ingest_path``). HEIC/HEIF photos are named as a problem (not
read here), not skipped.

Layout read (what ``skuforge synth`` writes)::

    DIR/<any folder name>/metadata.json   {"sku_id", "name", "category", "brand", "series"}
    DIR/<any folder name>/*.png|jpg|...   1..SKUFORGE_MAX_PHOTOS_PER_SKU photos

``DIR`` may also be a single SKU folder. Hidden folders and files (names starting with ".") are skipped,
and so is a ``__MACOSX`` folder (the resource forks macOS puts in a zip it makes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from schemas.common import ImageRef, SkuMetadata
from schemas.envelope import derive_id
from schemas.events import ReferencePhoto, SkuIngested
from schemas.topics import SKU_INGESTED
from shared.bus import Publisher
from shared.config import ConfigError, Settings, load_settings
from shared.errors import ImageRejected, TransientError
from shared.images import PHOTO_SUFFIXES, photo_as_stored, refuse_oversized
from shared.store import ObjectStore, open_store, sha256_hex

PRODUCER = "ingest"
T = TypeVar("T")
# Not SKU folders, though folders: a zip made on a Mac unpacks with one beside the SKUs, full of "._NAME".
NOT_SKU_FOLDERS = frozenset({"__MACOSX"})


class IngestError(Exception):
    """One or more SKU folders cannot be ingested; the message lists every problem."""


class IngestIncomplete(IngestError):
    """Publishing stopped part-way (the broker or the store failed after the checks passed): the
    message names the SKUs published and those not; running the command again finishes the batch
    (the same keys and event ids)."""


@dataclass(frozen=True)
class PreparedPhoto:
    """A photo that decoded within the limits, re-encoded as PNG, ready to upload."""

    photo_id: str
    original_filename: str
    png: bytes
    width: int
    height: int


@dataclass(frozen=True)
class PreparedSku:
    """A SKU folder that passed every check."""

    folder: Path
    metadata: SkuMetadata
    photos: list[PreparedPhoto]

    @property
    def event_id(self) -> str:
        """Same folder content → same event id, so re-ingesting is idempotent downstream."""
        return derive_id(
            PRODUCER, self.metadata.model_dump_json(), *(photo.photo_id for photo in self.photos)
        )


def find_sku_folders(path: Path) -> list[Path]:
    """The SKU folders under ``path`` (or ``path`` itself when it holds a metadata.json)."""
    if not path.is_dir():
        raise IngestError(f"{path}: not a directory")
    if (path / "metadata.json").is_file():
        return [path]
    folders = sorted(
        child
        for child in path.iterdir()
        if child.is_dir() and not child.name.startswith(".") and child.name not in NOT_SKU_FOLDERS
    )
    if not folders:
        raise IngestError(f"{path}: no SKU folders (a folder with metadata.json and photos) found")
    return folders


def prepare_sku(folder: Path, settings: Settings) -> tuple[PreparedSku | None, list[str]]:
    """Check one SKU folder; returns the prepared SKU or the list of problems."""
    problems: list[str] = []
    metadata: SkuMetadata | None = None
    metadata_path = folder / "metadata.json"
    try:
        metadata = SkuMetadata.model_validate_json(metadata_path.read_bytes())
    except FileNotFoundError:
        problems.append(f"{metadata_path}: missing (needs sku_id, name, category, brand, series)")
    except OSError as exc:  # a folder named metadata.json, no permission...
        problems.append(f"{metadata_path}: cannot be read ({exc.strerror or exc})")
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "(file)"
            problems.append(f"{metadata_path}: {field}: {error['msg']}")

    # Hidden files are skipped as hidden folders are: macOS writes an invisible "._NAME" beside each
    # photo on non-Apple volumes, and refusing the SKU over a file its owner cannot see helps no one.
    visible = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    files = [p for p in visible if p.suffix.lower() in PHOTO_SUFFIXES]
    # An iPhone's photos are HEIC by default: skipped as "not a photo", they left a SKU one photo short
    # without a word.
    problems.extend(
        f"{p}: HEIC/HEIF is not read here; export it as JPEG or PNG"
        for p in visible
        if p.suffix.lower() in (".heic", ".heif")
    )
    if not files:
        problems.append(f"{folder}: no photos ({', '.join(sorted(PHOTO_SUFFIXES))})")
    elif len(files) > settings.max_photos_per_sku:
        problems.append(
            f"{folder}: {len(files)} photos; at most {settings.max_photos_per_sku} "
            "(SKUFORGE_MAX_PHOTOS_PER_SKU) are accepted"
        )
    photos: list[PreparedPhoto] = []
    seen: set[str] = set()
    for file in files[: settings.max_photos_per_sku]:
        try:
            # Refuse an oversized file by its size, before reading gigabytes into memory.
            refuse_oversized(file.stat().st_size, settings.max_image_bytes)
            image, png = photo_as_stored(
                file.read_bytes(), max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes
            )
        except ImageRejected as exc:
            problems.append(f"{file}: refused ({exc})")
            continue
        except OSError as exc:
            problems.append(f"{file}: cannot be read ({exc.strerror or exc})")
            continue
        photo_id = sha256_hex(png)[:16]
        if photo_id in seen:
            continue  # the same picture twice adds nothing
        seen.add(photo_id)
        # A name that is not UTF-8 on disk (Latin-1 from an old camera or zip) is kept readable: as
        # it came, it failed the event's schema after earlier SKUs were already published.
        name = file.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:255]
        photos.append(PreparedPhoto(photo_id, name, png, width=image.width, height=image.height))
    if problems or metadata is None:
        return None, problems
    return PreparedSku(folder=folder, metadata=metadata, photos=photos), []


def check_folders(path: Path, settings: Settings) -> Iterator[tuple[PreparedSku | None, list[str]]]:
    """Each SKU folder under ``path`` in turn: the prepared SKU, or None and its problems (an
    ``sku_id`` that an earlier folder already uses is one). One SKU's photos at a time: a caller
    that lets go of each SKU before asking for the next holds one SKU's photos, not the batch's."""
    owners: dict[str, Path] = {}
    for folder in find_sku_folders(path):
        sku, problems = prepare_sku(folder, settings)
        if sku is not None and sku.metadata.sku_id in owners:
            problems = [
                f"{folder}: sku_id {sku.metadata.sku_id!r} is also used by {owners[sku.metadata.sku_id]}"
            ]
            sku = None
        elif sku is not None:
            owners[sku.metadata.sku_id] = folder
        yield sku, problems
        del sku  # not kept while the next folder is read


def prepare_all(path: Path, settings: Settings) -> list[PreparedSku]:
    """Check every SKU folder under ``path``; raise IngestError naming all problems if any. Holds every
    photo of the batch as PNG: for a large batch, ``ingest_path`` spools them to disk instead."""
    return _check_all(path, settings, lambda sku: sku)


def survey_folders(path: Path, settings: Settings) -> list[tuple[str, int]]:
    """(sku_id, photos) of every SKU folder under ``path``, checked as ``skuforge ingest`` checks them
    (IngestError naming all problems if any), holding one SKU's photos at a time."""
    return _check_all(path, settings, lambda sku: (sku.metadata.sku_id, len(sku.photos)))


def _check_all(path: Path, settings: Settings, keep: Callable[[PreparedSku], T]) -> list[T]:
    """``keep`` of every SKU folder under ``path`` that passes its checks, in order, or IngestError
    naming every problem. Once a problem is found only the checks go on; each prepared SKU is let go
    before the next folder is read, so what stays is what ``keep`` returns."""
    kept: list[T] = []
    problems: list[str] = []
    for sku, sku_problems in check_folders(path, settings):
        problems.extend(sku_problems)
        if sku is not None and not problems:
            kept.append(keep(sku))
        del sku
    if problems:
        raise IngestError(_nothing_ingested(problems))
    return kept


def _nothing_ingested(problems: list[str]) -> str:
    return "nothing was ingested; fix these and run again:\n  " + "\n  ".join(problems)


def upload_sku(sku: PreparedSku, store: ObjectStore) -> SkuIngested:
    """Store the photos (keys derived from content, so re-uploads overwrite) and build the event."""
    photos = []
    for photo in sku.photos:
        key = f"incoming/{sku.metadata.sku_id}/{photo.photo_id}.png"
        stored = store.put_bytes(key, photo.png, "image/png")
        image = ImageRef(**stored.model_dump(), width=photo.width, height=photo.height)
        photos.append(
            ReferencePhoto(photo_id=photo.photo_id, image=image, original_filename=photo.original_filename)
        )
    return SkuIngested(sku=sku.metadata, photos=photos)


def ingest_path(path: Path, settings: Settings, *, store: ObjectStore | None = None) -> list[str]:
    """Ingest every SKU under ``path``; returns the event ids published (one per SKU).

    Every folder is checked before anything is uploaded, and nothing is uploaded when Kafka cannot
    be reached at the start. A SKU's photos, once checked, wait as PNG files in a temporary folder
    (``TMPDIR``; on local disk unless that is a tmpfs), not in memory: a thousand phone photos as PNG
    are tens of gigabytes. Should a publish fail later (a topic missing), the photos already stored
    stay under their content keys and the next run writes the same keys.
    """
    with tempfile.TemporaryDirectory(prefix="skuforge-ingest-") as spool_dir:
        # Their photos' bytes are on disk: png is empty in these.
        spooled = _check_all(path, settings, lambda sku: _spool(sku, Path(spool_dir)))
        store = store or open_store(
            settings.store_uri, s3_endpoint_url=settings.s3_endpoint_url, s3_region=settings.s3_region
        )
        publisher = Publisher(settings, PRODUCER)  # TransientError if Kafka is away: nothing uploaded yet
        event_ids: list[str] = []
        try:
            for sku in spooled:
                payload = upload_sku(_unspool(sku, Path(spool_dir)), store)
                # Photos are durable before the event exists, so no consumer ever sees a dangling
                # reference. The event id is the trace id too: every event downstream carries it
                # (skuforge demo follows it).
                envelope = publisher.publish(
                    SKU_INGESTED,
                    payload,
                    sku_id=sku.metadata.sku_id,
                    event_id=sku.event_id,
                    trace_id=sku.event_id,
                )
                event_ids.append(envelope.event_id)
            return event_ids
        except Exception as exc:  # the broker or the store, after the checks: say what went out
            if not event_ids and isinstance(exc, TransientError):
                raise  # nothing published: "is Kafka running?" says it
            done = [sku.metadata.sku_id for sku in spooled[: len(event_ids)]]
            left = [sku.metadata.sku_id for sku in spooled[len(event_ids) :]]
            raise IngestIncomplete(
                f"stopped after publishing {len(done)} of {len(spooled)} SKUs "
                f"({type(exc).__name__}: {str(exc)[:300]}); published: {', '.join(done) or 'none'}; "
                f"not published: {', '.join(left)}. Run the same command again to finish: what is "
                "already published is published again under the same event ids, which consumers skip"
            ) from exc
        finally:
            publisher.close()


def _spool(sku: PreparedSku, spool_dir: Path) -> PreparedSku:
    """``sku`` with its photos' PNG bytes written under ``spool_dir`` and dropped from memory."""
    try:
        for photo in sku.photos:
            _spooled_file(spool_dir, sku, photo).write_bytes(photo.png)
    except OSError as exc:  # the temporary folder is full, or gone
        raise IngestError(
            f"nothing was ingested: the checked photos could not be kept in {spool_dir} "
            f"({exc.strerror or exc}); point TMPDIR at a folder with room for the batch's photos as PNG"
        ) from None
    return dataclasses.replace(sku, photos=[dataclasses.replace(photo, png=b"") for photo in sku.photos])


def _unspool(sku: PreparedSku, spool_dir: Path) -> PreparedSku:
    """A spooled SKU with its photos' bytes read back (one SKU's at a time)."""
    photos = [
        dataclasses.replace(photo, png=_spooled_file(spool_dir, sku, photo).read_bytes())
        for photo in sku.photos
    ]
    return dataclasses.replace(sku, photos=photos)


def _spooled_file(spool_dir: Path, sku: PreparedSku, photo: PreparedPhoto) -> Path:
    return spool_dir / f"{sku.event_id}-{photo.photo_id}.png"


def main(argv: list[str] | None = None) -> int:
    """``skuforge ingest DIR``."""
    parser = argparse.ArgumentParser(
        prog="skuforge ingest",
        description="Upload each SKU folder's photos to the object store and publish sku.ingested.",
    )
    parser.add_argument("path", type=Path, help="a SKU folder (photos + metadata.json) or a folder of them")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        event_ids = ingest_path(args.path, settings)
    except IngestIncomplete as exc:
        print(f"skuforge ingest: {exc}", file=sys.stderr)
        return 1
    except (IngestError, ConfigError) as exc:
        print(f"skuforge ingest: {exc}", file=sys.stderr)
        return 2
    except TransientError as exc:
        print(f"skuforge ingest: {exc} (is Kafka at SKUFORGE_KAFKA_BOOTSTRAP running?)", file=sys.stderr)
        return 1
    print(json.dumps({"ingested_skus": len(event_ids), "event_ids": event_ids}))
    return 0
