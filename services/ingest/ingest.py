"""Ingest: a folder per SKU (photos + metadata.json) → object store → ``sku.ingested``.

Consumes: a directory on disk (``skuforge ingest DIR``).
Produces: one ``sku.ingested`` event per SKU, after its photos are stored.
Bad input: every SKU folder is checked first (metadata, safe sku_id, photo count, each photo
decodes within the limits and is at least ``SKUFORGE_MIN_PHOTO_SIDE_PX`` on its shorter side, there and
at the captioner's working size: ``shared/photos.py:refuse_too_small``); if any is bad, the command
names every problem and uploads and publishes nothing, so bad input never half-publishes a batch.
Every photo of a folder is checked, one at a time, even in a folder with more than
``SKUFORGE_MAX_PHOTOS_PER_SKU``: one run names all there is to fix. Should the broker or the
store fail after the checks, the command says which SKUs were published and which not (exit 1);
running it again finishes the batch under the same keys and event ids. A SKU whose event the broker
refuses for good (over the topic's ``max.message.bytes``) is left out, the others are published, and the
command names it, its folder and the broker's reason (exit 1). Checked photos wait as PNG files in a
temporary folder, not in memory (``ingest_path``).

Layout read (what ``skuforge synth`` writes)::

    DIR/<any folder name>/metadata.json   {"sku_id", "name", "category", "brand", "series"} (UTF-8)
    DIR/<any folder name>/*.png|jpg|...   1..SKUFORGE_MAX_PHOTOS_PER_SKU photos

``DIR`` may also be a single SKU folder. Photos are .png .jpg .jpeg .jpe .jfif .webp .bmp .tif .tiff
(``shared/photos.py``, which the scene library and ``skuforge evaluate`` read too). A photo lying in
``DIR`` itself beside SKU folders belongs to no SKU: it is named in a warning, and the run goes on.
Anything else in a SKU folder is named as a problem, not skipped: another format (HEIC, GIF, AVIF...),
a subfolder (its photos are not read), a broken link, a photo whose name goes on after its
extension (a trailing space or dot: rename it). A folder that holds SKU folders but no
metadata.json (a batch given one level too high) is named with the folder to ingest instead, and each
folder beside it without a metadata.json (synth's ``masks/``) in one line, unchecked. Skipped
are hidden files and folders (names starting with "."), ``__MACOSX`` (the resource forks macOS puts in
a zip it makes), and the files Windows and macOS leave in any folder (``Thumbs.db``, ``desktop.ini``,
``Icon\\r``); a NAS's thumbnail folders (Synology's ``@eaDir``, resized copies of each photo) are
left out with one warning for the batch. A copy of a photo in its folder (the same picture) is
ingested once, and named in a warning; of a cut-out and its copy flattened on white, the cut-out,
for its outline; of two cut-outs of it with other outlines, the first, and the warning says so. A
resized, re-encoded, mirrored or turned copy (other pixels, the same perceptual
hash within ``NEAR_DUPLICATE_MAX_BITS`` as shown, mirrored or turned by 90, 180 or 270 degrees, as
``skuforge evaluate`` finds copies) is ingested as a photo of its own and named in a warning that
says how it differs ("mirrored", "turned 90 degrees clockwise"), and so is a photo that an earlier
SKU folder of the batch has too, the same picture or such a copy, and an animated PNG or WebP or a
multi-page TIFF, of which the first frame is ingested. Two SKU ids of a batch may not differ only in case
(``ABC-1``, ``abc-1``): on a case-insensitive file system their store folders would be one; nor may a SKU
id of the batch and one the store already holds photos for, or the retraining store rows for (a SKU
taken out with ``--withdraw-sku``; refused before anything is uploaded), and
no SKU id may end with '.', which Windows drops from a folder name. A name
or category that is only whitespace or invisible characters (a zero-width space) is refused, and so
is a control character (a tab, newline, NUL or terminal escape) or a bidirectional control (U+202E...)
in the name, category, brand or series: the contract's rules (``schemas/common.py``). One in a
photo's file name is not refused but written escaped (``\\n``, ``\\x1b``, ``\\u202e``) in the event's
``original_filename``, which takes neither either.

A photo file with transparency (a cut-out on a transparent background) is stored over white, as
every photo, and its transparency beside it as a mask (``ReferencePhoto.mask``, at
``masks/transparency/<sku>/<photo>-<16 hex of the mask's sha256>.png``): the product's exact outline,
which the captioner takes instead of the matting model's. A changed mask (a flattened photo swapped
for its cut-out, a redrawn outline) makes a new event for the SKU, as a changed photo does, and is
stored beside the one an earlier event names.

Re-ingesting a SKU adds and replaces photos. By default it removes none: a photo stored by an
earlier ingest that is no longer in the folder stays in the store, and it and the images generated
from it stay in the retraining store; ingest warns of such photos (per SKU, with their count) and goes
on. With ``--withdraw-missing`` the folder is the whole truth: once the SKU's event is published, such
photos are withdrawn in the retraining store (``shared/trainstore/withdrawals.py``: a marker, then
``withdrawn`` rows for them and every image generated from them, then their objects deleted; the
trainstore stage keeps later images of them out), and then deleted from ``incoming/``. Each step
is idempotent, and the photos leave ``incoming/`` last, so running the command again finishes a
withdrawal that stopped half-way. A withdrawn photo put back in the folder is reinstated: its marker
is removed and the SKU gets a new event id, so the stages take the photo again.

A SKU is its ``sku_id``, not its folder: renaming a folder changes nothing, but a metadata.json whose
sku_id changed makes a new SKU, and the old one's photos, generated images and manifests stay, a class
of their own in every export (ingest of a folder never removes a SKU). The first ingest of an id whose
photos are already stored under another SKU that the run does not ingest is warned of, naming that SKU.
``skuforge ingest --withdraw-sku SKU_ID`` (no folder) takes such a SKU, or a delisted one, out: every
photo the store holds for it is withdrawn as ``--withdraw-missing`` withdraws one (``withdraw_skus``),
and ingesting its folder again reinstates them.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import dataclasses
import errno
import json
import mimetypes
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydantic import ValidationError

from schemas.common import ImageRef, SkuMetadata, check_safe_id
from schemas.envelope import clipped, derive_id
from schemas.events import MAX_FILENAME_CHARS, ReferencePhoto, SkuIngested
from schemas.topics import SKU_INGESTED
from shared import keys
from shared.argtypes import path_argument
from shared.bus import Publisher, RecordRefused, listed_topics
from shared.config import ConfigError, Settings, load_settings
from shared.errors import BadInput, ImageRejected, TransientError
from shared.evaluation.leakage import NEAR_DUPLICATE_MAX_BITS, bits_apart, image_variant_hashes
from shared.images import (
    encode_png,
    file_size_px,
    format_named_otherwise,
    frame_count,
    photo_and_transparency,
    refuse_oversized,
)
from shared.observability import escape_control_characters, escape_control_characters_within
from shared.photos import (
    HEIC_ADVICE,
    HEIC_SUFFIXES,
    MACOS_ZIP_FOLDERS,
    PHOTO_FILE_SUFFIXES,
    is_left_out_quietly,
    is_nas_thumbnail_folder,
    photo_suffix,
    refuse_too_small,
)
from shared.signals import signal_number, stopped_as_interrupt, stopped_how
from shared.store import ObjectStore, digest_key, open_settings_store, sha256_hex
from shared.trainstore.manifest import ManifestStore, ManifestUnreadable
from shared.trainstore.settings import TrainstoreSettings
from shared.trainstore.withdrawals import Withdrawals, photo_of, withdrawable

PRODUCER = "ingest"
T = TypeVar("T")
# What ``photo_key`` names a stored photo: the first 16 hex digits of its PNG's sha256.
_PHOTO_OBJECT = re.compile(r"[0-9a-f]{16}\.png")
# metadata.json's fields are bounded (SkuMetadata): a few hundred characters, a few kB even escaped
# and indented. A larger file is not a SKU's metadata, and is refused before it is read.
MAX_METADATA_BYTES = 2**20
# Archives: named in a batch folder, and when given as the path, with the advice to unpack them.
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz", ".7z", ".rar")


class IngestError(Exception):
    """One or more SKU folders cannot be ingested; the message lists every problem."""


class StoreUnavailable(TransientError):
    """The object store failed (unreachable, refused, misconfigured) before any SKU was published: the
    fix is the store or its settings, not Kafka. Running the command again after the fix is safe."""


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
    file: Path  # what it was read from, for a warning that names it
    width: int
    height: int
    # The file's own transparency (a cut-out's outline), stored beside it for the captioner.
    mask_png: bytes | None = None

    @property
    def content_id(self) -> str:
        """What the photo brings, for the SKU's event id: its picture over white (``photo_id``), and
        its transparency mask's sha256 when it has one. A photo without a mask is its ``photo_id``
        alone, as before masks counted, so those SKUs keep the event ids they were published under."""
        if self.mask_png is None:
            return self.photo_id
        return f"{self.photo_id}+mask:{sha256_hex(self.mask_png)[:16]}"


@dataclass(frozen=True)
class PreparedSku:
    """A SKU folder that passed every check."""

    folder: Path
    metadata: SkuMetadata
    photos: list[PreparedPhoto]
    # (a file, the file before it in the folder with the same picture): ingested once, and warned of.
    copies: tuple[tuple[Path, Path], ...] = ()
    # Those of ``copies`` that are cut-outs with another outline (transparency) than the one kept: the
    # kept one's is the product's mask, and the warning says so.
    other_outlines: frozenset[tuple[Path, Path]] = frozenset()
    # (a file, a file before it that it looks like, how: "as shown" when resized or re-encoded, else
    # "mirrored", "turned 90 degrees clockwise"...): both ingested, and warned of.
    near_copies: tuple[tuple[Path, Path, str], ...] = ()
    # (a file, its frame or page count) of an animation or a multi-page file: its first is ingested, and
    # warned of.
    frames: tuple[tuple[Path, int], ...] = ()
    # Each photo's perceptual hashes (``image_variant_hashes``) by its photo_id, where it has any: the
    # batch compares them with other SKUs' photos.
    looks: dict[str, dict[str, bytes]] = dataclasses.field(default_factory=dict)

    @property
    def event_id(self) -> str:
        """Same folder content → same event id, so re-ingesting is idempotent downstream. The photos
        count by content, not by file name: in name order, renaming a photo made a new event, and
        the stack generated the whole SKU again and sent its flagged images to people twice. Their
        transparency masks count too (``PreparedPhoto.content_id``): a flattened photo replaced by its
        cut-out, or a cut-out with a redrawn outline, is the same picture over white, and was an event
        every stage skipped as already seen, so the captioner never took the new outline."""
        return derive_id(
            PRODUCER, self.metadata.model_dump_json(), *sorted(photo.content_id for photo in self.photos)
        )


def _same_file(one: Path, other: Path) -> bool:
    """Whether two names are the same file (False when either is missing)."""
    try:
        return os.path.samefile(one, other)
    except OSError:
        return False


def find_sku_folders(path: Path) -> list[Path]:
    """The SKU folders under ``path`` (or ``path`` itself when it holds a metadata.json)."""
    try:
        return _find_sku_folders(path)
    except OSError as exc:
        # A folder that can be listed but not entered (`chmod -R 644`): its entries cannot be looked
        # at, and pathlib raises EACCES where it answers False for a missing file. Was a traceback.
        raise IngestError(_unreadable(exc, path)) from None


def _unreadable(exc: OSError, fallback: Path) -> str:
    return f"{exc.filename or fallback}: cannot be read ({exc.strerror or exc}); check its permissions"


def _find_sku_folders(path: Path) -> list[Path]:
    if not path.is_dir():
        raise IngestError(f"{path}: not a directory{not_a_folder_hint(path)}")
    if _has_metadata_entry(path):
        return [path]
    folders = sorted(
        child
        for child in _listed(path)
        if child.is_dir()
        and not child.name.startswith(".")
        and child.name not in MACOS_ZIP_FOLDERS
        and not is_nas_thumbnail_folder(child.name)  # noted once by _warn_of_nas_thumbnails
    )
    if not folders:
        loose = loose_photos(path)
        misnamed = [child.name for child in _listed(path) if child.name.casefold() == "metadata.json"]
        hint = (
            f"; its {misnamed[0]} must be named exactly metadata.json"
            if misnamed
            else f"; its {len(loose)} photo(s) need a SKU folder: move them into a folder with a "
            "metadata.json, or give this folder one"
            if loose
            else ""
        )
        raise IngestError(f"{path}: no SKU folders (a folder with metadata.json and photos) found{hint}")
    return folders


def not_a_folder_hint(path: Path) -> str:
    """What to do with a ``path`` that is no folder: "not a directory" alone was all a zip someone was
    sent, an s3:// URI (which a Path shows as "s3:/bucket"), a mistyped name, a photo and a SKU's
    metadata.json were told."""
    if not os.path.lexists(path):
        if re.match(r"[a-z][a-z0-9+.-]*:/", str(path), re.IGNORECASE):
            return "; ingest reads a local folder: copy the SKU folders down first (aws s3 sync, for one)"
        return " (it does not exist)"
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        return "; it is an archive: unpack it and ingest the folder it holds"
    # A shell's completion of a SKU folder lands on one of its files: say that the folder is wanted.
    if path.name == "metadata.json":
        return f"; it is a SKU's metadata: give the folder it is in, {path.parent}"
    if photo_suffix(path.name) in PHOTO_FILE_SUFFIXES | HEIC_SUFFIXES:
        return (
            "; it is a photo: ingest reads SKU folders (photos and a metadata.json): give the folder it is in"
        )
    if path.is_file():  # a .txt, a GIF, a file without an extension: told only "not a directory"
        return (
            "; it is a file: ingest reads SKU folders (photos and a metadata.json): give the SKU's folder, "
            "or the folder that holds SKU folders"
        )
    return ""


def _has_metadata_entry(folder: Path) -> bool:
    """Whether ``folder`` holds an entry named metadata.json of any kind: it is a SKU folder then, and
    ``prepare_sku`` says what is wrong with that entry (a dangling link, a folder, a pipe). Only a
    regular file counted before: such a folder was taken for a batch and its photos for loose ones."""
    return os.path.lexists(folder / "metadata.json")


def _listed(folder: Path) -> list[Path]:
    """The entries of ``folder``; ``IngestError`` naming it when it cannot be listed (permissions)."""
    try:
        return list(folder.iterdir())
    except OSError as exc:
        raise IngestError(f"{folder}: cannot be listed ({exc.strerror or exc})") from None


def loose_photos(path: Path) -> list[Path]:
    """Photo files lying in a batch folder ``path`` itself, beside its SKU folders, sorted: they belong
    to no SKU, so nothing reads them (none when ``path`` is a SKU folder)."""
    try:
        if not path.is_dir() or _has_metadata_entry(path):
            return []
        return sorted(
            child
            for child in _listed(path)
            if not is_left_out_quietly(child.name)
            and photo_suffix(child.name) in PHOTO_FILE_SUFFIXES | HEIC_SUFFIXES
            and child.is_file()
        )
    except OSError as exc:
        raise IngestError(_unreadable(exc, path)) from None


def _warn_of_skipped_entries(path: Path, warn: Callable[[str], None]) -> None:
    """Warn of entries of a batch folder that may have been meant as SKU folders but are not read: a
    link whose target is gone or loops (an unmounted share, a moved folder) and an archive. They were
    dropped without a word, as if the batch had no such SKU."""
    if not path.is_dir() or _has_metadata_entry(path):
        return
    broken, archives = [], []
    try:
        for child in sorted(_listed(path)):
            if is_left_out_quietly(child.name):
                continue
            if child.is_symlink() and not child.exists():
                broken.append(child.name)
            elif child.is_file() and child.name.lower().endswith(ARCHIVE_SUFFIXES):
                archives.append(child.name)
    except OSError as exc:
        # Listed but not entered (`chmod -R 644`): looking at an entry was a traceback, before the
        # check that names the folder.
        raise IngestError(_unreadable(exc, path)) from None
    if broken:
        warn(
            f"{len(broken)} link(s) in {path} lead nowhere (a target that is gone, not mounted, or a "
            f"loop) and are not ingested: {', '.join(broken[:10])}"
        )
    if archives:
        warn(
            f"{len(archives)} archive(s) in {path} are not opened and not ingested: "
            f"{', '.join(archives[:10])}; unpack each SKU folder and run again"
        )


def _warn_of_nas_thumbnails(path: Path, warn: Callable[[str], None]) -> None:
    """Note, once for the batch, the NAS thumbnail folders (``@eaDir``) beside and inside the SKU
    folders: left out, as ``skuforge evaluate`` leaves them out. A copy of a Synology share brings one
    into every folder, and each refused the batch ("a folder inside a SKU folder", or
    "metadata.json: missing" for the one beside the SKU folders)."""
    try:
        folders = [path] if _has_metadata_entry(path) else [path, *find_sku_folders(path)]
        thumbnails = [
            child
            for folder in folders
            for child in sorted(_listed(folder))
            if is_nas_thumbnail_folder(child.name) and child.is_dir()
        ]
    except (IngestError, OSError):  # the checks name a folder that cannot be read
        return
    if thumbnails:
        names = ", ".join(sorted({child.name for child in thumbnails}))
        shown = ", ".join(str(child) for child in thumbnails[:10]) + (" ..." if len(thumbnails) > 10 else "")
        warn(
            f"{len(thumbnails)} NAS thumbnail folder(s) ({names}) hold the copies a NAS makes, not "
            f"photos: not ingested: {shown}"
        )


def _warn_of_loose_photos(path: Path, warn: Callable[[str], None]) -> None:
    """Warn, not refuse: the SKU folders are whole without them, but a photo silently left out was one
    its owner meant to give."""
    loose = loose_photos(path)
    if loose:
        shown = ", ".join(child.name for child in loose[:10]) + (" ..." if len(loose) > 10 else "")
        warn(
            f"{len(loose)} photo(s) in {path} itself belong to no SKU and are not ingested ({shown}); "
            "move each into its SKU's folder (the folder with its metadata.json) and run again"
        )


class _NotUtf8(UnicodeDecodeError):
    """metadata.json has no byte-order mark and is not UTF-8: Notepad's "ANSI" (Windows-1252) or a
    Latin-1 export. Refused as JSON before, "invalid unicode code point", which did not say the fix."""

    def where(self) -> str:
        """The first byte that is not UTF-8, by line and column as an editor shows them."""
        before = self.object[: self.start]
        line = before.count(b"\n") + 1
        column = self.start - (before.rfind(b"\n") + 1) + 1
        return f"byte 0x{self.object[self.start]:02x} at line {line} column {column}"


def _as_utf8(data: bytes) -> bytes:
    """``metadata.json``'s bytes as UTF-8 without a byte-order mark. Windows Notepad and Excel save
    UTF-8 with one, and PowerShell 5.1's ``>`` and ``Out-File`` write UTF-16: JSON parsers refuse both
    ("Invalid JSON at line 1 column 1"), though the mark only says how the text is encoded. UTF-16 and
    UTF-32 without a mark are told by their NULs, as RFC 4627 says.
    ``UnicodeDecodeError`` when the bytes are not what their mark says, ``_NotUtf8`` when there is no
    mark and they are not UTF-8."""
    for mark, encoding in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: its mark starts with that one's
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(mark):
            text = data.decode(encoding)
            return text.removeprefix("\ufeff").encode("utf-8")
    unmarked = json.detect_encoding(data)
    if unmarked in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
        # No mark (Node's "utf16le", Java's UTF_16LE): JSON opens with ASCII, so the NULs beside its
        # first characters say the encoding (RFC 4627). UTF-8 JSON holds no NUL. Bytes that are not
        # that encoding after all are left to the JSON check, which names where they fail.
        with contextlib.suppress(UnicodeDecodeError):
            return data.decode(unmarked).encode("utf-8")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _NotUtf8(exc.encoding, exc.object, exc.start, exc.end, exc.reason) from None
    return data


def _fields_given_twice(text: bytes) -> list[str]:
    """A problem for each field that metadata.json gives more than once. JSON parsers keep the last
    value: ``{"sku_id": "A-1", ..., "sku_id": "A-2"}`` (a line pasted in, the old one left) was ingested
    as A-2 without a word. None for text that is no JSON: the schema's check names that."""
    repeated: dict[str, list[object]] = {}

    def pairs_kept(pairs: list[tuple[str, object]]) -> dict[str, object]:
        values: dict[str, list[object]] = {}
        for key, value in pairs:
            values.setdefault(key, []).append(value)
        repeated.update({key: given for key, given in values.items() if len(given) > 1})
        return dict(pairs)

    try:
        json.loads(text, object_pairs_hook=pairs_kept)
    except (ValueError, RecursionError):
        return []
    return [
        f"{key}: given {len(given)} times ({', '.join(repr(value)[:80] for value in given)}); keep one"
        for key, given in repeated.items()
    ]


def _metadata_fields() -> str:
    """The fields metadata.json takes, as an error says them: ``sku_id, name, category; optional: ...``."""
    fields = SkuMetadata.model_fields
    required = [name for name, field in fields.items() if field.is_required()]
    optional = [name for name, field in fields.items() if not field.is_required()]
    return ", ".join(required) + (f"; optional: {', '.join(optional)}" if optional else "")


def prepare_sku(folder: Path, settings: Settings) -> tuple[PreparedSku | None, list[str]]:
    """Check one SKU folder; returns the prepared SKU or the list of problems."""
    held = [] if _has_metadata_entry(folder) else _sku_folders_in(folder)
    if held and folder.is_symlink() and folder.parent.resolve().is_relative_to(folder.resolve()):
        # Told to be ingested on its own, it was the same batch again.
        return None, [
            f"{folder}: a link back to {folder.readlink()}, a folder it is in, so the batch would be read "
            "inside itself; remove the link"
        ]
    if held:
        # A batch given one level too high (`skuforge ingest var/synth`, whose SKU folders are in
        # var/synth/skus) was told to move each SKU's photos into the batch folder, merging products.
        shown = ", ".join(held[:10]) + (" ..." if len(held) > 10 else "")
        return None, [
            f"{folder}: holds SKU folders ({shown}) but is not one itself (no metadata.json): ingest it "
            f"on its own (skuforge ingest {folder}), or move them up beside it"
        ]
    problems: list[str] = []
    metadata: SkuMetadata | None = None
    metadata_path = folder / "metadata.json"
    text: bytes | None = None
    try:
        text = _as_utf8(_read_metadata(metadata_path))
        metadata = SkuMetadata.model_validate_json(text)
    except _MetadataRefused as exc:
        problems.append(str(exc))
    except _NotUtf8 as exc:
        problems.append(
            f"{metadata_path}: not UTF-8 ({exc.where()}; saved as Windows-1252 or Latin-1?); save it as UTF-8"
        )
    except UnicodeDecodeError as exc:
        problems.append(
            f"{metadata_path}: not readable as its byte-order mark says ({exc.reason}); save it as UTF-8"
        )
    except FileNotFoundError:
        problems.append(f"{metadata_path}: missing (a JSON object with {_metadata_fields()})")
    except OSError as exc:  # a folder named metadata.json, no permission...
        problems.append(f"{metadata_path}: cannot be read ({exc.strerror or exc})")
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "(file)"
            if error["type"] == "extra_forbidden":  # pydantic's "Extra inputs are not permitted"
                problems.append(
                    f"{metadata_path}: {field}: not a field of metadata.json ({_metadata_fields()}); "
                    "take it out"
                )
            elif error["input"] is None and field in SkuMetadata.model_fields:
                # A spreadsheet export or JSON.stringify writes an empty field as null: "Input should be
                # a valid string" did not say that an optional one may be left out.
                fix = (
                    f"give the product's {field}"
                    if SkuMetadata.model_fields[field].is_required()
                    else "leave it out (it is optional) or give it as text"
                )
                problems.append(f"{metadata_path}: {field}: null; {fix}")
            else:
                # The contract's own reason, without pydantic's "Value error, " before it.
                problems.append(f"{metadata_path}: {field}: {error['msg'].removeprefix('Value error, ')}")
    if text is not None:
        problems.extend(f"{metadata_path}: {problem}" for problem in _fields_given_twice(text))
    if metadata is not None and metadata.sku_id.endswith("."):
        # The contract takes it (stores and events may hold one from an ingest before this), but
        # Windows drops a trailing dot from a file or folder name: "ABC-1." was written into "ABC-1"'s
        # store folder there (a FileStore on Windows or a share, an export), merging their photos.
        problems.append(
            f"{metadata_path}: sku_id: {metadata.sku_id!r} ends with '.', which Windows drops from a "
            f"folder name (it would share {metadata.sku_id.rstrip('.')!r}'s folder): remove the dot"
        )

    files, folder_problems = photo_files(folder)
    problems.extend(folder_problems)
    limit = settings.max_photos_per_sku
    if not files:
        problems.append(f"{folder}: no photos ({', '.join(sorted(PHOTO_FILE_SUFFIXES))})")
    photos: list[PreparedPhoto] = []
    seen: dict[str, Path] = {}  # each picture's first file
    copies: list[tuple[Path, Path]] = []
    other_outlines: set[tuple[Path, Path]] = set()
    near_copies: list[tuple[Path, Path, str]] = []
    frames: list[tuple[Path, int]] = []
    # Each kept photo's perceptual hashes (as shown, mirrored, turned), where it has any, and the file
    # they were taken of, by its photo id, in the order read.
    looks: dict[str, tuple[dict[str, bytes], Path]] = {}
    # Every file is checked, even past the limit: a user who removes photos should not find the next
    # problem only on the next run. One at a time; the photos past the limit are checked, counted and
    # let go, never held. The limit counts distinct pictures: a copy of one adds nothing (it was
    # counted, and a folder of 10 photos and one copy was refused).
    for file in files:
        data = b""  # not the previous file's, for a file refused before it is read
        try:
            # Refuse an oversized file by its size, before reading gigabytes into memory.
            refuse_oversized(file.stat().st_size, settings.max_image_bytes)
            data = file.read_bytes()
            image, png, transparency = photo_and_transparency(
                data,
                max_pixels=settings.max_image_pixels,
                max_bytes=settings.max_image_bytes,
                refuse_empty=True,  # an empty layer: stored as plain white, then dead-lettered
            )
            refuse_too_small(
                image.width,
                image.height,
                settings.min_photo_side_px,
                file_size_px=file_size_px(data, image.size),
            )
            count = frame_count(data)  # refuses a TIFF of more pages than it walks
            if len(png) > settings.max_image_bytes:
                # The stages read the stored PNG under the same limit: a 40 MP JPEG of a few MB can
                # be a PNG over it, accepted here and then refused by every stage (no_usable_photo).
                raise ImageRejected(
                    "too_large_bytes",
                    f"stored as PNG it would be {len(png)} bytes, over SKUFORGE_MAX_IMAGE_BYTES "
                    f"({settings.max_image_bytes}) that every stage reads photos under: save it with "
                    "fewer pixels, or raise the limit",
                    setting="SKUFORGE_MAX_IMAGE_BYTES",
                )
        except ImageRejected as exc:
            problems.append(f"{file}: refused ({exc}){_misnamed_format(file, data, exc)}")
            continue
        except OSError as exc:
            problems.append(f"{file}: cannot be read ({exc.strerror or exc})")
            continue
        photo_id = sha256_hex(png)[:16]
        if photo_id in seen and not _outline_of_a_copy(photo_id, transparency is not None, photos):
            copies.append((file, seen[photo_id]))  # the same picture twice adds nothing
            if transparency is not None and _another_outline(photo_id, encode_png(transparency), photos):
                other_outlines.add((file, seen[photo_id]))
            continue
        # A name that is not UTF-8 on disk (Latin-1 from an old camera or zip) is kept readable: as
        # it came, it failed the event's schema after earlier SKUs were already published. A control
        # character in it (a newline, a terminal escape), which the schema refuses, is written escaped
        # (\n, \x1b): refused, it would fail the batch over a byte its owner cannot see.
        name = escape_control_characters_within(
            file.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), MAX_FILENAME_CHARS
        )
        mask_png = None if transparency is None else encode_png(transparency)
        photo = PreparedPhoto(
            photo_id, name, png, file, width=image.width, height=image.height, mask_png=mask_png
        )
        if photo_id in seen:
            # A cut-out, and the file kept before it is the same picture flattened on white (one
            # photo over white): the cut-out takes its place, as its outline is the captioner's mask.
            copies.append((seen[photo_id], file))
            # And in what the warnings say of the file ingested: a multi-page file replaced was said to
            # have its first page ingested, and an animated cut-out's frames went unsaid.
            replaced = seen[photo_id]
            frames = [(framed, n) for framed, n in frames if framed != replaced]
            near_copies = [
                (file if copy == replaced else copy, file if like == replaced else like, how)
                for copy, like, how in near_copies
            ]
            if count > 1:
                frames.append((file, count))
            if photo_id in looks:
                looks[photo_id] = (looks[photo_id][0], file)
            seen[photo_id] = file
            photos = [photo if kept.photo_id == photo_id else kept for kept in photos]
            continue
        seen[photo_id] = file
        if len(seen) > limit:
            continue
        # A copy with other bytes (shrunk by a chat app, saved again as JPEG) is another photo to
        # ingest, but its owner meant one: named, as a byte-for-byte copy is, and left in. So is one
        # flipped or turned (the same shot added mirrored, or saved again without its EXIF orientation).
        variants = image_variant_hashes(image)
        if (earlier := _looked_like(variants.get("as shown"), looks.values())) is not None:
            near_copies.append((file, *earlier))
        if variants:
            looks[photo_id] = (variants, file)
        if count > 1:
            frames.append((file, count))
        photos.append(photo)
    if len(seen) > limit:
        problems.append(
            f"{folder}: {len(seen)} photos; at most {limit} "
            "(SKUFORGE_MAX_PHOTOS_PER_SKU) are accepted; choose which to keep (every photo was "
            "checked: the other problems of this folder are listed too)"
        )
    if problems or metadata is None:
        return None, problems
    sku = PreparedSku(
        folder,
        metadata,
        photos,
        copies=tuple(copies),
        other_outlines=frozenset(other_outlines),
        near_copies=tuple(near_copies),
        frames=tuple(frames),
        looks={photo_id: variants for photo_id, (variants, _) in looks.items()},
    )
    return sku, []


def _looked_like(
    look: bytes | None, looks: Iterable[tuple[dict[str, bytes], Path]]
) -> tuple[Path, str] | None:
    """The first file of ``looks`` with a variant (``image_variant_hashes``: as shown, mirrored, turned)
    whose perceptual hash is within ``NEAR_DUPLICATE_MAX_BITS`` of ``look``, and its nearest such
    variant (of equals, the first: "as shown" before the others); None when there is none, or when
    ``look`` is None (a plain picture: its hash says nothing)."""
    if look is None:
        return None
    bits = int.from_bytes(look)
    for variants, file in looks:
        apart = {variant: (bits ^ int.from_bytes(other)).bit_count() for variant, other in variants.items()}
        nearest = min(apart, key=apart.__getitem__)
        if apart[nearest] <= NEAR_DUPLICATE_MAX_BITS:
            return file, nearest
    return None


# Pillow's format names said with a vowel first, for ``_misnamed_format`` ("a AVIF" read wrong): a
# vowel's, and a letter's said so (eff, aitch, em, ess, ex: "an MPEG"). HEIC is said "heek": a HEIC.
_SAID_WITH_AN = frozenset({"AVIF", "EPS", "ICNS", "ICO", "IM", "IMT", "IPTC"}) | frozenset(
    {"FLI", "FTEX", "HDF5", "MCIDAS", "MPEG", "MSP", "SGI", "XBM", "XPM", "XVTHUMB"}
)


def _misnamed_format(file: Path, data: bytes, refusal: ImageRejected) -> str:
    """A note for a photo refused for its format whose name says another: a GIF saved as photo.jpg
    was told "format GIF is not one of [...]", its owner looking at a .jpg."""
    held = format_named_otherwise(file.name, data) if refusal.reason == "format_not_allowed" else None
    if not held:
        return ""
    article = "an" if held in _SAID_WITH_AN else "a"
    return f"; its name ends in {file.suffix}, but it holds {article} {held}"


def _outline_of_a_copy(photo_id: str, has_outline: bool, photos: list[PreparedPhoto]) -> bool:
    """Whether a file whose picture ``photo_id`` is already among ``photos`` brings what the one kept
    lacks: its own transparency (a cut-out, where the one kept is the picture flattened on white)."""
    return has_outline and any(photo.photo_id == photo_id and photo.mask_png is None for photo in photos)


def _another_outline(photo_id: str, mask_png: bytes, photos: list[PreparedPhoto]) -> bool:
    """Whether the photo kept of picture ``photo_id`` is a cut-out whose outline is not ``mask_png``."""
    return any(photo.photo_id == photo_id and photo.mask_png not in (None, mask_png) for photo in photos)


def _holds_sku_folders(folder: Path) -> bool:
    """Whether ``folder`` is a batch rather than a SKU folder: no metadata.json, SKU folders inside."""
    return not _has_metadata_entry(folder) and bool(_sku_folders_in(folder))


def _sku_folders_in(folder: Path) -> list[str]:
    """The names of ``folder``'s subfolders that are SKU folders (hold a metadata.json), sorted; none
    when it cannot be listed (``photo_files`` names that)."""
    try:
        return sorted(
            child.name
            for child in _listed(folder)
            if child.is_dir()
            and not is_left_out_quietly(child.name, is_folder=True)
            and _has_metadata_entry(child)
        )
    except (IngestError, OSError):
        return []


def photo_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The photo files of a SKU folder, sorted, and a problem for everything else in it that is neither
    metadata.json, hidden, a desktop's leftover file, nor a NAS's thumbnail folder. Whatever a folder
    holds either is read or is named: skipped quietly, a GIF, a photo in a subfolder or a broken link
    left the SKU short."""
    photos: list[Path] = []
    problems: list[str] = []
    accepted = ", ".join(sorted(PHOTO_FILE_SUFFIXES))
    try:
        entries = sorted(_listed(folder))
    except IngestError as exc:  # a folder its owner can see but this user cannot read: one problem of many
        return [], [f"{exc}; check its permissions"]
    for entry in entries:
        # Hidden entries are skipped as hidden SKU folders are: macOS writes an invisible "._NAME"
        # beside each photo on non-Apple volumes, and refusing a SKU over a file its owner cannot
        # see helps no one.
        if entry.name == "metadata.json" or is_left_out_quietly(entry.name, is_folder=_is_folder(entry)):
            continue
        try:
            _sort_entry(folder, entry, photos, problems, accepted)
        except OSError as exc:  # listed but not looked at: the folder lacks execute permission
            problems.append(_unreadable(exc, entry))
    return photos, problems


def _is_folder(entry: Path) -> bool:
    """Whether ``entry`` is a folder; False where it cannot be looked at (the folder holding it lacks
    execute permission), which ``_sort_entry`` names."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _sort_entry(folder: Path, entry: Path, photos: list[Path], problems: list[str], accepted: str) -> None:
    """Add ``entry`` of SKU folder ``folder`` to ``photos``, or say in ``problems`` why it is not one."""
    if entry.name.casefold() == "metadata.json":
        if not _same_file(entry, folder / "metadata.json"):  # on a case-insensitive disk it is the same
            # Skipped unseen before: "Metadata.json: missing" without saying which file was there.
            problems.append(f"{entry}: the SKU's metadata must be named exactly metadata.json; rename it")
        return
    suffix = photo_suffix(entry.name)
    if entry.is_symlink() and not entry.exists():
        target = entry.readlink()
        # A loop (a link to itself, two to each other) read "a link to X, which does not exist",
        # where X was there to see.
        missing = (
            f"a link that leads back to itself ({target}), never to a file"
            if _loops(entry)
            else f"a link to {target}, which does not exist"
        )
        problems.append(f"{entry}: {missing}; put the photo itself here or remove the link")
    elif entry.is_dir() and is_nas_thumbnail_folder(entry.name):
        return  # a NAS's copies of the photos beside it: noted once by _warn_of_nas_thumbnails
    elif entry.is_dir() and _has_metadata_entry(entry):
        problems.append(
            f"{entry}: a SKU folder (it has a metadata.json) inside the SKU folder {folder}; nothing in "
            f"it is read: move it out, beside {folder}"
        )
    elif entry.is_dir():
        problems.append(
            f"{entry}: a folder inside a SKU folder; nothing in it is read: move its photos into "
            f"{folder}, or move the folder out"
        )
    elif not entry.is_file():
        problems.append(f"{entry}: not a regular file (a pipe, socket or device); remove it")
    elif suffix in HEIC_SUFFIXES:
        # An iPhone's photos are HEIC by default: say what to do, not just "not a photo".
        problems.append(f"{entry}: {HEIC_ADVICE}")
    elif suffix in PHOTO_FILE_SUFFIXES:
        photos.append(entry)
    elif (trimmed := entry.name.rstrip(" .")) != entry.name and photo_suffix(trimmed) in PHOTO_FILE_SUFFIXES:
        # A space or dot after the extension (a name pasted with a trailing space): a JPEG was told to
        # be exported as JPEG. Renamed, not read as it is: Windows cannot open such a name.
        problems.append(f"{entry}: a photo whose name goes on after its extension; rename it {trimmed!r}")
    elif (kind := mimetypes.guess_type(entry.name)[0]) is not None and not kind.startswith("image/"):
        # A product's notes beside its photos (the GroceryStoreDataset's description .txt files) were
        # told to be exported as JPEG or PNG.
        what = {"text": "a text file", "video": "a video", "audio": "a sound file"}.get(
            kind.split("/")[0], kind
        )
        problems.append(
            f"{entry}: not a photo ({what}); every file in a SKU folder is read as a photo: move it out"
        )
    else:
        problems.append(
            f"{entry}: not a photo ingest reads ({accepted}); export it as JPEG or PNG, "
            "or move it out of the SKU folder"
        )


def _loops(link: Path) -> bool:
    """Whether following ``link`` goes round in circles (ELOOP) rather than to a missing file."""
    try:
        os.stat(link)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def check_folders(path: Path, settings: Settings) -> Iterator[tuple[PreparedSku | None, list[str]]]:
    """Each SKU folder under ``path`` in turn: the prepared SKU, or None and its problems (an
    ``sku_id`` that an earlier folder already uses, or one differing from it only in case, is one).
    One SKU's photos at a time: a caller that lets go of each SKU before asking for the next holds one
    SKU's photos, not the batch's."""
    # Keyed by the casefolded id: ABC-1 and abc-1 are two SKUs to S3, but one store folder on the
    # case-insensitive file systems of macOS and Windows (a FileStore there, or an export), where
    # their photos would merge.
    owners: dict[str, tuple[str, Path]] = {}
    # A batch given one level too high (`skuforge ingest var/synth`): the folder that holds the SKU
    # folders comes first, so the line naming the folder to ingest leads the problems, not the last of
    # its siblings' (synth's masks/ read as a SKU folder without metadata.json).
    folders = sorted(find_sku_folders(path), key=lambda folder: not _holds_sku_folders(folder))
    too_high = bool(folders) and _holds_sku_folders(folders[0])
    for folder in folders:
        if too_high and not _has_metadata_entry(folder) and not _holds_sku_folders(folder):
            # Its sibling is the batch to ingest: what this folder lacks as a SKU folder is no matter.
            # synth's masks/ was a line per SKU's folder of masks ("move its photos into masks/"),
            # a missing metadata.json and "no photos".
            yield None, [f"{folder}: not a SKU folder either (no metadata.json); nothing in it was checked"]
            continue
        sku, problems = prepare_sku(folder, settings)
        # A folder refused for its photos still claims its sku_id: before, a second folder with the
        # same id was named only on the run after the first folder's photos were fixed.
        sku_id = sku.metadata.sku_id if sku is not None else _declared_sku_id(folder)
        if sku_id is not None and sku_id.casefold() in owners:
            owner_id, owner = owners[sku_id.casefold()]
            if owner_id == sku_id:
                duplicate = f"{folder}: sku_id {sku_id!r} is also used by {owner}"
            else:
                duplicate = (
                    f"{folder}: sku_id {sku_id!r} differs only in case from {owner_id!r} of {owner}; "
                    "their photos would share one store folder on a case-insensitive file system: "
                    "give one of them another sku_id"
                )
            problems = [*problems, duplicate]
            sku = None
        elif sku_id is not None:
            owners[sku_id.casefold()] = (sku_id, folder)
        yield sku, problems
        del sku  # not kept while the next folder is read


class _MetadataRefused(Exception):
    """metadata.json is there but is not read: no file to read, or far too large; the message says
    why."""


def _read_metadata(path: Path) -> bytes:
    """The bytes of a SKU's metadata.json; ``_MetadataRefused`` for a dangling link or a pipe, socket
    or device (read_bytes on a pipe waited forever for a writer) or a file over ``MAX_METADATA_BYTES``
    (read whole, a multi-gigabyte file filled the memory), ``OSError`` as read_bytes raises it."""
    if path.is_symlink() and not path.exists():
        missing = (
            f"a link that leads back to itself ({path.readlink()}), never to a file"
            if _loops(path)
            else f"a link to {path.readlink()}, which does not exist"
        )
        raise _MetadataRefused(f"{path}: {missing}; put the file itself here or fix the link")
    if path.exists() and not path.is_file() and not path.is_dir():
        raise _MetadataRefused(f"{path}: not a regular file (a pipe, socket or device); replace it")
    size = path.stat().st_size
    if size > MAX_METADATA_BYTES:
        raise _MetadataRefused(
            f"{path}: {size} bytes; a SKU's metadata (sku_id, name, category, brand, series) is a few "
            f"hundred, at most {MAX_METADATA_BYTES} are read: is it the right file?"
        )
    return path.read_bytes()


def _declared_sku_id(folder: Path) -> str | None:
    """The sku_id of ``folder``'s metadata.json when that file is valid, else None."""
    try:
        return SkuMetadata.model_validate_json(_as_utf8(_read_metadata(folder / "metadata.json"))).sku_id
    except (OSError, UnicodeDecodeError, ValidationError, _MetadataRefused):
        return None


def prepare_all(path: Path, settings: Settings) -> list[PreparedSku]:
    """Check every SKU folder under ``path``; raise IngestError naming all problems if any. Holds every
    photo of the batch as PNG: for a large batch, ``ingest_path`` spools them to disk instead."""
    return _check_all(path, settings, lambda sku: sku)


def survey_folders(
    path: Path, settings: Settings, *, warn: Callable[[str], None] | None = None
) -> list[tuple[str, int]]:
    """(sku_id, photos) of every SKU folder under ``path``, checked as ``skuforge ingest`` checks them
    (IngestError naming all problems if any), holding one SKU's photos at a time. ``warn``, if given,
    is told of photos lying in ``path`` itself, which no SKU reads, of copies of a photo in its
    folder (ingested once; a resized copy twice), of a photo two SKUs have (or a resized, re-encoded,
    mirrored or turned copy of it), and of an animation or a multi-page file (its first frame is
    ingested; ``ingest_path`` tells its own)."""
    return _check_all(path, settings, lambda sku: (sku.metadata.sku_id, len(sku.photos)), warn=warn)


def _check_all(
    path: Path,
    settings: Settings,
    keep: Callable[[PreparedSku], T],
    *,
    warn: Callable[[str], None] | None = None,
) -> list[T]:
    """``keep`` of every SKU folder under ``path`` that passes its checks, in order, or IngestError
    naming every problem. Once a problem is found only the checks go on; each prepared SKU is let go
    before the next folder is read, so what stays is what ``keep`` returns. ``warn`` is told of photos
    lying beside the SKU folders, first, so a refused run names them too, of the NAS thumbnail folders
    left out, of copies of a photo in its folder, of an animation or a multi-page file, and of a photo
    of an earlier SKU of the batch."""
    if warn is not None:
        _warn_of_loose_photos(path, warn)
        _warn_of_skipped_entries(path, warn)
        _warn_of_nas_thumbnails(path, warn)
    kept: list[T] = []
    problems: list[str] = []
    pictures: dict[str, list[tuple[str, Path]]] = {}  # each photo id's SKUs and files, in order
    looks = _BatchLooks()
    for sku, sku_problems in check_folders(path, settings):
        problems.extend(sku_problems)
        if warn is not None and sku is not None:
            _warn_of_copies(sku, warn)
            _warn_of_frames(sku, warn)
            _warn_of_photos_of_other_skus(sku, pictures, looks, warn)
        if sku is not None and not problems:
            kept.append(keep(sku))
        del sku
    if problems:
        raise IngestError(_nothing_ingested(problems))
    return kept


def _warn_of_copies(sku: PreparedSku, warn: Callable[[str], None]) -> None:
    """Warn, not refuse: a copy of a photo in its folder ("IMG_1 (1).jpg") adds nothing and is ingested
    once, but saying nothing left its owner counting a photo more than the SKU got."""
    for copy, first in sku.copies:
        if (copy, first) in sku.other_outlines:
            # Not only a copy: its outline, the product's mask, differs, and one of the two is dropped.
            warn(
                f"SKU {sku.metadata.sku_id}: {copy} is the same picture as {first} with another outline "
                f"(its transparency); {first}'s outline is kept as the product's mask and {copy} is not "
                "ingested (remove the one whose outline is wrong)"
            )
            continue
        warn(
            f"SKU {sku.metadata.sku_id}: {copy} is the same picture as {first} and is not ingested a "
            "second time"
        )
    for copy, first, how in sku.near_copies:
        warn(
            f"SKU {sku.metadata.sku_id}: {copy} looks like {_copy_of(str(first), how)}; both are ingested, "
            "as two photos of the product (remove the copy if it is one)"
        )


def _copy_of(original: str, how: str) -> str:
    """A near copy of ``original`` named by how it differs (``image_variant_hashes``' variant), as
    ``skuforge evaluate`` names a copy of a held-out photo: in a SKU's folder and across SKUs alike."""
    if how == "as shown":
        return f"a resized or re-encoded copy of {original}"
    return f"a copy of {original} ({how}, perhaps resized or re-encoded)"


def _warn_of_frames(sku: PreparedSku, warn: Callable[[str], None]) -> None:
    """Warn, not refuse: of an animated PNG or WebP or a multi-page TIFF only the first frame is
    ingested (``decode_image``), and the others were dropped without a word."""
    for file, count in sku.frames:
        warn(
            f"SKU {sku.metadata.sku_id}: {file} holds {count} frames (an animation or a multi-page file); "
            "only the first is ingested (save each one meant as a photo of its own)"
        )


# The SKUs a warning names of which a photo looks like a copy, nearest first; the others are counted.
_SKUS_NAMED = 3


class _BatchLooks:
    """The perceptual hashes of every variant (as shown, mirrored, turned) of the photos of the SKUs
    of a batch read so far, with the SKU and file of each: 32 bytes a row, grown by doubling."""

    def __init__(self) -> None:
        self._hashes = np.empty((64, 32), dtype=np.uint8)
        self._owners: list[tuple[str, Path, str]] = []  # each row's SKU, file and variant

    def add(self, sku_id: str, file: Path, variants: dict[str, bytes]) -> None:
        """Add a photo's ``image_variant_hashes``."""
        for variant, value in variants.items():
            if len(self._owners) == len(self._hashes):
                self._hashes = np.concatenate([self._hashes, np.empty_like(self._hashes)])
            self._hashes[len(self._owners)] = np.frombuffer(value, dtype=np.uint8)
            self._owners.append((sku_id, file, variant))

    def near(self, look: bytes) -> list[tuple[str, Path, str]]:
        """Each SKU with a photo within ``NEAR_DUPLICATE_MAX_BITS`` of ``look`` (a photo's hash as shown):
        the SKU, file and variant nearest it (of equals, the first added), nearest SKU first (of equals,
        the first added). Every row is compared, in bit operations: a photo against 5,000 photos'
        variants took 7 ms, where reading a train photo takes some 50 ms (2026-12-06)."""
        bits = bits_apart(self._hashes[: len(self._owners)], np.frombuffer(look, dtype=np.uint8))
        close = np.flatnonzero(bits <= NEAR_DUPLICATE_MAX_BITS)
        nearest: dict[str, tuple[str, Path, str]] = {}
        for row in close[np.argsort(bits[close], kind="stable")]:
            nearest.setdefault(self._owners[row][0], self._owners[row])
        return list(nearest.values())


def _warn_of_photos_of_other_skus(
    sku: PreparedSku,
    pictures: dict[str, list[tuple[str, Path]]],
    looks: _BatchLooks,
    warn: Callable[[str], None],
) -> None:
    """Warn, not refuse, of a photo of ``sku`` that an earlier SKU of the batch has too (``pictures``:
    each photo id's SKUs and files; ``looks``: their perceptual hashes; this adds to both), the same
    picture or a resized, re-encoded, mirrored or turned copy. A photo copied into the wrong product's
    folder was ingested for both without a word, one picture the retraining store held as two classes
    (a copy with other bytes was missed); a shelf shot of two products may be meant for both. A copy
    names each earlier SKU it is or looks like a copy of, the same picture first, then nearest first
    (``_SKUS_NAMED``, the rest counted): naming only the first or the nearest left the others' labels
    unsaid."""
    sku_id = sku.metadata.sku_id
    for photo in sku.photos:
        same = pictures.setdefault(photo.photo_id, [])
        earlier, owners = list(same), {other for other, _ in same}
        same.append((sku_id, photo.file))
        variants = sku.looks.get(photo.photo_id, {})
        near = looks.near(variants["as shown"]) if "as shown" in variants else []
        near = [copy for copy in near if copy[0] not in owners]
        if not earlier and not near:
            continue
        named_same = earlier[:_SKUS_NAMED]
        named_near = near[: _SKUS_NAMED - len(named_same)]
        likeness = []
        if named_same:
            likeness.append("is " + ", ".join(f"the same picture as {f} of SKU {o}" for o, f in named_same))
        if named_near:
            copies = [_copy_of(f"{file} of SKU {other}", how) for other, file, how in named_near]
            likeness.append(f"looks like {', '.join(copies)}")
        others = len(earlier) + len(near)
        unnamed = others - len(named_same) - len(named_near)
        more = f", and photos of {unnamed} more SKU{'s' if unnamed > 1 else ''}" if unnamed > 0 else ""
        given, each = ("two products", "both") if others == 1 else (f"{others + 1} products", "each")
        warn(
            f"SKU {sku_id}: {photo.file} {' and '.join(likeness)}{more}; one photo given for {given} is "
            f"ingested for {each} (move it to its own product's folder)"
        )
    for photo in sku.photos:
        if photo.photo_id in sku.looks:
            looks.add(sku_id, photo.file, sku.looks[photo.photo_id])


def _nothing_ingested(problems: list[str]) -> str:
    """The refusal naming every problem, one a line. Each is escaped (``\\n``, ``\\x1b``): a file
    name may hold a newline, which printed a problem line of its own making, or a terminal escape."""
    return "nothing was ingested; fix these and run again:\n  " + "\n  ".join(
        escape_control_characters(problem) for problem in problems
    )


def photo_key(sku: PreparedSku, photo: PreparedPhoto) -> str:
    """Where a SKU's photo is stored: under the SKU's id, named by its content."""
    return keys.photo_key(sku.metadata.sku_id, photo.photo_id)


def photo_mask_key(sku: PreparedSku, photo: PreparedPhoto) -> str:
    """Where a photo's own transparency is stored: beside the other masks, not under ``incoming/``,
    whose keys are the SKU's photos (``stale_photo_keys``), named by the photo and the mask's own
    content. A redrawn outline keeps the photo's id: under that alone it replaced the bytes an earlier
    event names, which then failed its checksum when read (unread yet, or replayed)."""
    if photo.mask_png is None:
        raise ValueError(f"photo {photo.photo_id} has no transparency: no mask to store")
    key = keys.transparency_key(sku.metadata.sku_id, photo.photo_id)
    return digest_key(key, sha256_hex(photo.mask_png))


def withdrawable_photo_ids(stale_keys: list[str]) -> list[str]:
    """The photo ids of stale keys that ingest itself wrote (``_stored_photo``): anything else under
    ``incoming/`` is not a photo of ours."""
    return sorted(photo[1] for key in stale_keys if (photo := _stored_photo(key)))


def stale_photo_keys(sku: PreparedSku, stored: list[str]) -> list[str]:
    """The keys of ``stored`` (the SKU's ``incoming/`` folder, listed) that none of its photos now has:
    photos an earlier ingest stored that have since left the folder (or changed)."""
    current = {photo_key(sku, photo) for photo in sku.photos}
    return [key for key in stored if key not in current]


def stored_photo_owners(store: ObjectStore) -> dict[str, set[str]]:
    """Each photo id an ingest stored under ``incoming/``, with the SKU ids it is stored under (read by
    ``shared.keys``, the layout ingest writes by)."""
    owners: dict[str, set[str]] = {}
    for key in store.list_keys(keys.Folder.PHOTOS):
        if photo := _stored_photo(key):
            sku_id, photo_id = photo
            owners.setdefault(photo_id, set()).add(sku_id)
    return owners


def _stored_photo(key: str) -> tuple[str, str] | None:
    """The SKU id and photo id of ``key`` when it is a photo ingest stored (``keys.photo_key``, a
    ``<16 hex>`` id); None for anything else under ``incoming/``: an object directly in it, another
    name, or one in a subfolder of a SKU's (``incoming/<sku>/old/<id>.png`` is not photo <id>: read as
    it, --withdraw-missing withdrew a photo its folder still had)."""
    try:
        sku_id = keys.sku_of(key)
    except ValueError:  # directly in incoming/: no SKU's photo
        return None
    name = key.rpartition("/")[2]
    photo_id = name.removesuffix(".png")
    if sku_id and _PHOTO_OBJECT.fullmatch(name) and key == keys.photo_key(sku_id, photo_id):
        return sku_id, photo_id
    return None


def _warn_of_another_sku(
    sku: PreparedSku, owners: dict[str, set[str]], batch: set[str], warn: Callable[[str], None]
) -> None:
    """Warn when a SKU id's first ingest brings photos already stored under another SKU this run does
    not ingest: the usual cause is a folder whose metadata.json changed its sku_id, and ingest never
    removes or renames a SKU, so the old id stays a class of its own in every export."""
    others = sorted(
        {owner for photo in sku.photos for owner in owners.get(photo.photo_id, ()) if owner not in batch}
    )
    if others:
        sku_id = sku.metadata.sku_id
        shared = sum(bool(owners.get(photo.photo_id, set()) - batch) for photo in sku.photos)
        folder = keys.Folder.PHOTOS.of(others[0])
        warn(
            f"SKU {sku_id}: {shared} of its {len(sku.photos)} photo(s) already stored under SKU "
            f"{', '.join(others)} ({folder}); if {sku.folder} was that SKU under another "
            f"sku_id, the old id's photos and the images generated from them stay in the retraining "
            f"store, a class of their own in every export (keep one sku_id per product: put the old one "
            f"back in metadata.json, or take the old SKU out with `skuforge ingest --withdraw-sku "
            f"{others[0]}`)"
        )


def _ids_equal_but_for_case(
    skus: Sequence[PreparedSku], owners: dict[str, set[str]], manifests: ManifestStore
) -> list[str]:
    """A problem for each SKU of ``skus`` whose id differs only in case from one the store holds photos
    for (``owners``, ``stored_photo_owners``) or the retraining store ``manifests`` holds rows for (a
    SKU taken out with ``--withdraw-sku`` keeps its withdrawn rows and markers there, and only those):
    refused, as two such ids in one batch are. Taken, it was a second class of the product in every
    export (S3 keys are case-sensitive), or in a FileStore on a case-insensitive disk its photos (or
    its rows and images) went into the other SKU's folder."""
    photo_ids = {sku_id for sku_ids in owners.values() for sku_id in sku_ids}
    stored_ids = photo_ids | set(manifests.sku_ids())
    by_case = {sku_id.casefold(): sku_id for sku_id in sorted(stored_ids)}
    problems = []
    for sku in skus:
        sku_id = sku.metadata.sku_id
        other = by_case.get(sku_id.casefold())
        if other is not None and sku_id not in stored_ids:
            held = (
                f"a SKU the store holds ({keys.Folder.PHOTOS.of(other)})"
                if other in photo_ids
                else f"a SKU the retraining store holds rows for ({manifests.key(f'manifests/{other}/')}) "
                f"with no photo under {keys.Folder.PHOTOS} (taken out with --withdraw-sku, most likely)"
            )
            problems.append(
                f"{sku.folder}: sku_id {sku_id!r} differs only in case from {other!r}, {held}; their "
                f"photos, rows and images would share store folders on a case-insensitive file system, and "
                f"every export would hold two classes of one product: put {other!r} in metadata.json to add "
                f"these photos to it, or give this SKU an id of its own"
            )
    return problems


def upload_sku(sku: PreparedSku, store: ObjectStore) -> SkuIngested:
    """Store the photos (keys derived from content, so re-uploads overwrite) and build the event."""
    photos = []
    for photo in sku.photos:
        stored = store.put_bytes(photo_key(sku, photo), photo.png, "image/png")
        image = ImageRef(**stored.model_dump(), width=photo.width, height=photo.height)
        mask = None
        if photo.mask_png is not None:
            stored_mask = store.put_bytes(photo_mask_key(sku, photo), photo.mask_png, "image/png")
            mask = ImageRef(**stored_mask.model_dump(), width=photo.width, height=photo.height)
        photos.append(
            ReferencePhoto(
                photo_id=photo.photo_id, image=image, original_filename=photo.original_filename, mask=mask
            )
        )
    return SkuIngested(sku=sku.metadata, photos=photos)


def _warn_on_stderr(message: str) -> None:
    # Escaped, as a refusal's problems are: the message may name a file whose name holds a newline or
    # a terminal escape.
    print(f"skuforge ingest: warning: {escape_control_characters(message)}", file=sys.stderr)


def _tell_on_stderr(message: str) -> None:
    print(f"skuforge ingest: {escape_control_characters(message)}", file=sys.stderr)


def ingest_path(
    path: Path,
    settings: Settings,
    *,
    store: ObjectStore | None = None,
    warn: Callable[[str], None] = _warn_on_stderr,
    withdraw_missing: bool = False,
    tell: Callable[[str], None] = _tell_on_stderr,
    trainstore: TrainstoreSettings | None = None,
) -> list[str]:
    """Ingest every SKU under ``path``; returns the event ids published (one per SKU).

    Every folder is checked before anything is uploaded, and nothing is uploaded when Kafka cannot
    be reached at the start. A SKU's photos, once checked, wait as PNG files in a temporary folder
    (``TMPDIR``; on local disk unless that is a tmpfs), not in memory: a thousand phone photos as PNG
    are tens of gigabytes. Should a publish fail later (a topic missing), the photos already stored
    stay under their content keys and the next run writes the same keys. A store failure before
    anything is published is ``StoreUnavailable``; ``warn`` is told of photos lying in ``path`` beside
    its SKU folders (no SKU reads them), of copies of a photo in its folder (ingested once; a resized
    or re-encoded copy twice), of a photo that two SKUs of the batch have, of an animation or a
    multi-page file (its first frame is ingested), of each
    SKU whose store folder holds photos its folder no longer has (they stay), and of a new SKU id whose
    photos another SKU holds (a changed sku_id).
    With ``withdraw_missing`` the photos a folder no longer has are withdrawn instead (module
    docstring), in the retraining store ``trainstore`` names (default: the ``SKUFORGE_TRAINSTORE_*``
    settings); ``tell`` is told of each SKU's withdrawals and reinstatements.
    A SKU id that differs only in case from one the store holds photos for, or the retraining store
    rows for (a SKU taken out with ``--withdraw-sku``), is ``IngestError``, before Kafka is reached or
    anything is uploaded.
    A SKU whose event the broker refuses for good (over the topic's ``max.message.bytes``) is left out
    and the others go on; ``IngestIncomplete`` then names it, its folder and the broker's reason.
    """
    with tempfile.TemporaryDirectory(prefix="skuforge-ingest-") as spool_dir:
        # Their photos' bytes are on disk: png is empty in these.
        spooled = _check_all(path, settings, lambda sku: _spool(sku, Path(spool_dir)), warn=warn)
        store = store or open_settings_store(settings)
        prefix = (trainstore or load_settings(TrainstoreSettings)).trainstore_prefix
        withdrawals = Withdrawals(ManifestStore(store, prefix))
        listing: str = keys.Folder.PHOTOS
        try:
            # Read once, before anything is uploaded: for the case check, and for a new id's warning.
            owners = stored_photo_owners(store)
            listing = withdrawals.manifests.key("manifests/")
            case_clashes = _ids_equal_but_for_case(spooled, owners, withdrawals.manifests)
        except TransientError as exc:  # nothing published yet: the store to look at, not Kafka
            raise StoreUnavailable(str(exc)) from exc
        except BadInput as exc:
            raise IngestError(
                f"nothing was ingested: the object store refused to list {listing}: {exc}"
            ) from exc
        if case_clashes:
            raise IngestError(_nothing_ingested(case_clashes))
        publisher = Publisher(settings, PRODUCER)  # TransientError if Kafka is away: nothing uploaded yet
        topic = settings.topic_name(SKU_INGESTED)
        try:
            if topic not in listed_topics(settings, client_id="skuforge-ingest"):
                # Found at the first publish, after the uploads, as a 60 s metadata timeout that asked
                # whether Kafka was running.
                raise IngestError(
                    f"nothing was ingested: topic {topic} does not exist on {settings.kafka_bootstrap} "
                    "(create the topics with `skuforge topics create`, or check SKUFORGE_TOPIC_NAMESPACE)"
                )
        except BaseException:
            # A listing that failed too (the broker gone since the producer bootstrapped): its sender
            # thread ran on in the process that called (the demo, a bench).
            publisher.close()
            raise
        event_ids: list[str] = []
        published: list[str] = []  # their SKU ids
        refused: list[str] = []  # "SKU (folder): why" of each SKU whose event the broker refused for good
        failing = "store"  # which system the step under way talks to, for the error's hint
        withdrawing = ""  # the withdrawal under way, for the error: its SKU went out already
        try:
            for sku in spooled:
                failing, withdrawing = "store", ""
                unspooled = _unspool(sku, Path(spool_dir))
                # One listing of the SKU's folder serves both: is the id new, and what left the folder.
                stored = list(store.list_addressable(keys.Folder.PHOTOS.of(sku.metadata.sku_id)))
                if not stored:
                    _warn_of_another_sku(
                        unspooled, owners, {other.metadata.sku_id for other in spooled}, warn
                    )
                stale = withdrawable_photo_ids(stale_photo_keys(unspooled, stored))
                if not withdraw_missing:
                    _warn_of_stale_photos(unspooled, stale, warn)
                back = _reinstate(unspooled, withdrawals, tell)
                payload = upload_sku(unspooled, store)
                failing = "broker"
                # Photos are durable before the event exists, so no consumer ever sees a dangling
                # reference. The event id is the trace id too: every event downstream carries it
                # (skuforge demo follows it). A photo put back after its withdrawal makes another
                # event than the same photos before it, which consumers would skip as already seen,
                # and each withdrawal lifted another again (by its time): a photo withdrawn and put
                # back twice made the first reinstatement's id twice, which a captioner skips.
                event_id = (
                    derive_id(sku.event_id, "reinstated", *(f"{photo_id}@{at}" for photo_id, at in back))
                    if back
                    else sku.event_id
                )
                try:
                    envelope = publisher.publish(
                        SKU_INGESTED,
                        payload,
                        sku_id=sku.metadata.sku_id,
                        event_id=event_id,
                        trace_id=event_id,
                    )
                except RecordRefused as exc:
                    # The SKU's own record (over the topic's max.message.bytes): refused at every run, it
                    # ended the batch there, and the SKUs after it never went out. Its withdrawals wait too.
                    refused.append(f"{sku.metadata.sku_id} ({sku.folder}): {exc}")
                    continue
                event_ids.append(envelope.event_id)
                published.append(sku.metadata.sku_id)
                if withdraw_missing and stale:
                    failing = "store"
                    sku_id = sku.metadata.sku_id
                    withdrawing = (
                        f"; the withdrawal of SKU {sku_id}'s photos no longer in its folder did not "
                        f"finish ({', '.join(stale)})"
                    )
                    generated = _withdraw(sku_id, sku.metadata.category, stale, withdrawals, store)
                    tell(
                        f"SKU {sku_id}: withdrew {len(stale)} photo(s) no longer in "
                        f"{sku.folder} ({', '.join(stale)}) and {generated} image(s) generated from them "
                        "from the retraining store"
                    )
        except Exception as exc:  # the broker or the store, after the checks: say what went out
            if not event_ids and not refused and isinstance(exc, TransientError):
                # Nothing published: say which system to look at. A store refusal once read "is
                # Kafka running?", sending its reader to the wrong system.
                if failing == "store":
                    raise StoreUnavailable(str(exc)) from exc
                raise
            left = [sku.metadata.sku_id for sku in spooled[len(published) + len(refused) :]]
            if isinstance(exc, ManifestUnreadable):
                # Read before the SKU's upload (its reinstatement) or its withdrawal. Folded into the
                # general message it was cut at 300 characters where the advice sat, said "the store
                # refused it", and told an ingest to replay dead letters it does not have.
                then = (
                    f"run the same ingest again. Published: {', '.join(published) or 'none'}; not "
                    f"published, their photos not uploaded either: {', '.join(left) or 'none'}"
                    f"{withdrawing}{_refusals(refused)}"
                )
                raise IngestIncomplete(str(ManifestUnreadable(exc.uri, exc.error, then=then))) from exc
            again = (
                "Run the same command again to finish: what is already published is published again "
                "under the same event ids, which consumers skip"
            )
            if isinstance(exc, BadInput):
                # A refusal (a store folder that is a link, a key it will not take) comes back on
                # every run: a rerun alone finishes nothing.
                again = (
                    f"The {failing} refused it, so a rerun alone will not finish: fix what it names, "
                    f"then {again[0].lower()}{again[1:]}"
                )
            raise IngestIncomplete(
                f"stopped after publishing {len(published)} of {len(spooled)} SKUs "
                f"({type(exc).__name__}: {clipped(str(exc), 300, at_word=True)}); "
                f"published: {', '.join(published) or 'none'}; "
                f"not published: {', '.join(left) or 'none'}{withdrawing}{_refusals(refused)}. {again}"
            ) from exc
        finally:
            publisher.close()
        if refused:
            raise IngestIncomplete(
                f"published {len(published)} of {len(spooled)} SKUs: {', '.join(published) or 'none'}"
                f"{_refusals(refused)}. Then run the same command again: what is already published is "
                "published again under the same event ids, which consumers skip"
            )
        return event_ids


def _refusals(refused: list[str]) -> str:
    """The part of ingest's error that names the SKUs whose event the broker refused for good."""
    if not refused:
        return ""
    return (
        f"; the broker refused the {SKU_INGESTED.name} event of {len(refused)} SKU(s) for good, so a rerun "
        f"alone will not publish them: {'; '.join(refused)}. A record over the topic's max.message.bytes "
        "is refused so (a SKU of many photos): raise the topic's max.message.bytes, or keep fewer photos "
        "in the SKU's folder"
    )


def _reinstate(
    sku: PreparedSku, withdrawals: Withdrawals, tell: Callable[[str], None]
) -> list[tuple[str, str]]:
    """Lift the withdrawal of the SKU's photos that are in its folder again; returns (id, when the
    lifted withdrawal was made) of each.

    Withdrawn by a marker, or still by their row (a run stopped after removing the marker, before the
    stages took the photo again, finds the lifted marker's time), so a second run gives the same ids
    and times, hence the same event id."""
    sku_id = sku.metadata.sku_id
    rows = withdrawals.manifests.read_sku(sku_id)
    withdrawn = withdrawals.photo_ids(sku_id) | {
        item_id for item_id, row in rows.items() if row.source == "real" and row.status == "withdrawn"
    }
    back = sorted({photo.photo_id for photo in sku.photos} & withdrawn)
    # And every photo put back by an earlier run (its lifted record stays): the folder as it is then
    # keeps that reinstatement's event id. Its plain id, the one from before the withdrawal, brought
    # back the images generated from the photo before it, which stay withdrawn, at any stage that no
    # longer remembered the event.
    earlier = [
        (photo.photo_id, at)
        for photo in sku.photos
        if photo.photo_id not in withdrawn and (at := withdrawals.lifted_at(sku_id, photo.photo_id))
    ]
    lifted = sorted([(photo_id, withdrawals.withdrawn_at(sku_id, photo_id)) for photo_id in back] + earlier)
    if back:
        withdrawals.reinstate(sku_id, back)
        tell(
            f"SKU {sku_id}: reinstated {len(back)} withdrawn photo(s) that are back in {sku.folder} "
            f"({', '.join(back)}); the images generated from them before stay withdrawn"
        )
    return lifted


def _withdraw(
    sku_id: str, category: str, photo_ids: list[str], withdrawals: Withdrawals, store: ObjectStore
) -> int:
    """Withdraw the photos in the retraining store, then delete them from ``incoming/``; returns how
    many generated images were withdrawn with them. In that order: until the last step the next run
    finds them again, and each step is idempotent."""
    rows = withdrawals.withdraw(sku_id, category, photo_ids, by="skuforge ingest")
    for photo_id in photo_ids:
        store.delete(keys.photo_key(sku_id, photo_id))
    return sum(row.source == "synthetic" for row in rows)


def withdraw_skus(
    sku_ids: Sequence[str],
    settings: Settings,
    *,
    store: ObjectStore | None = None,
    tell: Callable[[str], None] = _tell_on_stderr,
    trainstore: TrainstoreSettings | None = None,
) -> dict[str, list[str]]:
    """Take whole SKUs out of the training set (a changed sku_id's old id, a delisted product): every
    photo the store holds for each (under ``incoming/``, or in the retraining store) is withdrawn as
    ``--withdraw-missing`` withdraws one, with every image generated from it, and ``tell`` says so.
    Returns the photo ids withdrawn, by SKU (none for a SKU withdrawn already). Every id is checked
    first: one the store holds nothing of is an ``IngestError`` naming it, and nothing is withdrawn.
    Ingesting a SKU's folder again reinstates its photos; a store failure is ``StoreUnavailable``, and
    running the command again finishes the withdrawal."""
    for sku_id in sku_ids:
        try:
            check_safe_id(sku_id)
        except ValueError as exc:
            raise IngestError(f"--withdraw-sku {sku_id!r}: not a SKU id: {exc}") from None
    store = store or open_settings_store(settings)
    withdrawals = Withdrawals(
        ManifestStore(store, (trainstore or load_settings(TrainstoreSettings)).trainstore_prefix)
    )
    withdrawn: dict[str, list[str]] = {}
    try:
        try:
            planned = {sku_id: _photos_held(sku_id, withdrawals, store) for sku_id in dict.fromkeys(sku_ids)}
        except ManifestUnreadable as exc:
            # Every SKU is read before any is withdrawn. The stage's advice, to replay the dead letters,
            # had nothing to do with this command.
            raise ManifestUnreadable(
                exc.uri, exc.error, then="run the same command again (nothing was withdrawn)"
            ) from exc
        known = {sku_id: held for sku_id, held in planned.items() if held is not None}
        unknown = [sku_id for sku_id in planned if sku_id not in known]
        if unknown:
            raise IngestError(
                f"nothing was withdrawn: the store holds no SKU {', '.join(unknown)} (no photos under "
                f"incoming/, no rows under {withdrawals.manifests.key('manifests/')}); check the id "
                "(`skuforge dataset stats` lists the SKUs of the retraining store)"
            )
        for sku_id, (category, photo_ids) in known.items():
            if not photo_ids:
                tell(f"SKU {sku_id}: nothing left to withdraw (its photos are withdrawn already)")
                continue
            generated = _withdraw(sku_id, category, photo_ids, withdrawals, store)
            withdrawn[sku_id] = photo_ids
            tell(
                f"SKU {sku_id}: withdrew {len(photo_ids)} photo(s) ({', '.join(photo_ids)}) and "
                f"{generated} image(s) generated from them from the retraining store; ingest its folder "
                "again to reinstate them"
            )
    except TransientError as exc:
        done = f"; withdrawn: {', '.join(withdrawn)}" if withdrawn else ""
        raise StoreUnavailable(f"{exc}{done}; running the same command again finishes it") from exc
    return withdrawn


def _photos_held(sku_id: str, withdrawals: Withdrawals, store: ObjectStore) -> tuple[str, list[str]] | None:
    """The SKU's category and the ids of its photos still to withdraw: those ingest stored under
    ``incoming/`` (deleted last, so a withdrawal stopped half-way is found again) and those of rows still
    in the training set. None when the store holds nothing of the SKU."""
    rows = withdrawals.manifests.read_sku(sku_id)
    stored = withdrawable_photo_ids(list(store.list_addressable(keys.Folder.PHOTOS.of(sku_id))))
    if not stored and not rows and not withdrawals.photo_ids(sku_id):
        return None
    in_training = {
        photo_id for row in rows.values() if (photo_id := photo_of(row)) and withdrawable(row, {photo_id})
    }
    # A photo never captioned has no row: its withdrawn row records the category of the SKU's others.
    category = next((row.category for row in rows.values()), "")
    return category, sorted(set(stored) | in_training)


def _warn_of_stale_photos(sku: PreparedSku, stale: list[str], warn: Callable[[str], None]) -> None:
    """Warn, not refuse: dropping a photo from a folder is a normal edit, but ingest removes nothing
    from the store unless asked, and saying nothing left a photo its owner had removed in the training
    set. ``stale``: the ids of the photos an earlier ingest stored that the folder no longer has."""
    if stale:
        sku_id = sku.metadata.sku_id
        one = len(stale) == 1
        folder = keys.Folder.PHOTOS.of(sku_id)
        photos, are, they, them = (
            ("1 photo", "is", "it", "it") if one else (f"{len(stale)} photos", "are", "they", "them")
        )
        warn(
            f"SKU {sku_id}: {photos} from an earlier ingest (under {folder}) {are} not in "
            f"{sku.folder} now (a file removed or edited; or decoded differently since, after a change "
            f"of SKUFORGE_MAX_IMAGE_PIXELS or an upgrade, when the same files are there); ingest never "
            f"removes a photo, so {they} and the images generated from {them} stay in the retraining "
            f"store (--withdraw-missing takes {them} out)"
        )


def _spool(sku: PreparedSku, spool_dir: Path) -> PreparedSku:
    """``sku`` with its photos' PNG bytes written under ``spool_dir`` and dropped from memory (a
    transparency mask, a flat two-level PNG of a few kB, stays)."""
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
    """``skuforge ingest DIR``, or ``skuforge ingest --withdraw-sku SKU_ID``. Exit status 0, 1 (the
    broker or the store failed), 2 (bad input or settings), or 128 + the signal's number when stopped
    (130 for Ctrl-C)."""
    parser = argparse.ArgumentParser(
        prog="skuforge ingest",
        description="Upload each SKU folder's photos to the object store and publish sku.ingested; "
        "or, with --withdraw-sku, take whole SKUs out of the retraining store.",
    )
    parser.add_argument(
        "path",
        type=path_argument("folder"),
        nargs="?",
        help="a SKU folder (photos + metadata.json) or a folder of them (none with --withdraw-sku)",
    )
    parser.add_argument(
        "--withdraw-missing",
        action="store_true",
        help="photos an earlier ingest stored that are no longer in the SKU's folder leave the retraining "
        "store, with every image generated from them (default: they stay, with a warning)",
    )
    parser.add_argument(
        "--withdraw-sku",
        action="append",
        default=[],
        metavar="SKU_ID",
        help="instead of ingesting, take a whole SKU out of the retraining store (an old sku_id, a "
        "delisted product): every photo stored for it and every image generated from them, as "
        "--withdraw-missing does; repeatable; ingesting its folder again reinstates them",
    )
    args = parser.parse_args(argv)
    if args.withdraw_sku and (args.path is not None or args.withdraw_missing):
        parser.error("--withdraw-sku takes no folder and no --withdraw-missing: run it on its own")
    if not args.withdraw_sku and args.path is None:
        parser.error("the following arguments are required: path")
    try:
        with stopped_as_interrupt():
            settings = load_settings()
            if args.withdraw_sku:
                withdrawn = withdraw_skus(args.withdraw_sku, settings)
                print(json.dumps({"withdrawn_skus": len(withdrawn), "photo_ids": withdrawn}))
                return 0
            event_ids = ingest_path(args.path, settings, withdraw_missing=args.withdraw_missing)
    except IngestIncomplete as exc:
        print(f"skuforge ingest: {exc}", file=sys.stderr)
        return 1
    except (IngestError, ConfigError) as exc:
        print(f"skuforge ingest: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        # A withdrawal publishes nothing: "nothing was published" told its user nothing of what was done.
        what = "" if args.withdraw_sku else ", nothing was published"
        print(
            f"skuforge ingest: the object store failed{what}: {exc} (check "
            "SKUFORGE_STORE_URI, SKUFORGE_S3_ENDPOINT_URL and the store's credentials, then run again)",
            file=sys.stderr,
        )
        return 1
    except TransientError as exc:
        # A bootstrap that failed says what to check already (shared.bus.unreachable); a send does not.
        hint = (
            ""
            if "SKUFORGE_KAFKA_BOOTSTRAP" in str(exc)
            else " (is Kafka at SKUFORGE_KAFKA_BOOTSTRAP running?)"
        )
        print(f"skuforge ingest: {exc}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        # A traceback out of whatever PIL or the producer was doing said nothing a user could act on.
        signum = signal_number(exc)
        if args.withdraw_sku:
            done = (
                "SKUs withdrawn before the interrupt stay withdrawn, the rest may be withdrawn in part: "
                "run the same command again to finish the withdrawal"
            )
        else:
            done = (
                "SKUs published before the interrupt stay published, the rest were not: run the same "
                "command again to finish the batch (a SKU ingested twice is one event)"
            )
        print(f"skuforge ingest: {stopped_how(signum)}; {done}", file=sys.stderr)
        return 128 + signum
    print(json.dumps({"ingested_skus": len(event_ids), "event_ids": event_ids}))
    return 0
