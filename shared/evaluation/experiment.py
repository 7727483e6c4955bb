"""The experiment of the write-ups, as code: does a SKU's synthetic data help a classifier of it?

Given each SKU's training images (its real photos and the synthetic images the retraining store
exports for it) and held-out real photos of the same SKUs, five classifiers are trained on frozen
backbone features (``linear.fit_predict``) and scored on the held-out photos, top-1:

* **A**  real photos only;
* **A'** real + classic augmentation of them (``classic.py``), as many augmented images per SKU as
  that SKU has synthetic ones: the same number of extra images, the baseline skuforge must beat;
* **B**  real + synthetic (the export under the real:synthetic policy);
* **B'** B + the same classic augmentation as A';
* **C**  synthetic only (SKUs with no synthetic image are unknown to C, so all wrong).

Every SKU of the training images is a class, held-out photos or not; a SKU with none is trained on
and named in ``not_scored`` (no figure of no photo). Per scored SKU: top-1 under each, and the
differences B - A and B' - A'. ``curve`` gives A, B and C against the number of real photos per SKU
(the first j of each SKU's real photos, synthetic fixed; a SKU with fewer than j keeps all of its
own, which the report notes), up to the most real photos a scored SKU has, or ``curve_max`` if fewer
(``curve_cut`` records the cut): two more fits a point.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from shared.errors import ImageRejected, with_detail
from shared.evaluation.backbone import Backbone, FeatureCache
from shared.evaluation.classic import classic_augment
from shared.evaluation.linear import fit_predict
from shared.evaluation.tune import fit_predict_tuned
from shared.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_image

Source = Literal["real", "synthetic"]
CONDITIONS = ("A", "A'", "B", "B'", "C")
CONDITION_NAMES = {
    "A": "real only",
    "A'": "real + classic augmentation",
    "B": "real + synthetic",
    "B'": "real + classic + synthetic",
    "C": "synthetic only",
}
WORSE_BY = 0.10  # a SKU counts as hurt when B' is this much below A'


@dataclass(frozen=True)
class Photo:
    """One image: its SKU, where it came from, and how to read its bytes."""

    sku_id: str
    source: Source
    name: str  # path or URI: for reports and leakage checks
    sha256: str  # of the encoded bytes
    read: Callable[[], bytes] = field(repr=False, compare=False)


@dataclass(frozen=True)
class EvaluationConfig:
    seed: int = 0
    l2: float = 1e-2
    real_weight: float = 4.0  # loss weight of a real photo relative to a synthetic or augmented one
    # Side of a classic augmentation; never below the backbone's input side (run_evaluation raises
    # it to that), so an augmented image is not upscaled where the real and synthetic ones are not.
    classic_px: int = 256
    curve: bool = True
    # The curve's last point, in real photos per SKU; None: the most a scored SKU has; below 2: no curve. Each
    # point is two more fits (two fine-tunings with tune_stages): 20 beside the 5 of the conditions for
    # a user with 10 photos per SKU (skuforge evaluate --curve-max).
    curve_max: int | None = None
    misclassified_shown: int = 8
    # 0: frozen features + a linear head (the default). n > 0: also fine-tune the backbone's last n
    # stages (tune.py), for tune_epochs epochs at tune_lr.
    tune_stages: int = 0
    tune_epochs: int = 8
    tune_lr: float = 1e-4

    # What a command line sets (skuforge evaluate, bench/augment.py: options of the same names).
    CLI_FIELDS: ClassVar[tuple[str, ...]] = (
        "seed",
        "l2",
        "real_weight",
        "tune_stages",
        "tune_epochs",
        "tune_lr",
    )

    @classmethod
    def from_options(cls, options: Any) -> EvaluationConfig:
        """The config an argparse namespace with the ``CLI_FIELDS`` options asks for."""
        return cls(**{name: getattr(options, name) for name in cls.CLI_FIELDS})


def describe_classifier(config: dict[str, Any]) -> str:
    """In words, which classifier an ``EvaluationConfig`` (as its dict) trains."""
    stages = int(config.get("tune_stages", 0))
    if not stages:
        return "frozen features + a linear head"
    return (
        f"the backbone's last {stages} stage{'s' if stages > 1 else ''} fine-tuned with a linear head "
        f"({config['tune_epochs']} epochs, lr {config['tune_lr']:g})"
    )


@dataclass
class EvaluationResult:
    """Top-1 per condition, overall and per SKU, and what the report plots."""

    n_heldout: int
    n_skus: int  # the SKUs scored
    backbone: str
    top1: dict[str, float]
    per_sku: dict[str, dict[str, float]]  # scored sku -> condition -> top-1
    gain: dict[str, float]  # sku -> B - A
    gain_over_classic: dict[str, float]  # sku -> B' - A'
    frac_skus_worse_by_10pt: float
    train_counts: dict[str, dict[str, int]]  # sku -> real / synthetic / classic
    curve: dict[str, list[float]]  # "real_per_sku", "A", "B", "C"
    misclassified: list[dict[str, str]]  # under B': name, true, predicted
    config: dict[str, Any]
    # sku -> why it has no per-SKU figures: trained on (a class the classifiers may answer), not scored.
    not_scored: dict[str, str] = field(default_factory=dict)
    # Where curve_max stopped the curve short of the scored SKUs' real photos: {"curve_max": n,
    # "most_real_per_sku": m}; None where the curve reached them (or no SKU had two to vary).
    curve_cut: dict[str, int] | None = None

    def summary(self) -> dict[str, Any]:
        """The headline figures (what ``bench/augment.py`` records per k)."""
        return {
            "real_only_top1": self.top1["A"],
            "real_plus_classic_top1": self.top1["A'"],
            "real_plus_synthetic_top1": self.top1["B"],
            "real_plus_classic_plus_synthetic_top1": self.top1["B'"],
            "synthetic_only_top1": self.top1["C"],
            "gain_top1": round(self.top1["B"] - self.top1["A"], 4),
            "gain_over_classic_top1": round(self.top1["B'"] - self.top1["A'"], 4),
            "frac_skus_worse_by_10pt": self.frac_skus_worse_by_10pt,
        }


class Featurizer:
    """Features of photos and of classic augmentations of them, through the on-disk cache.

    With ``tune_stages`` > 0 the answer is the frozen trunk's feature maps instead (what a
    fine-tuned tail is trained on; ``Backbone.trunk_maps``).
    """

    def __init__(
        self,
        backbone: Backbone,
        cache: FeatureCache,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        """``max_pixels``/``max_bytes``: the decode limits ingest held the photos to (the settings'
        ``SKUFORGE_MAX_IMAGE_PIXELS``/``_BYTES``). A limit other than the default is part of the cache
        key: a JPEG over the pixel limit decodes reduced, and a photo over the byte limit is refused,
        where a warm cache keyed by its bytes alone handed back its features."""
        self.backbone, self.cache = backbone, cache
        self.limits = (max_pixels, max_bytes)
        self._key_tag = "" if max_pixels == DEFAULT_MAX_PIXELS else f"|max{max_pixels}"
        if max_bytes != DEFAULT_MAX_BYTES:
            self._key_tag += f"|maxbytes{max_bytes}"

    def _key(self, sha256: str) -> str:
        return hashlib.sha256(f"{sha256}{self._key_tag}".encode()).hexdigest() if self._key_tag else sha256

    def of(self, photos: Sequence[Photo], tune_stages: int = 0) -> npt.NDArray[np.float32]:
        jobs = [
            (self._key(photo.sha256), functools.partial(_decoded, photo, self.limits)) for photo in photos
        ]
        return self._features(jobs, tune_stages)

    def of_classic(
        self, photos: Sequence[Photo], seed: int, size_px: int, tune_stages: int = 0
    ) -> npt.NDArray[np.float32]:
        """Features of classic augmentations: the i-th entry augments photos[i] with its own draw."""
        jobs = []
        for index, photo in enumerate(photos):
            key = hashlib.sha256(f"{photo.sha256}|classic|{seed}|{index}|{size_px}".encode()).hexdigest()

            def make(p: Photo = photo, k: str = key) -> Image.Image:
                rng = np.random.default_rng(int(k[:15], 16))
                return classic_augment(_decoded(p, self.limits), rng, size_px)

            key = self._key(key)  # the draw stays the same under any limit; the pixels may not

            jobs.append((key, make))
        return self._features(jobs, tune_stages)

    def _features(
        self, jobs: Sequence[tuple[str, Callable[[], Image.Image]]], tune_stages: int
    ) -> npt.NDArray[np.float32]:
        if tune_stages:
            representation = self.backbone.trunk_id(tune_stages)

            def compute(images: list[Image.Image]) -> npt.NDArray[np.float32]:
                return self.backbone.trunk_maps(images, tune_stages)

        else:
            representation = self.backbone.cache_id
            compute = self.backbone.features
        found: dict[int, npt.NDArray[np.float32]] = {}
        missing = []
        for index, (key, _) in enumerate(jobs):
            cached = self.cache.get(representation, key)
            if cached is None:
                missing.append(index)
            else:
                found[index] = cached
        for first in range(0, len(missing), 64):
            chunk = missing[first : first + 64]
            vectors = compute([jobs[index][1]() for index in chunk])
            for index, vector in zip(chunk, vectors, strict=True):
                # Maps are cached as float16, and used as such now too, so a cold and a warm run agree.
                stored = vector.astype(np.float16) if tune_stages else vector
                self.cache.put(representation, jobs[index][0], stored)
                found[index] = stored.astype(np.float32)
        if not jobs:
            return np.zeros((0, *self.backbone.output_shape(tune_stages)), dtype=np.float32)
        return np.stack([found[index] for index in range(len(jobs))]).astype(np.float32)


def _decoded(photo: Photo, limits: tuple[int, int]) -> Image.Image:
    try:
        image = decode_image(photo.read(), max_pixels=limits[0], max_bytes=limits[1])
    except ImageRejected as exc:  # among hundreds of photos, the reason alone does not say which
        raise with_detail(exc, f"{photo.name}: {exc.detail}") from exc
    # Features are taken at 224 px: shrinking large photos first keeps the decode cheap to hold.
    image.thumbnail((512, 512), Image.Resampling.BILINEAR)
    return image


def run_evaluation(
    training: Sequence[Photo],
    heldout: Sequence[Photo],
    featurizer: Featurizer,
    config: EvaluationConfig | None = None,
    *,
    classic_per_sku: Mapping[str, int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Train A, A', B, B', C on ``training`` and score them on ``heldout`` (see the module docstring).

    ``classic_per_sku``: how many classic augmentations each SKU gets in A' and B' (default: as many
    as its synthetic images). A policy that leaves a SKU's synthetic images out leaves its classic
    augmentation as it was: a user who drops the composites still augments the real photos.
    ``progress`` is told each stage as it begins (a SKU's features, a fit), not each image.
    """
    config = config or EvaluationConfig()
    say = progress or _quiet
    # At --image-px 384 the 256 px augmentations were upscaled to 384 while the real photos and the
    # synthetic images kept their detail: A' and B' were handicapped by their resolution alone.
    input_px = featurizer.backbone.spec.image_px
    if config.classic_px < input_px:
        config = dataclasses.replace(config, classic_px=input_px)
    scored = sorted({photo.sku_id for photo in heldout})
    if not scored:
        raise ValueError("no held-out photos")
    real: dict[str, list[Photo]] = defaultdict(list)
    synthetic: dict[str, list[Photo]] = defaultdict(list)
    for photo in training:
        (real if photo.source == "real" else synthetic)[photo.sku_id].append(photo)
    # Every SKU trained on is a class: one with no held-out photo (a class of one val photo, in the
    # bench's other half) was dropped without a word, and the others chose among fewer classes.
    skus = sorted({*scored, *real, *synthetic})
    not_scored = {sku: "no held-out photo" for sku in sorted(set(skus) - set(scored))}
    without_real = [sku for sku in scored if not real[sku]]
    if without_real:
        raise ValueError(f"held-out SKUs with no real training photo: {', '.join(without_real[:5])}")
    index = {sku: i for i, sku in enumerate(skus)}

    # Classic augmentation: per SKU as many images as it has synthetic ones, from its real photos in turn.
    classic_count = {
        sku: len(synthetic[sku]) if classic_per_sku is None else classic_per_sku.get(sku, len(synthetic[sku]))
        for sku in skus
    }
    classic_sources = {  # none for a SKU with no real photo (one not scored may have synthetic ones only)
        sku: [real[sku][i % len(real[sku])] for i in range(classic_count[sku])] if real[sku] else []
        for sku in skus
    }
    tune = config.tune_stages
    feats_real: dict[str, npt.NDArray[np.float32]] = {}
    feats_syn: dict[str, npt.NDArray[np.float32]] = {}
    feats_classic: dict[str, npt.NDArray[np.float32]] = {}
    for number, sku in enumerate(skus, start=1):
        say(
            f"features of {sku} ({number}/{len(skus)}): {len(real[sku])} real, {len(synthetic[sku])} "
            f"synthetic, {classic_count[sku]} classic augmentations"
        )
        feats_real[sku] = featurizer.of(real[sku], tune)
        feats_syn[sku] = featurizer.of(synthetic[sku], tune)
        feats_classic[sku] = featurizer.of_classic(classic_sources[sku], config.seed, config.classic_px, tune)
    say(f"features of {len(heldout)} held-out photos")
    test_x = featurizer.of(heldout, tune)
    test_y = np.array([index[photo.sku_id] for photo in heldout], dtype=np.int64)

    def predict(parts: dict[str, list[tuple[npt.NDArray[np.float32], float]]]) -> npt.NDArray[np.int64]:
        xs, ys, ws = [], [], []
        for sku, blocks in parts.items():
            for features, weight in blocks:
                xs.append(features)
                ys.append(np.full(len(features), index[sku], dtype=np.int64))
                ws.append(np.full(len(features), weight, dtype=np.float32))
        x = np.concatenate(xs)
        if len(x) == 0:
            return np.full(len(test_y), -1, dtype=np.int64)
        if tune:
            return fit_predict_tuned(
                x,
                np.concatenate(ys),
                test_x,
                len(skus),
                featurizer.backbone.tail(tune),  # a fresh copy per classifier
                weights=np.concatenate(ws),
                l2=config.l2,
                epochs=config.tune_epochs,
                lr=config.tune_lr,
                seed=config.seed,
            )
        return fit_predict(
            x,
            np.concatenate(ys),
            test_x,
            len(skus),
            weights=np.concatenate(ws),
            l2=config.l2,
            seed=config.seed,
        )

    rw = config.real_weight
    sets = {
        "A": {sku: [(feats_real[sku], rw)] for sku in skus},
        "A'": {sku: [(feats_real[sku], rw), (feats_classic[sku], 1.0)] for sku in skus},
        "B": {sku: [(feats_real[sku], rw), (feats_syn[sku], 1.0)] for sku in skus},
        "B'": {
            sku: [(feats_real[sku], rw), (feats_syn[sku], 1.0), (feats_classic[sku], 1.0)] for sku in skus
        },
        "C": {sku: [(feats_syn[sku], 1.0)] for sku in skus},
    }
    predictions = {}
    for number, (condition, parts) in enumerate(sets.items(), start=1):
        say(f"fitting {condition} ({CONDITION_NAMES[condition]}), {number}/{len(sets)}")
        predictions[condition] = predict(parts)
    top1 = {c: round(float((p == test_y).mean()), 4) for c, p in predictions.items()}
    per_sku: dict[str, dict[str, float]] = {}
    for sku in scored:
        rows = test_y == index[sku]
        per_sku[sku] = {c: round(float((p[rows] == test_y[rows]).mean()), 4) for c, p in predictions.items()}
    gain = {sku: round(v["B"] - v["A"], 4) for sku, v in per_sku.items()}
    gain_over_classic = {sku: round(v["B'"] - v["A'"], 4) for sku, v in per_sku.items()}
    worse = sum(1 for value in gain_over_classic.values() if value <= -WORSE_BY + 1e-9)

    curve: dict[str, list[float]] = {"real_per_sku": [], "A": [], "B": [], "C": []}
    # The scored SKUs' photos set the extent: a class no held-out photo scores stretched the curve with
    # points where no scored SKU's training changed (two fits, or fine-tunings, each).
    most = max(len(real[sku]) for sku in scored)
    last = most if config.curve_max is None else min(most, config.curve_max)
    curve_cut = None  # said where it cut the curve, which otherwise read as the whole of it
    if config.curve and most > 1 and last < most:
        curve_cut = {"curve_max": last, "most_real_per_sku": most}
    if config.curve and last > 1:
        say(f"accuracy against real photos per SKU: A and B at 1 to {last} ({2 * last} fits)")
        for j in range(1, last + 1):
            first_j = {sku: [(feats_real[sku][:j], rw)] for sku in skus}
            with_syn = {sku: [*first_j[sku], (feats_syn[sku], 1.0)] for sku in skus}
            curve["real_per_sku"].append(float(j))
            curve["A"].append(round(float((predict(first_j) == test_y).mean()), 4))
            curve["B"].append(round(float((predict(with_syn) == test_y).mean()), 4))
            curve["C"].append(top1["C"])

    wrong = np.flatnonzero(predictions["B'"] != test_y)
    rng = np.random.default_rng(config.seed)
    shown = rng.permutation(wrong)[: config.misclassified_shown]
    misclassified = [
        {
            "name": heldout[i].name,
            "sha256": heldout[i].sha256,
            "true": heldout[i].sku_id,
            "predicted": skus[int(predictions["B'"][i])] if predictions["B'"][i] >= 0 else "",
        }
        for i in sorted(shown)
    ]
    return EvaluationResult(
        n_heldout=len(heldout),
        n_skus=len(scored),
        backbone=featurizer.backbone.backbone_id,
        top1=top1,
        per_sku=per_sku,
        gain=gain,
        gain_over_classic=gain_over_classic,
        frac_skus_worse_by_10pt=round(worse / len(scored), 4),
        train_counts={
            sku: {
                "real": len(real[sku]),
                "synthetic": len(synthetic[sku]),
                "classic": len(classic_sources[sku]),
            }
            for sku in skus
        },
        curve=curve,
        misclassified=misclassified,
        config={**config.__dict__},
        not_scored=not_scored,
        curve_cut=curve_cut,
    )


def _quiet(line: str) -> None:
    """Progress nobody asked for: said nowhere."""


def photo_from_bytes(sku_id: str, source: Source, name: str, data: bytes) -> Photo:
    """A Photo whose bytes are already in memory (tests, small sets)."""
    return Photo(sku_id, source, name, hashlib.sha256(data).hexdigest(), lambda: data)


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
