"""Real-photo training pairs for the matting model, from GroceryStoreDataset (MIT).

GroceryStoreDataset (Klasson, Kjellström, Zhang, WACV 2019; github.com/marcusklasson/GroceryStoreDataset)
has 81 grocery classes, an iconic catalogue photo per class (product on white) and in-store phone
photos split train / val / test. ``skuforge matting real-pairs`` builds three kinds of pairs from
the **train split and the iconic photos only** (never val, which selects and benchmarks, and never
test, which the classifier evaluation keeps for its final figures):

Photos the real-photo benchmark keeps (``bench/data/matting_real/split.json``) are never read.

- ``catalogue``: the iconic photos not held out for the benchmark, with the mask of everything not
  connected to the border through background-coloured pixels (``catalogue_mask``; for the cartons
  in ``CONVEX_CATALOGUE``, its convex hull), each on its own white plus re-scaled and shifted copies,
  a share of them (``reflection_share``) standing on a glossy floor whose reflection is background;
- ``instore``: train-split photos of fruit and vegetables with the official U2-NetP's mask where
  that model is confident (few undecided pixels, one product-sized region). These pseudo-labels
  keep the fine-tune close to the official model where it is right. Not on packages: held
  cartons are where its confident masks include the hand;
- ``composite``: a product cut-out (catalogue, or a confident in-store one) pasted, often tilted,
  near the centre of a defocused train-split in-store photo (many are handheld shots: their hands
  and shelves are background here), with the product's brightness and white balance pulled
  towards the scene's and sensor noise added; the mask is exact. These teach the one product in
  front of real shelves, which is what the matting stage sees in a product box.

Pairs are written as ``images/NAME.png`` + ``masks/NAME.png`` at ``size_px``, the layout
``skuforge matting train --extra DIR`` reads. A run that stops leaves its marker beside them
(``shared.matting.unfinished``): training refuses that folder, and a rerun with the same options
finishes it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

from shared.argtypes import json_file_text
from shared.arith.masks import clean_mask, connected_components, hull_mask, paint_runs
from shared.images import decode_image, encode_png
from shared.matting.session import MaskOptions, U2NetPSession
from shared.matting.unfinished import REAL_PAIRS, mark_finished, mark_unfinished, resumed_run
from shared.model_cache import write_atomically

__all__ = [
    "CONVEX_CATALOGUE",
    "RealPairsConfig",
    "catalogue_mask",
    "confident_mask",
    "dataset_split",
    "with_reflection",
    "write_real_pairs",
]

log = logging.getLogger("skuforge.matting.grocery")

UInt8Array = npt.NDArray[np.uint8]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class RealPairsConfig:
    """How many pairs of each kind, and from what."""

    dataset: Path
    official_onnx: Path | bytes  # the pseudo-labeller: its file, or the bytes whose md5 was checked
    held_out: frozenset[str]  # dataset-relative paths of photos kept for the benchmark (never read)
    size_px: int = 320
    catalogue_copies: int = 6
    instore: int = 0
    # Pseudo-labels only where the official model is right: on held fruit and vegetables it
    # leaves the hand out; on held packages its confident masks include the hand.
    instore_prefixes: tuple[str, ...] = ("train/Fruit/", "train/Vegetables/")
    composites: int = 1100
    seed: int = 12
    threads: int = 2
    # Share of the re-scaled catalogue copies that stand on a glossy floor: a faded mirror image
    # under the product, labelled background. No training catalogue photo has one, and the
    # benchmark's Bravo cartons (held out) do: every model took their reflection as product.
    reflection_share: float = 0.0

    def options(self) -> dict[str, object]:
        """What decides the pairs a run writes, as JSON values (not the pseudo-labeller's path or the
        threads: its weights are checked by their md5). ``held_out``: a digest of the list."""
        held_out = hashlib.sha256("\n".join(sorted(self.held_out)).encode()).hexdigest()[:16]
        return {
            "dataset": str(self.dataset.resolve()),
            "held_out": held_out,
            "size_px": self.size_px,
            "catalogue_copies": self.catalogue_copies,
            "instore": self.instore,
            "instore_prefixes": list(self.instore_prefixes),
            "composites": self.composites,
            "seed": self.seed,
            "reflection_share": self.reflection_share,
        }


def dataset_split(dataset: Path, split: str) -> list[str]:
    """The dataset-relative photo paths of ``split`` ("train", "val" or "test") from its list file."""
    if split not in {"train", "val", "test"}:
        raise ValueError(f"unknown split {split!r}")
    lines = (dataset / f"{split}.txt").read_text().splitlines()
    return [line.split(",")[0].strip() for line in lines if line.strip()]


def iconic_paths(dataset: Path) -> list[str]:
    """Dataset-relative paths of the iconic catalogue photos, sorted."""
    root = dataset / "iconic-images-and-descriptions"
    return sorted(str(path.relative_to(dataset)) for path in root.rglob("*_Iconic.jpg"))


# Training catalogue photos of cartons whose flood-fill mask loses white caps and faces on the white
# background (seen on contact sheets of the tolerance-8 masks, 2026-12-02): their mask is the convex
# hull of the flood fill instead, which a carton's outline is. A model trained on the torn masks
# learnt to drop white faces (the Tropicana and Arla misses of bench/results/matting_real.json).
# Oatly-Natural-Oatghurt stays a flood fill: its drop shadow would join the hull.
CONVEX_CATALOGUE = frozenset(
    {
        "Alpro-Blueberry-Soyghurt",
        "Alpro-Fresh-Soy-Milk",
        "Alpro-Shelf-Soy-Milk",
        "Arla-Medium-Fat-Milk",
        "Arla-Mild-Vanilla-Yoghurt",
        "Arla-Natural-Mild-Low-Fat-Yoghurt",
        "Arla-Natural-Yoghurt",
        "Garant-Ecological-Medium-Fat-Milk",
        "Tropicana-Apple-Juice",
        "Tropicana-Juice-Smooth",
        "Valio-Vanilla-Yoghurt",
    }
)


def catalogue_mask(image: Image.Image, tolerance: float = 18.0, *, convex: bool = False) -> BoolArray:
    """The product in a plain-background photo: what is not joined to the border by background pixels.

    Background colour = the median of the border pixels; a pixel is background-like when its RGB
    distance to it is under ``tolerance``. Background-like regions that touch the border are the
    background; the rest, holes filled and specks dropped, is the product. ``convex``: the convex
    hull of that, for products whose outline is convex (cartons) and whose light faces leak.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width, _ = rgb.shape
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    near = np.linalg.norm(rgb - background, axis=2) < tolerance
    rows, starts, ends, labels = connected_components(near, diagonal=False)
    product = np.ones((height, width), dtype=bool)
    if rows.size:
        on_border = (rows == 0) | (rows == height - 1) | (starts == 0) | (ends == width)
        outside = (np.bincount(labels, weights=on_border) > 0)[labels]
        product = ~paint_runs((height, width), rows[outside], starts[outside], ends[outside])
    product = clean_mask(product, min_blob_fraction=0.002)
    return hull_mask(product) if convex else product


def confident_mask(confidence: npt.NDArray[np.float32]) -> BoolArray | None:
    """The official model's mask when it is sure of it, else None.

    Sure = under 5% of the pixels undecided (confidence 0.15-0.85), a product-sized result (6-75%
    of the photo) whose largest blob holds at least 85% of it, and on under 3% of the photo's
    border: one held item, not a pile running out of the frame (what is "the product" in a pile
    is anyone's guess).
    """
    undecided = float(((confidence > 0.15) & (confidence < 0.85)).mean())
    mask = confidence >= 0.5
    area = float(mask.mean())
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]]).mean()
    if undecided > 0.05 or not 0.06 <= area <= 0.75 or border >= 0.03:
        return None
    _rows, starts, ends, labels = connected_components(mask, diagonal=True)
    areas = np.bincount(labels, weights=ends - starts)
    if areas.max() < 0.85 * areas.sum():
        return None
    return clean_mask(mask, min_blob_fraction=0.01)


def _save_pair(out: Path, name: str, image: Image.Image, mask: BoolArray, size_px: int) -> None:
    """Write ``images/NAME.png`` and ``masks/NAME.png`` at ``size_px``, each whole or not at all: a run
    stopped while Pillow wrote into the file (Ctrl-C; Pillow removes its file on errors only) left a
    truncated PNG under the pair's name, and ``train --extra`` on the folder refused it."""
    size = (size_px, size_px)
    resized = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    mask_image = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR)
    write_atomically(out / "images" / f"{name}.png", encode_png(resized))
    write_atomically(out / "masks" / f"{name}.png", encode_png(np.asarray(mask_image) >= 128))


def _square_on(
    background: Image.Image,
    cutout: Image.Image,
    mask: BoolArray,
    scale: float,
    rng: np.random.Generator,
    angle_deg: float = 0.0,
) -> tuple[Image.Image, BoolArray]:
    """Paste ``cutout`` (cropped to ``mask``) on a square ``background`` so its longer side is ``scale``
    of the frame, at a random position that keeps it inside; returns the scene and its exact mask."""
    side = background.width
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    crop = cutout.crop(box)
    alpha = Image.fromarray(mask[box[1] : box[3], box[0] : box[2]].astype(np.uint8) * 255)
    # Two pixels in from the edge: the outermost ones are blends with the old (white) background and
    # would teach a halo that real photos do not have.
    alpha = alpha.filter(ImageFilter.MinFilter(5))
    factor = scale * side / max(crop.size)
    new_size = (max(1, round(crop.width * factor)), max(1, round(crop.height * factor)))
    crop = crop.resize(new_size, Image.Resampling.LANCZOS)
    alpha = alpha.resize(new_size, Image.Resampling.BILINEAR)
    if angle_deg:
        # Held products are tilted; rotate, then shrink back inside the frame if the bounds grew.
        crop = crop.rotate(angle_deg, Image.Resampling.BILINEAR, expand=True)
        alpha = alpha.rotate(angle_deg, Image.Resampling.BILINEAR, expand=True)
        if max(crop.size) > side:
            fit = (
                min(side, round(crop.width * side / max(crop.size))),
                min(side, round(crop.height * side / max(crop.size))),
            )
            crop, alpha = (
                crop.resize(fit, Image.Resampling.BILINEAR),
                alpha.resize(fit, Image.Resampling.BILINEAR),
            )
        new_size = crop.size
    alpha = alpha.point(lambda v: 255 if v >= 128 else 0)
    # Near the centre, where a photographer puts the subject (and where the scene's own subject
    # is, so it ends up covered rather than taught as background).
    left = int(np.clip((side - new_size[0]) / 2 + rng.normal(0.0, 0.12) * side, 0, side - new_size[0]))
    top = int(np.clip((side - new_size[1]) / 2 + rng.normal(0.0, 0.12) * side, 0, side - new_size[1]))
    scene = background.copy()
    scene.paste(crop, (left, top), alpha)
    scene_mask = np.zeros((side, side), dtype=bool)
    placed = np.asarray(alpha) >= 128
    height, width = placed.shape
    scene_mask[top : top + height, left : left + width] = placed[: side - top, : side - left]
    return scene, scene_mask


def with_reflection(scene: Image.Image, mask: BoolArray, rng: np.random.Generator) -> Image.Image:
    """``scene`` with the product mirrored under its own bottom edge, fading out, as on a glossy floor.

    Column by column, about that column's lowest product pixel, so a carton seen from a corner gets
    the slanted reflection real catalogue photos show. The mask is unchanged: a reflection is
    background.
    """
    height, width = mask.shape
    columns = np.nonzero(mask.any(axis=0))[0]
    if columns.size == 0:
        return scene
    rows = np.arange(height)[:, None]
    bottom = np.where(mask, rows, -1).max(axis=0)  # lowest product row per column (-1: none)
    product_height = int(np.ptp(np.nonzero(mask.any(axis=1))[0])) + 1
    length = max(2, int(product_height * rng.uniform(0.08, 0.3)))
    strength = rng.uniform(0.25, 0.6)
    pixels = np.asarray(scene.convert("RGB"), dtype=np.float32)
    layer = np.zeros_like(pixels)
    alpha = np.zeros((height, width), dtype=np.float32)
    for depth in range(length):
        source = bottom[columns] - depth
        target = bottom[columns] + 1 + depth
        keep = (source >= 0) & (target < height)
        keep[keep] &= mask[source[keep], columns[keep]]
        layer[target[keep], columns[keep]] = pixels[source[keep], columns[keep]]
        alpha[target[keep], columns[keep]] = strength * (1.0 - depth / length) ** 1.5
    blur = ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2))
    layer_image = Image.fromarray(layer.astype(np.uint8)).filter(blur)
    alpha_image = Image.fromarray((alpha * 255).astype(np.uint8)).filter(blur)
    weight = np.asarray(alpha_image, dtype=np.float32)[..., None] / 255.0
    weight[mask] = 0.0  # never over the product itself
    blended = pixels * (1.0 - weight) + np.asarray(layer_image, dtype=np.float32) * weight
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def _match_to_scene(
    product: Image.Image, mask: BoolArray, scene: Image.Image, rng: np.random.Generator
) -> Image.Image:
    """Pull the product's per-channel mean part way towards the scene's (white balance, brightness)."""
    pixels = np.asarray(product.convert("RGB"), dtype=np.float32)
    if not mask.any():
        return product
    product_mean = pixels[mask].mean(axis=0)
    scene_mean = np.asarray(scene.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(axis=0)
    strength = rng.uniform(0.1, 0.35)
    gain = 1.0 + strength * (scene_mean / np.maximum(product_mean, 1.0) - 1.0)
    return Image.fromarray(np.clip(pixels * gain, 0, 255).astype(np.uint8))


def _finish(scene: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Sensor noise and a slight overall blur, so pasted and real pixels share one camera."""
    pixels = np.asarray(scene, dtype=np.float32)
    pixels += rng.normal(0.0, rng.uniform(1.0, 5.0), pixels.shape)
    out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return out.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8)))


def _photo(path: Path) -> Image.Image:
    """A dataset photo as inference sees it (``decode_image``: EXIF orientation, colour profile to sRGB).
    Read with Image.open before, the Adobe RGB catalogue photos trained the model on colours up to 47
    levels off those it meets (56 of the 81 iconic photos carry that profile)."""
    return decode_image(path.read_bytes())


def _official_masks(
    dataset: Path, paths: Sequence[str], official_onnx: Path | bytes, threads: int
) -> Iterable[tuple[str, Image.Image, BoolArray | None]]:
    session = U2NetPSession(
        official_onnx, threads=threads, use_gpu=False, max_batch=1, mask=MaskOptions(threshold=0.5)
    )
    for path in paths:
        image = _photo(dataset / path)
        (result,) = session.predict([image])
        yield path, image, confident_mask(result.confidence)


def _nothing_to_composite(config: RealPairsConfig, *, cutouts: bool) -> None:
    """Refuse composites with nothing to draw them from: rng.integers(0) raised a bare ValueError."""
    missing = "no catalogue or in-store cut-out" if not cutouts else "no train-split photo for a background"
    raise ValueError(
        f"{config.dataset}: {missing} to draw composites from (is it GroceryStoreDataset's dataset/ "
        "folder, with iconic-images-and-descriptions/ and train.txt?)"
    )


def write_real_pairs(config: RealPairsConfig, out: Path) -> dict[str, object]:
    """Write the pairs under ``out`` (images/, masks/, pairs.json) and return the summary.

    An ``out`` that a run with the same options stopped in is finished: every pair is made again, as
    each one's random draws follow the ones before, the earlier run's are written over and those this
    run does not make are removed. Raises
    ``ValueError`` for one that a run with other options stopped in, before writing anything.
    """
    options = config.options()
    recorded = resumed_run(out, REAL_PAIRS, options)
    rng = np.random.default_rng(config.seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    size = config.size_px

    iconic = [path for path in iconic_paths(config.dataset) if path not in config.held_out]
    train = [path for path in dataset_split(config.dataset, "train") if path not in config.held_out]
    if config.composites and not (train and (iconic or config.instore)):
        # Checked again below, where the in-store cut-outs are known; this one before any work.
        _nothing_to_composite(config, cutouts=bool(iconic or config.instore))
    mark_unfinished(out, REAL_PAIRS, options)
    written: set[str] = set()

    def save(name: str, image: Image.Image, mask: BoolArray) -> None:
        _save_pair(out, name, image, mask, size)
        written.add(name)

    cutouts: list[tuple[Image.Image, BoolArray]] = []
    for index, path in enumerate(iconic):
        image = _photo(config.dataset / path)
        mask = catalogue_mask(image, tolerance=8.0, convex=Path(path).parent.name in CONVEX_CATALOGUE)
        cutouts.append((image, mask))
        save(f"catalogue-{index:03d}-0", image, mask)
        white = Image.new("RGB", (size, size), (255, 255, 255))
        for copy in range(1, config.catalogue_copies):
            scene, scene_mask = _square_on(white, image, mask, float(rng.uniform(0.35, 0.95)), rng)
            if config.reflection_share > 0 and rng.random() < config.reflection_share:
                scene = with_reflection(scene, scene_mask, rng)
            save(f"catalogue-{index:03d}-{copy}", scene, scene_mask)

    order = rng.permutation(len(train))
    labelled = [train[i] for i in order if train[i].startswith(config.instore_prefixes)]
    candidates = labelled[: config.instore * 4]
    tried = set(candidates)
    backgrounds = [train[i] for i in order if train[i] not in tried]
    instore_written = 0
    for _path, image, confident in _official_masks(
        config.dataset, candidates, config.official_onnx, config.threads
    ):
        if confident is None:
            continue
        save(f"instore-{instore_written:04d}", image, confident)
        cutouts.append((image, confident))
        instore_written += 1
        if instore_written >= config.instore:
            break
    log.info("in-store pseudo-labels", extra={"kept": instore_written, "tried": len(candidates)})

    if config.composites and not (cutouts and backgrounds):
        _nothing_to_composite(config, cutouts=bool(cutouts))
    for index in range(config.composites):
        product, mask = cutouts[int(rng.integers(len(cutouts)))]
        background_path = backgrounds[int(rng.integers(len(backgrounds)))]
        background = _photo(config.dataset / background_path)
        side = min(background.size)
        background = background.crop((0, 0, side, side)).resize((size, size), Image.Resampling.BILINEAR)
        # Defocused: real product photos are shot close with the shelf behind out of focus, and a
        # sharp product in the scene, labelled background here, would teach the model to drop the
        # products it must keep (measured: holes in cartons). Hands stay, as background.
        background = background.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 5.0)))
        product = _match_to_scene(product, mask, background, rng)
        if rng.random() < 0.5:  # a held product is not always sharp either; sharpness is no cue
            product = product.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
        angle = float(rng.uniform(-35.0, 35.0)) if rng.random() < 0.7 else 0.0
        scene, scene_mask = _square_on(
            background, product, mask, float(rng.uniform(0.45, 0.95)), rng, angle_deg=angle
        )
        save(f"composite-{index:04d}", _finish(scene, rng), scene_mask)

    summary: dict[str, object] = {
        "dataset": "GroceryStoreDataset (MIT), train split and iconic photos only",
        "catalogue_photos": len(iconic),
        "catalogue_pairs": len(iconic) * config.catalogue_copies,
        "instore_pseudo_labels": instore_written,
        "instore_tried": len(candidates),
        "composites": config.composites,
        "held_out_photos": len(config.held_out),
        "size_px": size,
        "seed": config.seed,
        "reflection_share": config.reflection_share,
    }
    if recorded is not None:
        # Pairs the stopped run made and this one did not (a photo since taken out of the dataset, fewer
        # confident pseudo-labels): left beside the set, they were trained on with it.
        stale = [
            pair_file
            for kind in ("images", "masks")
            for pair_file in (out / kind).glob("*.png")
            if not pair_file.name.startswith(".") and pair_file.stem not in written
        ]
        for pair_file in stale:
            pair_file.unlink()
        log.info("finished a stopped run", extra={"out": str(out), "stale_files_removed": len(stale)})
    write_atomically(out / "pairs.json", json_file_text(summary, label=str(out / "pairs.json")).encode())
    mark_finished(out, REAL_PAIRS)
    return summary
