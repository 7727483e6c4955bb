"""Dataset tools on the retraining store: per-SKU stats and export under the real:synthetic policy.

The policy (docs/architecture.md, "What the field taught"): generated-only classes do not work and too many
generated images teach the generator's artefacts, so an exported class

* has at least ``min_real`` real images (classes with fewer are left out, and the summary says so);
* has at most ``max_synthetic_per_real`` synthetic images per real one (the rest are left out,
  chosen by a stable hash of the item id so the same store always exports the same set);
* is resized with its aspect kept: by default (``fit="keep"``) the shorter side becomes ``size_px``
  and nothing is added, but the longer side never passes ``MAX_ASPECT`` x ``size_px`` (a 16 x 2000
  strip would otherwise export at 256 x 32000, and need gigabytes at 4096); ``fit="pad"`` makes it
  ``size_px`` x ``size_px``, padded with white. Padding is not the default because a classifier
  learns the white bars: real photos of the deployment domain have none (docs/evaluation.md
  measured it);
* gets no synthetic image at all when an evaluation (``skuforge evaluate``) measured that its
  synthetic images hurt a classifier of it: per-SKU B - A below ``min_gain``
  (``synthetic_left_out_by_evaluation``); the summary says so, per class.

Formats: ``imagefolder`` (``<out>/<sku_id>/<real|synthetic>-<item_id>.png``, what
``torchvision.datasets.ImageFolder`` reads) and ``jsonl`` (``<out>/images/...``, ``<out>/masks/...``
and ``<out>/dataset.jsonl`` with one line per image). Objects are checked against the sha256 in
their manifest row while exporting. An object missing or not matching its row is looked up again in
the SKU's manifest: a row the live store changed since the export read it (a photo withdrawn, an item
rendered again or rejected) leaves that image out, counted (``changed_during_export``), and a class
left with fewer than ``min_real`` real images out; a row that still names the bad bytes stops the export
(``ChecksumMismatch``, ``ObjectMissing``) and leaves nothing in the output directory. The withdrawal
markers are read again once the images are written: a class with an image of a photo withdrawn after it
was copied is written anew without it, before the index and the summary. An image (real or synthetic)
that two classes hold (the same image sha256) is refused, naming both SKUs: one picture with two labels.
A policy that leaves no class at all is a ``ValueError`` naming why each SKU was left out, not an empty
training set.
An ``imagefolder`` export reads no mask (it writes none): a mask lost from the store does not stop it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import stat
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from PIL import Image, ImageOps

from shared.errors import BadInput, ChecksumMismatch, ObjectMissing, with_detail
from shared.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageRejected,
    decode_image,
    decode_mask,
    encode_png,
)
from shared.observability import escape_control_characters
from shared.signals import stops_wait_for_clean_up
from shared.trainstore.manifest import ManifestRow, ManifestStore
from shared.trainstore.withdrawals import Withdrawals, photo_of

_Decoded = TypeVar("_Decoded")

log = logging.getLogger(__name__)

__all__ = [
    "EXPORT_FITS",
    "MAX_ASPECT",
    "ClassPlan",
    "ExportFit",
    "ExportFormat",
    "ExportPlan",
    "SkuStats",
    "export_dataset",
    "plan_export",
    "read_checked",
    "sku_stats",
    "synthetic_left_out_by_evaluation",
]

ExportFormat = Literal["imagefolder", "jsonl"]
EXPORT_FORMATS: tuple[str, ...] = ("imagefolder", "jsonl")
ExportFit = Literal["keep", "pad"]
EXPORT_FITS: tuple[str, ...] = ("keep", "pad")
MINUS = "\u2212"  # how a negative B - A prints in the summary
# With fit="keep", the longer side is at most this many times size_px: an image past 4:1 (longer
# than a phone's panorama of one product; a strip, a banner) is scaled to that instead, its shorter
# side then below size_px, so one such image cannot need gigabytes at a large size_px.
MAX_ASPECT = 4
SUMMARY_FILE = "export.json"  # beside the class folders (imagefolder) or images/ (jsonl)


@dataclass(frozen=True)
class SkuStats:
    """What the store holds for one SKU."""

    sku_id: str
    category: str
    real: int
    synthetic_accepted: int
    synthetic_approved: int
    pending: int
    rejected: int
    mean_iou: float | None  # over the gated synthetic items (accepted, approved, pending, rejected)
    withdrawn: int = 0  # items out of the store because their owner withdrew the photo (real + synthetic)
    unusable: int = 0  # real photos the captioner could not read as pictures: recorded, never trained on
    # Renders a reviewer rejected other than the one each item's row is (``ManifestRow.rejected_renders``,
    # such as one rejected beside an accepted render that stays): counted under no status, so ``rejected``
    # plus this is every render reviewers refused.
    rejected_renders: int = 0


def sku_stats(rows: Iterable[ManifestRow]) -> list[SkuStats]:
    """One ``SkuStats`` per SKU, sorted by sku_id."""
    by_sku: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        by_sku[row.sku_id].append(row)
    stats = []
    for sku_id, sku_rows in sorted(by_sku.items()):
        count = {status: sum(1 for row in sku_rows if row.status == status) for status in _STATUSES}
        ious = [
            row.iou
            for row in sku_rows
            if row.source == "synthetic" and row.iou is not None and row.status != "withdrawn"
        ]
        stats.append(
            SkuStats(
                sku_id=sku_id,
                # The newest row's: a SKU's category can change, and its older rows keep the old one.
                category=max(sku_rows, key=lambda row: row.event_time or _NO_TIME).category,
                real=count["reference"],
                synthetic_accepted=count["accepted"],
                synthetic_approved=count["approved"],
                pending=count["pending"],
                rejected=count["rejected"],
                mean_iou=round(sum(ious) / len(ious), 4) if ious else None,
                withdrawn=count["withdrawn"],
                unusable=count["unusable"],
                rejected_renders=sum(len(row.rejected_renders) for row in sku_rows),
            )
        )
    return stats


_NO_TIME = datetime.min.replace(tzinfo=UTC)  # a row written before rows recorded their time: the oldest
_STATUSES = ("reference", "unusable", "accepted", "approved", "pending", "rejected", "withdrawn")


@dataclass(frozen=True)
class ClassPlan:
    """The rows one class exports, and how many synthetic rows the cap left out."""

    sku_id: str
    real: list[ManifestRow]
    synthetic: list[ManifestRow]
    synthetic_dropped: int  # left out by the cap, or all of them when synthetic_left_out is set
    synthetic_left_out: str = ""  # why every synthetic image of the class is left out; "" = none is


@dataclass(frozen=True)
class ExportPlan:
    """Which classes export which rows; ``skipped`` names classes left out, with the reason."""

    classes: list[ClassPlan]
    skipped: dict[str, str] = field(default_factory=dict)


def plan_export(
    rows: Iterable[ManifestRow],
    *,
    max_synthetic_per_real: int,
    min_real: int = 1,
    no_synthetic: Mapping[str, str] | None = None,
    withdrawn_photos: Mapping[str, set[str]] | None = None,
) -> ExportPlan:
    """Apply the real:synthetic policy to trainable rows (pure: no I/O).

    ``no_synthetic`` maps a SKU to the reason its synthetic images are all left out (see
    ``synthetic_left_out_by_evaluation``); its real images are exported as usual.
    ``withdrawn_photos``: SKU id -> the photos its withdrawal markers name (``Withdrawals.by_sku``),
    left out with their images whatever their rows say.
    """
    no_synthetic = no_synthetic or {}
    if max_synthetic_per_real < 0:
        raise ValueError("max_synthetic_per_real must be >= 0")
    if min_real < 1:
        raise ValueError("min_real must be >= 1: every exported class needs real images")
    rows = list(rows)
    withdrawn = {
        (row.sku_id, row.item_id) for row in rows if row.source == "real" and row.status == "withdrawn"
    } | {
        (sku_id, photo_id) for sku_id, photo_ids in (withdrawn_photos or {}).items() for photo_id in photo_ids
    }
    by_sku: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        # An image of a withdrawn photo that a second writer stored in the same moment as the
        # withdrawal is trainable until the SKU's next write mends it: never exported meanwhile; nor
        # is the photo itself, where a replayed sku.captioned stored its row as a reference then.
        if row.trainable and row.image is not None and (row.sku_id, photo_of(row)) not in withdrawn:
            by_sku[row.sku_id].append(row)
    classes, skipped = [], {}
    for sku_id, sku_rows in sorted(by_sku.items()):
        real = sorted((row for row in sku_rows if row.source == "real"), key=lambda row: row.item_id)
        if len(real) < min_real:
            skipped[sku_id] = f"{len(real)} real image(s), need at least {min_real}"
            continue
        synthetic = sorted((row for row in sku_rows if row.source == "synthetic"), key=_stable_order)
        if sku_id in no_synthetic:
            classes.append(ClassPlan(sku_id, real, [], len(synthetic), no_synthetic[sku_id]))
            continue
        cap = max_synthetic_per_real * len(real)
        classes.append(ClassPlan(sku_id, real, synthetic[:cap], max(0, len(synthetic) - cap)))
    # A SKU with rows but nothing to train on (all pending, rejected, unusable or withdrawn) is named
    # too: asked for with --sku, it vanished from the summary without a word.
    untrainable: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        if row.sku_id not in by_sku:
            # A trainable row here is of a photo its owner withdrew (the marker is there, the row not yet).
            untrainable[row.sku_id]["withdrawn" if row.trainable and row.image else row.status] += 1
    for sku_id, statuses in sorted(untrainable.items()):
        counts = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
        skipped[sku_id] = f"no image to train on ({counts})"
    return ExportPlan(classes, dict(sorted(skipped.items())))


def synthetic_left_out_by_evaluation(
    evaluation: Mapping[str, Any], *, min_gain: float, source: str = "evaluation.json"
) -> dict[str, str]:
    """SKUs whose synthetic images an evaluation says to leave out, with the reason (pure).

    ``evaluation`` is what ``skuforge evaluate`` writes; its ``gain`` maps each evaluated SKU to
    B - A (top-1 with its synthetic images minus without). A SKU below ``min_gain`` is left out;
    SKUs the evaluation did not measure keep their synthetic images, and so do SKUs it measured
    with none of their own (``train_counts``: 0 synthetic): their B - A is what other SKUs'
    synthetic images did to them. A document without a usable ``gain`` is a ``ValueError`` saying
    what is wrong.
    """
    gain = evaluation.get("gain") if isinstance(evaluation, Mapping) else None
    if not isinstance(gain, Mapping):
        raise ValueError(
            f"{source} has no per-SKU 'gain' object: is it the evaluation.json of skuforge evaluate?"
        )
    counts = evaluation.get("train_counts")
    counts = counts if isinstance(counts, Mapping) else {}
    left_out = {}
    for sku_id, value in sorted(gain.items()):
        # json.loads reads NaN and Infinity: NaN would keep every synthetic image, -Infinity drop them.
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{source}: gain of {sku_id!r} is {value!r}, not a number")
        if not -1.0 <= value <= 1.0:
            # A gain in points (-5 for -5 points) was compared with a --min-gain in fractions as it
            # stood: left out at -0.10 for half that loss, or kept at any threshold for +5 points.
            raise ValueError(
                f"{source}: gain of {sku_id!r} is {value!r}, not a fraction of top-1 between -1 and 1 "
                "(skuforge evaluate writes B-A as one: -0.05 for -5 points)"
            )
        sku_counts = counts.get(sku_id)
        if isinstance(sku_counts, Mapping) and sku_counts.get("synthetic") == 0:
            continue  # none of its synthetic images was measured
        if value < min_gain:
            digits = _digits_to_tell_apart(value, min_gain)
            left_out[str(sku_id)] = (
                f"B{MINUS}A {_signed(value, digits)} < {_signed(min_gain, digits)} in {source}"
            )
    return left_out


def _digits_to_tell_apart(value: float, threshold: float) -> int:
    """Decimals enough (2 to 6) that ``value`` prints neither as 0 nor as ``threshold`` when it is not:
    a gain of -0.0033 read "-0.00 < 0.00"."""
    digits = 2
    while digits < 6 and (
        (value != 0 and round(value, digits) == 0) or round(value, digits) == round(threshold, digits)
    ):
        digits += 1
    return digits


def _signed(value: float, digits: int = 2) -> str:
    """0.12 or -0.12, the minus a true minus sign (U+2212), as the summary prints it."""
    return f"{value:.{digits}f}".replace("-", MINUS)


def _stable_order(row: ManifestRow) -> str:
    return hashlib.sha256(row.item_id.encode()).hexdigest()


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote: per class real/synthetic counts, totals, and the skipped classes."""

    out_dir: str
    format: str
    size_px: int
    classes: dict[str, dict[str, int]]
    skipped: dict[str, str]
    real: int
    synthetic: int
    synthetic_left_out: dict[str, str] = field(default_factory=dict)  # class -> why it has none
    fit: str = "keep"
    long_side_capped: int = 0  # images past MAX_ASPECT:1, their longer side at MAX_ASPECT x size_px
    # Images whose row the live store changed while the export ran (withdrawn, rendered again, rejected):
    # left out, as the next export leaves them out or takes their new version.
    changed_during_export: int = 0

    def lines(self) -> list[str]:
        """The printed summary: one line per class, then the totals."""
        # "capped" was the last column's header, which read as the long-side cap of the line below.
        out = [f"{'class':<24} {'real':>6} {'synthetic':>10} {'left out':>9}"]
        for sku_id, counts in self.classes.items():
            line = f"{sku_id:<24} {counts['real']:>6} {counts['synthetic']:>10} {counts['dropped']:>9}"
            if sku_id in self.synthetic_left_out:
                line += f"  synthetic left out: {self.synthetic_left_out[sku_id]}"
            out.append(line)
        for sku_id, reason in self.skipped.items():
            out.append(f"{sku_id:<24} skipped: {reason}")
        ratio = f"{self.synthetic / self.real:.2f}" if self.real else "n/a"
        out.append(
            f"exported {len(self.classes)} classes, {self.real} real + {self.synthetic} synthetic images "
            f"(synthetic per real {ratio}) {self._size()} as {self.format} "
            f"to {self.out_dir}"
        )
        if self.changed_during_export:
            out.append(
                f"{self.changed_during_export} image(s) left out: the store changed them while the export "
                "ran (withdrawn, rendered again or rejected); export again to take their current state"
            )
        if self.long_side_capped:
            out.append(
                f"{self.long_side_capped} image(s) longer than {MAX_ASPECT}:1 with the longer side at "
                f"{MAX_ASPECT * self.size_px} px (their shorter side below {self.size_px} px)"
            )
        return out

    def _size(self) -> str:
        if self.fit == "pad":
            return f"at {self.size_px}x{self.size_px} px (padded)"
        return f"with the shorter side at {self.size_px} px"

    def to_json(self) -> str:
        """The summary as JSON (written beside the export as export.json)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def export_dataset(
    manifests: ManifestStore,
    out_dir: Path,
    *,
    fmt: ExportFormat,
    size_px: int = 256,
    fit: ExportFit = "keep",
    max_synthetic_per_real: int,
    min_real: int = 1,
    sku_ids: Iterable[str] | None = None,
    no_synthetic: Mapping[str, str] | None = None,
    limits: tuple[int, int] = (DEFAULT_MAX_PIXELS, DEFAULT_MAX_BYTES),
) -> ExportSummary:
    """Write a training set to ``out_dir`` (which must not exist, or be empty but for a file system's
    ``lost+found``, left as it is, in ``jsonl``: an ``imagefolder`` export's every folder is a class)
    and return its summary.

    ``no_synthetic``: SKUs exported without synthetic images, with the reason (``plan_export``).
    ``limits``: the (pixels, bytes) decode limits the stage stored the images under (the settings').
    A policy that leaves no class is a ``ValueError`` naming why each SKU was left out; nothing is
    written then.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    if size_px < 16:
        raise ValueError("size_px must be at least 16")
    if fit not in EXPORT_FITS:
        raise ValueError(f"unknown fit {fit!r}; expected one of {', '.join(EXPORT_FITS)}")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file; export into a new directory")
    _remove_abandoned_staging(out_dir.resolve())
    if out_dir.exists() and any(not _is_lost_and_found(entry) for entry in out_dir.iterdir()):
        writing = sorted(entry.name for entry in out_dir.glob(".partial-*"))
        held = (
            f" ({', '.join(writing)}: an export may be writing into it; remove it if none runs)"
            if writing
            else ""
        )
        raise FileExistsError(f"{out_dir} is not empty{held}; export into a new directory")
    if fmt == "imagefolder" and out_dir.exists() and any(map(_is_lost_and_found, out_dir.iterdir())):
        # ImageFolder takes every folder of OUT for a class: this one has no image ("Found no valid
        # file for the classes lost+found"), or, allowed empty, moves the labels of the SKUs after it.
        raise FileExistsError(
            f"{out_dir} holds {LOST_AND_FOUND}, which would be read as a class (an imagefolder export's "
            f"every folder is one); export into a folder inside it ({out_dir / 'train'}), or with --format "
            "jsonl"
        )
    writing_beside = [entry.name for entry in _staging_beside(out_dir.resolve()) if not _abandoned(entry)]
    if writing_beside:
        # Another export is writing OUT beside it (OUT new, or empty): both would do the whole work,
        # and the second would fail at its last rename ("Directory not empty"), hours in.
        raise FileExistsError(
            f"an export into {out_dir} is running ({', '.join(sorted(writing_beside))} beside it; remove "
            "it if none runs); export into a new directory"
        )
    # Made with the staging folder, before the store is read: an export refused then (a mistyped --sku,
    # a policy that leaves no class) left them behind, empty.
    made_above = _missing_folders(out_dir.resolve().parent)
    # Named before it is made, so that the clean-up finds it wherever a stop meets ``_staging_for``: made
    # before the try, a stop between its mkdir and its return left it (and the folders made for OUT).
    name = f"partial-{uuid.uuid4().hex}"
    with stops_wait_for_clean_up() as failure:
        moved: list[Path] = []  # the entries moved into an existing OUT so far (``_move_into``)
        owner: int | None = None
        try:
            staging, owner = _staging_for(out_dir.resolve(), name)
            return _export_into(
                manifests,
                out_dir,
                staging,
                moved,
                fmt=fmt,
                size_px=size_px,
                fit=fit,
                max_synthetic_per_real=max_synthetic_per_real,
                min_real=min_real,
                sku_ids=sku_ids,
                no_synthetic=no_synthetic,
                limits=limits,
            )
        except BaseException:
            # First, before any call: a Ctrl-C, SIGTERM or SIGHUP that comes from here on stops the export
            # once it has cleaned up. Cut short, the staging folder (gigabytes) stayed until the next
            # export into the same OUT, and the classes moved into OUT stayed in it (a training set
            # without some, and without export.json).
            failure.failing = True
            try:
                for path in moved:  # out_dir is left as it was: empty
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
            finally:
                for staging in _staging_places(out_dir.resolve(), name):
                    shutil.rmtree(staging, ignore_errors=True)
                for folder in made_above:  # the deepest first; one something was put in meanwhile stays
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            raise
        finally:
            if owner is not None:
                os.close(owner)


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and the folders above it that do not exist, the deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


# The folder mkfs (ext2/3/4) makes at a file system's root, where fsck puts what it recovers: a freshly
# formatted volume mounted as OUT holds it, so OUT is empty but for it, which is left as it is.
LOST_AND_FOUND = "lost+found"


def _is_lost_and_found(entry: Path) -> bool:
    return entry.name == LOST_AND_FOUND and entry.is_dir() and not entry.is_symlink()


def _staging_places(target: Path, name: str) -> tuple[Path, Path]:
    """Where ``_staging_for`` puts the staging folder ``name`` of an export into ``target``: inside it,
    and beside it."""
    return target / f".{name}", target.parent / f".{target.name}.{name}"


def _staging_for(target: Path, name: str) -> tuple[Path, int]:
    """The export's staging folder, created and locked (``_hold``) before any slow step, so that from
    the start a second export into ``target`` sees it.

    Beside ``target`` wherever one rename can put it in ``target``'s place at the end: a new ``target``,
    or an empty one of ours, which the rename replaces in one step (a reader sees it empty or whole).
    Inside an existing ``target`` where a rename from beside cannot reach it: a mount point (the rename
    would cross file systems, EXDEV), a folder above it that cannot be written in, another user's
    ``target``, one of a group its user is not in (the folder replacing it could not have that group);
    and where ``target`` is the working folder, which the shell that started the export is in:
    replaced, it would show that shell the old folder, empty; and where ``target`` holds a
    ``lost+found``, which a rename over it would not replace (not empty). Made inside first, given
    ``target``'s group and moved beside, so that the chown and the move themselves tell which.

    Should it raise (a stop included), the caller removes both of ``_staging_places``.
    """
    inside, beside = _staging_places(target, name)
    if target.exists():
        staging = inside
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = beside
    staging.mkdir()
    owner = _hold(staging)
    try:
        if (
            staging.parent == target
            and target.stat().st_uid == os.geteuid()
            and not _is_working_folder(target)
            and not (target / LOST_AND_FOUND).exists()
        ):
            try:
                # Its group now, so that a group we cannot give (``chgrp`` by an admin) keeps it inside.
                os.chown(staging, -1, target.stat().st_gid)
                os.rename(staging, beside)
                staging = beside
            except OSError:  # moved into place entry by entry at the end (``_move_into``)
                pass
    except BaseException:
        os.close(owner)
        raise
    return staging, owner


def _is_working_folder(folder: Path) -> bool:
    try:
        return folder == Path.cwd().resolve()
    except OSError:  # the working folder was removed: it is not ``folder``, which exists
        return False


def _export_into(
    manifests: ManifestStore,
    out_dir: Path,
    staging: Path,
    moved: list[Path],
    *,
    fmt: ExportFormat,
    size_px: int,
    fit: ExportFit,
    max_synthetic_per_real: int,
    min_real: int,
    sku_ids: Iterable[str] | None,
    no_synthetic: Mapping[str, str] | None,
    limits: tuple[int, int],
) -> ExportSummary:
    """``export_dataset``'s work, written into ``staging`` (locked) and moved into ``out_dir`` at the end;
    the entries moved into an existing ``out_dir`` are appended to ``moved`` (for the clean-up, should it
    fail meanwhile)."""
    if sku_ids is not None:
        sku_ids = list(dict.fromkeys(sku_ids))
        unknown = sorted(set(sku_ids) - set(manifests.sku_ids()))
        if unknown:
            # A typo would otherwise export an empty training set and report success.
            named = ", ".join(repr(sku_id) for sku_id in unknown)  # quoted: "" or "A " are ids too
            raise ValueError(f"no SKU {named} in the store (skuforge dataset stats lists them)")
    rows = list(manifests.iter_rows(sku_ids))
    plan = plan_export(
        rows,
        max_synthetic_per_real=max_synthetic_per_real,
        min_real=min_real,
        no_synthetic=no_synthetic,
        withdrawn_photos=Withdrawals(manifests).by_sku(),
    )
    if not plan.classes:
        # An empty training set and success would let `export && train` go on with nothing.
        raise ValueError(_nothing_to_export(rows, plan))
    _refuse_unportable_folders([plan_class.sku_id for plan_class in plan.classes])
    if fmt == "imagefolder":
        _refuse_case_only_twins([plan_class.sku_id for plan_class in plan.classes])
        _refuse_summary_name([plan_class.sku_id for plan_class in plan.classes])
    _refuse_shared_image_files(plan.classes, fmt)
    _refuse_photos_of_two_skus(plan.classes)
    # Written in a staging folder and renamed into place at the end: an export that fails half-way
    # (a tampered or missing object) leaves neither a partial training set nor a folder to clean up.
    target = out_dir.resolve()
    summary = _write_export(
        manifests,
        plan,
        staging,
        out_dir,
        fmt=fmt,
        size_px=size_px,
        fit=fit,
        limits=limits,
        min_real=min_real,
        max_synthetic_per_real=max_synthetic_per_real,
    )
    if staging.parent == target:
        _move_into(staging, target, moved)
    else:
        (staging / STAGING_OWNER).unlink()
        if target.exists():  # empty: replaced as it is renamed over, who may use it kept
            _take_permissions(staging, target)
        staging.rename(target)
    return summary


# POSIX ACLs: who else may use a folder (``setfacl``), and what its new entries inherit.
_ACL_ATTRIBUTES = ("system.posix_acl_access", "system.posix_acl_default")


def _take_permissions(staging: Path, target: Path) -> None:
    """Give ``staging`` what says who may use ``target``, the empty OUT it is about to replace: its
    ACLs and other extended attributes, then its mode (the ACL's mask with it); its group it has had
    since ``_staging_for``. Only the mode was copied: a group's or a reviewer's access (``setfacl``)
    went with the folder replaced. Set at the end: an ACL or mode without write access would have
    refused the export its own staging folder."""
    if hasattr(os, "listxattr"):  # Linux's; elsewhere the mode is what there is
        names = os.listxattr(target)
        for name in set(os.listxattr(staging)) & (set(_ACL_ATTRIBUTES) - set(names)):
            os.removexattr(staging, name)  # inherited from a default ACL the folder's own lacks
        for name in names:
            try:
                os.setxattr(staging, name, os.getxattr(target, name))
            except OSError as exc:
                # A label the kernel keeps (security.selinux) or only root sets (trusted.*) is not who
                # may use the folder: as shutil.copystat, left as it is. An ACL's failure is not.
                if name in _ACL_ATTRIBUTES or exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                    raise
    os.chmod(staging, stat.S_IMODE(target.stat().st_mode))


def _move_into(staging: Path, target: Path, moved: list[Path]) -> None:
    """Move the staging folder's entries into ``target`` (which it is in), appending each to ``moved``.

    Not one step: a SIGKILL between two moves leaves some classes in ``target``. The index and the summary
    go last, so that a set without ``export.json`` is never taken for whole; and the entries about to move
    are written down first (``STAGING_MOVING``), so that the next export takes the moved ones out again
    (``_remove_abandoned_staging``): before, they stayed, and every later export was refused as "not empty".
    """
    last = {"dataset.jsonl": 1, SUMMARY_FILE: 2}
    entries = [entry for entry in staging.iterdir() if entry.name != STAGING_OWNER]
    entries.sort(key=lambda path: (last.get(path.name, 0), path.name))
    (staging / STAGING_MOVING).write_text(json.dumps([entry.name for entry in entries]))
    for entry in entries:
        entry.rename(target / entry.name)
        moved.append(target / entry.name)
    (staging / STAGING_MOVING).unlink()  # all moved: from here on the export is whole
    (staging / STAGING_OWNER).unlink()
    staging.rmdir()


# In an export's staging folder, locked (flock) by the export writing it for as long as it runs: a
# later export tells a folder abandoned by a killed one (the lock went with its process: removed) from
# one still being written (left alone). A lock, not a pid: a container's next run has another hostname
# and pid namespace, and pids are reused.
STAGING_OWNER = ".skuforge-export-owner"
# In a staging folder inside OUT while its entries are moved into OUT: their names, a JSON list.
STAGING_MOVING = ".skuforge-export-moving"
# A staging folder is without its owner file only for an instant: just made (not locked yet), or just
# before its last rename (beside OUT) or removal (inside OUT). One still without it this long after its
# last change was left by an export killed in that instant; before, it blocked every later export.
STAGING_UNOWNED_S = 600.0
# The last part of the name ``_staging_for`` gives a staging folder (``.partial-<uuid>``,
# ``.<OUT>.partial-<uuid>``): only such a folder counts as abandoned without an owner file.
_STAGING_NAME = re.compile(r"partial-[0-9a-f]{32}")


def _hold(staging: Path) -> int:
    """Create ``staging``'s owner file and lock it; the open descriptor holds the lock until closed.

    Closed when it cannot be locked or written (a full disk), or a stop comes meanwhile: export is a
    library too (bench/augment.py), whose process goes on, and kept it open and locked."""
    fd = os.open(staging / STAGING_OWNER, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())  # for a person looking
    except BaseException:
        os.close(fd)
        raise
    return fd


def _abandoned(staging: Path) -> bool:
    """Whether the export that wrote ``staging`` is gone: its owner file is there and unlocked, or an
    export's folder has had none for ``STAGING_UNOWNED_S``."""
    try:
        fd = os.open(staging / STAGING_OWNER, os.O_RDWR)
    except FileNotFoundError:  # being made or renamed into place, killed then, or not an export's folder
        return _STAGING_NAME.fullmatch(staging.name.rsplit(".", 1)[-1]) is not None and _unchanged_for(
            staging, STAGING_UNOWNED_S
        )
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # locked: its export still runs
        return False
    finally:
        os.close(fd)
    return True


def _unchanged_for(folder: Path, seconds: float) -> bool:
    """Whether no entry of ``folder`` was made or removed for ``seconds`` (its modification time)."""
    try:
        return time.time() - folder.stat().st_mtime > seconds
    except OSError:  # removed meanwhile
        return False


def _remove_abandoned_staging(target: Path) -> None:
    """Remove the staging folders that a killed export (SIGKILL, a lost pod) left for ``target``:
    inside it (before, it then read as not empty, and every later export into it was refused) or
    beside it; and what one killed while moving its entries into ``target`` had moved there already."""
    inside = target.glob(".partial-*") if target.is_dir() else iter(())
    for entry in [*inside, *_staging_beside(target)]:
        if entry.is_dir() and _abandoned(entry):
            # Only a staging folder inside OUT moves its entries one by one (beside, the folder itself).
            for name in _moved_before_the_kill(entry) if entry.parent == target else []:
                path = target / name
                log.warning("removing %s, moved there by an export that was killed while moving", path)
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            log.warning("removing %s, left by an export that was killed", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _moved_before_the_kill(staging: Path) -> list[str]:
    """The entries ``_move_into`` had moved out of ``staging`` (inside OUT) when its export was killed:
    those its list names that are no longer in it. None where it was not moving (or had not listed them)."""
    try:
        names = json.loads((staging / STAGING_MOVING).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(names, list):
        return []
    return [
        name
        for name in names
        if isinstance(name, str)
        and name not in ("", ".", "..", STAGING_OWNER)
        and "/" not in name
        and not (staging / name).exists()
        and (staging.parent / name).exists()
    ]


def _staging_beside(target: Path) -> list[Path]:
    """The staging folders of exports into ``target`` that do not exist yet (beside it). Of that name
    exactly: ``.out.partial-*`` also matched ``.out.partial-v2.partial-<uuid>``, an export's into
    ``out.partial-v2``, which then refused every export into ``out`` as running."""
    prefix = f".{target.name}."
    return [
        entry
        for entry in target.parent.glob(f"{glob.escape(prefix)}partial-*")
        if _STAGING_NAME.fullmatch(entry.name.removeprefix(prefix)) and entry.is_dir()
    ]


def _nothing_to_export(rows: Sequence[ManifestRow], plan: ExportPlan, shown: int = 10) -> str:
    """Why a plan has no class: each SKU with the reason it was left out (the first ``shown``)."""
    reasons = dict(plan.skipped)
    for sku_id in sorted({row.sku_id for row in rows} - set(reasons)):
        reasons[sku_id] = "no image to train on (only pending, rejected, unusable or withdrawn ones)"
    named = "; ".join(f"{sku_id}: {reason}" for sku_id, reason in sorted(reasons.items())[:shown])
    if len(reasons) > shown:
        named += f"; and {len(reasons) - shown} more (skuforge dataset stats counts each SKU's images)"
    return f"nothing to export, no SKU meets the policy: {named}"


def _refuse_case_only_twins(sku_ids: Sequence[str]) -> None:
    """Refuse SKU ids that differ only in case: as imagefolder class folders they would merge into one
    class on a case-insensitive file system (macOS, Windows), where exports are often copied to train,
    and one SKU's images would silently carry the other's label."""
    by_folded: dict[str, list[str]] = defaultdict(list)
    for sku_id in sku_ids:
        by_folded[sku_id.casefold()].append(sku_id)
    twins = [sorted(ids) for ids in by_folded.values() if len(ids) > 1]
    if twins:
        named = "; ".join(" and ".join(ids) for ids in sorted(twins))
        raise ValueError(
            f"SKU ids that differ only in case: {named}. As imagefolder class folders they merge into one "
            "class on a case-insensitive file system (macOS, Windows); export with --format jsonl (labels "
            "are strings there; their images need file names of their own), or export one of them on its "
            "own with --sku"
        )


def _refuse_photos_of_two_skus(classes: Sequence[ClassPlan]) -> None:
    """Refuse an image (the same image sha256, real or synthetic) that two exported classes hold: one
    picture with two labels, which teaches a classifier that the two products look alike. Ingest only
    warns of a photo in two SKUs' folders (a shelf shot of two products may be meant for both), and the
    images generated from it may then be the same too; the export cannot tell which label is right.
    A row with no sha256 (written by hand: the schema takes it) is compared with none: every such row
    fell under one key, and two SKUs' different photos were refused as one."""
    by_image: dict[str, dict[str, ManifestRow]] = defaultdict(dict)  # image sha256 -> SKU id -> its row
    for plan_class in classes:
        for row in [*plan_class.real, *plan_class.synthetic]:
            if row.image_sha256 is not None:
                by_image[row.image_sha256][plan_class.sku_id] = row
    shared = sorted(
        ([row for _, row in sorted(rows.items())] for rows in by_image.values() if len(rows) > 1),
        key=lambda rows: [(row.sku_id, row.item_id) for row in rows],  # rows themselves do not order
    )
    if not shared:
        return
    named = "; ".join(_image_of_skus(rows) for rows in shared[:3])
    more = f" (and {len(shared) - 3} more)" if len(shared) > 3 else ""
    generated = (
        " (of a synthetic image, the photo it was generated from)"
        if any(row.source == "synthetic" for rows in shared for row in rows)
        else ""
    )
    raise ValueError(
        f"the same photo in two classes would be exported with two labels: {named}{more}. Take it"
        f"{generated} out of the folder of the SKU it is not of and run skuforge ingest --withdraw-missing, "
        "or leave one of the SKUs out with --sku"
    )


def _image_of_skus(rows: Sequence[ManifestRow]) -> str:
    """One image's ``rows`` (one per SKU) named: "photo real-0 is stored under A and B"; "synthetic
    image" where they are synthetic, "image" where some are real and some synthetic, with the photo a
    synthetic one was generated from: that photo is what the refusal says to take out, and the photo's
    own line may be past the first three named."""
    sources = {row.source for row in rows}
    what = "photo" if sources == {"real"} else "synthetic image" if sources == {"synthetic"} else "image"
    item_ids = "/".join(sorted({row.item_id for row in rows}))
    photos = sorted({photo for row in rows if row.source == "synthetic" and (photo := photo_of(row))})
    of = f" of photo {'/'.join(photos)}" if photos else ""
    return f"{what} {item_ids}{of} is stored under {' and '.join(row.sku_id for row in rows)}"


# Names Windows keeps for devices, with or without an extension ("CON", "nul.v2"): no folder can have one.
_WINDOWS_RESERVED = frozenset(
    {
        "CON",
        "PRN",
        "AUX",
        "NUL",
        *(f"COM{digit}" for digit in range(10)),
        *(f"LPT{digit}" for digit in range(10)),
    }
)


def _refuse_unportable_folders(sku_ids: Sequence[str]) -> None:
    """Refuse SKU ids that Windows cannot hold as folder names, where exports are often copied to train:
    a reserved device name (``CON``, ``com1.v2``) cannot be made at all, and a trailing '.' is dropped
    (``Milk.`` becomes ``Milk``, another class's folder or a renamed one). Each SKU is a folder in both
    formats (``<sku_id>/`` or ``images/<sku_id>/``)."""
    unportable = sorted(
        sku_id
        for sku_id in sku_ids
        if sku_id.endswith(".") or sku_id.partition(".")[0].upper() in _WINDOWS_RESERVED
    )
    if unportable:
        named = ", ".join(repr(sku_id) for sku_id in unportable)
        raise ValueError(
            f"SKU id {named} cannot be a folder name on Windows (a reserved device name, or a trailing '.', "
            "which Windows drops), where an export is often copied to train; export the others with --sku"
        )


def _refuse_shared_image_files(classes: Sequence[ClassPlan], fmt: ExportFormat) -> None:
    """Refuse an export where two images would have file names that differ only in case: one file on a
    case-insensitive file system (macOS, Windows), where exports are often copied to train, so one
    image overwrote the other while the summary (and dataset.jsonl) counted both. In jsonl they are two
    SKUs' (``images/Milk/real-front.png`` and ``images/milk/real-front.png``: one SKU's line named the
    other's image) or one SKU's items (``real-Front.png`` and ``real-front.png``); an imagefolder export
    has refused the SKUs already (``_refuse_case_only_twins``), leaving one SKU's items."""
    folder = "images/" if fmt == "jsonl" else ""
    by_folded: dict[str, list[str]] = defaultdict(list)
    for plan_class in classes:
        for row in [*plan_class.real, *plan_class.synthetic]:
            path = f"{folder}{row.sku_id}/{row.source}-{row.item_id}.png"
            by_folded[path.casefold()].append(path)
    shared = sorted(sorted(paths) for paths in by_folded.values() if len(paths) > 1)
    if not shared:
        return
    named = "; ".join(" and ".join(paths) for paths in shared[:3])
    more = f" (and {len(shared) - 3} more)" if len(shared) > 3 else ""
    # The SKU folder of each path: one for twin items of a SKU, two for twin SKUs.
    folder_of = {path: path.removeprefix(folder).rsplit("/", 1)[0] for paths in shared for path in paths}
    in_one_sku = [paths for paths in shared if len({folder_of[path] for path in paths}) == 1]
    twin_items = sorted({folder_of[paths[0]] for paths in in_one_sku})
    advice: list[str] = []
    if twin_items:
        advice.append(
            f"leave out SKU {', '.join(repr(sku_id) for sku_id in twin_items)} (item ids that differ only "
            "in case; export the other SKUs with --sku)"
        )
    if len(in_one_sku) < len(shared):
        advice.append("export SKU ids that differ only in case one at a time with --sku")
    raise ValueError(
        f"images whose file names differ only in case would share a file on a case-insensitive file "
        f"system (macOS, Windows): {named}{more}; {'; '.join(advice)}"
    )


def _refuse_summary_name(sku_ids: Sequence[str]) -> None:
    """Refuse a SKU id that is the summary file's name: as an imagefolder class folder it took the
    place of ``export.json``, and the export failed at its very end ("Is a directory")."""
    clash = sorted(sku_id for sku_id in sku_ids if sku_id.casefold() == SUMMARY_FILE)
    if clash:
        raise ValueError(
            f"SKU id {clash[0]!r} is the name of the export's summary file ({SUMMARY_FILE}), which an "
            "imagefolder export writes beside the class folders; export with --format jsonl (classes are "
            "under images/ there), or leave it out with --sku"
        )


@dataclass
class _WrittenClass:
    """What ``_write_class`` wrote of one class into the staging folder."""

    rows: list[ManifestRow]  # written, in order
    lines: list[str]  # its dataset.jsonl lines (jsonl)
    over_cap: int  # synthetic rows the cap of the real images written left out
    long_side_capped: int
    changed: int  # rows left out: the store changed them while the export ran


def _write_export(
    manifests: ManifestStore,
    plan: ExportPlan,
    staging: Path,
    out_dir: Path,
    *,
    fmt: ExportFormat,
    size_px: int,
    fit: ExportFit,
    limits: tuple[int, int],
    min_real: int,
    max_synthetic_per_real: int,
) -> ExportSummary:
    """Write the images, dataset.jsonl and export.json into ``staging``; the summary names ``out_dir``.
    A photo withdrawn while the export ran after its image was copied is taken out again before the
    index and the summary are written: its class is written anew without it."""

    def write(plan_class: ClassPlan) -> _WrittenClass:
        return _write_class(
            manifests,
            plan_class,
            staging,
            fmt=fmt,
            size_px=size_px,
            fit=fit,
            limits=limits,
            max_synthetic_per_real=max_synthetic_per_real,
        )

    plans = {plan_class.sku_id: plan_class for plan_class in plan.classes}
    written = {sku_id: write(plan_class) for sku_id, plan_class in plans.items()}
    withdrawn_meanwhile: Counter[str] = Counter()  # per class: planned rows of photos withdrawn since
    # Only a missing object told the export of a withdrawal: a photo withdrawn after its image was read
    # (hours before the end, in another class) went out. The markers are written first: read again
    # until no class written has an image of a withdrawn photo (one listing when none was withdrawn).
    while affected := _with_withdrawn_photos(written, Withdrawals(manifests).by_sku()):
        for sku_id, photo_ids in affected.items():
            _remove_class(staging, fmt, sku_id)
            old = plans[sku_id]
            kept = [row for row in [*old.real, *old.synthetic] if photo_of(row) not in photo_ids]
            withdrawn_meanwhile[sku_id] += len(old.real) + len(old.synthetic) - len(kept)
            plans[sku_id] = ClassPlan(
                sku_id,
                [row for row in kept if row.source == "real"],
                [row for row in kept if row.source == "synthetic"],
                old.synthetic_dropped,
                old.synthetic_left_out,
            )
            written[sku_id] = write(plans[sku_id])
    lines: list[str] = []
    classes: dict[str, dict[str, int]] = {}
    skipped = dict(plan.skipped)
    long_side_capped = changed = 0
    for sku_id, plan_class in plans.items():
        result = written[sku_id]
        changed += result.changed + withdrawn_meanwhile[sku_id]
        real = sum(1 for row in result.rows if row.source == "real")
        if real < min_real:
            # Its real photos were withdrawn while the export ran: a class of synthetic images only is
            # what the policy never exports.
            _remove_class(staging, fmt, sku_id)
            skipped[sku_id] = (
                f"{real} real image(s) left after the store changed while the export ran, "
                f"need at least {min_real}"
            )
            continue
        # Counted only now: the summary describes what was written, not a class removed above.
        lines += result.lines
        long_side_capped += result.long_side_capped
        classes[sku_id] = {
            "real": real,
            "synthetic": len(result.rows) - real,
            "dropped": plan_class.synthetic_dropped + result.over_cap,
        }
    if fmt == "jsonl":
        (staging / "dataset.jsonl").write_text("".join(line + "\n" for line in lines))
    summary = ExportSummary(
        out_dir=str(out_dir),
        format=fmt,
        size_px=size_px,
        fit=fit,
        classes=classes,
        skipped=skipped,
        real=sum(counts["real"] for counts in classes.values()),
        synthetic=sum(counts["synthetic"] for counts in classes.values()),
        synthetic_left_out={
            c.sku_id: c.synthetic_left_out
            for c in plan.classes
            if c.synthetic_left_out and c.sku_id in classes
        },
        long_side_capped=long_side_capped,
        changed_during_export=changed,
    )
    if not classes:
        raise ValueError(
            "nothing to export: the store changed the real images of every class while the export ran; "
            "export again"
        )
    (staging / SUMMARY_FILE).write_text(summary.to_json() + "\n")
    return summary


def _write_class(
    manifests: ManifestStore,
    plan_class: ClassPlan,
    staging: Path,
    *,
    fmt: ExportFormat,
    size_px: int,
    fit: ExportFit,
    limits: tuple[int, int],
    max_synthetic_per_real: int,
) -> _WrittenClass:
    """Write one class's images (and masks, jsonl) into ``staging``. The real images are written first,
    so that the synthetic cap is of the real images written: a real photo withdrawn while the export
    ran lowers it (the plan's cap counted that photo)."""
    result = _WrittenClass(rows=[], lines=[], over_cap=0, long_side_capped=0, changed=0)
    real = synthetic = 0
    for row in [*plan_class.real, *plan_class.synthetic]:
        if row.source == "synthetic" and synthetic >= max_synthetic_per_real * real:
            result.over_cap += 1
            continue
        mask_read = False
        try:
            image = _decoded(manifests, row, limits, decode_image, mask=False)
            # Only jsonl writes masks: an imagefolder export neither reads them nor fails on one lost.
            mask_read = bool(row.mask) and fmt == "jsonl"
            mask = _decoded(manifests, row, limits, decode_mask, mask=True) if mask_read else None
        except (ObjectMissing, ChecksumMismatch, ImageRejected) as exc:
            # Refused bytes too: their row replaced or withdrawn meanwhile, they are no longer the store's
            # (they stopped the export, while a lost or changed object of such a row was left out).
            if manifests.read_sku(row.sku_id).get(row.item_id) == row:
                # The manifest still names these bytes: a missing, tampered or refused object stops it.
                raise _with_ways_past(exc, row, manifests, mask=mask_read) from exc
            log.warning("%s/%s changed in the store while the export ran: left out", row.sku_id, row.item_id)
            result.changed += 1
            continue
        if fit == "keep" and max(image.size) > MAX_ASPECT * min(image.size):
            result.long_side_capped += 1
        image = _resized(image, size_px, fit)
        name = f"{row.source}-{row.item_id}.png"
        if row.source == "real":
            real += 1
        else:
            synthetic += 1
        result.rows.append(row)
        if fmt == "imagefolder":
            _write(staging / row.sku_id / name, encode_png(image))
            continue
        image_path = Path("images") / row.sku_id / name
        _write(staging / image_path, encode_png(image))
        mask_path = None
        if mask is not None:
            mask_path = Path("masks") / row.sku_id / name
            _write(staging / mask_path, encode_png(_resized(Image.fromarray(mask), size_px, fit, fill=0)))
        result.lines.append(
            json.dumps(
                {
                    "image": image_path.as_posix(),
                    "mask": mask_path.as_posix() if mask_path else None,
                    "label": row.sku_id,
                    "source": row.source,
                    "item_id": row.item_id,
                    "caption": row.caption,
                    "category": row.category,
                },
                sort_keys=True,
            )
        )
    return result


def _with_ways_past(
    exc: ObjectMissing | ChecksumMismatch | ImageRejected,
    row: ManifestRow,
    manifests: ManifestStore,
    *,
    mask: bool,
) -> BadInput:
    """``exc``, which stops the export, saying whose object it was and the ways past it: of a changed
    object, what happened and how to put it right; of a lost one, the store's reason (a folder there);
    of one refused by a limit, the setting that raises it; of a real
    photo, that withdrawing it leaves it out; of a mask, that an imagefolder export reads none; and
    that ``--sku`` can leave the SKU out. Each said only what was wrong with the object ("no object
    at ...", "expected sha256 ..., found ...", "too_many_pixels: ..."): not whose it was, nor what to do."""
    ways = [f"leave {row.sku_id} out with --sku"]
    if mask:
        ways.insert(0, "export with --format imagefolder (which reads no mask)")
    elif row.source == "real":
        ways.insert(0, withdraw_way(row))
    what = f"the {'mask' if mask else 'image'} of {row.sku_id}/{row.item_id}"
    if isinstance(exc, ChecksumMismatch):
        return ChecksumMismatch(
            exc.uri,
            exc.expected,
            exc.actual,
            f"{what} changed after its manifest row was written (overwritten or damaged); "
            f"{either('put back the bytes its row names (from a backup)', *ways)}",
        )
    # Escaped, as the store shows it, not uri_for's: that refuses a key written before review 48 (a bidi
    # control), and its ValueError hid the lost object behind one about its key.
    uri = escape_control_characters(
        f"{manifests.store.base_uri}/{manifests.key(str(row.mask if mask else row.image))}"
    )
    if isinstance(exc, ImageRejected):
        if exc.setting:
            ways.insert(0, f"export with a higher {exc.setting}")
        return with_detail(exc, f"{uri}: {what}: {exc.detail}; {either(*ways)}")
    why = f" ({exc.why})" if exc.why else ""
    return ObjectMissing(uri, f"{what}{why}; {either('restore it', *ways)}")


def withdraw_way(row: ManifestRow) -> str:
    """How a real photo's row leaves the store (said where its object is lost or refused): the photo
    taken out of its SKU's folder and withdrawn."""
    return (
        f"take photo {photo_of(row)} out of {row.sku_id}'s folder and run skuforge ingest --withdraw-missing"
    )


def either(*ways: str) -> str:
    """``ways`` as one choice: "a, b, or c"."""
    return ways[0] if len(ways) == 1 else f"{', '.join(ways[:-1])}, or {ways[-1]}"


def _remove_class(staging: Path, fmt: ExportFormat, sku_id: str) -> None:
    """Remove what ``_write_class`` wrote of one class. Only this class's folders: in jsonl,
    staging/<SKU> of a SKU named "images" was every class's images."""
    folders = (
        [staging / sku_id]
        if fmt == "imagefolder"
        else [staging / "images" / sku_id, staging / "masks" / sku_id]
    )
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _with_withdrawn_photos(
    written: Mapping[str, _WrittenClass], withdrawn: Mapping[str, set[str]]
) -> dict[str, set[str]]:
    """The classes that wrote an image of a photo ``withdrawn`` (``Withdrawals.by_sku``) names, with
    their withdrawn photos (pure)."""
    affected = {}
    for sku_id, result in written.items():
        photo_ids = withdrawn.get(sku_id, set())
        if any(photo_of(row) in photo_ids for row in result.rows):
            affected[sku_id] = photo_ids
    return affected


def read_checked(manifests: ManifestStore, key: str | None, sha256: str | None) -> bytes:
    """The object under ``key`` (relative to the store's root); ``ChecksumMismatch`` if not ``sha256``."""
    assert key is not None
    if sha256 is None:
        return manifests.store.get_bytes(manifests.key(key))
    return manifests.store.read_checked(manifests.key(key), sha256)


def _decoded(
    manifests: ManifestStore,
    row: ManifestRow,
    limits: tuple[int, int],
    decode: Callable[..., _Decoded],
    *,
    mask: bool,
) -> _Decoded:
    """The stored image (or ``mask``) of ``row``, decoded within ``limits``. A key the store does not read
    is ``BadInput('unsafe_key')`` naming the row and the ways past it."""
    key, sha256 = (row.mask, row.mask_sha256) if mask else (row.image, row.image_sha256)
    try:
        data = read_checked(manifests, key, sha256)
    except ValueError as exc:
        # A row written by hand or by another tool (a newline, an escape code in its key): the store's
        # bare ValueError was a usage error naming no row. The key escaped: it must not reach a terminal raw.
        ways = either(
            "restore its manifest part from a backup", "remove the row", f"leave {row.sku_id} out with --sku"
        )
        raise BadInput(
            "unsafe_key",
            f"the {'mask' if mask else 'image'} of {row.sku_id}/{row.item_id} is "
            f"{escape_control_characters(key)}, which is no key the store reads ({exc}); {ways}",
        ) from None
    return decode(data, max_pixels=limits[0], max_bytes=limits[1])


def _resized(
    image: Image.Image, size_px: int, fit: ExportFit, fill: int | tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """Resize keeping the aspect ratio: the shorter side to size_px, the longer at most MAX_ASPECT x
    size_px ("keep"), or into a size_px square padded white (photos) or 0 (masks) ("pad")."""
    resample = Image.Resampling.NEAREST if image.mode == "L" else Image.Resampling.LANCZOS
    if fit == "pad":
        if image.size == (size_px, size_px):
            return image
        return ImageOps.pad(image, (size_px, size_px), method=resample, color=fill)
    width, height = image.size
    scale = min(size_px / min(width, height), MAX_ASPECT * size_px / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image if size == image.size else image.resize(size, resample)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
