"""The evaluation as one self-contained HTML page: tables, inline SVG plots, thumbnails.

No plotting library: the plots are a few rectangles and polylines, drawn here, so the page has no
dependency and opens anywhere (it is a single file, images inlined as base64 JPEG). ``render_report``
gives the page; ``skuforge evaluate`` writes it beside evaluation.json, both or neither
(services/trainstore/evaluation.write_results). ``by_k``: per-k summaries, one more table and plot.

The page: top-1 per condition (A, A', B, B', C), top-1 against the number of real photos per SKU
(A, B, C; only when the evaluation computed the curve, with a note when the SKUs' real photos
number differently and one where --curve-max cut it), histograms of the per-SKU differences B' - A'
and B - A, the per-SKU table, and a few held-out photos the B' classifier got wrong.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from shared.errors import BadInput
from shared.evaluation.experiment import CONDITION_NAMES, CONDITIONS, EvaluationResult, describe_classifier
from shared.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_image

COLOURS = {"A": "#9e9e9e", "A'": "#616161", "B": "#42a5f5", "B'": "#1565c0", "C": "#ef6c00"}
THUMB_PX = 128
MINUS = "\u2212"
# The summary keys the by-k table shows, in this order (EvaluationResult.summary()'s names).
_BY_K_TOP1 = (
    ("A", "real_only_top1"),
    ("A'", "real_plus_classic_top1"),
    ("B", "real_plus_synthetic_top1"),
    ("B'", "real_plus_classic_plus_synthetic_top1"),
    ("C", "synthetic_only_top1"),
)


def render_report(
    result: EvaluationResult,
    read_photo: Callable[[str], bytes | None],
    *,
    by_k: Sequence[tuple[str, Mapping[str, Any]]] = (),
    title: str = "skuforge evaluate",
    limits: tuple[int, int] = (DEFAULT_MAX_PIXELS, DEFAULT_MAX_BYTES),
) -> str:
    """The page, as a string.

    ``read_photo(name)`` gives the bytes of a held-out photo named in ``result.misclassified`` (None
    when it is not at hand: the photo is listed without a thumbnail). ``by_k``: optional rows of
    (label, ``EvaluationResult.summary()``-like dict), e.g. one per number of real photos.
    ``limits``: the (pixels, bytes) decode limits the photos were evaluated under (the settings').
    """
    summary = result.summary()
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p>{result.n_heldout} held-out photos of {result.n_skus} SKUs; backbone {_e(result.backbone)}; "
        f"{_e(describe_classifier(result.config))}. Headline: B{MINUS}A {_signed(summary['gain_top1'])}, "
        f"B\u2032{MINUS}A\u2032 {_signed(summary['gain_over_classic_top1'])}; "
        f"{_pct(result.frac_skus_worse_by_10pt)} of SKUs lose 10 points or more under B\u2032 "
        "against A\u2032.</p>",
        *_not_scored_notes(result),
        "<h2>Top-1 per condition</h2>",
        _conditions_table(result),
        bar_chart_svg(
            list(CONDITIONS),
            [result.top1[c] for c in CONDITIONS],
            colours=[COLOURS[c] for c in CONDITIONS],
            y_label="top-1",
        ),
    ]
    parts.append("<h2>Top-1 against real photos per SKU</h2>")
    curve = result.curve
    if curve.get("real_per_sku"):
        parts.append(
            line_chart_svg(
                curve["real_per_sku"],
                {name: curve[name] for name in ("A", "B", "C") if curve.get(name)},
                colours=COLOURS,
                x_label="real photos per SKU (the first j of each SKU's)",
                y_label="top-1",
            )
        )
        if cut := result.curve_cut:
            parts.append(
                f"<p class='note'>The curve stops at {cut['curve_max']} real photos per SKU (--curve-max "
                f"{cut['curve_max']}); the scored SKUs have up to {cut['most_real_per_sku']}.</p>"
            )
        reals = sorted({counts.get("real", 0) for counts in result.train_counts.values()})
        if len(reals) > 1 and reals[0] < curve["real_per_sku"][-1]:  # a point past the fewest
            # Past the fewest, a point's j is not every SKU's: the page read as if it were.
            parts.append(
                f"<p class='note'>The SKUs have {reals[0]} to {reals[-1]} real photos: past "
                f"{reals[0]}, a SKU with fewer than j is trained on all of its own, not on j.</p>"
            )
    elif cut := result.curve_cut:
        parts.append(
            f"<p class='note'>No curve: --curve-max {cut['curve_max']} left it out (the scored SKUs have up "
            f"to {cut['most_real_per_sku']} real photos).</p>"
        )
    elif not result.config.get("curve", True):
        parts.append("<p class='note'>No curve: this evaluation was not asked for one.</p>")
    else:
        parts.append(
            "<p class='note'>No curve: every scored SKU has one real photo, so there is nothing to vary.</p>"
        )
    parts.append("<h2>Per-SKU difference</h2>")
    parts.append(
        "<p>Each SKU's held-out top-1 with its synthetic images minus without: B\u2032\u2212A\u2032 "
        "(both with classic augmentation, the figure that matters) and B\u2212A.</p>"
    )
    parts.append(
        histogram_svg(
            {
                f"B\u2032{MINUS}A\u2032": list(result.gain_over_classic.values()),
                f"B{MINUS}A": list(result.gain.values()),
            },
            colours=[COLOURS["B'"], COLOURS["B"]],
            x_label="per-SKU difference in top-1",
        )
    )
    if by_k:
        parts.append("<h2>By number of real photos</h2>")
        parts.append(_by_k_table(by_k))
        parts.append(
            grouped_bars_svg(
                [label for label, _ in by_k],
                {c: [float(row.get(key, math.nan)) for _, row in by_k] for c, key in _BY_K_TOP1},
                colours=COLOURS,
                y_label="top-1",
            )
        )
    parts.append("<h2>Per SKU</h2>")
    parts.append(_per_sku_table(result))
    parts.append("<h2>Misclassified held-out photos (B\u2032)</h2>")
    parts.append(_misclassified(result, read_photo, limits))
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --- plots ---------------------------------------------------------------------------------------

_W, _H = 560, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 100, 16, 40  # the legend sits in the right margin


def bar_chart_svg(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    colours: Sequence[str],
    y_label: str,
    y_max: float = 1.0,
) -> str:
    """Vertical bars, one per label, each with its value above it (0..y_max)."""
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    slot = plot_w / max(1, len(labels))
    out = [_svg_open(), *_y_axis(y_max, y_label)]
    for index, (label, value, colour) in enumerate(zip(labels, values, colours, strict=True)):
        height = plot_h * _clip(value / y_max)
        x = _LEFT + index * slot + slot * 0.15
        y = _TOP + plot_h - height
        out.append(
            f"<rect x='{x:.1f}' y='{y:.1f}' width='{slot * 0.7:.1f}' height='{height:.1f}' fill='{colour}'>"
            f"<title>{_e(label)}: {value:.3f}</title></rect>"
        )
        out.append(_text(x + slot * 0.35, y - 4, f"{value:.3f}", anchor="middle"))
        out.append(_text(x + slot * 0.35, _TOP + plot_h + 16, label, anchor="middle"))
    out.append("</svg>")
    return "".join(out)


def line_chart_svg(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    colours: Mapping[str, str],
    x_label: str,
    y_label: str,
    y_max: float = 1.0,
) -> str:
    """One polyline with markers per series over the same x values, and a legend."""
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    x_lo, x_hi = min(x), max(x)
    span = (x_hi - x_lo) or 1.0

    def px(value: float) -> float:
        return _LEFT + plot_w * (value - x_lo) / span

    def py(value: float) -> float:
        return _TOP + plot_h * (1.0 - _clip(value / y_max))

    out = [_svg_open(), *_y_axis(y_max, y_label)]
    for value in x:
        out.append(_text(px(value), _TOP + plot_h + 16, f"{value:g}", anchor="middle"))
    out.append(_text(_LEFT + plot_w / 2, _H - 6, x_label, anchor="middle"))
    for index, (name, ys) in enumerate(series.items()):
        colour = colours.get(name, "#000")
        points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, ys, strict=True))
        out.append(f"<polyline points='{points}' fill='none' stroke='{colour}' stroke-width='2'/>")
        for a, b in zip(x, ys, strict=True):
            out.append(
                f"<circle cx='{px(a):.1f}' cy='{py(b):.1f}' r='3' fill='{colour}'>"
                f"<title>{_e(name)} at {a:g}: {b:.3f}</title></circle>"
            )
        out.extend(_legend_entry(index, name, colour))
    out.append("</svg>")
    return "".join(out)


def histogram_svg(
    series: Mapping[str, Sequence[float]],
    *,
    colours: Sequence[str],
    x_label: str,
    bin_width: float = 0.1,
    x_range: tuple[float, float] = (-1.0, 1.0),
) -> str:
    """Counts of values per bin over ``x_range``, the series side by side within each bin."""
    lo, hi = x_range
    n_bins = round((hi - lo) / bin_width)
    counts = {name: histogram(values, lo, hi, n_bins) for name, values in series.items()}
    top = max([1, *(max(c) for c in counts.values())])
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    slot = plot_w / n_bins
    width = slot * 0.8 / max(1, len(series))
    out = [_svg_open(), *_y_axis(float(top), "SKUs", integer=True)]
    zero_x = _LEFT + plot_w * (0.0 - lo) / (hi - lo)
    out.append(
        f"<line x1='{zero_x:.1f}' y1='{_TOP}' x2='{zero_x:.1f}' y2='{_TOP + plot_h}' "
        "stroke='#000' stroke-dasharray='3,3'/>"
    )
    for s_index, ((name, bins), colour) in enumerate(zip(counts.items(), colours, strict=True)):
        for b_index, count in enumerate(bins):
            if not count:
                continue
            height = plot_h * count / top
            x = _LEFT + b_index * slot + slot * 0.1 + s_index * width
            left_edge = lo + b_index * bin_width
            closed = "]" if b_index == n_bins - 1 else ")"  # the top edge is in the last bin
            out.append(
                f"<rect x='{x:.1f}' y='{_TOP + plot_h - height:.1f}' width='{width:.1f}' "
                f"height='{height:.1f}' fill='{colour}'><title>{_e(name)} in "
                f"[{left_edge:+.1f}, {left_edge + bin_width:+.1f}{closed}: {count} SKU(s)</title></rect>"
            )
        out.extend(_legend_entry(s_index, name, colour))
    for tick in (lo, lo / 2, 0.0, hi / 2, hi):
        x = _LEFT + plot_w * (tick - lo) / (hi - lo)
        out.append(_text(x, _TOP + plot_h + 16, _signed(tick, digits=1), anchor="middle"))
    out.append(_text(_LEFT + plot_w / 2, _H - 6, x_label, anchor="middle"))
    out.append("</svg>")
    return "".join(out)


def histogram(values: Sequence[float], lo: float, hi: float, n_bins: int) -> list[int]:
    """How many values fall in each of ``n_bins`` equal bins over [lo, hi]; the top edge is inside."""
    counts = [0] * n_bins
    for value in values:
        if math.isnan(value) or not lo <= value <= hi:
            continue
        # The small epsilon puts values that sit on an edge (0.1 as 0.30000000000000004 - 0.2) in
        # the upper bin, as a reader of "[0.1, 0.2)" expects.
        index = min(n_bins - 1, int((value - lo) / (hi - lo) * n_bins + 1e-9))
        counts[index] += 1
    return counts


def grouped_bars_svg(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    colours: Mapping[str, str],
    y_label: str,
    y_max: float = 1.0,
) -> str:
    """For each group (e.g. k), one bar per series side by side; NaN values are left out."""
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    slot = plot_w / max(1, len(groups))
    width = slot * 0.8 / max(1, len(series))
    out = [_svg_open(), *_y_axis(y_max, y_label)]
    for s_index, (name, values) in enumerate(series.items()):
        colour = colours.get(name, "#000")
        for g_index, value in enumerate(values):
            if math.isnan(value):
                continue
            height = plot_h * _clip(value / y_max)
            x = _LEFT + g_index * slot + slot * 0.1 + s_index * width
            out.append(
                f"<rect x='{x:.1f}' y='{_TOP + plot_h - height:.1f}' width='{width:.1f}' "
                f"height='{height:.1f}' fill='{colour}'><title>{_e(groups[g_index])} {_e(name)}: "
                f"{value:.3f}</title></rect>"
            )
        out.extend(_legend_entry(s_index, name, colour))
    for g_index, group in enumerate(groups):
        out.append(_text(_LEFT + (g_index + 0.5) * slot, _TOP + plot_h + 16, group, anchor="middle"))
    out.append("</svg>")
    return "".join(out)


def _svg_open() -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{_W}' height='{_H}' viewBox='0 0 {_W} {_H}' "
        "font-family='sans-serif' font-size='11'>"
    )


def _y_axis(y_max: float, label: str, *, integer: bool = False) -> list[str]:
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    out = [
        f"<line x1='{_LEFT}' y1='{_TOP}' x2='{_LEFT}' y2='{_TOP + plot_h}' stroke='#000'/>",
        f"<line x1='{_LEFT}' y1='{_TOP + plot_h}' x2='{_LEFT + plot_w}' y2='{_TOP + plot_h}' stroke='#000'/>",
    ]
    for step in range(5):
        value = y_max * step / 4
        y = _TOP + plot_h * (1 - step / 4)
        text = f"{value:.0f}" if integer else f"{value:.2f}"
        if integer and value != round(value):
            continue
        out.append(f"<line x1='{_LEFT}' y1='{y:.1f}' x2='{_LEFT + plot_w}' y2='{y:.1f}' stroke='#e0e0e0'/>")
        out.append(_text(_LEFT - 4, y + 4, text, anchor="end"))
    out.append(
        f"<text x='12' y='{_TOP + plot_h / 2:.1f}' text-anchor='middle' "
        f"transform='rotate(-90 12 {_TOP + plot_h / 2:.1f})'>{_e(label)}</text>"
    )
    return out


def _legend_entry(index: int, name: str, colour: str) -> list[str]:
    x, y = _W - _RIGHT + 12, _TOP + 4 + index * 15
    return [
        f"<rect x='{x}' y='{y}' width='10' height='10' fill='{colour}'/>",
        _text(x + 14, y + 9, name, anchor="start"),
    ]


def _text(x: float, y: float, text: str, *, anchor: str) -> str:
    return f"<text x='{x:.1f}' y='{y:.1f}' text-anchor='{anchor}'>{_e(text)}</text>"


def _clip(value: float) -> float:
    return 0.0 if math.isnan(value) else min(1.0, max(0.0, value))


# --- tables and thumbnails -----------------------------------------------------------------------


def _not_scored_notes(result: EvaluationResult) -> list[str]:
    """One note per reason a SKU trained on has no figures (a class the classifiers could answer)."""
    by_reason: dict[str, list[str]] = {}
    for sku, reason in sorted(result.not_scored.items()):
        by_reason.setdefault(reason, []).append(sku)
    notes = []
    for reason, skus in by_reason.items():
        shown = ", ".join(skus[:20]) + (f" and {len(skus) - 20} more" if len(skus) > 20 else "")
        notes.append(
            f"<p class='note'>{len(skus)} SKU{'s' if len(skus) > 1 else ''} trained on but not scored "
            f"({_e(reason)}): {_e(shown)}.</p>"
        )
    return notes


def _conditions_table(result: EvaluationResult) -> str:
    rows = "".join(
        f"<tr><td>{_e(c)}</td><td class='text'>{_e(CONDITION_NAMES[c])}</td>"
        f"<td>{result.top1[c]:.3f}</td></tr>"
        for c in CONDITIONS
    )
    return f"<table><tr><th>condition</th><th>training set</th><th>top-1</th></tr>{rows}</table>"


def _per_sku_table(result: EvaluationResult) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in CONDITIONS)
    rows = []
    for sku, scores in sorted(result.per_sku.items()):
        counts = result.train_counts.get(sku, {})
        cells = "".join(f"<td>{scores[c]:.2f}</td>" for c in CONDITIONS)
        rows.append(
            f"<tr><td>{_e(sku)}</td><td>{counts.get('real', 0)}</td><td>{counts.get('synthetic', 0)}</td>"
            f"{cells}<td>{_signed(result.gain[sku])}</td><td>{_signed(result.gain_over_classic[sku])}</td></tr>"
        )
    return (
        f"<table><tr><th>SKU</th><th>real</th><th>synthetic</th>{head}<th>B{MINUS}A</th>"
        f"<th>B\u2032{MINUS}A\u2032</th></tr>{''.join(rows)}</table>"
    )


def _by_k_table(by_k: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """One column per row of ``by_k`` (few), one row per numeric figure (many, with long names)."""
    keys = [key for key, value in by_k[0][1].items() if isinstance(value, int | float)]
    head = "".join(f"<th>{_e(label)}</th>" for label, _ in by_k)
    rows = []
    for key in keys:
        cells = "".join(f"<td>{_number(row.get(key))}</td>" for _, row in by_k)
        rows.append(f"<tr><td>{_e(key)}</td>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _misclassified(
    result: EvaluationResult, read_photo: Callable[[str], bytes | None], limits: tuple[int, int]
) -> str:
    if not result.misclassified:
        return "<p class='note'>None: B\u2032 got every held-out photo right.</p>"
    cells = []
    for item in result.misclassified:
        thumbnail = thumbnail_data_uri(read_photo(item["name"]), limits=limits)
        image = (
            f"<img src='{thumbnail}' alt='{_e(item['name'])}'>"
            if thumbnail
            else "<div class='missing'>(photo not readable)</div>"
        )
        cells.append(
            f"<figure>{image}<figcaption>true <b>{_e(item['true'])}</b><br>predicted "
            f"<b>{_e(item['predicted'] or '(none)')}</b><br><small>{_e(Path(item['name']).name)}</small>"
            "</figcaption></figure>"
        )
    return f"<div class='thumbs'>{''.join(cells)}</div>"


def thumbnail_data_uri(
    data: bytes | None,
    size_px: int = THUMB_PX,
    *,
    limits: tuple[int, int] = (DEFAULT_MAX_PIXELS, DEFAULT_MAX_BYTES),
) -> str | None:
    """A small JPEG of an encoded photo as a ``data:`` URI; None when there is no decodable photo
    (within the (pixels, bytes) decode ``limits``)."""
    if data is None:
        return None
    try:
        image = decode_image(data, max_pixels=limits[0], max_bytes=limits[1])
    except BadInput:
        return None
    image.thumbnail((size_px, size_px), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _e(text: object) -> str:
    # A file name that is not UTF-8 (a Latin-1 "café.jpg" from an old camera) reaches here with
    # surrogate escapes, which the UTF-8 page cannot hold: shown with a replacement character instead.
    shown = str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return html.escape(shown, quote=True)


def _signed(value: float, digits: int = 2) -> str:
    return f"{value:+.{digits}f}".replace("-", MINUS)


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _e("" if value is None else value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


_CSS = """
body { font-family: sans-serif; max-width: 980px; margin: 2em auto; color: #212121; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
td:first-child, th:first-child, td.text { text-align: left; }
.note { color: #757575; font-style: italic; }
.thumbs { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 140px; font-size: 12px; }
.missing { width: 128px; height: 96px; background: #eee; color: #757575; }
"""
