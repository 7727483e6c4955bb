"""Fit the packaging-shape decision tree on renderer photos and write ``shape_model.py``.

    python -m shared.captioning.fit_shape --out /tmp/shape.py           # the committed settings (below)
    python -m shared.captioning.fit_shape --mask-source truth --out /tmp/shape.py   # renderer masks only
    python -m shared.captioning.fit_shape --out shared/captioning/shape_model.py   # replace the tree

The defaults are the committed tree's command (``shape_model.py`` names it): ``--seed 4242
--products 900 --mask-source both --cartons 180``; with the matting model its header names (not
always the default matting model of later commits: from git history) the same command writes the
same tree. ``--out`` is required: run with today's default matting model, the command once replaced
the committed tree with another, scored lower, by default.

Products come from the synthetic catalogue ``--seed`` (``shared/synth``), photo index and size vary
by product so the tree sees several poses and resolutions. Masks are the renderer's exact masks
(``truth``, each one also roughened by a random blur-and-threshold so the tree does not lean on
pixel-perfect edges) or the matting session's (``session``). The tree is CART with Gini impurity,
written here in numpy so it is reproducible without scikit-learn. ``--eval-seed`` scores it on a
different catalogue, so the printed accuracy is on products it never saw.

``--cartons N`` adds N drink-carton silhouettes as "box" (``carton_mask``): the renderer's boxes are
squat cereal boxes seen corner-on, while the cartons of a dairy or juice shelf are tall, often seen
face-on, with a gable top and a cap. Without them a face-on carton reaches a part of the tree that
only renderer cans ever reached, and is called a can.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import shlex
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter

from shared.argtypes import (
    file_problem,
    float_between,
    int_between,
    model_location,
    non_negative_int,
    path_argument,
    positive_int,
)
from shared.arith.masks import convex_hull
from shared.captioning.attributes import (
    PACKAGE_SHAPES,
    SHAPE_FEATURES,
    classify_shape,
    shape_features,
    shape_tree_id,
)
from shared.commands import run_command
from shared.matting.session import MattingSession, open_tool_session
from shared.observability import escape_control_characters

OUTPUT = Path(__file__).with_name("shape_model.py")
FIT_SEED = 4242
EVAL_SEED = 2025
# The synthetic catalogue refuses a negative seed, after the matting session is loaded.
CATALOGUE_SEED = int_between(0, 2**63 - 1)
SIZES_PX = (192, 256, 384, 512)
# The renderer makes packages only; "produce" is a rule ahead of the tree (``looks_like_produce``).
CLASSES: tuple[str, ...] = PACKAGE_SHAPES

F64Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]


# --- data --------------------------------------------------------------------------------------


def _roughen(mask: npt.NDArray[np.uint8], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """A matting-like mask: soft edges thresholded a little in or out of the true outline."""
    radius = float(rng.uniform(0.6, 2.0))
    blurred = np.asarray(Image.fromarray(mask).filter(ImageFilter.GaussianBlur(radius)))
    threshold = int(rng.integers(90, 170))
    return np.where(blurred >= threshold, np.uint8(255), np.uint8(0))


def renderer_masks(
    n_products: int,
    seed: int,
    mask_source: str,
    *,
    roughen: bool,
    session: MattingSession | None = None,
) -> Iterator[tuple[str, npt.NDArray[np.uint8]]]:
    """(true shape, mask) for ``n_products`` products of catalogue ``seed``, one photo each.

    ``mask_source`` "truth" yields the renderer's masks (roughened if asked), "session" the matting
    session's, "both" one of each per photo.
    """
    from shared.synth import make_product, render_photo

    rng = np.random.default_rng([seed, 5])
    for index in range(n_products):
        spec = make_product(index, seed)
        photo = render_photo(spec, index % 3, seed, SIZES_PX[index % len(SIZES_PX)])
        if mask_source in ("truth", "both"):
            yield spec.shape, _roughen(photo.mask, rng) if roughen else photo.mask
        if mask_source in ("session", "both"):
            assert session is not None, "session masks need a matting session"
            yield spec.shape, session.predict([photo.image])[0].mask


# Drink cartons, in units of the body's height: width 0.3-0.7 (a 1 l milk or juice carton is ~0.35,
# a 500 g yoghurt carton ~0.6), depth 0.6-1 of the width; 70 % gable-topped (ridge 0.25-0.55 of
# the depth above the body, a thin fin on it), the rest flat-topped bricks; 70 % with a screw cap of
# radius 0.15-0.28 of the width. Seen from yaw -0.8..0.8 rad (face-on to corner-on) and elevation
# 0-0.25 rad (shelf photos are taken level or from a little above), tilted in-plane like a photo.
CARTON_WIDTH = (0.3, 0.7)
CARTON_DEPTH = (0.6, 1.0)
CARTON_GABLE_SHARE = 0.7
CARTON_GABLE = (0.25, 0.55)
CARTON_CAP_SHARE = 0.7
CARTON_CAP_RADIUS = (0.15, 0.28)
CARTON_YAW = 0.8
CARTON_ELEVATION = (0.0, 0.25)
_FIN_HEIGHT = 0.03


@dataclass(frozen=True)
class Carton:
    """A drink carton's geometry and how the camera sees it (lengths in body heights, angles in radians)."""

    width: float
    depth: float
    gable: float  # ridge height above the body; 0 for a flat-topped brick
    cap_radius: float  # 0 for no cap
    cap_offset: float  # the cap's centre left (-1) to right (+1) of the front's middle, in half widths
    yaw: float
    elevation: float
    angle: float  # in-plane tilt of the photo

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Carton:
        """One carton from the ranges above."""
        width = float(rng.uniform(*CARTON_WIDTH))
        depth = width * float(rng.uniform(*CARTON_DEPTH))
        gable = depth * float(rng.uniform(*CARTON_GABLE)) if rng.random() < CARTON_GABLE_SHARE else 0.0
        cap = width * float(rng.uniform(*CARTON_CAP_RADIUS)) if rng.random() < CARTON_CAP_SHARE else 0.0
        return cls(
            width=width,
            depth=depth,
            gable=gable,
            cap_radius=cap,
            cap_offset=float(rng.uniform(-0.3, 0.3)),
            yaw=float(rng.uniform(-CARTON_YAW, CARTON_YAW)),
            elevation=float(rng.uniform(*CARTON_ELEVATION)),
            angle=float(np.clip(rng.normal(0.0, 0.045), -0.1, 0.1)),
        )

    def parts(self) -> list[F64Array]:
        """The carton's convex parts as 3-D points (x right, y up, z to the camera; the front face
        at z = depth / 2): body with its gable, the fin on the ridge, the cap."""
        half_w, half_d = self.width / 2, self.depth / 2
        body = [(sx * half_w, y, sz * half_d) for sx in (-1, 1) for y in (0.0, 1.0) for sz in (-1, 1)]
        parts: list[F64Array] = []
        if self.gable > 0:
            ridge = 1.0 + self.gable
            body += [(sx * half_w, ridge, 0.0) for sx in (-1, 1)]
            fin = [
                (sx * half_w, ridge + dy, dz)
                for sx in (-1, 1)
                for dy in (0.0, _FIN_HEIGHT)
                for dz in (-0.01, 0.01)
            ]
            parts.append(np.asarray(fin, dtype=np.float64))
            # The cap stands on the front slope, square to it.
            centre = np.array([self.cap_offset * half_w, 1.0 + self.gable / 2, half_d / 2])
            normal = np.array([0.0, half_d, self.gable])
        else:
            centre = np.array([self.cap_offset * half_w, 1.0, half_d / 2])
            normal = np.array([0.0, 1.0, 0.0])
        parts.append(np.asarray(body, dtype=np.float64))
        if self.cap_radius > 0:
            normal /= np.linalg.norm(normal)
            across = np.array([1.0, 0.0, 0.0])
            along = np.cross(normal, across)
            theta = np.linspace(0.0, 2.0 * math.pi, 24, endpoint=False)
            ring = centre + self.cap_radius * (
                np.cos(theta)[:, None] * across + np.sin(theta)[:, None] * along
            )
            parts.append(np.concatenate([ring, ring + 0.6 * self.cap_radius * normal]))
        return parts


def carton_mask(carton: Carton, size_px: int) -> npt.NDArray[np.uint8]:
    """The 0/255 silhouette of ``carton`` in a square photo of ``size_px``, 80 % of it tall or wide.

    Orthographic, as ``shared/synth`` draws its boxes: turn by the yaw, tilt by the elevation,
    then the in-plane angle; each convex part is filled as the hull of its projected points.
    """
    cos_yaw, sin_yaw = math.cos(carton.yaw), math.sin(carton.yaw)
    cos_el, sin_el = math.cos(carton.elevation), math.sin(carton.elevation)
    cos_in, sin_in = math.cos(carton.angle), math.sin(carton.angle)
    projected = []
    for points in carton.parts():
        x, y, z = points[:, 0], points[:, 1], points[:, 2]
        turned_x, turned_z = x * cos_yaw + z * sin_yaw, -x * sin_yaw + z * cos_yaw
        screen_y = -(y * cos_el - turned_z * sin_el)
        projected.append(
            np.stack([turned_x * cos_in - screen_y * sin_in, turned_x * sin_in + screen_y * cos_in], axis=1)
        )
    every = np.concatenate(projected)
    low, high = every.min(axis=0), every.max(axis=0)
    scale = 0.8 * size_px / float(np.max(high - low))
    offset = size_px / 2 - scale * (low + high) / 2
    image = Image.new("L", (size_px, size_px), 0)
    draw = ImageDraw.Draw(image)
    for points in projected:
        hull = convex_hull(points * scale + offset)
        draw.polygon([(float(px), float(py)) for px, py in hull], fill=255)
    return np.asarray(image)


def carton_masks(n_cartons: int, seed: int, *, roughen: bool) -> Iterator[tuple[str, npt.NDArray[np.uint8]]]:
    """("box", mask) for ``n_cartons`` cartons drawn from ``seed``, sizes as the renderer photos'."""
    rng = np.random.default_rng([seed, 7])
    for index in range(n_cartons):
        mask = carton_mask(Carton.draw(rng), SIZES_PX[index % len(SIZES_PX)])
        yield "box", _roughen(mask, rng) if roughen else mask


def feature_table(
    samples: Iterator[tuple[str, npt.NDArray[np.uint8]]],
) -> tuple[F64Array, IntArray]:
    """Feature rows (``SHAPE_FEATURES`` order) and class indices (``CLASSES`` order)."""
    rows: list[list[float]] = []
    labels: list[int] = []
    for shape, mask in samples:
        if not mask.any():
            continue
        features = shape_features(mask)
        rows.append([features[name] for name in SHAPE_FEATURES])
        labels.append(CLASSES.index(shape))
    return np.asarray(rows, dtype=np.float64), np.asarray(labels, dtype=np.intp)


# --- CART --------------------------------------------------------------------------------------


def _gini(counts: F64Array) -> F64Array:
    """Gini impurity of each row of class counts, times the row's sample count."""
    totals = counts.sum(axis=-1)
    safe = np.maximum(totals, 1.0)
    impurity: F64Array = totals * (1.0 - np.sum((counts / safe[..., None]) ** 2, axis=-1))
    return impurity


def best_split(
    features: F64Array, labels: IntArray, n_classes: int, min_leaf: int
) -> tuple[int, float, float]:
    """(feature index, threshold, weighted impurity) of the best split; feature -1 when none helps.

    For each feature, every boundary between distinct sorted values is scored at once from the
    cumulative class counts.
    """
    n = labels.size
    one_hot = np.eye(n_classes)[labels]
    best = (-1, 0.0, float(_gini(one_hot.sum(axis=0))))
    for column in range(features.shape[1]):
        order = np.argsort(features[:, column], kind="stable")
        values = features[order, column]
        left = np.cumsum(one_hot[order], axis=0)[:-1]
        right = one_hot.sum(axis=0) - left
        impurity = _gini(left) + _gini(right)
        position = np.arange(1, n)
        allowed = (values[1:] > values[:-1]) & (position >= min_leaf) & (n - position >= min_leaf)
        if not allowed.any():
            continue
        impurity = np.where(allowed, impurity, np.inf)
        at = int(np.argmin(impurity))
        if impurity[at] < best[2] - 1e-9:
            best = (column, float((values[at] + values[at + 1]) / 2.0), float(impurity[at]))
    return best


def fit_tree(
    features: F64Array, labels: IntArray, *, max_depth: int, min_leaf: int, n_classes: int
) -> list[dict[str, Any]]:
    """A CART tree as a flat node list (root first), in the format ``classify_shape`` reads."""
    nodes: list[dict[str, Any]] = []

    def grow(index: IntArray, depth: int) -> int:
        node_id = len(nodes)
        counts = np.bincount(labels[index], minlength=n_classes)
        nodes.append({"counts": counts.tolist()})
        if depth >= max_depth or np.count_nonzero(counts) <= 1 or index.size < 2 * min_leaf:
            return node_id
        column, threshold, _ = best_split(features[index], labels[index], n_classes, min_leaf)
        if column < 0:
            return node_id
        goes_left = features[index, column] <= threshold
        nodes[node_id] = {"feature": SHAPE_FEATURES[column], "threshold": round(threshold, 6)}
        nodes[node_id]["left"] = grow(index[goes_left], depth + 1)
        nodes[node_id]["right"] = grow(index[~goes_left], depth + 1)
        return node_id

    grow(np.arange(labels.size), 0)
    return nodes


def evaluate(tree: dict[str, Any], features: F64Array, labels: IntArray) -> tuple[float, list[list[int]]]:
    """Accuracy and confusion matrix (rows: truth in ``CLASSES`` order; columns: those, produce, other)."""
    columns = [*CLASSES, "produce", "other"]
    confusion = np.zeros((len(CLASSES), len(columns)), dtype=int)
    for row, label in zip(features, labels, strict=True):
        result = classify_shape(dict(zip(SHAPE_FEATURES, row.tolist(), strict=True)), tree)
        confusion[label, columns.index(result.shape)] += 1
    accuracy = float(np.trace(confusion[:, : len(CLASSES)])) / max(int(confusion.sum()), 1)
    return accuracy, confusion.tolist()


# --- output ------------------------------------------------------------------------------------


# A lone surrogate: how Python hands over a byte of argv (a path) that is not UTF-8 (PEP 383).
_SURROGATE = re.compile("[\ud800-\udfff]")


def _docstring_text(text: str) -> str:
    """``text`` as it may stand in a generated docstring and read back as itself: its backslashes and
    double quotes escaped (a triple quote in a --matting-model path ended the docstring, a backslash
    began an invalid escape), its control characters and bidi controls written as escapes (a newline
    broke the line, a U+202E reordered the source as read), and so its lone surrogates (a path in bytes
    that are not UTF-8 reaches argv as ``\\udce9``: written raw, ``write_text`` failed after the fit)."""
    escaped = escape_control_characters(text.replace("\\", "\\\\").replace('"', '\\"'))
    return _SURROGATE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), escaped)


def _docstring_entry(key: str, value: Any, width: int = 100, indent: str = "    ") -> str:
    """``key: value`` wrapped at ``width``; a list value is a command's shell words, broken only between
    words: ``textwrap`` broke a quoted --matting-model path at a space inside it (and dropped the spaces
    it broke at), so the command no longer read back as the path. A word longer than a line stands alone."""
    if not isinstance(value, list):
        # Not broken inside a word: a long path (or an escape in it) cut in two no longer read back.
        return textwrap.fill(
            _docstring_text(f"{key}: {value}"),
            width=width,
            subsequent_indent=indent,
            break_on_hyphens=False,
            break_long_words=False,
        )
    lines = [_docstring_text(f"{key}:")]
    for word in map(_docstring_text, value):
        if len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(indent + word)
    return "\n".join(lines)


def render_module(tree: dict[str, Any], provenance: dict[str, Any]) -> str:
    """The source of ``shape_model.py``: the tree as a constant, with how it was made."""
    lines = [
        '"""The committed packaging-shape decision tree (generated by ``shared/captioning/fit_shape.py``).',
        "",
        "Do not edit by hand: re-run the command below; with the matting model named below the same",
        "command gives the same tree.",
        "",
        *(_docstring_entry(key, value) for key, value in provenance.items()),
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Any, Final",
        "",
        "SHAPE_TREE: Final[dict[str, Any]] = {",
        f'    "classes": {json.dumps(tree["classes"])},',
        f'    "min_confidence": {tree["min_confidence"]},',
        '    "nodes": [',
        *(f"        {json.dumps(node)}," for node in tree["nodes"]),
        "    ],",
        "}",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Fit, score on the evaluation seed, write the module; a setting, a --matting-model or a store
    that fails says so in a line."""
    return run_command("python -m shared.captioning.fit_shape", lambda: _fit(argv))


def _fit(argv: Sequence[str] | None) -> int:
    # The docstring as its reader wrote it: the example commands on lines of their own, no markup.
    parser = argparse.ArgumentParser(
        prog="python -m shared.captioning.fit_shape",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--seed",
        type=CATALOGUE_SEED,
        default=FIT_SEED,
        help=f"catalogue seed of the fitting products (default {FIT_SEED})",
    )
    parser.add_argument(
        "--products", type=positive_int, default=900, help="fitting products, one photo each (default 900)"
    )
    parser.add_argument(
        "--eval-seed",
        type=CATALOGUE_SEED,
        default=EVAL_SEED,
        help=f"catalogue seed for scoring (default {EVAL_SEED})",
    )
    parser.add_argument(
        "--eval-products",
        type=non_negative_int,
        default=300,
        help="products to score on, 0: skip (default 300)",
    )
    parser.add_argument(
        "--mask-source",
        choices=("truth", "session", "both"),
        default="both",
        help="fit on the renderer's masks (roughened), the matting session's, or one of each per photo "
        "(default both)",
    )
    parser.add_argument(
        "--matting-model",
        type=model_location,
        default=None,
        help="matting model of the session masks (default: committed U2-NetP)",
    )
    parser.add_argument(
        "--cartons",
        type=non_negative_int,
        default=180,
        help="drink-carton silhouettes added as box (carton_mask); also scored, as many, on --eval-seed "
        "(default 180)",
    )
    parser.add_argument(
        "--max-depth", type=positive_int, default=6, help="depth of the tree, at most (default 6)"
    )
    parser.add_argument(
        "--min-leaf", type=positive_int, default=6, help="photos a leaf holds, at least (default 6)"
    )
    parser.add_argument(
        "--min-confidence",
        type=float_between(0.0, 1.0),
        default=0.5,
        help="leaf share below which: 'other' (default 0.5)",
    )
    parser.add_argument(
        "--out",
        type=path_argument("file"),
        required=True,
        help=f"the module to write; {OUTPUT} replaces the committed tree (its header names the matting "
        "model it was fitted with: another model gives another tree)",
    )
    args = parser.parse_args(argv)
    if args.eval_seed == args.seed:
        parser.error("--eval-seed must differ from --seed: scoring on fitted products proves nothing")
    # Checked before minutes of fitting, not found in a traceback after them; a missing folder is made.
    if problem := file_problem(args.out, OUTPUT.name):
        parser.error(f"--out {args.out}: {problem}")

    started = time.monotonic()
    session = None
    if args.mask_source != "truth":
        session = open_tool_session(args.matting_model, "--matting-model", threads=2)
    features, labels = feature_table(
        itertools.chain(
            renderer_masks(args.products, args.seed, args.mask_source, roughen=True, session=session),
            carton_masks(args.cartons, args.seed, roughen=True),
        )
    )
    nodes = fit_tree(
        features, labels, max_depth=args.max_depth, min_leaf=args.min_leaf, n_classes=len(CLASSES)
    )
    tree: dict[str, Any] = {"classes": list(CLASSES), "min_confidence": args.min_confidence, "nodes": nodes}
    fit_accuracy, _ = evaluate(tree, features, labels)
    report: dict[str, Any] = {"fit_accuracy": round(fit_accuracy, 4), "nodes": len(nodes)}
    if args.eval_products:
        # Scored on the masks the captioner will see: the session's when there is one.
        eval_source = "truth" if session is None else "session"
        eval_features, eval_labels = feature_table(
            itertools.chain(
                renderer_masks(
                    args.eval_products, args.eval_seed, eval_source, roughen=False, session=session
                ),
                carton_masks(args.cartons, args.eval_seed, roughen=False),
            )
        )
        accuracy, confusion = evaluate(tree, eval_features, eval_labels)
        report.update(eval_accuracy=round(accuracy, 4), confusion=confusion)
    digest = shape_tree_id(tree)
    # Shell words, so the docstring breaks the command between them, never inside a quoted path.
    command = [
        *f"python -m shared.captioning.fit_shape --seed {args.seed} --products {args.products}".split(),
        *f"--mask-source {args.mask_source} --cartons {args.cartons}".split(),
        *f"--max-depth {args.max_depth} --min-leaf {args.min_leaf}".split(),
        *f"--min-confidence {args.min_confidence}".split(),
        # Quoted: a path with a space or a quote in it is one word when the command is run again.
        *(["--matting-model", shlex.quote(args.matting_model)] if args.matting_model else []),
    ]
    masks = {
        "truth": "the renderer's masks roughened by blur-and-threshold",
        "session": "masks from the matting session",
        "both": "per photo, the renderer's mask roughened by blur-and-threshold and the matting session's",
    }[args.mask_source]
    provenance = {
        "Command": command,
        "Data": (
            f"{args.products} renderer products of catalogue seed {args.seed}, one photo each "
            f"(photo index i % 3, sizes {'/'.join(map(str, SIZES_PX))} px); {masks}"
            + (
                f"; {args.cartons} drink-carton silhouettes as box (carton_mask), roughened"
                if args.cartons
                else ""
            )
        ),
        "Matting model": session.model_id if session is not None else "none (truth masks only)",
        "Fit accuracy": report["fit_accuracy"],
        "Held-out accuracy": (
            f"{report.get('eval_accuracy')} on {args.eval_products} products of seed {args.eval_seed} "
            f"({'matting session' if session is not None else 'exact'} masks)"
            + (f" and {args.cartons} cartons of that seed" if args.cartons else "")
            if args.eval_products
            else "not measured"
        ),
        "Tree sha256": digest,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_module(tree, provenance), encoding="utf-8")
    report["seconds"] = round(time.monotonic() - started, 1)
    report["written"] = str(args.out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
