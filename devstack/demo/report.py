"""``demo-out/report.html``: per SKU the reference photos with the captioner's mask (outlined, and the
product cut out by it), the accepted images with their mask outlines, the flagged ones with IoU and
reasons; an IoU histogram; how to review the flagged ones in the console.

Pictures are written beside the page (``demo-out/images/``) so the report opens from disk, offline.
"""

from __future__ import annotations

import hashlib
import html
import io
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from schemas.common import ImageRef
from shared.store import ObjectStore

THUMB_PX = 160
SHEET_COLUMNS = 6
PREDICTED_RGB = (40, 220, 90)  # the matting model's mask
EXPECTED_RGB = (40, 160, 255)  # where the generator put the product's pixels
FLAGGED_RGB = (240, 60, 60)
REFERENCE_PX = 200
CUTOUT_BACKGROUND_RGB = (205, 205, 205)  # neutral grey: neither white nor dark products vanish on it
# The demo replaces the folders it writes (OUT/images, OUT/catalogue) on each run; this file in one
# says the demo wrote it. A folder without it holds someone's files and is never deleted.
OWNED_MARKER = ".skuforge-demo"


def not_owned_problem(folder: Path) -> str | None:
    """Why the demo may not replace ``folder`` (files it did not write are in it), or None."""
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file where the demo writes a folder"
    if not folder.is_dir() or (folder / OWNED_MARKER).exists() or not any(folder.iterdir()):
        return None
    return (
        f"{folder} holds files the demo did not write (no {OWNED_MARKER} in it) and would be replaced; "
        "choose another --out, or move them"
    )


REPORT_TITLE = "<title>skuforge demo</title>"


def report_problem(out: Path) -> str | None:
    """Why the demo may not write ``out/report.html`` (a page it did not write is there), or None."""
    path = out / "report.html"
    if not path.exists():
        return None
    if path.is_dir():
        return f"{path} is a folder where the demo writes its page"
    try:
        with path.open("rb") as page:
            head = page.read(4096).decode("utf-8", errors="replace")
    except OSError as exc:
        return f"{path} cannot be read to tell whose it is ({exc.strerror or exc})"
    if REPORT_TITLE in head:
        return None
    return f"{path} is not a page the demo wrote and would be replaced; choose another --out, or move it"


def replace_owned_folder(folder: Path) -> None:
    """Empty ``folder`` for this run's files (created if absent), marked as the demo's.

    Raises ``FileExistsError`` for a folder holding files the demo did not write: they are kept.
    """
    if problem := not_owned_problem(folder):
        raise FileExistsError(problem)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / OWNED_MARKER).write_text(
        "written by skuforge demo, replaced by its next run into this folder\n"
    )


@dataclass
class ReferenceView:
    """One real photo as the report shows it: the mask the captioner cut, or why there is none."""

    filename: str
    image: ImageRef
    mask: ImageRef | None
    unusable_reason: str | None = None
    caption: str = ""


@dataclass
class ItemView:
    """One generated item as the report shows it."""

    item_id: str
    image: ImageRef
    predicted_mask: ImageRef
    expected_mask: ImageRef
    iou: float
    reasons: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The gate's events hold an IoU from 0 to 1 (schemas/events.py); anything else is a caller's
        # bug, refused here naming the item, where a NaN stopped the histogram naming none.
        if not 0.0 <= self.iou <= 1.0:
            raise ValueError(
                f"{self.item_id}'s IoU {self.iou!r} is no number from 0 to 1: give the gate's IoU "
                "(gate.accepted, correction.pending hold one)"
            )


@dataclass
class SkuView:
    """One SKU's section of the report."""

    sku_id: str
    name: str
    category: str
    photos: list[ReferenceView]
    generated: int
    accepted: list[ItemView]
    flagged: list[ItemView]
    stored_real: int
    # No photo on a plain background: the generator cut the product out of in-store photos
    # (shared/generation/backend.py: cutout_sources), often wrongly, in a way the gate cannot see.
    cut_from_in_store: bool = False

    @property
    def in_store_note(self) -> str | None:
        """What the summary and the report say of a SKU cut out of in-store photos, or None."""
        if not self.cut_from_in_store:
            return None
        return (
            f"{self.sku_id}: no photo on a plain background, so its products were cut out of in-store "
            "photos; such cut-outs are often not the product alone (a hand, several items, a price tag) "
            "and the gate cannot tell: check its accepted images, and add a product shot on a plain "
            "background"
        )

    @property
    def mean_iou(self) -> float | None:
        """Mean IoU over every gated item of the SKU."""
        ious = [item.iou for item in [*self.accepted, *self.flagged]]
        return sum(ious) / len(ious) if ious else None


@dataclass
class StageView:
    """One stage's line of the throughput table."""

    stage: str
    items: int
    span_s: float | None
    handler_ms: float | None

    @property
    def per_minute(self) -> float | None:
        """Items per minute over the stage's span."""
        return self.items / self.span_s * 60 if self.span_s else None


def picture_stem(sku_id: str) -> str:
    """The start of the names of a SKU's pictures under ``images/``: the sku_id and a short hash of it,
    so SKUs whose ids differ only in case ("Milk", "milk") get files of their own on a case-insensitive
    file system (macOS, Windows), where they shared one and both sections showed the last written."""
    return f"{sku_id}-{hashlib.sha256(sku_id.encode()).hexdigest()[:8]}"


def outline(mask: np.ndarray, width_px: int = 3) -> np.ndarray:
    """A boolean image of the mask's border, ``width_px`` wide (pure function: tested without a store)."""
    binary = Image.fromarray(((mask > 127) * 255).astype(np.uint8))
    edges = binary.filter(ImageFilter.FIND_EDGES)
    if width_px > 1:
        edges = edges.filter(ImageFilter.MaxFilter(width_px if width_px % 2 else width_px + 1))
    return np.asarray(edges) > 0


def with_outlines(
    image: Image.Image, masks: Sequence[tuple[np.ndarray, tuple[int, int, int]]]
) -> Image.Image:
    """The image with each mask's outline drawn in its colour."""
    pixels = np.array(image.convert("RGB"))
    for mask, colour in masks:
        if mask.shape != pixels.shape[:2]:
            mask = np.asarray(Image.fromarray(mask).resize((pixels.shape[1], pixels.shape[0]), Image.NEAREST))
        pixels[outline(mask, width_px=max(3, pixels.shape[0] // 100))] = colour
    return Image.fromarray(pixels)


def cutout_on(image: Image.Image, mask: np.ndarray, background: tuple[int, int, int]) -> Image.Image:
    """The image's pixels where the mask is set, ``background`` elsewhere (the mask at any size)."""
    pixels = np.array(image.convert("RGB"))
    if mask.shape != pixels.shape[:2]:
        mask = np.asarray(Image.fromarray(mask).resize((pixels.shape[1], pixels.shape[0]), Image.NEAREST))
    pixels[mask <= 127] = background
    return Image.fromarray(pixels)


def _load(store: ObjectStore, ref: ImageRef) -> Image.Image:
    return Image.open(io.BytesIO(store.read_verified(ref)))


def _mask(store: ObjectStore, ref: ImageRef) -> np.ndarray:
    return np.asarray(_load(store, ref).convert("L"))


def _thumb(image: Image.Image, size_px: int = THUMB_PX) -> Image.Image:
    copy = image.convert("RGB")
    copy.thumbnail((size_px, size_px))
    return copy


def contact_sheet(images: Sequence[Image.Image], columns: int = SHEET_COLUMNS) -> Image.Image:
    """Thumbnails on a grid, left to right, top to bottom."""
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (columns * (THUMB_PX + 4), rows * (THUMB_PX + 4)), (255, 255, 255))
    for index, image in enumerate(images):
        thumb = _thumb(image)
        sheet.paste(thumb, ((index % columns) * (THUMB_PX + 4) + 2, (index // columns) * (THUMB_PX + 4) + 2))
    return sheet


def _exact(value: float) -> Fraction:
    """``value`` as the fraction its shortest decimal names (0.95 is 19/20, not the float below it)."""
    return Fraction(repr(float(value)))


def iou_histogram_svg(ious: Sequence[float], threshold: float, bins: int = 20) -> str:
    """An SVG bar chart of IoU over [0.5, 1] (lower values in the first bar), with the gate's threshold;
    a gate below 0.5 starts the chart at its tenth below (its line was drawn off the chart)."""
    width, height, pad = 520, 180, 28
    # Bars chosen in exact fractions of the values as written: in floats, (0.95 - 0.3) / 0.7 * 14 is
    # 12.999..., and an IoU on a bar's left edge was counted in the bar below it.
    exact_threshold = _exact(max(threshold, 0.0))
    exact_low = min(Fraction(1, 2), Fraction(math.floor(exact_threshold * 10), 10))
    low = float(exact_low)
    span = (1 - exact_low) / bins
    counts = [0] * bins
    for value in ious:
        index = math.floor((max(_exact(value), exact_low) - exact_low) / span)
        counts[min(bins - 1, index)] += 1
    top = max(counts) or 1
    bar_w = (width - 2 * pad) / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="hist">']
    for index, count in enumerate(counts):
        bar_h = (height - 2 * pad) * count / top
        x = pad + index * bar_w
        left = exact_low + index * span
        colour = "#2a9d4b" if left >= exact_threshold else "#d9534f"
        parts.append(
            f'<rect x="{x:.1f}" y="{height - pad - bar_h:.1f}" width="{bar_w - 2:.1f}" height="{bar_h:.1f}" '
            f'fill="{colour}"><title>{float(left):.3f}-{float(left + span):.3f}: {count}</title></rect>'
        )
        if count:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height - pad - bar_h - 3:.1f}" font-size="10" '
                f'text-anchor="middle">{count}</text>'
            )
    tx = pad + (threshold - low) / (1 - low) * (width - 2 * pad)
    parts.append(
        f'<line x1="{tx:.1f}" y1="{pad / 2}" x2="{tx:.1f}" y2="{height - pad}" '
        'stroke="#333" stroke-dasharray="4 3"/>'
    )
    parts.append(f'<text x="{tx + 4:.1f}" y="{pad / 2 + 10}" font-size="11">gate {threshold:.2f}</text>')
    for tenth in range(round(low * 10), 11):
        tick = tenth / 10
        x = pad + (tick - low) / (1 - low) * (width - 2 * pad)
        label = f"≤{tick:.1f}" if tick == low and low > 0 else f"{tick:.1f}"
        parts.append(f'<text x="{x:.1f}" y="{height - 8}" font-size="11" text-anchor="middle">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}img{border:1px solid #ddd;margin:2px}
.flagged{display:inline-block;width:170px;vertical-align:top;font-size:12px;margin:4px}
.key span{display:inline-block;width:1em;height:1em;vertical-align:middle;margin:0 .3em}
.reference{display:inline-block;vertical-align:top;font-size:12px;margin:4px;max-width:410px}
code,pre{background:#f4f4f4;padding:.1em .3em}section{border-top:2px solid #eee;margin-top:1.5em}
"""


def _reference_figure(
    store: ObjectStore, photo: ReferenceView, save: Callable[[Image.Image, str], str], name: str
) -> str:
    """One reference photo: outlined with its mask, beside the product cut out by it; or why not."""
    esc = html.escape
    image = _load(store, photo.image)
    label = f"{esc(photo.filename)} ({image.width}x{image.height})"
    if photo.mask is None:
        src = save(_thumb(image, REFERENCE_PX), f"{name}.jpg")
        reason = esc(photo.unusable_reason or "no mask")
        return (
            f'<div class="reference"><img src="{src}" alt="reference photo"><br>{label}<br>'
            f"<b>not used</b>: {reason}</div>"
        )
    mask = _mask(store, photo.mask)
    # Outlined on a preview: the outline's filter costs the square of its width (1% of the height) per
    # pixel, about 40 s on a full-size phone photo, for a picture shown REFERENCE_PX wide.
    preview = _thumb(image, 2 * REFERENCE_PX)
    outlined = save(_thumb(with_outlines(preview, [(mask, PREDICTED_RGB)]), REFERENCE_PX), f"{name}.jpg")
    cutout = save(_thumb(cutout_on(image, mask, CUTOUT_BACKGROUND_RGB), REFERENCE_PX), f"{name}-cutout.jpg")
    share = float((mask > 127).mean())
    return (
        f'<div class="reference"><img src="{outlined}" alt="reference photo with its mask outlined">'
        f'<img src="{cutout}" alt="the product cut out by its mask"><br>{label}, mask {share:.0%} of the '
        f"photo<br><i>{esc(photo.caption)}</i></div>"
    )


def write_report(
    out: Path,
    store: ObjectStore,
    skus: Sequence[SkuView],
    stages: Sequence[StageView],
    *,
    iou_threshold: float,
    console_lines: Sequence[str],
    elapsed_s: float,
    complete: bool,
    source: str = "",
) -> Path:
    """Write ``out/report.html`` and its pictures under ``out/images``; returns the page's path."""
    images_dir = out / "images"
    replace_owned_folder(images_dir)

    def save(image: Image.Image, name: str) -> str:
        image.save(images_dir / name, quality=85)
        return f"images/{name}"

    body: list[str] = []
    esc = html.escape
    total_generated = sum(sku.generated for sku in skus)
    total_accepted = sum(len(sku.accepted) for sku in skus)
    total_flagged = sum(len(sku.flagged) for sku in skus)
    status = "complete" if complete else "INCOMPLETE (timed out; see the stage logs)"
    body.append(
        f"<h1>skuforge demo</h1><p>{len(skus)} SKUs"
        + (f" from <code>{esc(source)}</code>" if source else "")
        + f", {total_generated} generated images: "
        f"{total_accepted} accepted into the retraining store, {total_flagged} flagged for review. "
        f"Run {status} in {elapsed_s:.0f}s.</p>"
    )
    body.append(
        "<table><tr><th>SKU</th><th>real photos</th><th>real stored</th><th>generated</th>"
        "<th>accepted</th><th>flagged</th><th>mean IoU</th></tr>"
    )
    for sku in skus:
        mean = f"{sku.mean_iou:.3f}" if sku.mean_iou is not None else "-"
        body.append(
            f'<tr><td><a href="#{esc(sku.sku_id)}">{esc(sku.sku_id)}</a></td><td>{len(sku.photos)}</td>'
            f"<td>{sku.stored_real}</td><td>{sku.generated}</td><td>{len(sku.accepted)}</td>"
            f"<td>{len(sku.flagged)}</td><td>{mean}</td></tr>"
        )
    body.append("</table>")
    body.append(
        "<h2>Stages</h2><table><tr><th>stage</th><th>items out</th><th>span (s)</th>"
        "<th>items/min</th><th>mean handler time (ms)</th></tr>"
    )
    for stage in stages:
        span = f"{stage.span_s:.1f}" if stage.span_s else "-"
        rate = f"{stage.per_minute:.1f}" if stage.per_minute else "-"
        handler = f"{stage.handler_ms:.0f}" if stage.handler_ms is not None else "-"
        body.append(
            f"<tr><td>{stage.stage}</td><td>{stage.items}</td><td>{span}</td><td>{rate}</td><td>{handler}</td></tr>"
        )
    body.append("</table>")
    ious = [item.iou for sku in skus for item in [*sku.accepted, *sku.flagged]]
    body.append("<h2>IoU of predicted vs expected mask</h2>")
    body.append(iou_histogram_svg(ious, iou_threshold))
    heading = "Review the flagged images" if total_flagged else "Nothing flagged; when an image is, review it"
    body.append(f"<h2>{heading}</h2><pre>" + esc("\n".join(console_lines)) + "</pre>")
    body.append(
        f'<p class="key">Outlines: <span style="background:rgb{PREDICTED_RGB}"></span>predicted mask '
        f"(U2-NetP; on a reference photo, the captioner's mask, whose pixels generation keeps) "
        f'<span style="background:rgb{EXPECTED_RGB}"></span>expected mask (where the '
        "generator kept the product)</p>"
    )
    for sku in skus:
        slug = picture_stem(sku.sku_id)
        body.append(
            f'<section id="{esc(sku.sku_id)}"><h2>{esc(sku.sku_id)}: {esc(sku.name)} '
            f"<small>({esc(sku.category)})</small></h2>"
        )
        if note := sku.in_store_note:
            body.append(f"<p><b>Note</b>: {esc(note)} (docs/evaluation.md).</p>")
        body.append(f"<h3>Reference photos ({len(sku.photos)})</h3><div>")
        for index, photo in enumerate(sku.photos):
            body.append(_reference_figure(store, photo, save, f"{slug}-ref-{index}"))
        body.append("</div>")
        body.append(f"<h3>Accepted ({len(sku.accepted)})</h3>")
        if sku.accepted:
            pictures = [
                with_outlines(_load(store, item.image), [(_mask(store, item.predicted_mask), PREDICTED_RGB)])
                for item in sorted(sku.accepted, key=lambda item: item.item_id)
            ]
            src = save(contact_sheet(pictures), f"{slug}-accepted.jpg")
            body.append(f'<p><img src="{src}" alt="accepted images with mask outlines"></p>')
        else:
            body.append("<p>none</p>")
        body.append(f"<h3>Flagged for review ({len(sku.flagged)})</h3><div>")
        for item in sorted(sku.flagged, key=lambda item: item.iou):
            picture = with_outlines(
                _load(store, item.image),
                [
                    (_mask(store, item.expected_mask), EXPECTED_RGB),
                    (_mask(store, item.predicted_mask), PREDICTED_RGB),
                ],
            )
            src = save(_thumb(picture), f"{slug}-flagged-{item.item_id}.jpg")
            body.append(
                f'<div class="flagged"><img src="{src}" alt="flagged item"><br>IoU {item.iou:.3f}<br>'
                f"{esc(', '.join(item.reasons))}<br><code>{esc(item.item_id[:12])}</code></div>"
            )
        body.append("</div>" if sku.flagged else "none</div>")
        body.append("</section>")
    page = (
        f'<!doctype html><html><head><meta charset="utf-8">{REPORT_TITLE}'
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
