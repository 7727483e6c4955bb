"""Dataset tools on the retraining store: per-SKU stats and export under the real:synthetic policy.

The policy (docs/architecture.md, "What the field taught"): generated-only classes do not work and too many
generated images teach the generator's artefacts, so an exported class

* has at least ``min_real`` real images (classes with fewer are left out, and the summary says so);
* has at most ``max_synthetic_per_real`` synthetic images per real one (the rest are left out,
  chosen by a stable hash of the item id so the same store always exports the same set);
* is resized to ``size_px`` x ``size_px`` (aspect kept, padded with white).

Formats: ``imagefolder`` (``<out>/<sku_id>/<real|synthetic>-<item_id>.png``, what
``torchvision.datasets.ImageFolder`` reads) and ``jsonl`` (``<out>/images/...``, ``<out>/masks/...``
and ``<out>/dataset.jsonl`` with one line per image). Objects are checked against the sha256 in
their manifest row while exporting; a mismatch stops the export with ``ChecksumMismatch``.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps

from shared.errors import ChecksumMismatch
from shared.images import decode_image, decode_mask, encode_png
from shared.store import sha256_hex
from shared.trainstore.manifest import ManifestRow, ManifestStore

__all__ = [
    "ClassPlan",
    "ExportFormat",
    "ExportPlan",
    "SkuStats",
    "export_dataset",
    "plan_export",
    "sku_stats",
]

ExportFormat = Literal["imagefolder", "jsonl"]
EXPORT_FORMATS: tuple[str, ...] = ("imagefolder", "jsonl")


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
    mean_iou: float | None  # over every gated synthetic item (accepted, approved, pending, rejected)


def sku_stats(rows: Iterable[ManifestRow]) -> list[SkuStats]:
    """One ``SkuStats`` per SKU, sorted by sku_id."""
    by_sku: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        by_sku[row.sku_id].append(row)
    stats = []
    for sku_id, sku_rows in sorted(by_sku.items()):
        count = {status: sum(1 for row in sku_rows if row.status == status) for status in _STATUSES}
        ious = [row.iou for row in sku_rows if row.source == "synthetic" and row.iou is not None]
        stats.append(
            SkuStats(
                sku_id=sku_id,
                category=sku_rows[0].category,
                real=count["reference"],
                synthetic_accepted=count["accepted"],
                synthetic_approved=count["approved"],
                pending=count["pending"],
                rejected=count["rejected"],
                mean_iou=round(sum(ious) / len(ious), 4) if ious else None,
            )
        )
    return stats


_STATUSES = ("reference", "accepted", "approved", "pending", "rejected")


@dataclass(frozen=True)
class ClassPlan:
    """The rows one class exports, and how many synthetic rows the cap left out."""

    sku_id: str
    real: list[ManifestRow]
    synthetic: list[ManifestRow]
    synthetic_dropped: int


@dataclass(frozen=True)
class ExportPlan:
    """Which classes export which rows; ``skipped`` names classes left out, with the reason."""

    classes: list[ClassPlan]
    skipped: dict[str, str] = field(default_factory=dict)


def plan_export(rows: Iterable[ManifestRow], *, max_synthetic_per_real: int, min_real: int = 1) -> ExportPlan:
    """Apply the real:synthetic policy to trainable rows (pure: no I/O)."""
    if max_synthetic_per_real < 0:
        raise ValueError("max_synthetic_per_real must be >= 0")
    if min_real < 1:
        raise ValueError("min_real must be >= 1: every exported class needs real images")
    by_sku: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        if row.trainable and row.image is not None:
            by_sku[row.sku_id].append(row)
    classes, skipped = [], {}
    for sku_id, sku_rows in sorted(by_sku.items()):
        real = sorted((row for row in sku_rows if row.source == "real"), key=lambda row: row.item_id)
        if len(real) < min_real:
            skipped[sku_id] = f"{len(real)} real image(s), need at least {min_real}"
            continue
        synthetic = sorted((row for row in sku_rows if row.source == "synthetic"), key=_stable_order)
        cap = max_synthetic_per_real * len(real)
        classes.append(ClassPlan(sku_id, real, synthetic[:cap], max(0, len(synthetic) - cap)))
    return ExportPlan(classes, skipped)


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

    def lines(self) -> list[str]:
        """The printed summary: one line per class, then the totals."""
        out = [f"{'class':<24} {'real':>6} {'synthetic':>10} {'capped':>7}"]
        for sku_id, counts in self.classes.items():
            out.append(f"{sku_id:<24} {counts['real']:>6} {counts['synthetic']:>10} {counts['dropped']:>7}")
        for sku_id, reason in self.skipped.items():
            out.append(f"{sku_id:<24} skipped: {reason}")
        ratio = f"{self.synthetic / self.real:.2f}" if self.real else "n/a"
        out.append(
            f"exported {len(self.classes)} classes, {self.real} real + {self.synthetic} synthetic images "
            f"(synthetic per real {ratio}) at {self.size_px}x{self.size_px} px as {self.format} "
            f"to {self.out_dir}"
        )
        return out

    def to_json(self) -> str:
        """The summary as JSON (written beside the export as export.json)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def export_dataset(
    manifests: ManifestStore,
    out_dir: Path,
    *,
    fmt: ExportFormat,
    size_px: int = 256,
    max_synthetic_per_real: int,
    min_real: int = 1,
    sku_ids: Iterable[str] | None = None,
) -> ExportSummary:
    """Write a training set to ``out_dir`` (which must not exist or be empty) and return its summary."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    if size_px < 16:
        raise ValueError("size_px must be at least 16")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; export into a new directory")
    plan = plan_export(
        manifests.iter_rows(sku_ids), max_synthetic_per_real=max_synthetic_per_real, min_real=min_real
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    classes: dict[str, dict[str, int]] = {}
    for plan_class in plan.classes:
        for row in [*plan_class.real, *plan_class.synthetic]:
            image = _resized(decode_image(_read_checked(manifests, row.image, row.image_sha256)), size_px)
            name = f"{row.source}-{row.item_id}.png"
            if fmt == "imagefolder":
                _write(out_dir / row.sku_id / name, encode_png(image))
                continue
            image_path = Path("images") / row.sku_id / name
            _write(out_dir / image_path, encode_png(image))
            mask_path = None
            if row.mask:
                mask = decode_mask(_read_checked(manifests, row.mask, row.mask_sha256))
                mask_path = Path("masks") / row.sku_id / name
                _write(out_dir / mask_path, encode_png(_resized(Image.fromarray(mask), size_px, fill=0)))
            lines.append(
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
        classes[plan_class.sku_id] = {
            "real": len(plan_class.real),
            "synthetic": len(plan_class.synthetic),
            "dropped": plan_class.synthetic_dropped,
        }
    if fmt == "jsonl":
        (out_dir / "dataset.jsonl").write_text("".join(line + "\n" for line in lines))
    summary = ExportSummary(
        out_dir=str(out_dir),
        format=fmt,
        size_px=size_px,
        classes=classes,
        skipped=plan.skipped,
        real=sum(counts["real"] for counts in classes.values()),
        synthetic=sum(counts["synthetic"] for counts in classes.values()),
    )
    (out_dir / "export.json").write_text(summary.to_json() + "\n")
    return summary


def _read_checked(manifests: ManifestStore, key: str | None, sha256: str | None) -> bytes:
    assert key is not None
    data = manifests.store.get_bytes(manifests.key(key))
    actual = sha256_hex(data)
    if sha256 is not None and actual != sha256:
        raise ChecksumMismatch(manifests.store.uri_for(manifests.key(key)), sha256, actual)
    return data


def _resized(
    image: Image.Image, size_px: int, fill: int | tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """Fit into size_px x size_px keeping the aspect ratio; pad white (photos) or 0 (masks)."""
    if image.size == (size_px, size_px):
        return image
    resample = Image.Resampling.NEAREST if image.mode == "L" else Image.Resampling.LANCZOS
    return ImageOps.pad(image, (size_px, size_px), method=resample, color=fill)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
