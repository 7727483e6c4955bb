"""The store side of ``skuforge evaluate`` (``services/trainstore/evaluate.py`` parses the command).

Reads the retraining store's SKUs exactly as ``skuforge dataset export`` would export them and the
held-out folder (one folder per SKU id), refuses leakage between them and the scene library, runs the
experiment of ``shared/evaluation/experiment.py`` and writes ``evaluation.json`` and ``report.html``.
Imports torch (the backbone): the command imports this module only after its arguments parse, so
``--help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import os
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from services.trainstore.cli import no_skus_problem, open_manifests, store_root
from shared.argtypes import json_file_text
from shared.config import load_settings
from shared.errors import BadInput, ChecksumMismatch, ImageRejected, ObjectMissing, naming
from shared.evaluation import EVALUATION_FILE, REPORT_FILE
from shared.evaluation.backbone import BackboneMissing, BackboneSpec, FeatureCache, open_backbone
from shared.evaluation.experiment import (
    CONDITION_NAMES,
    CONDITIONS,
    WORSE_BY,
    EvaluationConfig,
    EvaluationResult,
    Featurizer,
    Photo,
    describe_classifier,
    run_evaluation,
)
from shared.evaluation.leakage import (
    HASH_BITS,
    LeakageError,
    check_disjoint,
    check_no_near_duplicates,
    copies_across_groups,
    copies_within_groups,
    copy_hashes,
    hash_fits,
    heldout_hash,
    variant_back,
)
from shared.evaluation.linear import FitDiverged
from shared.evaluation.report import render_report
from shared.generation.scenes import library_keys, scene_file_bytes
from shared.images import photo_as_stored, refuse_oversized, too_large_bytes
from shared.model_cache import write_atomically, write_blocks_atomically
from shared.observability import escape_control_characters
from shared.photos import (
    HEIC_ADVICE,
    HEIC_SUFFIXES,
    PHOTO_FILE_SUFFIXES,
    is_left_out_quietly,
    is_nas_thumbnail_folder,
    photo_suffix,
)
from shared.store import FileStore, ObjectStore, check_store_uri, open_store, sha256_hex
from shared.trainstore.dataset import ExportPlan, either, plan_export, read_checked, withdraw_way
from shared.trainstore.manifest import ManifestRow, ManifestStore
from shared.trainstore.withdrawals import Withdrawals


class EvaluateRefused(ValueError):
    """The inputs cannot give a meaningful evaluation; the message says what to change."""


# What ``evaluate`` raises for inputs it will not run on (exit 2, the message on stderr).
REFUSALS: tuple[type[Exception], ...] = (
    EvaluateRefused,
    LeakageError,
    BackboneMissing,
    BadInput,
    FitDiverged,
)


def heldout_photos(root: Path) -> tuple[list[Photo], list[str]]:
    """The photos of ``root/<sku_id>/*``, and notes on what was not used.

    Photos are the files ``skuforge ingest`` takes as photos (``shared/photos.py``: a ``.jfif`` held
    out is a photo here as it is there). Files that are not photos by suffix and files directly under
    ``root`` are noted and left out; hidden files and folders, ``__MACOSX`` and desktop leftovers
    (``Thumbs.db``) are left out quietly, as ingest leaves them (``shared.photos.is_left_out_quietly``);
    a NAS's thumbnail folders (Synology's ``@eaDir``), in SKU folders or beside them, are left out with
    one note;
    a file with a photo suffix that is not an image is refused (it would fail later, less clearly).
    """
    try:
        return _heldout_photos(root)
    except OSError as exc:  # a folder that lists but cannot be entered (`chmod -R 644`): was a traceback
        where = exc.filename or root
        reason = exc.strerror or exc
        raise EvaluateRefused(
            f"--heldout {root}: {where} cannot be read ({reason}); check its permissions"
        ) from None


def _heldout_photos(root: Path) -> tuple[list[Photo], list[str]]:
    if not root.is_dir():
        raise EvaluateRefused(f"--heldout {root}: not a directory (one folder per SKU id, photos inside)")
    max_bytes = load_settings().max_image_bytes  # the limit ingest refuses a photo file by, unread
    photos: list[Photo] = []
    notes: list[str] = []
    first_of: dict[tuple[str, str], Path] = {}  # (SKU, sha256) -> the file scored
    thumbnails: list[Path] = []  # a NAS's thumbnail folders: noted once, not one note per SKU
    entries = [
        entry
        for entry in sorted(root.iterdir())
        if not is_left_out_quietly(entry.name, is_folder=entry.is_dir())
    ]
    thumbnails += [entry for entry in entries if _is_thumbnail_folder(entry)]
    entries = [entry for entry in entries if entry not in thumbnails]
    sku_folders = {_folder_id(entry): entry for entry in entries if entry.is_dir()}
    for entry in entries:
        if not entry.is_dir():
            notes.append(f"{entry} is not in a SKU folder: not used")
            continue
        # A link inside a SKU's folder to another SKU's folder, or to the root, would hold that SKU's
        # photos out under this one too.
        elsewhere = {_folder_id(root)} | (set(sku_folders) - {_folder_id(entry)})
        for path in _files_under(entry, elsewhere, notes, thumbnails):
            if not path.is_file():
                # As ingest words it: a pipe was "a link to nothing" here.
                what = (
                    "a link to nothing"
                    if not path.exists()
                    else "not a regular file (a pipe, socket or device)"
                )
                notes.append(f"{path} is {what}: not used")
                continue
            if photo_suffix(path.name) in HEIC_SUFFIXES:  # an iPhone's: what to do, as ingest says it
                notes.append(f"{path}: {HEIC_ADVICE} (not used)")
                continue
            if photo_suffix(path.name) not in PHOTO_FILE_SUFFIXES:
                notes.append(f"{path} is not a photo ({', '.join(sorted(PHOTO_FILE_SUFFIXES))}): not used")
                continue
            data = _read_held_out(path, max_bytes)
            _check_is_image(path, data)
            sha256 = sha256_hex(data)
            if (same := first_of.get((entry.name, sha256))) is not None:
                # A re-download ("IMG_1 (1).jpg") or a link to a photo beside it counted the photo twice
                # in the SKU's top-1 and in the gains the export policy reads; ingest keeps one too.
                notes.append(f"{path} is the same picture as {same}: scored once")
                continue
            first_of[(entry.name, sha256)] = path
            photos.append(
                Photo(entry.name, "real", str(path.absolute()), sha256, _file_reader(path, sha256, max_bytes))
            )
    if thumbnails:
        names = ", ".join(sorted({path.name for path in thumbnails}))
        notes.append(
            f"{len(thumbnails)} NAS thumbnail folder(s) ({names}) are not photos: not used: "
            f"{_shown(str(path) for path in sorted(thumbnails))}"
        )
    _refuse_one_photo_under_two_skus(photos)
    return photos, notes


def _read_held_out(path: Path, max_bytes: int) -> bytes:
    """``path``'s bytes, refused by its size first: a 3 GiB scan (or a video named .jpg) was read whole,
    then refused. At most ``max_bytes`` + 1 are read, so a file that grows after its size was taken is
    refused without being read whole either."""
    try:
        refuse_oversized(path.stat().st_size, max_bytes)
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise too_large_bytes(f"more than {max_bytes} bytes", max_bytes)
    except ImageRejected as exc:
        raise EvaluateRefused(
            f"held-out {path} cannot be used ({exc.detail}, SKUFORGE_MAX_IMAGE_BYTES); remove it or "
            "replace it"
        ) from None
    except OSError as exc:
        raise EvaluateRefused(
            f"held-out {path} cannot be read ({exc.strerror or exc}); fix it or remove it"
        ) from None
    return data


def _file_reader(path: Path, sha256: str, max_bytes: int) -> Callable[[], bytes]:
    """Reads ``path``, refused when its bytes are no longer those listed: its hashes, as-ingested answer
    and features are cached by that sha256, and a file rewritten during the run (a sync still running)
    had its new bytes' cached under its old bytes' name, read by every later run on the old bytes.
    Read under the listing's size limit: a file that grew past it was read whole before being refused."""

    def read() -> bytes:
        data = _read_held_out(path, max_bytes)
        if sha256_hex(data) != sha256:
            raise EvaluateRefused(
                f"held-out {path} changed during the run (sha256 {sha256[:12]}... when listed, "
                f"{sha256_hex(data)[:12]}... now); run again once the folder is no longer being written"
            )
        return data

    return read


def _is_thumbnail_folder(path: Path) -> bool:
    return is_nas_thumbnail_folder(path.name) and path.is_dir()


def heldout_sku_folders(root: Path) -> list[str]:
    """The SKU ids ``root``'s folders name, sorted, with photos in them or not (``heldout_photos`` gives
    only the SKUs that have some); a folder ingest leaves out quietly (``__MACOSX``) names none."""
    return sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir()
        and not is_left_out_quietly(entry.name, is_folder=True)
        and not is_nas_thumbnail_folder(entry.name)
    )


def _printable(text: str) -> str:
    """``text`` printable on any stdout: a file name that is not UTF-8 (surrogate escapes) crashed a
    strict UTF-8 stdout; its bytes are shown with replacement characters instead."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _refuse_one_photo_under_two_skus(photos: list[Photo]) -> None:
    """The same bytes held out under two SKU ids (a link from a renamed SKU's folder, a copy in the
    wrong folder) would be scored under both labels, one of them wrong whatever the classifier says:
    top-1, the per-SKU gains and the policy built on them skewed without a word."""
    by_sha: dict[str, list[Photo]] = {}
    for photo in photos:
        by_sha.setdefault(photo.sha256, []).append(photo)
    for copies in by_sha.values():
        skus = sorted({photo.sku_id for photo in copies})
        if len(skus) > 1:
            shown = ", ".join(f"{photo.sku_id}: {photo.name}" for photo in copies)
            raise EvaluateRefused(
                f"one held-out photo is in {len(skus)} SKU folders ({shown}); a photo has one label: "
                "remove the copies (or the link) from the wrong folders"
            )


def _refuse_copies_under_two_skus(photos: Sequence[Photo], hashes: Sequence[tuple[str, bytes]]) -> None:
    """As ``_refuse_one_photo_under_two_skus``, for a copy with other bytes (a JPEG in one SKU's folder,
    a PNG of it in another's): found by ``heldout_hash``es (``hashes``: (name, hash) of ``photos``)."""
    sku_of = {photo.name: photo.sku_id for photo in photos}
    copies = copies_across_groups([(sku_of[name], name, value) for name, value in hashes])
    if copies:
        shown = "; ".join(
            f"{first} ({sku_of[first]}) and {second} ({sku_of[second]}), {_differing(how, 'the second ')}"
            f"perceptual hash {bits} of {HASH_BITS} bits apart"
            for first, second, bits, how in copies[:5]
        ) + (f"; and {len(copies) - 5} more" if len(copies) > 5 else "")
        raise EvaluateRefused(
            f"held-out photos in two SKU folders look like copies of one picture: {shown}; a photo has "
            "one label: remove the copies from the wrong folders"
        )


def _without_copies_within_skus(
    photos: Sequence[Photo], hashes: Sequence[tuple[str, bytes]]
) -> tuple[list[Photo], list[str]]:
    """``photos`` less the copies with other bytes of a photo in the same SKU's folder (a JPEG of a PNG
    beside it, a resized one), found by ``heldout_hash``es (``hashes``), and a note of each: scored once,
    as ``heldout_photos`` scores a byte copy once. Scored twice, the photo weighed double in the SKU's
    top-1 and in the gain the export policy reads. Copies of copies are one picture: of each group the
    pairs join (a like b, b like c, a unlike c), the first listed is kept; folded pair by pair, c was
    scored beside a. A copy's note follows its chain to the photo scored (``_copy_links``): it named only
    the nearest copy, "c looks like a copy of b: scored once, as a", and not that b was left out too."""
    order = {photo.name: index for index, photo in enumerate(photos)}
    sku_of = {photo.name: photo.sku_id for photo in photos}
    pairs = copies_within_groups([(sku_of[name], name, value) for name, value in hashes])
    joined_to = {photo.name: photo.name for photo in photos}  # a group's first listed is joined to itself

    def kept_of(name: str) -> str:
        while joined_to[name] != name:
            name = joined_to[name]
        return name

    for first, second, _, _ in pairs:
        kept, other = sorted((kept_of(first), kept_of(second)), key=order.__getitem__)
        joined_to[other] = kept
    notes = []
    for photo in photos:
        if (kept := kept_of(photo.name)) != photo.name:
            (like, bits, how), *links = _copy_links(photo.name, kept, pairs)
            further = "".join(
                f", which looks like a copy of {name} ({_differing(way)}{apart} bits apart)"
                for name, apart, way in links
            )
            scored = f"scored once, as {kept}" if links else "scored once"
            notes.append(
                f"{photo.name} looks like a copy of {like} ({_differing(how)}perceptual hash {bits} of "
                f"{HASH_BITS} bits apart){further}: {scored}"
            )
    return [photo for photo in photos if kept_of(photo.name) == photo.name], notes


def _copy_links(
    copy: str, kept: str, pairs: Sequence[tuple[str, str, int, str]]
) -> list[tuple[str, int, str]]:
    """The fewest links of copy ``pairs`` (nearest first) from ``copy`` to ``kept``, one of its group: each
    photo on the way with the bits the one before is apart from it, and how that one differs from it."""
    came_from: dict[str, tuple[str, int, str]] = {copy: (copy, 0, "as shown")}
    reached = [copy]
    for name in reached:  # breadth first: ``reached`` grows as it is walked
        for first, second, bits, how in pairs:  # ``second`` is ``first`` made ``how``
            if first == name and second not in came_from:
                came_from[second] = (name, bits, variant_back(how))
                reached.append(second)
            elif second == name and first not in came_from:
                came_from[first] = (name, bits, how)
                reached.append(first)
    links = []
    name = kept
    while name != copy:
        before, bits, how = came_from[name]
        links.append((name, bits, how))
        name = before
    return links[::-1]


def _differing(how: str, whose: str = "") -> str:
    """How a copy differs from its photo (a variant of ``shared/evaluation/leakage.py``), as a message
    says it before the bits apart, after ``whose``: nothing for a resized or re-encoded one."""
    return "" if how == "as shown" else f"{whose}{how}, "


def _refuse_sku_folders_inside_others(root: Path, photos: Sequence[Photo], sku_ids: set[str]) -> None:
    """A sub-folder of a SKU's folder named like another SKU of the store (one SKU's folder dropped
    into another's) held its photos out under the outer SKU's label: scored wrong whatever the
    classifier said, and that SKU's top-1 and gain skewed without a word. Other sub-folders (a shoot's
    dates) are read as the SKU's."""
    for photo in photos:
        sku_folder = (root / photo.sku_id).absolute()
        inner = Path(photo.name).relative_to(sku_folder).parent.parts
        if named := next((part for part in inner if part in sku_ids and part != photo.sku_id), None):
            folder = sku_folder.joinpath(*inner[: inner.index(named) + 1])
            raise EvaluateRefused(
                f"held-out folder {folder} is inside {photo.sku_id}'s but named like the store's SKU "
                f"{named}: its photos would be scored as {photo.sku_id}; move it to {root / named} or "
                "rename it"
            )


def _folder_id(folder: Path) -> tuple[int, int]:
    """The folder's device and inode: the same folder, however it is reached."""
    stat = os.stat(folder)
    return stat.st_dev, stat.st_ino


def _files_under(
    folder: Path, elsewhere: set[tuple[int, int]], notes: list[str], thumbnails: list[Path]
) -> list[Path]:
    """The files in ``folder`` and its sub-folders (links followed, each folder once), sorted; what
    ingest leaves out quietly (hidden files, everything in hidden folders such as thumbnails and
    checkpoints, ``__MACOSX``, ``Thumbs.db``) left out, and so are the folders
    ``elsewhere`` names (other SKUs' folders, reached by a link), with a note, and a NAS's thumbnail
    folders (``@eaDir``), added to ``thumbnails``. A folder that cannot be read is refused: its photos
    would be missing from the evaluation without a word."""

    def refuse(exc: OSError) -> None:
        raise EvaluateRefused(
            f"held-out folder {exc.filename} cannot be read ({exc.strerror or exc}); fix it or remove it"
        )

    found: list[Path] = []
    seen: set[tuple[int, int]] = set()  # linked folders are followed, each folder read once (no loops)
    for top, folders, names in os.walk(folder, onerror=refuse, followlinks=True):
        try:
            here = _folder_id(Path(top))
        except OSError as exc:
            refuse(exc)
        if here in elsewhere:
            notes.append(f"{top} is a link to another SKU's folder or the held-out root: not used")
            folders[:] = []
            continue
        if here in seen:
            folders[:] = []
            continue
        seen.add(here)
        thumbnails += [Path(top) / name for name in folders if is_nas_thumbnail_folder(name)]
        folders[:] = [
            name
            for name in folders
            if not is_left_out_quietly(name, is_folder=True) and not is_nas_thumbnail_folder(name)
        ]
        found.extend(Path(top) / name for name in names if not is_left_out_quietly(name))
    return sorted(found)


def _check_is_image(path: Path, data: bytes) -> None:
    try:
        Image.open(io.BytesIO(data))  # the header only: cheap, and enough to catch a stray file
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error):
        # Pillow raises ValueError for some malformed headers (a PNG's IHDR of length 0, a TIFF of
        # width 0), as shared/images.py knows: those were a traceback.
        raise EvaluateRefused(f"held-out {path} is not an image; remove it or replace it") from None
    except Image.DecompressionBombError as exc:  # not an OSError: a header declaring far too many pixels
        raise EvaluateRefused(f"held-out {path} cannot be used ({exc}); remove it or replace it") from None


def as_ingested(photos: Sequence[Photo], cache_dir: Path | None) -> list[tuple[str, str]]:
    """(name, sha256) of each held-out photo as ``skuforge ingest`` would store it, where that differs
    from the file's own sha256.

    Ingest stores every photo as ``shared.images.photo_as_stored`` makes it (decoded, EXIF orientation
    applied, re-encoded as PNG), and the trainstore keeps that PNG, so an ingested JPEG never matches
    its stored copy byte for byte. The PNG encode of a phone photo takes seconds, so answers are cached
    by the file's sha256 and the pixel limit (a JPEG over it is decoded at a reduced scale). The
    cache's name changed when the decode began converting colour profiles to sRGB and reducing large
    JPEGs, so an answer of the earlier decode is never read. A photo that does not decode is refused,
    named.
    """
    settings = load_settings()
    limits = {"max_pixels": settings.max_image_pixels, "max_bytes": settings.max_image_bytes}
    cache = None if cache_dir is None else cache_dir / f"as-ingested-sha256-v2-max{settings.max_image_pixels}"
    items = []
    for photo in photos:
        cached = None if cache is None else cache / photo.sha256
        stored_sha256 = _cached_entry(cached, lambda text: re.fullmatch("[0-9a-f]{64}", text) is not None)
        if stored_sha256 is None:
            try:
                stored_sha256 = sha256_hex(photo_as_stored(photo.read(), **limits)[1])
            except ImageRejected as exc:
                raise EvaluateRefused(
                    f"held-out {photo.name} cannot be used ({exc}); remove it or replace it"
                ) from None
            if cached is not None:
                write_atomically(cached, f"{stored_sha256}\n".encode())  # runs may share the cache
        if stored_sha256 != photo.sha256:
            items.append((f"{photo.name} (as ingest stores it)", stored_sha256))
    return items


def _why_no_real(statuses: set[str]) -> str:
    """Why a SKU has no usable real image, from the statuses of its real rows, and what to do."""
    if not statuses:
        return "no real photo was ingested: ingest its folder"
    if statuses == {"withdrawn"}:
        return "its real photos were withdrawn: ingest its folder again to reinstate them"
    if "withdrawn" not in statuses:
        return "the captioner found its real photos unusable: ingest clearer photos of it"
    return "its real photos were withdrawn or found unusable: ingest usable photos of it"


def heldout_hashes(
    photos: Sequence[Photo], cache_dir: Path | None
) -> tuple[list[tuple[str, bytes]], list[Photo]]:
    """(name, ``heldout_hash``) of each held-out photo that has one (as shown, mirrored and turned, its
    frame and its content), and the photos that have none: too little detail to compare copies by,
    which ``unhashable_notes`` names. Photos that do not decode were refused before (``as_ingested``),
    and so were those past SKUFORGE_MAX_IMAGE_PIXELS; refused here too, in the same words."""
    items, unhashable = [], []
    for photo in photos:
        try:
            value = _cached_hash(cache_dir, photo.sha256, photo.read, heldout=True)
        except ImageRejected as exc:
            raise EvaluateRefused(
                f"held-out {photo.name} cannot be used ({exc}); remove it or replace it"
            ) from None
        if value is None:
            unhashable.append(photo)
        else:
            items.append((photo.name, value))
    return items, unhashable


def real_image_hashes(
    manifests: ManifestStore, rows: Iterable[ManifestRow], cache_dir: Path | None, streamed: Mapping[str, str]
) -> tuple[list[tuple[str, bytes]], dict[str, list[str]]]:
    """(name, perceptual hash) of every real image of ``rows`` that has one: where a resized copy of a
    held-out photo would be, had it been ingested as a reference photo; and, by SKU id, the names of
    those that have none. ``streamed``: the sha256 of the images rows with none name
    (``streamed_sha256s``)."""
    items: list[tuple[str, bytes]] = []
    unhashable: dict[str, list[str]] = {}
    for row in rows:
        if row.source != "real" or row.image is None:
            continue
        name = object_name(manifests.store, manifests.key(row.image))
        sha256 = row.image_sha256 or streamed[row.image]
        # Past SKUFORGE_MAX_IMAGE_PIXELS (lowered since it was ingested). The key escaped, as the name: one
        # a store wrote before review 48 may hold a bidi control, which reordered the refusal's text.
        with naming(name, escape_control_characters(row.image)):
            value = _cached_hash(cache_dir, sha256, _checked_reader(manifests, row, sha256))
        if value is None:
            unhashable.setdefault(row.sku_id, []).append(name)
        else:
            items.append((name, value))
    return items, unhashable


def unhashable_notes(unhashable: Sequence[Photo], store_unhashable: dict[str, list[str]]) -> list[str]:
    """Notes naming the held-out photos without a perceptual hash, and the real images of their SKUs
    without one either: a resized copy of such a photo has too little detail too, so it can only be
    among those, and only an eye can tell."""
    if not unhashable:
        return []
    notes = [
        f"{len(unhashable)} held-out photo(s) have too little detail for a perceptual hash (a blank frame, "
        "or a plain product on a plain background), so only exact copies of them were looked for in "
        f"the store and the scenes: {_shown(photo.name for photo in unhashable)}"
    ]
    candidates = sorted(
        {name for sku in {photo.sku_id for photo in unhashable} for name in store_unhashable.get(sku, [])}
    )
    if candidates:
        notes.append(
            f"real images of their SKUs that have no perceptual hash either, where a resized copy of "
            f"them would be (compare them by eye): {_shown(candidates)}"
        )
    return notes


def _shown(names: Iterable[str], most: int = 10) -> str:
    listed = list(names)
    return ", ".join(listed[:most]) + (f" and {len(listed) - most} more" if len(listed) > most else "")


def _cached_hash(
    cache_dir: Path | None, sha256: str, read: Callable[[], bytes], *, heldout: bool = False
) -> bytes | None:
    """``copy_hashes`` (or ``heldout_hash``) of the bytes ``read`` gives, cached under ``cache_dir``
    by their sha256 and the pixel limit (a PNG phone photo decodes in about a second); an entry of its
    newline alone is "no hash". Past the limit ``ImageRejected``, never cached."""
    # Each kind is named by what it covers, so a cache of an older kind is never read as this one:
    # until 2026-12-03 a product shot was hashed by its whole frame, not by its content inside the
    # plain border, and held-out values were half as long; until 2026-12-04 one variant without
    # detail dropped its part (so a photo could read "no hash" that has one now).
    # Until 2026-12-04 a store image's hash left out the content of a photo letterboxed with plain bars.
    # Until 2026-12-06 a held-out photo's hash left out the part inside plain bars, and that part of a
    # store image was shrunk with the bars' edge blended in (not cut out first). Until 2026-12-06 too,
    # the part inside plain bars kept the line where the bars' edge blends into the photo.
    kind = (
        "dhash256-frame-content-bars-past-blend-mirrored-turned-each"
        if heldout
        else "dhash256-content-frame-bars-cut-past-blend"
    )
    # And by the pixel limit, as ``as_ingested``'s: past it an image is refused, and near it a large
    # JPEG's larger decode is given up; a hash cached under a higher limit was read under a lower one.
    max_pixels = load_settings().max_image_pixels
    cached = None if cache_dir is None else cache_dir / f"{kind}-max{max_pixels}" / sha256
    entry = _cached_entry(cached, lambda text: _is_hash_hex(text, heldout=heldout))
    if entry is not None:
        return bytes.fromhex(entry) or None
    value = (heldout_hash if heldout else copy_hashes)(read(), max_pixels=max_pixels)
    if cached is not None:
        write_atomically(cached, f"{'' if value is None else value.hex()}\n".encode())  # runs may share it
    return value


def _is_hash_hex(text: str, *, heldout: bool) -> bool:
    """Whether ``text`` is a cached hash's hex: empty ("no hash") or what ``hash_fits`` takes."""
    return not text or (
        re.fullmatch("(?:[0-9a-f]{2})+", text) is not None and hash_fits(bytes.fromhex(text), heldout=heldout)
    )


def _cached_entry(path: Path | None, valid: Callable[[str], bool]) -> str | None:
    """The answer a cache entry holds (its one line, as written with its newline), or None to compute
    it again: not cached, or cut short or damaged. Such an entry was read as it stood: an as-ingested
    sha256 cut short matched no store image, so an ingested photo was trained on and scored without a
    word, an empty hash read as "no hash", and a hash of the wrong length stopped the run in a
    traceback."""
    if path is None or not path.is_file():
        return None
    text = path.read_bytes().decode("ascii", "replace")
    if not text.endswith("\n") or not valid(text[:-1]):
        return None
    return text[:-1]


def training_photos(manifests: ManifestStore, plan: ExportPlan, streamed: Mapping[str, str]) -> list[Photo]:
    """The images ``plan`` exports, as Photos whose bytes are checked against the manifest when read;
    ``streamed``: the sha256 of the images rows with none name (``streamed_sha256s``)."""
    photos = []
    for plan_class in plan.classes:
        for row in [*plan_class.real, *plan_class.synthetic]:
            assert row.image is not None  # plan_export keeps stored rows only
            name = object_name(manifests.store, manifests.key(row.image))
            sha256 = row.image_sha256 or streamed[row.image]
            photos.append(
                Photo(row.sku_id, row.source, name, sha256, _checked_reader(manifests, row, sha256))
            )
    return photos


def _checked_reader(manifests: ManifestStore, row: ManifestRow, sha256: str | None) -> Callable[[], bytes]:
    """Read the image of ``row`` when trained on; a key no store reads is ``EvaluateRefused``."""

    def read() -> bytes:
        try:
            return read_checked(manifests, row.image, sha256)
        except ValueError as exc:
            raise _unreadable(row, exc) from None

    return read


def _unreadable(row: ManifestRow, exc: ValueError) -> EvaluateRefused:
    """The refusal of a row written by hand or by another tool whose image key no store reads (a newline,
    an escape code): a traceback before. Its key is shown escaped: it must not start a line or reach the
    terminal raw. A key a store wrote before review 48 (a bidi control) is read, as dataset export does."""
    return EvaluateRefused(
        f"the image of {row.sku_id}/{row.item_id} is {escape_control_characters(str(row.image))}, which "
        f"is no key the store reads ({exc}); restore its manifest part from a backup or remove the row"
    )


def stored_images(
    manifests: ManifestStore, rows: Iterable[ManifestRow], streamed: Mapping[str, str]
) -> list[tuple[str, str]]:
    """(name, sha256) of every image the rows point at, exported or not (what leakage is checked against).
    Every SKU's, not only the evaluated ones': a held-out photo filed under any SKU may be trained on."""
    return [
        (object_name(manifests.store, manifests.key(row.image)), row.image_sha256 or streamed[row.image])
        for row in rows
        if row.image is not None
    ]


def streamed_sha256s(manifests: ManifestStore, rows: Iterable[ManifestRow]) -> dict[str, str]:
    """The sha256 of each image a row with none names, by its key: each read once, a block at a time,
    and not held (memory grew with the store). Once a run: the training photos and the leakage check
    each read every such image for its hash, and the store's perceptual hashes, with no hash to cache
    them by, decoded it again on every run; on S3 each a GET of the whole image."""
    sha256s: dict[str, str] = {}
    for row in rows:
        if row.image is not None and not row.image_sha256 and row.image not in sha256s:
            sha256s[row.image] = _streamed_sha256(manifests, row)
    return sha256s


def _streamed_sha256(manifests: ManifestStore, row: ManifestRow) -> str:
    """The sha256 of the image of a row with no hash, read a block at a time. Its object lost, the
    refusal says whose it is and the ways past it, as ``dataset export``'s does: it was a bare
    "object_missing: no object at ...", often of a SKU not evaluated."""
    digest = hashlib.sha256()
    key = manifests.key(str(row.image))
    try:
        for block in manifests.store.iter_bytes(key):
            digest.update(block)
    except ValueError as exc:
        raise _unreadable(row, exc) from None
    except ObjectMissing as exc:
        why = f" ({exc.why})" if exc.why else ""
        ways = ["restore it", withdraw_way(row)] if row.source == "real" else ["restore it"]
        uri = escape_control_characters(f"{manifests.store.base_uri}/{key}")  # as the store shows it
        raise EvaluateRefused(
            f"no object at {uri}{why}: the image of {row.sku_id}/{row.item_id}, whose manifest row has no "
            f"sha256, so evaluate reads it for its hash; {either(*ways)}"
        ) from None
    return digest.hexdigest()


def scene_files(
    uri: str, cache_dir: Path | None = None
) -> tuple[list[tuple[str, str]], list[tuple[str, bytes]], list[str]]:
    """(name, sha256) of every file the scene library at ``uri`` reads at load, (name, perceptual hash)
    of those that open as images (one download each; the hash cached under ``cache_dir`` by the
    file's sha256, as the store's images are: it was a decode per scene file on every run), and notes
    on the files it skips. A malformed URI,
    or a library with no files or none the generator loads, is refused: the check would pass on nothing.

    The files are the library's own (``library_keys``, ``scene_file_bytes``): a file the generator skips
    at load can never be in a scene, so it is noted and left out, as there. That is a key the store will
    not read (``a\\b.jpg``, S3's ``a//b.jpg``: once a traceback), a dangling link or a link loop (once a
    refusal that blamed the store or the bootstrap), a file that is not a photo by its suffix, and one
    over ``SKUFORGE_MAX_IMAGE_BYTES``, refused by its size, unread (once read whole, however big). Hidden
    files are left out without a word, a NAS's thumbnail folders (``@eaDir``) with one note."""
    if not uri.strip():
        raise EvaluateRefused(
            "--scenes is empty (is SKUFORGE_SCENES_URI set?): give the scene library's URI, or leave "
            "--scenes out to skip the scene check"
        )
    settings = load_settings()
    try:
        # Not open_store's refusal, which ends '(from --scenes)': the option leads here. Only read, as by
        # the generator: the prefix need not leave the flow's keys room.
        check_store_uri(uri, writes=False)
    except ValueError as exc:
        # Escaped: the refusal names a control or bidi character without echoing it, and the URI shown
        # before it reached the terminal as typed.
        raise EvaluateRefused(f"--scenes {escape_control_characters(uri)}: {exc}") from None
    store = open_store(
        uri,
        s3_endpoint_url=settings.s3_endpoint_url,
        s3_region=settings.s3_region,
        uri_from="--scenes",
        writes=False,
    )
    files, hashes, notes = [], [], []
    skipped = []  # (file, why the generator skips it)
    keys, thumbnails = library_keys(store)
    if thumbnails:
        notes.append(
            f"{thumbnails} scene file(s) in NAS thumbnail folders (@eaDir) not checked: a NAS's copies of "
            "the photos, not scenes (the generator leaves them out too)"
        )
    for key in keys:
        data = scene_file_bytes(store, key, max_bytes=settings.max_image_bytes)
        if isinstance(data, str):
            # S3's bad keys have no URI (uri_for refuses them); their repr shows what is odd in them.
            shown = f"{store.base_uri}/{key!r}" if data.startswith("bad_key") else object_name(store, key)
            notes.append(f"scene file {shown} not checked: {data} (the generator skips it too)")
            skipped.append(f"{shown}: {data}")
            continue
        name = object_name(store, key)
        sha256 = sha256_hex(data)
        files.append((name, sha256))
        try:
            value = _cached_hash(cache_dir, sha256, lambda: data)  # noqa: B023 (read here, not later)
        except ImageRejected as exc:  # past SKUFORGE_MAX_IMAGE_PIXELS: the generator refuses it at load
            notes.append(f"scene file {name} not checked: {exc} (the generator skips it too)")
            skipped.append(f"{name}: {exc}")
            continue
        if value is not None:
            hashes.append((name, value))
    if not files:
        where = store.root if isinstance(store, FileStore) else store.base_uri
        if not skipped and not thumbnails:
            raise EvaluateRefused(
                f"--scenes {uri}: no files under {where}; is it the scene library (SKUFORGE_SCENES_URI)?"
            )
        # Files there are, and none a scene (HEIC photos, a NAS's thumbnails): "no files" was untrue.
        held = [f"{len(skipped)} file(s) it skips: {_shown(skipped, 3)}"] if skipped else []
        held += [f"{thumbnails} in NAS thumbnail folders"] if thumbnails else []
        raise EvaluateRefused(
            f"--scenes {uri}: no scene photo the generator loads under {where} ({'; '.join(held)}); "
            "is it the scene library (SKUFORGE_SCENES_URI)?"
        )
    return files, hashes, notes


def object_name(store: ObjectStore, key: str) -> str:
    """A local path for a file store's object (so paths compare with the held-out ones), else its URI;
    escaped (``\\u202e``), as reports and refusals show it: a key a store wrote before review 48 may hold
    a character that reorders or ends a line. Not ``uri_for``, which refuses such a key (a traceback on
    S3 for a photo ``dataset export`` reads); a key no store reads is refused where it is read."""
    if isinstance(store, FileStore):
        return escape_control_characters(str(store.root.joinpath(*key.split("/"))))
    return escape_control_characters(f"{store.base_uri}/{key}")


def evaluation_document(result: EvaluationResult, inputs: dict[str, Any]) -> dict[str, Any]:
    """What evaluation.json holds: the result, its headline summary and what it was run on."""
    return {**asdict(result), "summary": result.summary(), "inputs": inputs}


def summary_lines(result: EvaluationResult) -> list[str]:
    """The printed table: top-1 per condition, then the headline differences."""
    lines = [f"{'condition':<10} {'training set':<30} {'top-1':>6}"]
    for condition in CONDITIONS:
        lines.append(f"{condition:<10} {CONDITION_NAMES[condition]:<30} {result.top1[condition]:>6.3f}")
    summary = result.summary()
    lines.append(
        f"B-A {summary['gain_top1']:+.3f}   B'-A' {summary['gain_over_classic_top1']:+.3f}   "
        f"SKUs worse by 10 points or more (B' vs A'): {result.frac_skus_worse_by_10pt:.0%} "
        f"of {result.n_skus}; {result.n_heldout} held-out photos"
    )
    hurt = sorted((gain, sku) for sku, gain in result.gain_over_classic.items() if gain <= -WORSE_BY + 1e-9)
    if hurt:
        shown = ", ".join(f"{sku} {gain:+.2f}" for gain, sku in hurt[:10])
        lines.append(
            f"hurt most (B'-A'): {shown}" + (f" and {len(hurt) - 10} more" if len(hurt) > 10 else "")
        )
    return lines


def write_results(out: Path, document: dict[str, Any], page: str) -> None:
    """Write ``out/evaluation.json`` (``document``) and ``out/report.html`` (``page``), both or neither.

    `dataset export --evaluation` reads the JSON and people read the report, so one must not be newer
    than the other: the report was written first (and in place, so a killed run left it truncated), and
    a JSON write that failed then (a full disk) left the new report beside the old figures. Now the
    report is written whole beside its name, then the JSON is renamed into place, then the report.
    A figure that is NaN or infinite is ``NonFiniteFigure``, and neither is written.
    """
    data = json_file_text(document, label=str(out / EVALUATION_FILE), sort_keys=True).encode()

    def json_first(_size: int, _sha256: str) -> None:  # raising leaves the old report as it was
        write_atomically(out / EVALUATION_FILE, data)

    write_blocks_atomically(out / REPORT_FILE, (page.encode("utf-8"),), check=json_first)


def evaluate(args: argparse.Namespace, progress: Callable[[str], None] | None = None) -> EvaluationResult:
    """Run the experiment ``skuforge evaluate`` was asked for (its parsed ``args``) and write its
    results; raises one of ``REFUSALS`` when the inputs cannot give a meaningful evaluation.
    ``progress`` is told each stage as it begins: the leakage check, each SKU's features, each fit."""
    # First: a backbone that is not installed, or too few stages to tune, is known before the
    # leakage checks (a decode and a hash per photo).
    spec = BackboneSpec(
        name=args.backbone, image_px=args.image_px, weights=args.backbone_weights, seed=args.seed
    )
    backbone = open_backbone(spec)  # BackboneMissing names a weights file it cannot load
    if args.tune_stages >= backbone.n_stages:
        raise EvaluateRefused(
            f"--tune-stages {args.tune_stages}: {args.backbone} has {backbone.n_stages} stages; "
            f"fine-tune 1 to {backbone.n_stages - 1} of them, or 0 for a frozen backbone"
        )
    heldout, notes = heldout_photos(args.heldout)
    manifests = open_manifests()
    in_store = set(manifests.sku_ids())
    if not in_store:
        raise EvaluateRefused(no_skus_problem(manifests))
    heldout_skus = sorted({photo.sku_id for photo in heldout})
    unknown = [sku for sku in heldout_skus if sku not in in_store]
    # A mistyped folder not filled yet was left out without a word, and the SKU meant went
    # unevaluated. Noted, not refused: it changes no figure.
    for sku in heldout_sku_folders(args.heldout):
        if sku not in in_store and sku not in heldout_skus:
            notes.append(f"{args.heldout / sku} has no photos, and the store has no SKU {sku}: not used")
    without = sorted(in_store - set(heldout_skus))
    if without:
        shown = ", ".join(without[:10]) + (f" and {len(without) - 10} more" if len(without) > 10 else "")
        notes.append(f"{len(without)} SKU(s) of the store have no held-out photos, not evaluated: {shown}")
    # Before the refusals below: the notes say why a SKU has no photos (a HEIC file, a mistyped
    # folder), and the refusal of too few SKUs came alone.
    for note in notes:
        print(f"note: {_printable(note)}")
    if unknown:
        # Quoted, with the store's id a folder names but for case or spaces: "SKU-BLUE " read as the id
        # the store has, and "sku-blue" as if no SKU were like it.
        like = {sku.strip().casefold(): sku for sku in in_store}
        meant = {sku: like.get(sku.strip().casefold()) for sku in unknown}
        named = ", ".join(
            repr(sku) if store_id is None else f"{sku!r} (the store has {store_id!r})"
            for sku, store_id in meant.items()
        )
        exactly = " (folder names are SKU ids exactly)" if any(meant.values()) else ""
        raise EvaluateRefused(
            f"held-out folder(s) name SKUs the store does not have: {named} "
            f"(store {store_root(manifests)}); rename{exactly} or remove them"
        )
    _refuse_sku_folders_inside_others(args.heldout, heldout, in_store)
    if not heldout:
        raise EvaluateRefused(f"--heldout {args.heldout}: no photos in SKU folders")
    if len(heldout_skus) < 2:
        # The classifiers choose among the held-out SKUs only: with one, every answer is right.
        raise EvaluateRefused(
            f"--heldout {args.heldout}: only {heldout_skus[0]} has held-out photos; at least 2 SKUs "
            "with held-out photos are needed (with one, every condition scores 100%)"
        )

    rows = list(manifests.iter_rows())  # every SKU's: a held-out photo may not be anywhere in the store
    wanted = set(heldout_skus)
    evaluated = [row for row in rows if row.sku_id in wanted]
    with_real = {row.sku_id for row in evaluated if row.source == "real" and row.trainable and row.image}
    no_real = [sku for sku in heldout_skus if sku not in with_real]
    if no_real:
        # Each SKU says why: "unusable or withdrawn, or none" left the reader to find out which, and
        # the fix differs (a withdrawn photo comes back by ingesting its folder again).
        real_statuses: dict[str, set[str]] = {}
        for row in evaluated:
            if row.source == "real":
                real_statuses.setdefault(row.sku_id, set()).add(row.status)
        raise EvaluateRefused(
            "held-out SKU(s) with no usable real image in the store: "
            + "; ".join(f"{sku} ({_why_no_real(real_statuses.get(sku, set()))})" for sku in no_real)
            + "; or remove their held-out folders"
        )
    plan = plan_export(
        evaluated,
        max_synthetic_per_real=args.max_synthetic_per_real,
        min_real=args.min_real,
        withdrawn_photos=Withdrawals(manifests).by_sku(),  # what `dataset export` would leave out
    )
    left_out = {sku: reason for sku, reason in plan.skipped.items() if sku in heldout_skus}
    if left_out:
        reasons = "; ".join(f"{sku}: {reason}" for sku, reason in left_out.items())
        raise EvaluateRefused(
            f"the export policy leaves out held-out SKU(s) ({reasons}); lower --min-real or remove "
            "their held-out folders"
        )
    streamed = streamed_sha256s(manifests, rows)
    training = training_photos(manifests, plan, streamed)
    if not any(photo.source == "synthetic" for photo in training):
        # The generator has not filled the store yet, or K is 0: "B-A +0.000" read as "the synthetic
        # images do not help" when there were none to measure.
        print(
            f"note: none of the {len(heldout_skus)} evaluated SKUs has a synthetic image in the export "
            f"(--max-synthetic-per-real {args.max_synthetic_per_real}): B trains on A's images and C on "
            "none, so every gain reads 0"
        )

    cache_dir = None if args.no_cache else args.cache_dir
    if progress is not None:
        scenes_too = "" if args.scenes is None else " and the scene library"
        progress(
            f"checking {len(heldout)} held-out photos of {len(heldout_skus)} SKUs for leakage into the "
            f"store{scenes_too}"
        )
    scenes, scene_hashes, scene_notes = (
        ([], [], []) if args.scenes is None else scene_files(args.scenes, cache_dir)
    )
    for note in scene_notes:
        print(f"note: {_printable(note)}")
    check_disjoint(
        [(photo.name, photo.sha256) for photo in heldout] + as_ingested(heldout, cache_dir),
        training=stored_images(manifests, rows, streamed),
        scenes=scenes,
    )
    # A resized or re-encoded copy has other bytes: compared by perceptual hash, with the evaluated
    # SKUs' real images (a copy filed under another SKU lowers that figure, it cannot inflate it, and
    # hashing a large store's every photo would cost a decode each).
    held_hashes, unhashable = heldout_hashes(heldout, cache_dir)
    _refuse_copies_under_two_skus(heldout, held_hashes)
    store_hashes, store_unhashable = real_image_hashes(manifests, evaluated, cache_dir, streamed)
    for note in unhashable_notes(unhashable, store_unhashable):
        print(f"note: {_printable(note)}")
    check_no_near_duplicates(held_hashes, training=store_hashes, scenes=scene_hashes)
    heldout, copy_notes = _without_copies_within_skus(heldout, held_hashes)  # every copy checked above
    for note in copy_notes:
        print(f"note: {_printable(note)}")

    settings = load_settings()  # the limits ingest held the photos to
    featurizer = Featurizer(
        backbone,
        FeatureCache(None if args.no_cache else args.cache_dir),
        max_pixels=settings.max_image_pixels,
        max_bytes=settings.max_image_bytes,
    )
    # The curve is the report's, not the classifier's: not a classifier option (add_curve_max_option).
    config = dataclasses.replace(EvaluationConfig.from_options(args), curve_max=args.curve_max)
    try:
        result = run_evaluation(training, heldout, featurizer, config, progress=progress)
    except ChecksumMismatch as exc:
        raise EvaluateRefused(f"a store object does not match its manifest: {exc}") from None
    except BadInput as exc:  # ImageRejected's detail starts with the photo's name
        raise EvaluateRefused(f"a training or held-out image could not be used: {exc}") from None

    args.out.mkdir(parents=True, exist_ok=True)
    inputs = {
        "heldout": str(args.heldout.absolute()),
        "store": store_root(manifests),
        "scenes": args.scenes,
        "max_synthetic_per_real": args.max_synthetic_per_real,
        "min_real": args.min_real,
        "backbone": args.backbone,
        "backbone_weights": None if args.backbone_weights is None else str(args.backbone_weights),
        "image_px": args.image_px,
        "classifier": describe_classifier(config.__dict__),
    }
    document = evaluation_document(result, inputs)
    by_name = {photo.name: photo for photo in heldout}

    def read_heldout(name: str) -> bytes | None:
        # A photo moved or removed during the run loses its thumbnail, not the whole evaluation.
        try:
            return by_name[name].read() if name in by_name else None
        except (OSError, EvaluateRefused):  # changed since it was scored: not its thumbnail
            return None

    page = render_report(
        result,
        read_heldout,
        limits=(settings.max_image_pixels, settings.max_image_bytes),  # those the photos passed above
    )
    write_results(args.out, document, page)
    return result
