"""``skuforge dataset``: look into the retraining store and export training sets from it.

    skuforge dataset stats [--json]
    skuforge dataset export OUT --format imagefolder|jsonl --max-synthetic-per-real K [--size 256] \
        [--fit keep|pad] [--min-real 1] [--sku SKU ...] [--evaluation evaluation.json|DIR [--min-gain 0.0]]
    skuforge dataset compact
    skuforge dataset sweep [--sku SKU ...] [--delete]

The store is ``SKUFORGE_STORE_URI`` (and ``SKUFORGE_S3_ENDPOINT_URL``), the retraining store's root
inside it ``SKUFORGE_TRAINSTORE_PREFIX``. Only manifests are read, except by ``export``, which reads
(and checks) the images it writes out, and ``sweep``, which lists each SKU's objects and deletes (with
``--delete``) those no row names that are ``SKUFORGE_TRAINSTORE_SWEEP_GRACE_S`` old
(``shared/trainstore/sweep.py``). ``--evaluation`` takes what ``skuforge evaluate`` wrote (its
evaluation.json, or the ``--out`` folder that holds it) and leaves out the synthetic images of SKUs
where they were measured to hurt (B - A below ``--min-gain``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Collection, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from schemas.common import check_safe_id
from shared.argtypes import (
    CommandParser,
    ascii_float,
    folder_problem,
    int_between,
    non_negative_int,
    path_argument,
    positive_int,
    read_json_object,
)
from shared.config import load_settings
from shared.errors import BadInput, TransientError
from shared.evaluation import EVALUATION_FILE
from shared.signals import failure_before, stopped_as_interrupt
from shared.store import open_settings_store
from shared.trainstore.dataset import (
    EXPORT_FITS,
    EXPORT_FORMATS,
    MAX_ASPECT,
    ExportPlan,
    SkuStats,
    export_dataset,
    plan_export,
    sku_stats,
    synthetic_left_out_by_evaluation,
)
from shared.trainstore.manifest import ManifestRow, ManifestStore
from shared.trainstore.settings import TrainstoreSettings
from shared.trainstore.sweep import find_orphans, skus_without_manifest
from shared.trainstore.withdrawals import Withdrawals


def _evaluation_file(path: Path) -> Path:
    """The evaluation.json ``--evaluation`` names: ``path``, or the one in it when it is a folder (what
    ``skuforge evaluate --out DIR`` was given); ``ValueError`` for a folder without one."""
    if not path.is_dir():
        return path
    if not (path / EVALUATION_FILE).is_file():
        raise ValueError(
            f"--evaluation {path}: a folder with no {EVALUATION_FILE} in it (run skuforge evaluate "
            "--out DIR first)"
        )
    return path / EVALUATION_FILE


def _read_evaluation(path: Path) -> dict[str, Any]:
    """The JSON document ``skuforge evaluate`` wrote; ``ValueError`` says why it cannot be used."""
    return read_json_object(
        path, label=f"--evaluation {path}", missing="run skuforge evaluate --out DIR first"
    )


def store_root(manifests: ManifestStore) -> str:
    """The retraining store's root URI (store + prefix), as ``skuforge evaluate`` records it."""
    return f"{manifests.store.base_uri}/{manifests.prefix}".rstrip("/")


def no_skus_problem(manifests: ManifestStore) -> str:
    """What to say when the retraining store has no SKU at all: most often a mistyped store URI."""
    return (
        f"the retraining store {store_root(manifests)} has no SKUs; is SKUFORGE_STORE_URI (and "
        "SKUFORGE_TRAINSTORE_PREFIX) the store the trainstore service writes?"
    )


def evaluation_mismatches(
    evaluation: dict[str, Any],
    *,
    store: str,
    max_synthetic_per_real: int,
    min_real: int,
    sku_ids: Collection[str] = (),
) -> list[str]:
    """Where an evaluation.json measured another store or export policy than this export's, with a
    classifier of random weights, or SKUs this store does not have (pure): its per-SKU gains then
    describe other training sets. Notes, not errors: it may be meant."""
    notes = []
    gain = evaluation.get("gain")
    unknown = (
        sorted(str(sku) for sku in gain if sku not in sku_ids) if isinstance(gain, dict) and sku_ids else []
    )
    if unknown:
        # Quoted: a blank key of a hand-edited file showed as "()", one with a trailing space as a SKU.
        shown = ", ".join(repr(sku_id) for sku_id in unknown[:5])
        shown += f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        notes.append(f"it has gains of SKUs this store does not have ({shown}); they are not used")
    inputs = evaluation.get("inputs")
    if not isinstance(inputs, dict):
        return [
            "it does not say what it measured (no 'inputs'): its gains may be of another store or policy",
            *notes,
        ]
    if inputs.get("backbone") == "tiny":
        notes.append("it measured with --backbone tiny (random weights, for tests): its gains are noise")
    wanted = {"store": store, "max_synthetic_per_real": max_synthetic_per_real, "min_real": min_real}
    return [
        f"it measured {key} {inputs[key]!r}, this export uses {value!r}"
        for key, value in wanted.items()
        if key in inputs and inputs[key] != value
    ] + notes


def evaluation_outdated(evaluation: dict[str, Any], plan: ExportPlan) -> list[str]:
    """SKUs whose training images this export plans other counts of than the evaluation measured
    (``train_counts``; pure): images stored, withdrawn or rejected since. Its gain then describes another
    training set: a SKU measured with 4 synthetic images had its 10 left out without a word."""
    counts = evaluation.get("train_counts")
    gain = evaluation.get("gain")
    if not isinstance(counts, dict) or not isinstance(gain, dict):
        return []
    planned = {plan_class.sku_id: plan_class for plan_class in plan.classes}
    changed = []
    for sku_id in sorted(str(sku) for sku in gain):
        measured, now = counts.get(sku_id), planned.get(sku_id)
        if not isinstance(measured, dict) or now is None:
            continue
        was = (measured.get("real"), measured.get("synthetic"))
        if was != (len(now.real), len(now.synthetic)):
            changed.append(
                f"{sku_id} (measured {was[0]} real, {was[1]} synthetic; now {len(now.real)} and "
                f"{len(now.synthetic)})"
            )
    if not changed:
        return []
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    return [
        f"the store changed since it was measured: {shown}; their gains describe other training sets "
        "(run skuforge evaluate again)"
    ]


def _finite_float(text: str) -> float:
    value = ascii_float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def gain_fraction(text: str) -> float:
    """argparse type of ``--min-gain``: a B-A in top-1 as a fraction, -1..1.

    The docs quote gains in points; ``--min-gain -5`` meant as -5 points would leave nothing out, silently.
    """
    value = _finite_float(text)
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"must be a fraction of top-1 between -1 and 1 (-0.05 for -5 points), got {text}"
        )
    return value


def open_manifests() -> ManifestStore:
    """The retraining store of the environment (SKUFORGE_STORE_URI, SKUFORGE_TRAINSTORE_PREFIX)."""
    settings = load_settings()
    trainstore = load_settings(TrainstoreSettings)
    store = open_settings_store(settings)
    return ManifestStore(store, trainstore.trainstore_prefix)


def readable_rows(
    manifests: ManifestStore, sku_ids: list[str], unreadable: dict[str, str]
) -> Iterator[ManifestRow]:
    """The current rows of each SKU that reads; a SKU that does not (a part that is not a manifest
    row, or parts that kept changing while read) goes into ``unreadable`` with the reason, and the
    others are still read."""
    for sku_id in sku_ids:
        try:
            rows = manifests.read_sku(sku_id)
        except BadInput as exc:
            unreadable[sku_id] = str(exc)
            continue
        except TransientError as exc:  # its parts kept vanishing (compactions racing this read)
            unreadable[sku_id] = f"{exc} (run the command again)"
            continue
        yield from rows.values()


def report_unreadable(action: str, unreadable: dict[str, str], total: int, left_out: str) -> None:
    """Name each SKU that did not read, with its reason, and how many of ``total`` that was (stderr)."""
    for sku_id, reason in unreadable.items():
        print(f"skuforge dataset {action}: SKU {sku_id!r}: {reason}", file=sys.stderr)
    print(
        f"skuforge dataset {action}: {len(unreadable)} of {total} SKUs could not be read (named above) "
        f"and {left_out}",
        file=sys.stderr,
    )


def stats_lines(rows: list[SkuStats], *, as_json: bool) -> Iterator[str]:
    """What ``stats`` prints: a JSON object per SKU, or a table and the SKU count."""
    if as_json:
        yield from (json.dumps(asdict(row), sort_keys=True) for row in rows)
        return
    yield (
        f"{'sku_id':<24} {'real':>5} {'unusable':>9} {'accepted':>9} {'approved':>9} "
        f"{'pending':>8} {'rejected':>9} {'rejected_renders':>17} {'withdrawn':>10} {'mean_iou':>9}"
    )
    for row in rows:
        iou = f"{row.mean_iou:.3f}" if row.mean_iou is not None else "-"
        yield (
            f"{row.sku_id:<24} {row.real:>5} {row.unusable:>9} {row.synthetic_accepted:>9} "
            f"{row.synthetic_approved:>9} {row.pending:>8} {row.rejected:>9} {row.rejected_renders:>17} "
            f"{row.withdrawn:>10} {iou:>9}"
        )
    yield f"{len(rows)} SKUs"


def main(argv: list[str] | None = None) -> int:
    """Run ``skuforge dataset ...``; returns the exit code."""
    parser = CommandParser(prog="skuforge dataset", description="Inspect and export the retraining store.")
    sub = parser.add_subparsers(dest="action", required=True)
    stats = sub.add_parser(
        "stats",
        help="per SKU: real, unusable (real photos the captioner could not use), synthetic "
        "accepted/approved, pending, rejected, rejected_renders (other renders of those items a reviewer "
        "rejected, such as one beside the render an item kept), withdrawn, mean IoU",
    )
    stats.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    export = sub.add_parser("export", help="write a training set honouring the real:synthetic policy")
    export.add_argument(
        "out",
        type=path_argument("folder"),
        help="output directory: new, or empty (with --format jsonl, but for a lost+found folder, left as it "
        "is; an imagefolder export's every folder is a class)",
    )
    export.add_argument("--format", choices=EXPORT_FORMATS, required=True, help="imagefolder or jsonl")
    export.add_argument(
        "--size",
        type=int_between(16, 4096),
        default=256,
        help=f"shorter side in px (the longer one at most {MAX_ASPECT}x that: a longer image is scaled to "
        "that instead), or the square's side with --fit pad, 16 to 4096 (default 256)",
    )
    export.add_argument(
        "--fit",
        choices=EXPORT_FITS,
        default="keep",
        help="keep: aspect ratio kept, nothing added (default); pad: a --size square, padded with white",
    )
    export.add_argument(
        "--max-synthetic-per-real",
        type=non_negative_int,
        required=True,
        help="synthetic images per real one, at most",
    )
    export.add_argument(
        "--min-real",
        type=positive_int,
        default=1,
        help="classes with fewer real images are left out (default 1)",
    )
    export.add_argument("--sku", action="append", default=None, help="export only this SKU (repeatable)")
    export.add_argument(
        "--evaluation",
        type=path_argument("file or folder"),
        default=None,
        metavar="PATH",
        help="evaluation.json written by 'skuforge evaluate' (or the --out folder it is in): SKUs whose "
        "synthetic images lowered held-out top-1 (per-SKU B-A below --min-gain) are exported with their "
        "real images only; SKUs it did not evaluate, or evaluated with none of their synthetic images, "
        "are exported as usual",
    )
    export.add_argument(
        "--min-gain",
        type=gain_fraction,
        default=None,
        metavar="X",
        help="with --evaluation: least per-SKU B-A that keeps a SKU's synthetic images, a fraction of "
        "top-1 from -1 to 1 (-0.05 for -5 points; default 0.0: leave them out where they hurt)",
    )
    sub.add_parser(
        "compact",
        help="merge every SKU's manifest deltas into one file now (and write a lost or unreadable columnar "
        "copy again)",
    )
    sweep = sub.add_parser(
        "sweep",
        help="list every SKU's images and masks that no manifest row names (left by a deletion cut short, "
        "or a writer whose row lost) and were written SKUFORGE_TRAINSTORE_SWEEP_GRACE_S or more before "
        "the SKU's newest manifest part (the store's times); a dry run unless --delete",
        description="Find the retraining store's images and masks that no manifest row names and that "
        "were written SKUFORGE_TRAINSTORE_SWEEP_GRACE_S (default a day) or more before their SKU's newest "
        "manifest part, both times the store's (S3's LastModified), and print them. Nothing is deleted "
        "without --delete: a dry run is the default, as a deletion cannot be undone. A younger object may "
        "be a writer's whose row is on its way, and is kept. Manifests, withdrawal markers, files not of "
        "the store's layout and SKUs with no manifest (named) are never touched.",
    )
    sweep.add_argument(
        "--sku",
        action="append",
        default=None,
        help="sweep only this SKU (repeatable); one the store has no manifest or objects of is refused",
    )
    sweep.add_argument(
        "--delete",
        action="store_true",
        help="delete the objects found (default: a dry run that only prints them)",
    )
    args = parser.parse_args(argv)
    manifests = open_manifests()
    settings = load_settings()

    if args.action in ("stats", "compact", "sweep") and not (sku_ids := manifests.sku_ids()):
        # An empty table or {"compacted": []} and exit 0 would hide a mistyped store URI.
        print(f"skuforge dataset {args.action}: {no_skus_problem(manifests)}", file=sys.stderr)
        return 1
    # One SKU whose manifest does not read stopped both at it: stats printed nothing, compact left
    # the later SKUs as they were and did not say which it had compacted. Each is named instead.
    unreadable: dict[str, str] = {}
    if args.action == "stats":
        rows = sku_stats(readable_rows(manifests, sku_ids, unreadable))
        for line in stats_lines(rows, as_json=args.json):
            print(line)
        sys.stdout.flush()  # `stats | head -1`: run_command stops quietly, before the report below
        if unreadable:
            report_unreadable("stats", unreadable, len(sku_ids), "are not in the table")
            return 1
        return 0
    if args.action == "export":
        if args.min_gain is not None and args.evaluation is None:
            export.error("--min-gain needs --evaluation PATH (the evaluation.json of skuforge evaluate)")
        if args.evaluation is not None:
            try:
                args.evaluation = _evaluation_file(args.evaluation)
            except ValueError as exc:
                export.error(str(exc))
        if (problem := folder_problem(args.out)) is not None:
            export.error(f"OUT {args.out}: {problem}")
        try:
            stored = manifests.sku_ids()
            if not stored:
                # Not an empty training set and exit 0; a store problem, said as `stats` says it (one line,
                # exit 1), not a usage error with the full usage.
                print(f"skuforge dataset export: {no_skus_problem(manifests)}", file=sys.stderr)
                return 1
            no_synthetic = None
            if args.evaluation is not None:
                evaluation = _read_evaluation(args.evaluation)
                no_synthetic = synthetic_left_out_by_evaluation(
                    evaluation,
                    min_gain=0.0 if args.min_gain is None else args.min_gain,
                    source=str(args.evaluation),
                )
                mismatches = evaluation_mismatches(
                    evaluation,
                    store=store_root(manifests),
                    max_synthetic_per_real=args.max_synthetic_per_real,
                    min_real=args.min_real,
                    sku_ids=set(stored),
                )
                inputs = evaluation.get("inputs")
                same_policy = isinstance(inputs, dict) and (
                    inputs.get("max_synthetic_per_real"),
                    inputs.get("min_real"),
                ) == (args.max_synthetic_per_real, args.min_real)
                if same_policy:  # else the counts differ by policy, which is noted already
                    # The SKUs exported only: another's counts are not this export's (nor a part of it
                    # that does not read); an id the store lacks is refused by export_dataset below.
                    exported = stored if args.sku is None else sorted(set(args.sku) & set(stored))
                    plan = plan_export(
                        manifests.iter_rows(exported),
                        max_synthetic_per_real=args.max_synthetic_per_real,
                        min_real=args.min_real,
                        withdrawn_photos=Withdrawals(manifests).by_sku(),
                    )
                    mismatches += evaluation_outdated(evaluation, plan)
                for mismatch in mismatches:
                    print(f"note: --evaluation {args.evaluation}: {mismatch}", file=sys.stderr)
            # SIGTERM (kill, timeout, docker stop) and SIGHUP unwind it as Ctrl-C does: its staging folder
            # is removed, and the classes already moved into an existing OUT are taken out again.
            with stopped_as_interrupt():
                summary = export_dataset(
                    manifests,
                    args.out,
                    fmt=args.format,
                    size_px=args.size,
                    fit=args.fit,
                    max_synthetic_per_real=args.max_synthetic_per_real,
                    min_real=args.min_real,
                    sku_ids=args.sku,
                    no_synthetic=no_synthetic,
                    limits=(
                        settings.max_image_pixels,
                        settings.max_image_bytes,
                    ),  # the stage stored under these
                )
        except (FileExistsError, ValueError) as exc:
            export.error(str(exc))  # its usage, not the one of every `skuforge dataset` action
        except (OSError, BadInput, TransientError) as exc:
            print(f"skuforge dataset export: {_export_failure(exc, args.out)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as stop:
            # A stop that waited for a failed export's clean-up: the failure first, then (skuforge's main)
            # the stop; it alone hid why the export failed.
            if (failure := failure_before(stop)) is not None:
                print(f"skuforge dataset export: {_export_failure(failure, args.out)}", file=sys.stderr)
            raise
        print("\n".join(summary.lines()))
        return 0
    if args.action == "sweep":
        unmanaged = None  # the store's every SKU with objects but no manifest
        if args.sku is not None:
            wanted = list(dict.fromkeys(args.sku))
            for sku_id in wanted:
                try:
                    check_safe_id(sku_id)  # it names the folders listed: never '..' or a path
                except ValueError as exc:
                    sweep.error(f"--sku {sku_id!r}: not a SKU id ({exc})")
            unmanaged = skus_without_manifest(manifests, only=wanted)
            for sku_id in wanted:
                if sku_id not in sku_ids and sku_id not in unmanaged:
                    # A typo would otherwise sweep nothing and report success.
                    sweep.error(
                        f"--sku {sku_id!r}: no SKU of that id in the store (skuforge dataset stats lists "
                        "them)"
                    )
            sku_ids = [sku_id for sku_id in sku_ids if sku_id in wanted]
        # `sweep | head -1` stops at the next line printed (run_command); with --delete, the objects
        # printed were deleted.
        return _sweep(manifests, sku_ids, delete=args.delete, unmanaged=unmanaged)
    compacted = []
    for sku_id in sku_ids:
        try:
            if manifests.compact(sku_id):
                compacted.append(sku_id)
        except BadInput as exc:
            unreadable[sku_id] = str(exc)
        except TransientError as exc:  # as in readable_rows: the others are still compacted
            unreadable[sku_id] = f"{exc} (run the command again)"
    print(json.dumps({"compacted": compacted, "unreadable": sorted(unreadable)}))
    if unreadable:
        report_unreadable("compact", unreadable, len(sku_ids), "were not compacted")
        return 1
    return 0


def _export_failure(exc: BaseException, out: Path) -> str:
    """What ``skuforge dataset export`` says of a failure, after its name."""
    if isinstance(exc, (FileExistsError, ValueError)):
        return f"error: {exc}"  # as its usage error ends
    if isinstance(exc, OSError):  # the disk filled, or the folder went away meanwhile
        return f"{out}: {exc.strerror or exc}"
    if isinstance(exc, (BadInput, TransientError)):
        # The store's fault (a tampered or missing object, S3 away), not the command line's.
        return f"{exc}; nothing was written to {out}"
    return f"{type(exc).__name__}: {exc}"


def _sweep(
    manifests: ManifestStore, sku_ids: list[str], *, delete: bool, unmanaged: list[str] | None = None
) -> int:
    """``skuforge dataset sweep``: each SKU's unnamed objects past the grace period, deleted with
    ``delete``, each printed as it goes (so a run cut short has said what it deleted); a SKU that does
    not read, or whose deletion failed, is named on stderr (exit 1), the others are still swept.
    ``unmanaged``: the SKUs with objects but no manifest to name (default: the store's every one)."""
    grace_s = load_settings(TrainstoreSettings).trainstore_sweep_grace_s
    done = "deleted" if delete else "would delete"
    unreadable: dict[str, str] = {}
    swept: list[str] = []  # the SKU of each object deleted (or that would be)
    for sku_id in sku_ids:
        try:
            orphans = find_orphans(manifests, sku_id, grace_s=grace_s)
            for key in orphans.past_grace:
                if delete:
                    manifests.store.delete(key)
                print(f"{sku_id}: {done} {manifests.store.uri_for(key)}", flush=True)
                swept.append(sku_id)
        except BadInput as exc:
            unreadable[sku_id] = str(exc)
            continue
        except TransientError as exc:  # as in readable_rows: the others are still swept
            unreadable[sku_id] = f"{exc} (run the command again)"
            continue
        if young := len(orphans.young):
            print(
                f"{sku_id}: {young} unnamed object{'s' if young != 1 else ''} younger than "
                f"SKUFORGE_TRAINSTORE_SWEEP_GRACE_S ({grace_s:g} s) kept"
            )
    for sku_id in skus_without_manifest(manifests) if unmanaged is None else unmanaged:
        print(f"{sku_id}: no manifest: its objects are left alone")
    objects, skus = len(swept), len(set(swept))
    counted = f"{objects} object{'s' if objects != 1 else ''} of {skus} SKU{'s' if skus != 1 else ''}"
    if delete:
        print(f"{counted} deleted")
    else:
        print(f"dry run: {counted} would be deleted; run again with --delete to delete them")
    if unreadable:
        report_unreadable("sweep", unreadable, len(sku_ids), "were not swept, or not wholly")
        return 1
    return 0
