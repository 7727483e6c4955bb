"""Does skuforge's data help a classifier of new products? The few-shot benchmark (``make evaluate``).

GroceryStoreDataset (github.com/marcusklasson/GroceryStoreDataset, MIT), every one of its 81
classes a new SKU. A SKU's photos are its iconic catalogue photo plus k in-store photos from the
**train** split (k = 0, 1, 3; the same seeded order for every k, so k=3 includes k=1's photo).
skuforge makes ``--variants-per-sku`` images per SKU, and ``shared.evaluation`` trains the five
classifiers (A, A', B, B', C) on frozen EfficientNet-Lite0 features and scores them on the held-out
split: ``--split test`` (the final figures, the default) or ``--split val`` (every choice made while
building the scene path was measured there, never on test).

``--mode stack`` (the default, what the committed figures come from) runs the real thing: ``skuforge
up`` with the scene library, ``skuforge ingest`` of all SKU folders, and the retraining store's export
under the real:synthetic policy, i.e. ingest -> captioner -> generator -> matting -> gate ->
trainstore. ``--mode in-process`` calls the composite backend directly on masks of the committed
matting model, with no gate: minutes instead of an hour, for trying choices on val.

Leakage rules, checked before anything runs (``shared.evaluation.leakage``): no held-out photo is a
reference or a scene, by path, by content or as a resized copy (perceptual hash). Scenes are
train-split photos, each in a folder named after its class, and the composite backend never gives a
SKU a scene of its own series (its class; with ``--series coarse``, its coarse class: no apple on a
photo of any apple).

The export policy's try (``skuforge dataset export --evaluation --min-gain``), on val only:
``--heldout-half a|b`` scores one half of each class's held-out photos (a seeded draw), and
``--drop-synthetic-from RESULT.json --min-gain G`` leaves out the synthetic images of the SKUs whose
per-SKU B - A (``--drop-by gain-over-classic``: B' - A') in a run on the other half is below G; they
keep their classic augmentation. Choose on half a, measure on half b: a choice scored on the photos it
was made on reads better than it is.

Writes ``bench/results/augment.json`` (``--split test``) or ``bench/results/augment-val.json``, and an
HTML report beside the evaluation outputs under ``--workdir``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from shared.argtypes import (
    file_problem,
    float_between,
    int_between,
    json_file_text,
    model_location,
    non_negative_int,
    path_argument,
    positive_float,
    positive_int,
    read_json_object,
)
from shared.commands import run_command
from shared.config import load_settings
from shared.evaluation import L2, REAL_WEIGHT, TUNE_EPOCHS, TUNE_LR, add_curve_max_option
from shared.evaluation.backbone import Backbone, BackboneSpec, FeatureCache, open_backbone
from shared.evaluation.experiment import (
    EvaluationConfig,
    Featurizer,
    Photo,
    describe_classifier,
    run_evaluation,
)
from shared.evaluation.leakage import check_disjoint, check_no_near_duplicates, copy_hashes, heldout_hash
from shared.generation.backend import MAX_SIZE_PX
from shared.generation.composite import MIN_SIZE_PX
from shared.store import sha256_hex

if TYPE_CHECKING:
    from shared.generation.scenes import SceneLibrary
    from shared.matting.session import MattingSession

RESULTS = Path(__file__).resolve().parent / "results"
KS = (0, 1, 3)
STACK_RUN = "stack-run.json"  # under --workdir: what the last stack run generated, and how fast
SPLITS = ("train", "val", "test")
# A share or a fraction option: refused at parsing, not after the leakage checks and the backbone load.
SHARE = float_between(0.0, 1.0)
# Refused at parsing too, as the run would refuse them after the generation: the export's side (as
# `skuforge dataset export --size`) and the composite's scene_blur.
EXPORT_PX = int_between(16, 4096)
SCENE_BLUR = float_between(0.0, 0.5)


@dataclass(frozen=True)
class GroceryClass:
    name: str  # fine class name, e.g. "Granny-Smith": the SKU's series, and its scenes' tag
    class_id: int
    coarse: str
    iconic: Path


@dataclass(frozen=True)
class Grocery:
    root: Path
    classes: list[GroceryClass]
    splits: dict[str, dict[str, list[Path]]]  # split -> class name -> photos, in the split file's order


def read_grocery(root: Path) -> Grocery:
    """The dataset's classes and split files; a clear error when ``root`` is not its dataset/ folder."""
    if not (root / "classes.csv").is_file():
        raise SystemExit(f"{root} is not GroceryStoreDataset's dataset/ folder (no classes.csv)")
    classes = []
    with (root / "classes.csv").open() as handle:
        for row in csv.reader(handle):
            if row[0].startswith("Class Name"):
                continue
            classes.append(GroceryClass(row[0], int(row[1]), row[2], root / row[4].lstrip("/")))
    by_id = {item.class_id: item.name for item in classes}
    splits: dict[str, dict[str, list[Path]]] = {}
    for split in SPLITS:
        per_class: dict[str, list[Path]] = {item.name: [] for item in classes}
        for line in (root / f"{split}.txt").read_text().splitlines():
            if line.strip():
                path, class_id, _ = (part.strip() for part in line.split(","))
                per_class[by_id[int(class_id)]].append(root / path)
        splits[split] = per_class
    return Grocery(root, classes, splits)


def references(data: Grocery, k: int, seed: int) -> dict[str, list[Path]]:
    """Per class: the iconic photo + the first k of its train photos in a seeded order (nested in k)."""
    out = {}
    for item in data.classes:
        train = data.splits["train"][item.name]
        order = np.random.default_rng([seed, item.class_id]).permutation(len(train))
        out[item.name] = [item.iconic, *(train[i] for i in order[:k])]
    return out


class TooFewScenePhotos(ValueError):
    """A class has fewer train photos left after the SKUs' references than the scenes asked of it; each
    command says what to change (``left``: the most it can give)."""

    def __init__(self, name: str, left: int, per_class: int) -> None:
        super().__init__(
            f"{name} has {left} train photos left after the SKUs' references, fewer than {per_class} scenes"
        )
        self.name, self.left, self.per_class = name, left, per_class


def scene_photos(data: Grocery, per_class: int, seed: int, used: set[Path]) -> dict[str, list[Path]]:
    """Per class: ``per_class`` train photos (not SKU references) to serve as scenes for other classes.
    ``TooFewScenePhotos`` names a class with fewer left: it got fewer scenes, and the results said
    per_class."""
    out = {}
    for item in data.classes:
        train = [path for path in data.splits["train"][item.name] if path not in used]
        if len(train) < per_class:
            raise TooFewScenePhotos(item.name, len(train), per_class)
        order = np.random.default_rng([seed, 1_000 + item.class_id]).permutation(len(train))
        out[item.name] = [train[i] for i in order[:per_class]]
    return out


def write_scene_library(scenes: dict[str, list[Path]], folder: Path) -> Path:
    """Copy the scenes to ``folder/<tag>/<file>`` (the tag the composite backend excludes per series)."""
    if folder.exists():
        shutil.rmtree(folder)
    for name, paths in scenes.items():
        (folder / name).mkdir(parents=True)
        for path in paths:
            shutil.copyfile(path, folder / name / path.name)
    return folder


def _hashed(paths: Iterable[Path], *, heldout: bool = False) -> list[tuple[str, bytes]]:
    """(path, perceptual hashes) of each photo that has them (resized copies are compared by them): held-out
    photos get ``heldout_hash``, which also sees a mirrored or turned copy; the others ``copy_hashes``,
    which also hashes the part inside plain bars (``perceptual_hash`` took a letterboxed copy's whole
    frame, bars included, and let it pass). Under SKUFORGE_MAX_IMAGE_PIXELS, as ``skuforge evaluate``
    hashes: a large JPEG's hash depends on it."""
    max_pixels = load_settings().max_image_pixels
    items = []
    for path in paths:
        value = (heldout_hash if heldout else copy_hashes)(path.read_bytes(), max_pixels=max_pixels)
        if value is not None:
            items.append((str(path), value))
    return items


def run_featurizer(backbone: Backbone, workdir: Path) -> Featurizer:
    """The run's features of its photos, cached under ``workdir``, decoded under SKUFORGE_MAX_IMAGE_PIXELS
    and _BYTES, as ``_hashed`` hashes them and ``skuforge evaluate`` decodes: under the default limits, a
    photo past the setting was scored all the same, and a large JPEG's features came from another decode
    than its hash. Made before a stack run's settings are put in place, which keep only the pixel limit."""
    settings = load_settings()
    return Featurizer(
        backbone,
        FeatureCache(workdir / "features"),
        max_pixels=settings.max_image_pixels,
        max_bytes=settings.max_image_bytes,
    )


def sha256_file(path: Path) -> str:
    return sha256_hex(path.read_bytes())


def file_photo(sku_id: str, source: str, path: Path) -> Photo:
    return Photo(
        sku_id, "real" if source == "real" else "synthetic", str(path), sha256_file(path), path.read_bytes
    )


def sku_id(k: int, name: str) -> str:
    return f"gs-k{k}-{name.lower()}"


# --------------------------------------------------------------------------------------------------
# in-process generation (for choices on val)
# --------------------------------------------------------------------------------------------------


def composite_request(
    image: Image.Image, mask: Any, draw: str, parameters: dict[str, Any], *, series: str, size: int
) -> Any:
    """One variant of ``image`` for the composite backend, its seed drawn from ``draw`` (the class, the
    photo, the variant and the run's seed): the same draw makes the same image."""
    from shared.generation.backend import GenerationRequest

    return GenerationRequest(
        reference=np.asarray(image, dtype=np.uint8),
        mask=mask,
        prompt="",
        negative_prompt="",
        seed=int(hashlib.sha256(draw.encode()).hexdigest()[:8], 16),
        n=1,
        parameters=parameters,
        series=series,
        size=size,
    )


def generate_in_process(
    refs: dict[str, list[Path]],
    scenes_dir: Path,
    args: argparse.Namespace,
    out_dir: Path,
    session: MattingSession,
    *,
    k: int,
) -> dict[str, list[Path]]:
    """Per class: ``variants`` composites written as PNG, from masks of ``session`` (--matting-model's)
    (k names the SKUs as the stack does: ``sku_id``)."""
    from shared.generation.composite import CompositeBackend

    library = in_process_scenes(scenes_dir, args.photo_share)
    # "off" is the try of the reference's own edge pixels (bench/edge_recolour.py).
    backend = CompositeBackend(library, args.photo_share, edge_recolour=args.edge_recolour == "on")
    parameters = json.loads(args.parameters)
    return _generate_all(refs, args, out_dir, session, backend, parameters, k=k)


def in_process_scenes(scenes_dir: Path, photo_share: float) -> SceneLibrary | None:
    """The scene library an in-process run composites onto (None without photo scenes), loaded under
    SKUFORGE_MAX_IMAGE_PIXELS, which the leakage checks hash the scenes by: under the default limit, a
    scene past the setting was composited all the same."""
    from shared.generation.scenes import SceneLibrary
    from shared.store import FileStore

    if photo_share <= 0:
        return None
    return SceneLibrary.load(FileStore(scenes_dir), max_pixels=load_settings().max_image_pixels)


def _generate_all(
    refs: dict[str, list[Path]],
    args: argparse.Namespace,
    out_dir: Path,
    session: Any,
    backend: Any,
    parameters: dict[str, Any],
    *,
    k: int,
) -> dict[str, list[Path]]:
    from services.generator.stage import redraw_photo, share_offset
    from shared.captioning.attributes import describe_product, plain_background_share
    from shared.errors import BadInput
    from shared.generation.backend import cluttered_cutout, is_pile, one_object_photos
    from shared.generation.composite import CompositeBackend
    from shared.generation.scenes import Scene, SceneLibrary
    from shared.images import decode_image

    series_of: dict[str, str] = args.series_of
    made: dict[str, list[Path]] = {}
    for name, photos in refs.items():
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        images = [decode_image(path.read_bytes()) for path in photos]
        for image in images:
            image.thumbnail((args.max_reference_px, args.max_reference_px), Image.Resampling.LANCZOS)
        masks = _cached_masks(
            session, images, photos, out_dir.parent / "masks", f"{session.model_id}|{args.max_reference_px}"
        )
        # The generator's rule (shared/generation/backend.py: cutout_sources): plain backgrounds first.
        plain = [plain_background_share(image, mask) for image, mask in zip(images, masks, strict=True)]
        chosen = [
            i
            for i, share in enumerate(plain)
            if share >= args.min_plain_background
            or (args.min_cutout_solidity > 0 and cutout_solidity(masks[i]) >= args.min_cutout_solidity)
        ]
        sources = chosen or list(range(len(images)))
        # Photo ids in turn, and those passed over, for a variant refused from all of those (redraw_photo).
        turn, passed_over = [str(i) for i in sources], []
        if not chosen:
            # The generator stage's where none is plain (SkuDraws): each mask's largest blob, and the
            # photos whose blob is one object in turn. Every SKU of this benchmark has its catalogue
            # photo (the dataset's iconic image, on white), so its figures do not come from here.
            masks = [
                cluttered_cutout(np.where(np.asarray(mask) >= 128, 255, 0).astype(np.uint8)) for mask in masks
            ]
            photos_of_one = one_object_photos([_Photo(i) for i in turn], dict(zip(turn, masks, strict=True)))
            passed_over = [i for i in turn if _Photo(i) not in photos_of_one]
            turn = [photo.photo_id for photo in photos_of_one]
        # The generator stage's rule: loose produce (the captioner's shape) is sometimes heaped. The
        # shape costs a caption per photo, so it is only measured when piles are asked for.
        produce = [
            args.pile_share > 0
            and bool((mask >= 128).any())
            and describe_product(image, mask >= 128).shape.shape == "produce"
            for image, mask in zip(images, masks, strict=True)
        ]
        # Try (--own-scene-share): the SKU's own photos that are not cut-out sources (its in-store
        # photos) as scenes for its own cut-out: a scene that shows the same product teaches no wrong class.
        own_backend = None
        own_keys = [f"own/{i}" for i in range(len(images)) if i not in sources]
        if args.own_scene_share > 0 and own_keys:
            own_scenes = []
            for key in own_keys:
                scene = images[int(key.split("/")[1])].copy()
                scene.thumbnail((512, 512), Image.Resampling.LANCZOS)
                own_scenes.append(Scene(key, "", np.asarray(scene, dtype=np.uint8)))
            own_backend = CompositeBackend(SceneLibrary(own_scenes), 1.0)
        # The generator stage's rule: where a SKU's piles fall is drawn from its sku_id and the seed.
        pile_offset = share_offset("piles", sku_id(k, name), args.seed)
        made[name] = []
        for variant in range(args.variants_per_sku):
            path = folder / f"{variant:03d}.png"
            photo_id: str | None = turn[variant % len(turn)]
            refused: set[str] = set()
            while photo_id is not None and not path.exists():
                which = int(photo_id)
                pile = produce[which] and is_pile(variant, args.pile_share, pile_offset)
                own = own_backend is not None and is_pile(variant, args.own_scene_share)
                request = composite_request(
                    images[which],
                    masks[which],
                    f"{name}|{which}|{variant}|{args.seed}",
                    {**parameters, "arrangement": "pile"} if pile else parameters,
                    series=series_of[name],
                    size=args.size,
                )
                if own:
                    assert own_backend is not None
                    key = own_keys[variant % len(own_keys)]
                    extra: dict[str, Any] = {"scene": "photo", "scene_key": key, "occluders": 0}
                    if args.own_scene_blur is not None:
                        extra["scene_blur"] = args.own_scene_blur
                    request = replace(request, parameters={**request.parameters, **extra})
                try:
                    sample = (own_backend if own and own_backend is not None else backend).generate(request)[
                        0
                    ]
                except (ValueError, BadInput):  # refused, as the generator server answers it
                    refused.add(photo_id)
                    photo_id = redraw_photo([turn, passed_over], photo_id, variant, refused)
                    continue
                Image.fromarray(sample.image).save(path, compress_level=1)
            if path.exists():  # else refused from every photo, and left out as the stage does
                made[name].append(path)
    return made


@dataclass(frozen=True)
class _Photo:
    """A reference photo by id (its index among the class's), as ``one_object_photos`` takes it."""

    photo_id: str


def cutout_solidity(mask: Any, *, thumbnail_px: int = 256) -> float:
    """How much a mask looks like one whole object: the share of it in its largest blob times that
    blob's solidity (area over convex-hull area). On the 81 k = 1 in-store reference photos: 0.9-0.98
    for a carton or a fruit held up, below 0.85 for fragments of a pile, a torn carton or a hand taken
    as product. 0 for an empty mask. (For the try ``--min-cutout-solidity``; not kept.)
    """
    from shared.arith.masks import largest_component
    from shared.captioning.attributes import mask_hull_area

    small = Image.fromarray(np.asarray(mask, dtype=np.uint8)).resize((thumbnail_px, thumbnail_px))
    product = np.asarray(small) > 0
    area = np.count_nonzero(product)
    if area == 0:
        return 0.0
    blob = largest_component(product)
    blob_area = float(np.count_nonzero(blob))
    return (blob_area / area) * blob_area / max(mask_hull_area(blob), 1.0)


def _cached_masks(
    session: Any, images: list[Image.Image], photos: list[Path], folder: Path, model_key: str
) -> list[Any]:
    """The matting model's masks of the reference photos, kept on disk across tries.

    Keyed by the photo and by ``model_key`` (the model's id and the reference size): a try with
    another ``--matting-model`` or ``--max-reference-px`` must not be given another model's masks.
    """
    paths = [folder / f"{hashlib.sha256(f'{model_key}|{p}'.encode()).hexdigest()[:16]}.png" for p in photos]
    if all(path.exists() for path in paths):
        return [np.asarray(Image.open(path)) for path in paths]
    masks = [result.mask for result in session.predict(images)]
    folder.mkdir(parents=True, exist_ok=True)
    for path, mask in zip(paths, masks, strict=True):
        Image.fromarray(mask).save(path)
    return masks


# --------------------------------------------------------------------------------------------------
# through the running stack
# --------------------------------------------------------------------------------------------------


def write_sku_folders(
    all_refs: dict[int, dict[str, list[Path]]], folder: Path, series_of: dict[str, str]
) -> list[str]:
    """The layout ``skuforge ingest`` reads: one folder per (k, class) with metadata.json and its photos."""
    if folder.exists():
        shutil.rmtree(folder)
    ids = []
    for k, refs in all_refs.items():
        for name, photos in refs.items():
            sku = sku_id(k, name)
            sku_dir = folder / sku
            sku_dir.mkdir(parents=True)
            for index, path in enumerate(photos):
                shutil.copyfile(path, sku_dir / f"{index:02d}-{path.name}")
            metadata = {"sku_id": sku, "name": name.replace("-", " "), "category": "grocery"}
            metadata |= {"brand": "GroceryStoreDataset", "series": series_of[name]}
            (sku_dir / "metadata.json").write_text(json.dumps(metadata))
            ids.append(sku)
    return ids


# The options that decide what the images are (generated in-process, or through a stack): a cache or a
# stack made with others must not be scored as if made with these.
GENERATION_OPTIONS = (
    "seed",
    "classes",
    "variants_per_sku",
    "scenes_per_class",
    "photo_share",
    "parameters",
    "pile_share",
    "size",
    "series",
    "max_reference_px",
    "min_plain_background",
    "own_scene_share",
    "own_scene_blur",
    "min_cutout_solidity",
    "matting_model",
)


# The generator setting of each generation option a stack runs with. All are set for the stack, even
# at their defaults: one left to the shell's environment (SKUFORGE_GENERATION_PARAMETERS, _PILE_SHARE)
# made the stack's images while the results recorded the bench's value.
STACK_SETTINGS = {
    "photo_share": "SKUFORGE_SCENES_PHOTO_SHARE",
    "size": "SKUFORGE_GENERATION_SIZE_PX",
    "variants_per_sku": "SKUFORGE_GENERATION_VARIANTS_PER_SKU",
    "parameters": "SKUFORGE_GENERATION_PARAMETERS",
    "pile_share": "SKUFORGE_GENERATION_PILE_SHARE",
    "min_plain_background": "SKUFORGE_GENERATION_MIN_PLAIN_BACKGROUND",
    "max_reference_px": "SKUFORGE_GENERATION_MAX_REFERENCE_PX",
    "seed": "SKUFORGE_GENERATION_SEED",
}
# What else makes a stack's images, set for it too (a shell's diffusion backend or mix, or another
# matting model, made the images while the results said composite and the committed model): the
# composite backend alone (what the in-process path runs, and what the results' "generation_backend"
# says), and the committed matting model for the captioner's cut-out masks and the gate's (the
# results' "matting_model": null).
STACK_FIXED = {"SKUFORGE_GENERATION_BACKEND": "composite", "SKUFORGE_GENERATION_BACKEND_MIX": "{}"}
# Every other SKUFORGE_* of the shell is taken away from a stack run, so the committed defaults run: the
# stack inherited them all, and gate thresholds, the matting clean-up or the captioner's options there
# decided what was accepted and exported, unrecorded. Kept: these, which say how fast it runs, not what.
STACK_KEPT = ("SKUFORGE_KAFKA_HEAP_MB", "SKUFORGE_MATTING_THREADS")
# Generation options of in-process tries only: the stack has no setting for them.
IN_PROCESS_ONLY = ("own_scene_share", "own_scene_blur", "min_cutout_solidity", "matting_model")


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of this run that decide the generated images (``parameters`` parsed, so key order
    and spacing do not count), as JSON values."""
    options = {name: getattr(args, name) for name in GENERATION_OPTIONS}
    options["parameters"] = json.loads(args.parameters)
    options["matting_model"] = None if args.matting_model is None else str(args.matting_model)
    return options


def stack_environment(args: argparse.Namespace, scenes_dir: Path) -> dict[str, str]:
    """The SKUFORGE_* settings a stack run gets, all of them (recorded in its stack-run.json): the
    scene library, its store under --workdir, the generation options, ``STACK_FIXED``, the shell's
    ``STACK_KEPT`` and its pixel limit, which the bench's leakage checks hash by; the committed default
    of everything else."""
    settings = {name: value for name, value in os.environ.items() if name in STACK_KEPT}
    # The one pixel limit of the run: the held-out photos are hashed under the shell's before the
    # stack's settings are put in place, the exported images after (a large JPEG's hash moves with it).
    settings["SKUFORGE_MAX_IMAGE_PIXELS"] = str(load_settings().max_image_pixels)
    settings["SKUFORGE_STORE_URI"] = f"file://{(args.workdir / 'stack' / 'store').resolve()}"
    settings["SKUFORGE_SCENES_URI"] = str(scenes_dir.resolve())
    settings |= {setting: str(getattr(args, name)) for name, setting in STACK_SETTINGS.items()}
    return settings | STACK_FIXED


def use_stack_environment(settings: dict[str, str]) -> None:
    """Make ``settings`` this process's only SKUFORGE_* (the stack started from it inherits them)."""
    for name in [name for name in os.environ if name.startswith("SKUFORGE_")]:
        del os.environ[name]
    os.environ.update(settings)


def generated_dir(args: argparse.Namespace, k: int) -> Path:
    """Where an in-process run caches its images: named by the generation options too, so a try with
    another seed, parameters or scenes never scores a previous try's images. The k list counts: the
    scenes are train photos no SKU of any k uses, so another list draws other scenes (and a scene of
    one run may be a spare held-out photo of the other)."""
    options = {**generation_options(args), "k": sorted(int(k) for k in args.k.split(","))}
    if args.edge_recolour == "off":  # an in-process try only (a stack runs the backend as served)
        options["edge_recolour"] = "off"
    if args.pile_share:  # piles fall per SKU, as in the stack, since 2026-12-05: not the older cache's
        options["pile_offset"] = "per-sku"
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
    return args.workdir / f"generated-{args.tag}-{digest}-k{k}"


def results_file(args: argparse.Namespace) -> Path:
    """Where the results go without --out: augment.json for test, augment-val[-spare][-TAG].json for val."""
    if args.split == "test":
        return RESULTS / "augment.json"
    suffix = ("-spare" if args.with_spare_train else "") + (f"-{args.tag}" if args.tag else "")
    return RESULTS / f"augment-val{suffix}.json"


# What a stack run's dataset "fingerprint" covers. A record without "fingerprint_version" (an older run)
# fingerprints the photos alone (``photos_fingerprint``); 2 adds the class each photo went in as and that
# class's series, which classes.csv decides (--series coarse: its coarse class, the scenes' tag).
DATASET_FINGERPRINT_VERSION = 2


def dataset_identity(
    root: Path, references: dict[str, set[Path]], scenes: dict[str, list[Path]], series_of: dict[str, str]
) -> dict[str, Any]:
    """Which photos a stack run was given, and as what: the dataset folder (resolved) and a fingerprint of
    its SKUs' references and scenes (each one's role, class, series, path in the folder and content
    hash). Another folder of the same photos is the same dataset; the same file names with other photos,
    or a classes.csv that puts a class in another coarse class (other tags), are not."""
    photos = {
        (role, name, path)
        for role, per_class in (("reference", references), ("scene", scenes))
        for name, paths in per_class.items()
        for path in paths
    }
    lines = sorted(
        json.dumps([role, name, series_of[name], path.relative_to(root).as_posix(), sha256_file(path)])
        for role, name, path in photos
    )
    return {
        "path": str(root.resolve()),
        "photos": len({path for _, _, path in photos}),
        "fingerprint": sha256_hex("\n".join(lines).encode()),
        "fingerprint_version": DATASET_FINGERPRINT_VERSION,
    }


def photos_fingerprint(root: Path, inputs: Iterable[Path]) -> str:
    """The fingerprint of records without a "fingerprint_version": each photo's path and content hash."""
    lines = sorted(f"{path.relative_to(root).as_posix()} {sha256_file(path)}" for path in set(inputs))
    return sha256_hex("\n".join(lines).encode())


def refuse_another_stack_run(args: argparse.Namespace, ks: list[int]) -> None:
    """``--reuse-stack`` scores what the last stack run stored: only with the options it ran with and
    the photos it was given, with the same classes and series tags (``args.dataset_identity``; an older
    record's photos alone: ``args.dataset_photos_fingerprint``). With another seed the held-out set (val +
    spare train) would hold that run's references and scenes; with another --dataset, this dataset's
    photos were scored against images made from another's."""
    if not (args.workdir / STACK_RUN).is_file():
        raise SystemExit(
            f"--reuse-stack: no stack run recorded in {args.workdir} (no {STACK_RUN}): "
            "run the stack without --reuse-stack first"
        )
    run = json.loads((args.workdir / STACK_RUN).read_text())
    recorded = run.get("options")
    if recorded is None:
        raise SystemExit(
            f"{args.workdir / STACK_RUN} does not record the options its stack ran with (an older run): "
            "run the stack again in a new --workdir"
        )
    dataset = run.get("dataset")
    if dataset is None:
        # Runs before 2026-12-05 (the committed test run's among them) stay re-scorable; said, not refused.
        print(
            f"note: {args.workdir / STACK_RUN} does not record the dataset its stack was given (an older "
            f"run): not checked that {args.dataset} is it",
            file=sys.stderr,
        )
    else:
        older = "fingerprint_version" not in dataset  # its fingerprint is of the photos alone
        given = args.dataset_photos_fingerprint if older else args.dataset_identity["fingerprint"]
        if dataset.get("fingerprint") != given:
            raise SystemExit(
                f"--reuse-stack: the stored stack was given the photos of {dataset.get('path')} "
                f"({dataset.get('photos')} references and scenes), not those of {args.dataset} as its "
                "classes.csv tags them: give its --dataset, or run the stack again in a new --workdir"
            )
        if older:  # checked as far as it goes, and said
            print(
                f"note: {args.workdir / STACK_RUN} fingerprints only the photos its stack was given (an "
                f"older run), not the classes and series tags they went in as: not checked that "
                f"{args.dataset}'s classes.csv gives the same",
                file=sys.stderr,
            )
    wanted = {**generation_options(args), "k": ks}
    differ = sorted(name for name in wanted if recorded.get(name) != wanted[name])
    if differ:
        shown = ", ".join(
            f"--{name.replace('_', '-')} {recorded.get(name)!r} (asked: {wanted[name]!r})" for name in differ
        )
        raise SystemExit(f"--reuse-stack: the stored stack ran with {shown}; give the same options")
    if run.get("environment") is None:
        # Runs before the stack's settings were recorded inherited the shell's SKUFORGE_*: scored, and said.
        print(
            f"note: {args.workdir / STACK_RUN} does not record the SKUFORGE_* settings its stack got (an "
            "older run): it inherited the shell's, so the gate's thresholds, the matting clean-up and the "
            "captioner's options it ran with are not known (the report's stack_images.environment is null)",
            file=sys.stderr,
        )


def refuse_a_used_stack(stack_dir: Path) -> None:
    """A fresh stack run needs a fresh stack: an earlier run's store keeps its decisions under the same
    item ids (an image accepted then stays exported even if this run's gate flags it), and a stack
    still running keeps the scenes and settings it was started with."""
    store = stack_dir / "store"
    if (stack_dir / "stack.json").exists() or (store.is_dir() and any(store.iterdir())):
        raise SystemExit(
            f"{stack_dir} holds an earlier stack run: give a new --workdir, or remove {stack_dir} "
            "(--reuse-stack scores what it stored instead)"
        )


def run_stack(skus_dir: Path, sku_ids: list[str], scenes_dir: Path, args: argparse.Namespace) -> float:
    """Ingest every SKU into a stack started with the scene library and ``stack_environment`` alone;
    returns images/min through it."""
    environment = stack_environment(args, scenes_dir)
    use_stack_environment(environment)
    from devstack.demo.demo import stack, wait_until_decided
    from schemas.topics import IMAGE_GENERATED
    from services.ingest.ingest import ingest_path
    from shared.store import open_settings_store

    with stack(args.workdir / "stack", variants=args.variants_per_sku, keep_running=False) as running:
        # Its Kafka (a free port when the documented one is taken), as the demo reads it: the shell's
        # or the default address may be another stack's broker.
        os.environ.update(running["env"])
        settings = load_settings()
        store = open_settings_store(settings)
        started = time.monotonic()
        since_ms = int(time.time() * 1000) - 2_000
        ingest_path(skus_dir, settings, store=store)
        state, _, _, complete = wait_until_decided(
            settings, store, running, sku_ids, since_ms, args.timeout_s
        )
        if not complete:
            raise SystemExit(f"the stack did not decide every image within {args.timeout_s:.0f}s")
        generated = state.count(IMAGE_GENERATED)
        elapsed_min = (time.monotonic() - started) / 60
    throughput = round(generated / elapsed_min, 1)
    run = {
        "images": generated,
        "minutes": round(elapsed_min, 2),
        "images_per_min": throughput,
        "options": {**generation_options(args), "k": [int(k) for k in args.k.split(",")]},
        "dataset": args.dataset_identity,
        "environment": environment,
    }
    stack_run = args.workdir / STACK_RUN
    stack_run.write_text(json_file_text(run, label=str(stack_run), indent=None))
    return throughput


def stack_decisions() -> dict[str, int]:
    """The stack store's synthetic images by the gate's (or a person's) decision: accepted, pending..."""
    from collections import Counter

    from services.trainstore.cli import open_manifests

    manifests = open_manifests()
    counts = Counter(row.status for row in manifests.iter_rows() if row.source == "synthetic")
    return dict(sorted(counts.items()))


def group_of(item: GroceryClass, root: Path) -> str:
    """The dataset's top-level group of a class (Fruit, Packages, Vegetables), from its iconic path."""
    return item.iconic.relative_to(root / "iconic-images-and-descriptions").parts[0]


def by_group(evaluation: Any, groups: dict[str, str]) -> dict[str, dict[str, float]]:
    """Mean per-SKU B - A and B' - A' over each group's scored SKUs (where the gain sits); a group with
    none scored (no held-out photo in the half) has no mean and is left out, not written as NaN."""
    out = {}
    for group in sorted({groups[name] for name in evaluation.gain if name in groups}):
        names = [name for name in evaluation.gain if groups.get(name) == group]
        out[group] = {
            "n_skus": len(names),
            "gain_top1": round(float(np.mean([evaluation.gain[n] for n in names])), 4),
            "gain_over_classic_top1": round(
                float(np.mean([evaluation.gain_over_classic[n] for n in names])), 4
            ),
        }
    return out


def stack_training(k: int, classes: list[str], args: argparse.Namespace, export_dir: Path) -> list[Photo]:
    """The retraining store's export for the k SKUs (the policy's real:synthetic cap), as Photos."""
    from services.trainstore.cli import open_manifests
    from shared.trainstore.dataset import export_dataset

    manifests = open_manifests()
    out = export_dir / f"k{k}"
    if out.exists():
        shutil.rmtree(out)
    export_dataset(
        manifests,
        out,
        fmt="imagefolder",
        size_px=args.export_px,
        fit=args.export_fit,
        max_synthetic_per_real=args.max_synthetic_per_real,
        sku_ids=[sku_id(k, name) for name in classes],
    )
    photos = []
    for name in classes:
        for path in sorted((out / sku_id(k, name)).glob("*.png")):
            photos.append(file_photo(name, "real" if path.name.startswith("real-") else "synthetic", path))
    return photos


# --------------------------------------------------------------------------------------------------
# the export policy's try: choose on one half of the held-out set, measure on the other
# --------------------------------------------------------------------------------------------------


HALVES = ("a", "b")
# --drop-by: which per-SKU figure of the earlier result chooses (its "per_sku" field), and its name.
DROP_BY = {"gain": ("gain", "B - A"), "gain-over-classic": ("gain_over_classic", "B' - A'")}


def heldout_halves(heldout: list[Photo], seed: int) -> dict[str, list[Photo]]:
    """The held-out photos in two halves per class, by a draw seeded with the class and ``seed``: half
    "a" gets the first ceil(n/2) of a class's n photos in that draw, "b" the rest; both keep the given
    order. One half chooses (which SKUs' synthetic images to leave out), the other measures what the
    choice does: a choice scored on the photos it was made on reads better than it is."""
    by_class: dict[str, list[int]] = {}
    for index, photo in enumerate(heldout):
        by_class.setdefault(photo.sku_id, []).append(index)
    in_a: set[int] = set()
    for name, indices in by_class.items():
        draw = int(hashlib.sha256(f"heldout-half|{name}|{seed}".encode()).hexdigest()[:16], 16)
        order = np.random.default_rng(draw).permutation(len(indices))
        in_a.update(indices[i] for i in order[: (len(indices) + 1) // 2])
    return {
        "a": [photo for index, photo in enumerate(heldout) if index in in_a],
        "b": [photo for index, photo in enumerate(heldout) if index not in in_a],
    }


def classes_not_scored(classes: list[str], heldout: list[Photo]) -> list[str]:
    """The classes trained on with no photo among ``heldout``: a class of one held-out photo has it in
    half "a" only, and a split may hold none of a class. Its per-SKU figures are of no photo."""
    scored = {photo.sku_id for photo in heldout}
    return [name for name in classes if name not in scored]


def heldout_fingerprint(heldout: list[Photo], root: Path) -> str:
    """The whole held-out set (both halves): each photo's class, path in the dataset and content hash.
    Two runs with the same fingerprint and seed split it into the same halves."""
    lines = sorted(
        json.dumps([photo.sku_id, Path(photo.name).relative_to(root).as_posix(), photo.sha256])
        for photo in heldout
    )
    return sha256_hex("\n".join(lines).encode())


def read_choice(path: Path, *, by: str, ks: list[int]) -> dict[str, Any]:
    """The results JSON ``--drop-synthetic-from`` names, checked to hold what the choice reads: the
    held-out half it was measured on and, at each k of this run, the per-SKU ``--drop-by`` figure.
    ``ValueError`` says what is missing."""
    document = read_json_object(
        path,
        label=str(path),
        missing="the --out of a bench.augment run with --heldout-half",
        kind="a JSON object of bench.augment results",
    )
    heldout = document.get("heldout")
    if not isinstance(heldout, dict) or heldout.get("half") not in HALVES:
        raise ValueError(
            f"{path}: does not say which held-out half it was measured on (no heldout.half): "
            "choose from a run with --heldout-half"
        )
    field, _ = DROP_BY[by]
    per_sku = document.get("per_sku")
    for k in ks:
        figures = per_sku.get(f"k{k}") if isinstance(per_sku, dict) else None
        if not isinstance(figures, dict) or not isinstance(figures.get(field), dict):
            raise ValueError(
                f"{path}: no per-SKU {field!r} at k={k} (per_sku.k{k}.{field}): run it with --k {k}"
            )
    return document


def choice_problem(document: dict[str, Any], args: argparse.Namespace, fingerprint: str) -> str | None:
    """Why the choice's result cannot choose for this run (None if it can): it must have been measured
    on the other half of this very held-out set, split by the same seed."""
    heldout = document["heldout"]
    if heldout.get("fingerprint") != fingerprint or document.get("seed") != args.seed:
        return (
            f"it was measured on another held-out set (or split it with another --seed) than this run's "
            f"{args.split}{'+spare-train' if args.with_spare_train else ''} with --seed {args.seed}: "
            "give it the same --dataset, --split, --with-spare-train, --k and --seed"
        )
    if heldout["half"] == args.heldout_half:
        return (
            f"it was measured on half {args.heldout_half}, the half this run scores: a choice is measured "
            f"on the other half (--heldout-half {'b' if args.heldout_half == 'a' else 'a'})"
        )
    return None


def synthetic_to_leave_out(
    document: dict[str, Any], source: str, *, by: str, min_gain: float, k: int
) -> dict[str, float]:
    """SKU -> its figure, for the SKUs whose synthetic images the product's export policy
    (``synthetic_left_out_by_evaluation``) leaves out by the result's per-SKU ``--drop-by`` figure at k.
    ``ValueError`` for a figure that is not a number."""
    from shared.trainstore.dataset import synthetic_left_out_by_evaluation

    field, _ = DROP_BY[by]
    figures = document["per_sku"][f"k{k}"]
    evaluation = {"gain": figures[field], "train_counts": figures.get("train_counts")}
    left_out = synthetic_left_out_by_evaluation(evaluation, min_gain=min_gain, source=source)
    return {sku: figures[field][sku] for sku in left_out}


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


# The options that choose the classifier (EvaluationConfig.from_options reads them; the seed also
# picks the SKUs' photos, so the stack run's options guard it).
CLASSIFIER_OPTIONS = tuple(name for name in EvaluationConfig.CLI_FIELDS if name != "seed")
# The options that choose what the classifiers train on from a stored stack: the export's. With
# --reuse-stack they too re-scored the test split in seconds (another cap, side or fit).
EXPORT_OPTIONS = ("max_synthetic_per_real", "export_px", "export_fit")


def k_values(text: str) -> str:
    """``--k``: distinct non-negative counts, comma-separated (``"0,1,3"``); a typo was a traceback."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"expected distinct whole numbers like 0,1,3, got {text!r}")
    ks = [int(part) for part in parts]
    if len(set(ks)) != len(ks):  # by value: "0,00" ran k=0 twice, one's figures over the other's
        raise argparse.ArgumentTypeError(f"expected distinct whole numbers like 0,1,3, got {text!r}")
    return ",".join(str(k) for k in ks)


def parameters_problem(text: str, *, pile: bool) -> str | None:
    """Why ``--parameters`` would fail every composite (not JSON, not an object, a knob the backend
    refuses, or, with a pile share, one a pile cannot honour); None if it would not. Checked before
    the run, not found in the generation after the leakage checks and the backbone load."""
    from shared.generation.composite import CompositeError, check_parameters

    try:
        parameters = json.loads(text)
    except ValueError as exc:
        return f"not JSON ({exc})"
    if not isinstance(parameters, dict):
        return "not a JSON object of composite knobs"
    try:
        check_parameters(parameters)
        if pile:  # piles are asked for on top of these (--pile-share)
            check_parameters({**parameters, "arrangement": "pile"})
    except CompositeError as exc:
        return f"{exc}{' (with --pile-share)' if pile else ''}"
    return None


def try_name(text: str) -> str:
    """``--tag``: a plain name, as it becomes part of file names (a "/" failed when the first results
    were written, after the generation and the first evaluation)."""
    if text and not (text[0] != "." and all(c.isascii() and (c.isalnum() or c in "._-") for c in text)):
        raise argparse.ArgumentTypeError(f"expected a name of letters, digits, '.', '_', '-', got {text!r}")
    return text


def main(argv: list[str] | None = None) -> int:
    """Run the bench; a setting, a --matting-model or a store that fails says so in a line."""
    return run_command("python -m bench.augment", lambda: _bench(argv))


def _bench(argv: list[str] | None) -> int:
    from services.trainstore.cli import gain_fraction  # --min-gain as the export's: a fraction, -1 to 1

    parser = argparse.ArgumentParser(
        prog="python -m bench.augment", description=__doc__.split("\n\n")[0].replace("``", "")
    )
    parser.add_argument(
        "--dataset", type=path_argument("folder"), required=True, help="GroceryStoreDataset's dataset/ folder"
    )
    parser.add_argument(
        "--split", choices=("val", "test"), default="test", help="held-out photos (default test)"
    )
    parser.add_argument("--mode", choices=("stack", "in-process"), default="stack", help="default stack")
    parser.add_argument(
        "--with-spare-train",
        action="store_true",
        help="with --split val: also score on the train photos no SKU and no scene uses (less noise)",
    )
    parser.add_argument(
        "--heldout-half",
        choices=HALVES,
        default=None,
        help="with --split val: score on one half of each class's held-out photos (drawn by --seed); "
        "choose on one half, measure the choice on the other",
    )
    parser.add_argument(
        "--drop-synthetic-from",
        type=path_argument("file"),
        default=None,
        metavar="RESULT.json",
        help="in-process, with --heldout-half: leave out the synthetic images of the SKUs whose per-SKU "
        "figure (--drop-by) in RESULT.json, measured on the other half, is below --min-gain (the export "
        "policy of 'skuforge dataset export --evaluation'); their classic augmentation stays",
    )
    parser.add_argument(
        "--drop-by",
        choices=tuple(DROP_BY),
        default="gain",
        help="with --drop-synthetic-from: the per-SKU B - A (gain, the export policy's) or B' - A' "
        "(gain-over-classic) (default gain)",
    )
    parser.add_argument(
        "--min-gain",
        type=gain_fraction,
        default=None,
        help="with --drop-synthetic-from: least per-SKU figure that keeps a SKU's synthetic images, a "
        "fraction of top-1 from -1 to 1 (default 0.0)",
    )
    parser.add_argument(
        "--k",
        type=k_values,
        default="0,1,3",
        help="real in-store photos per SKU, comma-separated (default 0,1,3)",
    )
    parser.add_argument(
        "--reuse-stack",
        action="store_true",
        help="stack mode: score what the last stack run of --workdir stored instead of running it again "
        "(refused unless its seed, k, generation options and --dataset's photos are these)",
    )
    parser.add_argument(
        "--classes", type=positive_int, default=None, help="only the first N classes (a smoke run)"
    )
    parser.add_argument("--variants-per-sku", type=positive_int, default=12, help="default 12")
    parser.add_argument(
        "--scenes-per-class",
        type=positive_int,
        default=4,
        help=(
            "train photos per class as scenes (default 4; refused above what a class has left after "
            "its references)"
        ),
    )
    parser.add_argument(
        "--photo-share",
        type=SHARE,
        default=1.0,
        help="share of variants on scene photos (0 to 1) (default 1)",
    )
    parser.add_argument(
        "--parameters", default="{}", help="JSON composite parameters for every variant (default {})"
    )
    parser.add_argument(
        "--pile-share", type=SHARE, default=0.0, help="share of loose-produce variants heaped (0 to 1)"
    )
    # The composite backend's smallest side to the generator's largest: outside it every photo was
    # refused after the dataset was read, or (100000) the canvases ran the machine out of memory.
    parser.add_argument(
        "--size",
        type=int_between(MIN_SIZE_PX, MAX_SIZE_PX),
        default=384,
        help=f"generated image side (px, {MIN_SIZE_PX} to {MAX_SIZE_PX}) (default 384)",
    )
    parser.add_argument(
        "--export-px",
        type=EXPORT_PX,
        default=256,
        help="export's shorter side (px, 16 to 4096) (default 256)",
    )
    parser.add_argument(
        "--export-fit",
        choices=("keep", "pad"),
        default="keep",
        help="export: aspect kept, or padded square (default keep)",
    )
    parser.add_argument("--max-synthetic-per-real", type=positive_int, default=12, help="default 12")
    parser.add_argument("--max-reference-px", type=positive_int, default=1024, help="default 1024")
    parser.add_argument(
        "--min-plain-background",
        type=SHARE,
        default=0.7,
        help="cut-out sources (0 to 1; 0: every photo) (default 0.7)",
    )
    parser.add_argument(
        "--own-scene-share",
        type=SHARE,
        default=0.0,
        help="in-process: share of variants on the SKU's own in-store photos as scenes (0: off)",
    )
    parser.add_argument(
        "--own-scene-blur",
        type=SCENE_BLUR,
        default=None,
        help="in-process: those scenes' defocus, a fraction of the canvas, 0 to 0.5 (default: drawn)",
    )
    parser.add_argument(
        "--min-cutout-solidity",
        type=SHARE,
        default=0.0,
        help="in-process: also cut from photos whose mask is one whole object (0: off)",
    )
    parser.add_argument(
        "--matting-model",
        type=model_location,
        default=None,
        help="in-process masks (default: the committed model)",
    )
    parser.add_argument(
        "--edge-recolour",
        choices=("on", "off"),
        default="on",
        help="in-process: recolour the cut-out's outer pixels from further in (decontaminate_edge; "
        "on, as the composite backend does) or keep the reference's own edge pixels (default on)",
    )
    parser.add_argument(
        "--series",
        choices=("class", "coarse"),
        default="class",
        help="a SKU's series, never its scenes' tag: its class, or its coarse class (no apple on apples) "
        "(default class)",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="draws the SKUs' photos and scenes; the generator's seed (a stack's SKUFORGE_GENERATION_SEED)",
    )
    # The classifier options take what `skuforge evaluate` takes (shared.evaluation: one rule for both).
    parser.add_argument(
        "--l2", type=L2, default=1e-2, help="L2 weight of the linear head, 0 to 1e6 (default 0.01)"
    )
    parser.add_argument(
        "--real-weight",
        type=REAL_WEIGHT,
        default=4.0,
        help="loss weight of a real photo relative to a synthetic or augmented image, 1e-6 to 1e6 "
        "(default 4)",
    )
    parser.add_argument(
        "--tune-stages",
        type=non_negative_int,
        default=0,
        help="0: frozen features + linear head (default); n: also fine-tune the backbone's last n stages",
    )
    parser.add_argument(
        "--tune-epochs", type=TUNE_EPOCHS, default=8, help="epochs of the tuned stages, 0 to 1000 (default 8)"
    )
    parser.add_argument(
        "--tune-lr",
        type=TUNE_LR,
        default=1e-4,
        help="AdamW learning rate of the tuned stages, 1e-9 to 1 (default 0.0001)",
    )
    add_curve_max_option(parser)  # each k's curve, in its evaluation file under --workdir
    parser.add_argument(
        "--timeout-s",
        type=positive_float,
        default=7200.0,
        help="stack mode: how long the stack may take to decide every image (s, above 0) (default 7200)",
    )
    parser.add_argument(
        "--workdir", type=path_argument("folder"), default=Path("var/augment"), help="default var/augment"
    )
    parser.add_argument(
        "--out",
        type=path_argument("file"),
        default=None,
        help="results JSON (default bench/results/augment*.json)",
    )
    parser.add_argument(
        "--tag",
        type=try_name,
        default="",
        help="name of this try, on val (letters, digits, ._-; default none)",
    )
    args = parser.parse_args(argv)
    if args.heldout_half is not None and args.split != "val":
        parser.error("--heldout-half splits the held-out set to choose on one half: only with --split val")
    if args.drop_synthetic_from is None and (args.min_gain is not None or args.drop_by != "gain"):
        parser.error("--min-gain and --drop-by need --drop-synthetic-from RESULT.json")
    choice = None
    if args.drop_synthetic_from is not None:
        if args.mode != "in-process" or args.heldout_half is None:
            parser.error(
                "--drop-synthetic-from is an in-process try measured on one held-out half: give "
                "--mode in-process --split val --heldout-half a|b"
            )
        try:
            choice = read_choice(
                args.drop_synthetic_from, by=args.drop_by, ks=[int(k) for k in args.k.split(",")]
            )
        except ValueError as exc:
            parser.error(f"--drop-synthetic-from {exc}")
    if problem := parameters_problem(args.parameters, pile=args.pile_share > 0):
        parser.error(f"--parameters {args.parameters}: {problem}")
    if args.with_spare_train and args.split != "val":
        parser.error("--with-spare-train adds train photos to the held-out set: only with --split val")
    if args.classes is not None and args.out is None:
        parser.error("--classes is a smoke run: give --out, so that it does not replace bench/results/")
    if args.mode == "in-process" and args.split == "test":
        # The test split is for the final figures, made through the stack: a try scored on it is a choice
        # made on test, and it replaced bench/results/augment.json.
        parser.error("--mode in-process is for tries: score them on val (--split val), not on the test split")
    if args.edge_recolour == "off" and args.mode != "in-process":
        parser.error("--edge-recolour off is an in-process try: a stack runs the composite backend as served")
    if args.mode == "stack":
        # Recorded under "generation" as if the stack had run them.
        tries = [
            f"--{name.replace('_', '-')}"
            for name in IN_PROCESS_ONLY
            if getattr(args, name) != parser.get_default(name)
        ]
        if tries:
            parser.error(
                f"{', '.join(tries)}: in-process tries only (--mode in-process); a stack has no such setting"
            )
    if args.split == "test":
        # --reuse-stack scores the stored stack again in seconds: with another classifier it was a way
        # to try classifiers on the test split, and the file did not say which one it used.
        changed = [
            f"--{name.replace('_', '-')} {getattr(args, name)}"
            for name in (*CLASSIFIER_OPTIONS, *EXPORT_OPTIONS)
            if getattr(args, name) != parser.get_default(name)
        ]
        if changed:
            parser.error(
                f"the test split is scored with the committed classifier and export, not "
                f"{', '.join(changed)}: try them on val (--split val) and make the chosen one the default"
            )
    default_out = results_file(args)
    out = args.out or default_out
    # bench/results/ holds the kept records the docs cite: the test figures are replaced only by a full
    # test run, and no other run replaces a kept file (a val try with --out bench/results/augment.json
    # wrote val figures where the docs read test ones).
    test_figures = out.resolve() == RESULTS / "augment.json"
    full_test_run = args.split == "test" and args.classes is None and test_figures
    if out.resolve().parent == RESULTS and out.exists() and not full_test_run:
        parser.error(
            f"{out} exists (a kept record the docs cite): name this try with --tag, or give --out "
            "outside bench/results/"
        )
    # Checked before the generation and every evaluation, not found in a traceback when the results
    # are written after them.
    if problem := file_problem(out, default_out.name):
        parser.error(f"--out {out}: {problem}")
    session = None
    if args.mode == "in-process":
        from shared.matting.session import open_tool_session

        # Opened once for every k, before the dataset is read and the backbone loaded: a bad model was
        # refused minutes into a run, and opened again for each k.
        session = open_tool_session(args.matting_model, "--matting-model", threads=2)
    ks = [int(k) for k in args.k.split(",")]
    started = time.time()
    data = read_grocery(args.dataset)
    if args.classes is not None:
        data = Grocery(data.root, data.classes[: args.classes], data.splits)
    classes = [item.name for item in data.classes]
    if data.classes:
        # A class with fewer train photos gave its SKU all it had, and the results said k for it too.
        fewest = min(data.classes, key=lambda item: len(data.splits["train"][item.name]))
        if max(ks) > (have := len(data.splits["train"][fewest.name])):
            parser.error(
                f"--k {args.k}: {fewest.name} has {have} train photos, fewer than k={max(ks)} in-store "
                f"photos per SKU; give k values up to {have}"
            )
    all_refs = {k: references(data, k, args.seed) for k in ks}
    used = {path for refs in all_refs.values() for paths in refs.values() for path in paths}
    try:
        scenes = scene_photos(data, args.scenes_per_class, args.seed, used)
    except TooFewScenePhotos as exc:
        parser.error(
            f"--scenes-per-class {args.scenes_per_class}: {exc}; give --scenes-per-class up to {exc.left}"
        )
    heldout = [file_photo(name, "real", path) for name in classes for path in data.splits[args.split][name]]
    if args.split == "val" and args.with_spare_train:
        # Val has 296 photos (about +-3 points of noise); the train photos no SKU and no scene uses are
        # train data too, so choices may be measured on them as well.
        scene_paths = {path for paths in scenes.values() for path in paths}
        heldout += [
            file_photo(name, "real", path)
            for name in classes
            for path in data.splits["train"][name]
            if path not in used and path not in scene_paths
        ]
    whole_set = heldout_fingerprint(heldout, data.root)
    whole_set_photos = len(heldout)
    if args.heldout_half is not None:
        heldout = heldout_halves(heldout, args.seed)[args.heldout_half]
    if not_scored := classes_not_scored(classes, heldout):
        where = "the split" if args.heldout_half is None else f"held-out half {args.heldout_half}"
        print(
            f"note: {len(not_scored)} class(es) have no photo in {where}, so they are trained on but not "
            f"scored: {', '.join(not_scored)}",
            file=sys.stderr,
        )
    left_out: dict[int, dict[str, float]] = {}
    if choice is not None:
        if problem := choice_problem(choice, args, whole_set):
            parser.error(f"--drop-synthetic-from {args.drop_synthetic_from}: {problem}")
        try:
            left_out = {
                k: synthetic_to_leave_out(
                    choice,
                    str(args.drop_synthetic_from),
                    by=args.drop_by,
                    min_gain=0.0 if args.min_gain is None else args.min_gain,
                    k=k,
                )
                for k in ks
            }
        except ValueError as exc:
            parser.error(f"--drop-synthetic-from {exc}")
        if choice.get("generation") != generation_options(args):
            print(
                f"note: {args.drop_synthetic_from} was measured on images of other generation options: "
                "its per-SKU figures describe those images",
                file=sys.stderr,
            )
    check_disjoint(
        [(photo.name, photo.sha256) for photo in heldout],
        reference=[(str(path), sha256_file(path)) for path in used],
        scene=[(str(path), sha256_file(path)) for paths in scenes.values() for path in paths],
    )
    heldout_hashes = _hashed((Path(photo.name) for photo in heldout), heldout=True)
    hashed = {name for name, _ in heldout_hashes}
    if unhashable := [photo.name for photo in heldout if photo.name not in hashed]:
        # Left out of the copy check below without a word; skuforge evaluate names them too.
        shown = ", ".join(unhashable[:10]) + (
            f" and {len(unhashable) - 10} more" if len(unhashable) > 10 else ""
        )
        print(
            f"note: {len(unhashable)} held-out photo(s) have too little detail for a perceptual hash, so "
            f"only exact copies of them were looked for among the references and scenes: {shown}",
            file=sys.stderr,
        )
    check_no_near_duplicates(
        heldout_hashes,
        reference=_hashed(used),
        scene=_hashed(path for paths in scenes.values() for path in paths),
    )
    # A SKU's series is its class (or coarse class); a scene's folder is its tag, and the composite
    # backend never gives a SKU a scene tagged like its series.
    args.series_of = {
        item.name: item.name if args.series == "class" else item.coarse for item in data.classes
    }
    scenes_dir = args.workdir / ("scenes" if args.series == "class" else f"scenes-{args.series}")
    # What a stack run is given, recorded with it: --reuse-stack scores only the same photos' images,
    # made with the same series tags.
    references_of = {name: {path for refs in all_refs.values() for path in refs[name]} for name in classes}
    args.dataset_identity = dataset_identity(data.root, references_of, scenes, args.series_of)
    if args.mode == "stack" and args.reuse_stack:
        # What an older record's fingerprint covers.
        args.dataset_photos_fingerprint = photos_fingerprint(
            data.root, [*used, *(path for paths in scenes.values() for path in paths)]
        )
        refuse_another_stack_run(args, ks)  # before the backbone loads
    elif args.mode == "stack":
        # Before the scene library is written: a used stack's stays the one it was started with.
        refuse_a_used_stack(args.workdir / "stack")
    if not args.reuse_stack:
        by_tag: dict[str, list[Path]] = {}
        for name, paths in scenes.items():
            by_tag.setdefault(args.series_of[name], []).extend(paths)
        write_scene_library(by_tag, scenes_dir)
    backbone = open_backbone(BackboneSpec())
    featurizer = run_featurizer(backbone, args.workdir)
    # The curve is no classifier option: the test split takes any --curve-max (it changes no figure).
    config = replace(EvaluationConfig.from_options(args), curve_max=args.curve_max)

    throughput = None
    if args.mode == "stack":
        # The stack's settings (its store among them), which this process reads the store back with too.
        use_stack_environment(stack_environment(args, scenes_dir))
    if args.mode == "stack" and args.reuse_stack:
        # Score again what the last stack run of this workdir stored (e.g. after a classifier change).
        throughput = json.loads((args.workdir / STACK_RUN).read_text())["images_per_min"]
    elif args.mode == "stack":
        sku_ids = write_sku_folders(all_refs, args.workdir / "skus", args.series_of)
        throughput = run_stack(args.workdir / "skus", sku_ids, scenes_dir, args)
    results: dict[str, Any] = {}
    evaluations = {}
    for k in ks:
        classic_per_sku: dict[str, int] | None = None
        if args.mode == "stack":
            training = stack_training(k, classes, args, args.workdir / "export")
            # The photos actually exported as real, not only the references this run meant to ingest.
            exported = [Path(photo.name) for photo in training if photo.source == "real"]
            check_no_near_duplicates(heldout_hashes, exported_real=_hashed(exported))
        else:
            assert session is not None  # in-process
            made = generate_in_process(all_refs[k], scenes_dir, args, generated_dir(args, k), session, k=k)
            if k in left_out:
                # The SKUs keep as many classic augmentations as they had synthetic images (A' and B').
                classic_per_sku = {name: len(paths) for name, paths in made.items()}
                made = {name: [] if name in left_out[k] else paths for name, paths in made.items()}
                print(f"k={k}: synthetic images left out for {len(left_out[k])} SKUs", flush=True)
            training = [
                file_photo(name, "real", path) for name, paths in all_refs[k].items() for path in paths
            ]
            training += [
                file_photo(name, "synthetic", path) for name, paths in made.items() for path in paths
            ]
        evaluation = run_evaluation(training, heldout, featurizer, config, classic_per_sku=classic_per_sku)
        evaluations[k] = evaluation
        results[f"k{k}"] = evaluation.summary()
        print(f"k={k}: " + json.dumps(results[f"k{k}"]), flush=True)
        evaluation_file = args.workdir / f"{evaluation_name(args)}-k{k}.json"
        evaluation_file.write_text(json_file_text(asdict(evaluation), label=str(evaluation_file), indent=1))
    groups = {item.name: group_of(item, data.root) for item in data.classes}
    report: dict[str, Any] = {
        **results,
        "by_group": {f"k{k}": by_group(evaluation, groups) for k, evaluation in evaluations.items()},
        # Per SKU, what --drop-synthetic-from chooses by (the fields of skuforge evaluate's evaluation.json).
        "per_sku": {
            f"k{k}": {
                "gain": evaluation.gain,
                "gain_over_classic": evaluation.gain_over_classic,
                "train_counts": evaluation.train_counts,
            }
            for k, evaluation in evaluations.items()
        },
        "split": args.split + ("+spare-train" if args.with_spare_train else ""),
        # The half scored (null: all of it), and the whole set it is half of (--drop-synthetic-from
        # checks that a choice was made on the other half of this set).
        "heldout": {
            "half": args.heldout_half,
            "whole_set_photos": whole_set_photos,
            "fingerprint": whole_set,
        },
        "synthetic_left_out": None
        if choice is None
        else {
            "from": str(args.drop_synthetic_from),
            "measured_on_half": choice["heldout"]["half"],
            "by": DROP_BY[args.drop_by][1],
            "min_gain": 0.0 if args.min_gain is None else args.min_gain,
            "skus": {f"k{k}": skus for k, skus in left_out.items()},
        },
        "mode": args.mode,
        # --reuse-stack scores again what the last stack run stored: wall_s is then this scoring's only.
        "reused_stack": bool(args.mode == "stack" and args.reuse_stack),
        "n_test": len(heldout),
        # The classes scored, as n_test counts the photos scored; the classifier chooses among every
        # class, those with no held-out photo here (per-SKU figures of no photo) included.
        "n_classes": len(classes) - len(not_scored),
        "classes_not_scored": not_scored,
        "variants_per_sku": args.variants_per_sku,
        "backbone": backbone.backbone_id,
        "classifier": describe_classifier(config.__dict__),
        "classifier_options": {name: getattr(args, name) for name in CLASSIFIER_OPTIONS},
        "images_per_min_through_stack": throughput,
        # Every k's SKUs went through one stack: its generated images, and the decisions on them.
        "stack_images": None
        if args.mode != "stack"
        else {
            "generated": json.loads((args.workdir / STACK_RUN).read_text())["images"],
            "by_decision": stack_decisions(),
            # Every SKUFORGE_* the stack got (None: a run from before they were recorded).
            "environment": json.loads((args.workdir / STACK_RUN).read_text()).get("environment"),
        },
        "photo_share": args.photo_share,
        "scenes": sum(len(paths) for paths in scenes.values()),
        "parameters": json.loads(args.parameters),
        # In-process runs train on every generated image: the export's cap applies through the stack only.
        "max_synthetic_per_real": args.max_synthetic_per_real if args.mode == "stack" else None,
        "export_fit": args.export_fit,
        "export_px": args.export_px,
        "generation": generation_options(args)
        | ({"edge_recolour": "off"} if args.edge_recolour == "off" else {}),
        "generation_backend": "composite",  # in-process, and set for a stack (STACK_FIXED)
        "k": ks,
        "seed": args.seed,
        "dataset": args.dataset_identity,  # the folder, and a fingerprint of the references and scenes
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": _cpus()},
        "wall_s": round(time.time() - started, 1),
    }
    write_report(out, report)
    print(f"wrote {out}")
    return 0


def write_report(out: Path, report: dict[str, Any]) -> None:
    """Write the results file ``out`` (``--drop-synthetic-from`` reads one back); a figure that is NaN or
    infinite is ``NonFiniteFigure``, naming it, and nothing is written."""
    text = json_file_text(report, label=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)  # a folder file_problem found could be made
    out.write_text(text)


def evaluation_name(args: argparse.Namespace) -> str:
    """Stem of the per-k evaluation files under --workdir: runs on another held-out set or with another
    classifier (val alone or val + spare train; a fine-tuned tail) must not overwrite each other's."""
    spare = "-spare" if args.with_spare_train else ""
    half = f"-half{args.heldout_half}" if getattr(args, "heldout_half", None) else ""
    tune = f"-tune{args.tune_stages}" if args.tune_stages else ""
    drop = ""
    if getattr(args, "drop_synthetic_from", None) is not None:  # which choice, by its file and rule
        rule = f"{args.drop_synthetic_from.resolve()}|{args.drop_by}|{args.min_gain}"
        drop = f"-drop{hashlib.sha256(rule.encode()).hexdigest()[:8]}"
    return f"evaluation-{args.split}{spare}{half}-{args.mode}-{args.tag}{tune}{drop}"


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
