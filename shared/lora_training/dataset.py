"""The training set of one LoRA job: what goes in, its content hash, and how it lands in the store.

The recipe is what the field reports learned (docs/architecture.md, "Why it exists"):

- **instance images**: each usable reference photo's product (an in-store photo's largest blob, as the
  generator cuts it: ``InstanceSource.cluttered``), composited onto varied scenes by the
  ``composite`` generation backend (so the adapter does not learn the studio background), with the
  prompt ``"<instance prompt>, <tags>"``: the captioner's rare token + class noun, then tags from the
  caption (colours, shape, view) and the scene's name;
- **class images** (prior preservation): ``"<class prompt>"`` images from a configured folder of real
  class photos, or painted by the base model itself, so the class concept survives the training;
- **one JSON index per class** (``index/<class key>.json``): every image, mask, prompt and kind, so
  the trainer never lists the store at start-up. The class key is the noun's slug and a short hash of
  the exact noun (``class_key``): "soda can" and "soda-can" share a slug, and one index overwriting
  the other would leave a resumed job a smaller set than the one it started on.

A job's identity is ``training_set_sha256``: a hash of its inputs (photo and mask sha256, prompts,
tags, whether a photo is cut as an in-store one), of the base model trained on and of the recipe's
knobs that change the weights (not ``checkpoint_every``: a resumed job ends with the weights an
uninterrupted one ends with). A redelivered request, or a restart, finds the same hash and does not
train again; a new SKU in a series changes it and trains a new adapter.

Layout under the set's prefix::

    index/<class key>.json            {"class_noun", "class_prompt", "items": [...]}
    images/<kind>/<item_id>.png       the training images (RGB, resolution x resolution)
    masks/<item_id>.png               where the product is (instance items only)
    complete.json                     written last: the class keys and every item id, in order

An instance item's id is ``<sku_id>-<photo_id>-<scene>`` (``<sku_id>~<photo_id>-<scene>`` for two photos
of the set whose ids join to the same text); a class item's ``class-<class key>-<index>``. A set is
read back by the ids its records hold, so a set built before keeps its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import BadInput
from shared.generation.backend import GenerationRequest, cluttered_cutout, one_object_photos
from shared.generation.composite import CompositeBackend
from shared.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    UInt8Array,
    decode_image,
    decode_mask,
    pixel_array,
)
from shared.store import ObjectStore

log = logging.getLogger(__name__)

ItemKind = Literal["instance", "class"]

# The largest training image side: Stable Diffusion's own sizes (512, 768) fit with room to spare. Above
# it, each class image was squared to that size at start-up and every job ran out of GPU memory, which is
# retried without counting: for ever.
MAX_LORA_RESOLUTION = 2048
# The class-image loss's weight: DreamBooth's is 1. Far above it the product barely trains, and past
# float32's range (1e308 was accepted) the loss was inf at the first step: every job failed for good as
# "diverged", with advice to lower the learning rate or alpha.
MAX_PRIOR_LOSS_WEIGHT = 10.0
# The loss is a noise MSE, below 1 for any model worth training: a larger smallest improvement is never
# reached, and every job stopped "early" after its patience, an adapter that had barely trained.
MAX_EARLY_STOP_MIN_DELTA = 1.0


class TrainingInterrupted(Exception):
    """A stop was requested (SIGTERM) while the job built, encoded or trained its set: what it wrote is
    resumed or built again when the job runs next (``shared/lora_training/train.py``)."""


class TrainingRecipe(BaseModel):
    """The knobs of a LoRA job (``SKUFORGE_LORA_*`` in ``services/lora_trainer/config.py``)."""

    model_config = ConfigDict(frozen=True)

    rank: int = Field(default=8, ge=1, le=256)
    alpha: int = Field(default=8, ge=1, le=1024, description="LoRA scale = alpha / rank")
    learning_rate: float = Field(default=1e-4, gt=0.0, le=0.1)
    max_steps: int = Field(default=800, ge=1, description="step cap: too many steps copy the training images")
    early_stop_patience: int = Field(default=100, ge=0, description="0 = never stop early")
    early_stop_min_delta: float = Field(default=1e-4, ge=0.0, le=MAX_EARLY_STOP_MIN_DELTA)
    # A multiple of 8 (the VAE's factor): diffusers refused any other size when painting class images.
    resolution: int = Field(default=512, ge=64, le=MAX_LORA_RESOLUTION, multiple_of=8)
    scenes_per_photo: int = Field(default=10, ge=1, le=200)
    class_images: int = Field(default=20, ge=0, le=2000)
    prior_loss_weight: float = Field(default=1.0, ge=0.0, le=MAX_PRIOR_LOSS_WEIGHT)
    checkpoint_every: int = Field(default=50, ge=1)
    seed: int = Field(default=0, ge=0, lt=2**32)  # SeedSequence takes no negative seed

    # Knobs that do not change the trained weights, so they stay out of the job's identity:
    # changing them must not retrain every series (a resumed job ends where an uninterrupted one ends).
    NOT_IN_IDENTITY: ClassVar[frozenset[str]] = frozenset({"checkpoint_every"})

    def identity(self) -> dict[str, Any]:
        """The recipe as the job hash sees it: every knob that changes the weights."""
        return self.model_dump(mode="json", exclude=set(self.NOT_IN_IDENTITY))


@dataclass(frozen=True)
class InstanceSource:
    """One reference photo of one SKU, with what the captioner said about it."""

    sku_id: str
    photo_id: str
    image_uri: str
    image_sha256: str
    mask_uri: str
    mask_sha256: str
    instance_prompt: str
    class_noun: str
    class_prompt: str
    tags: tuple[str, ...] = ()
    composite: bool = True  # False: the image is already a scene (an accepted generated image)
    # An in-store photo (its SKU has none on a plain background): its mask's largest blob is trained on,
    # and of the SKU's such photos only those whose blob is one object when any is, as the generator cuts.
    cluttered: bool = False


@dataclass
class TrainingItem:
    """One image of the set, as the per-class index lists it."""

    item_id: str
    kind: ItemKind
    image: str  # key in the store
    prompt: str
    class_noun: str
    sku_id: str | None = None
    mask: str | None = None
    sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class TrainingSet:
    """The set as written: its prefix, hash and items (instance and class)."""

    prefix: str
    sha256: str
    items: list[TrainingItem] = field(default_factory=list)

    @property
    def instance_items(self) -> list[TrainingItem]:
        return [item for item in self.items if item.kind == "instance"]

    @property
    def class_items(self) -> list[TrainingItem]:
        return [item for item in self.items if item.kind == "class"]


def slug(text: str) -> str:
    """Lowercase letters, digits and '-' only: safe in object keys and adapter ids."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "x"


def class_key(class_noun: str) -> str:
    """The class's name in object keys: its slug and a short hash of the exact noun.

    Slugs collide ("soda can" / "soda-can", nouns cut at 40 characters); the hash keeps two classes
    from sharing an index or class-image keys.
    """
    return f"{slug(class_noun)}-{hashlib.sha256(class_noun.encode()).hexdigest()[:8]}"


def instance_prompt_with_tags(instance_prompt: str, tags: Sequence[str]) -> str:
    """``"a photo of shs can, red, cylinder, on a shelf"``: the rare token first, then the tags."""
    unique = [tag for tag in dict.fromkeys(t.strip() for t in tags) if tag]
    return ", ".join([instance_prompt, *unique])


def training_set_sha256(
    *,
    kind: str,
    series: str | None,
    base_model: str,
    model_digest: str,
    sources: Sequence[InstanceSource],
    recipe: TrainingRecipe,
    class_folder: Sequence[tuple[str, str]] = (),
) -> str:
    """The job's identity: the inputs' content (not their URIs' order), the model and the recipe.

    ``base_model`` is the label adapters are registered under, ``model_digest`` a fingerprint of the
    pipeline folder trained on: a checkpoint of one UNet must never be resumed into another, even
    under the same label. ``class_folder`` is (class slug, sha256) of each configured real class image.
    """
    canonical = {
        "kind": kind,
        "series": series,
        "base_model": base_model,
        "model_digest": model_digest,
        "recipe": recipe.identity(),
        "sources": sorted(
            [
                s.sku_id,
                s.photo_id,
                s.image_sha256,
                s.mask_sha256,
                s.instance_prompt,
                s.class_prompt,
                sorted(s.tags),
                s.composite,
                # Only where set: the sets of photos on a plain background keep the hash (and the
                # adapter) they had before in-store photos were cut to their largest blob.
                *(["cluttered"] if s.cluttered else []),
            ]
            for s in sources
        ),
        "class_folder": sorted(class_folder),
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


# Paints ``count`` class images for ``class_prompt`` (the base model): (prompt, count, seed, size) -> images.
ClassPainter = Callable[[str, int, int, int], Iterable[UInt8Array]]


def build_training_set(
    store: ObjectStore,
    prefix: str,
    sha256: str,
    sources: Sequence[InstanceSource],
    recipe: TrainingRecipe,
    *,
    class_folder: Mapping[str, Sequence[UInt8Array]] | None = None,
    paint_class_images: ClassPainter | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    should_stop: Callable[[], bool] = lambda: False,
) -> TrainingSet:
    """Write the set under ``prefix`` (images, masks, one index per class) and return it.

    Class images come from ``class_folder`` (class slug -> real images, each read as it is written:
    a lazy sequence holds one at a time) when it has the class,
    else from ``paint_class_images``; with neither, or ``recipe.class_images`` or
    ``recipe.prior_loss_weight`` 0, there are none.
    Photos and masks are decoded under ``max_pixels`` / ``max_bytes`` (the shared settings' limits,
    which ingest held them to: the library defaults refused photos a raised limit let through).
    ``should_stop`` is asked before each photo: True raises ``TrainingInterrupted``, the set left
    without ``complete.json`` (built again when the job runs next).
    """
    size = recipe.resolution
    compositor = CompositeBackend()
    training_set = TrainingSet(prefix=prefix, sha256=sha256)
    classes: dict[str, str] = {}  # class noun -> class prompt
    refused: list[Exception] = []
    item_stems = _item_stems(sources)
    in_store = _InStorePhotos(store, sources, max_pixels, max_bytes)

    def add_photo(position: int) -> bool:
        """Write the items of ``sources[position]``; False when it is refused (logged, kept in
        ``refused``)."""
        source = sources[position]
        try:
            scenes = _scenes(
                store, source, recipe, compositor, max_pixels, max_bytes, in_store.take(position)
            )
        except (BadInput, ValueError) as exc:
            # One SKU's photo altered or deleted since it was recorded, or a mask the compositor refuses:
            # left out, not the job failed. Before, it failed the series' job, and every later one
            # (each still holding that SKU) too: the series never got an adapter until it was fixed.
            log.warning(
                "a training photo is left out of the set",
                extra={"sku_id": source.sku_id, "photo_id": source.photo_id, "reason": str(exc)[:300]},
            )
            refused.append(exc)
            return False
        classes.setdefault(source.class_noun, source.class_prompt)
        for index, (image, item_mask, tags) in enumerate(scenes):
            item_id = f"{item_stems[position]}-{index:03d}"
            image_ref = store.put_image(f"{prefix}/images/instance/{item_id}.png", image)
            mask_key = f"{prefix}/masks/{item_id}.png"
            store.put_image(mask_key, item_mask)
            training_set.items.append(
                TrainingItem(
                    item_id=item_id,
                    kind="instance",
                    image=store.key_for(image_ref.uri),
                    mask=mask_key,
                    prompt=instance_prompt_with_tags(source.instance_prompt, tags),
                    class_noun=source.class_noun,
                    sku_id=source.sku_id,
                    sha256=image_ref.sha256,
                )
            )
        return True

    for done, source in enumerate(sources):
        # Up to 200 scenes a photo and 2000 photos a general set: SIGTERM must not wait for them all.
        if should_stop():
            raise TrainingInterrupted(
                f"stopped building the training set: {done} of {len(sources)} photos; it is built again"
            )
        if in_store.passed_over(done):
            log.info(
                "an in-store photo is left out of the set: another in-store photo of its SKU is one object",
                extra={"sku_id": source.sku_id, "photo_id": source.photo_id},
            )
            continue
        built = add_photo(done)
        for passed in in_store.fallback(done, built):  # its SKU's photos of one object all refused
            add_photo(passed)
    if refused and not training_set.items:
        # Nothing left to train on: the job's own fault, a refusal (BadInput). A ValueError is the
        # compositor's word for a mask it cannot cut from; raised as it is, a trainer could not tell it
        # from a ValueError of torch's mid-training, a fault tried again.
        first = refused[0]
        if isinstance(first, BadInput):
            raise first
        raise BadInput(
            "photo_refused", f"every photo of the set was refused, the first with: {first}"
        ) from first
    for class_noun, class_prompt in classes.items():
        images = _class_images(class_noun, class_prompt, recipe, class_folder, paint_class_images)
        for index, image in enumerate(images):
            item_id = f"class-{class_key(class_noun)}-{index:04d}"
            ref = store.put_image(f"{prefix}/images/class/{item_id}.png", square_image(image, size))
            training_set.items.append(
                TrainingItem(
                    item_id=item_id,
                    kind="class",
                    image=store.key_for(ref.uri),
                    prompt=class_prompt,
                    class_noun=class_noun,
                    sha256=ref.sha256,
                )
            )
        store.put_json(
            f"{prefix}/index/{class_key(class_noun)}.json",
            {
                "class_noun": class_noun,
                "class_prompt": class_prompt,
                "training_set_sha256": sha256,
                "items": [item.to_json() for item in training_set.items if item.class_noun == class_noun],
            },
        )
    # Last: a set whose building stopped part-way (a store fault, a refused mask) has no such record
    # and is built again, never trained on as if it were whole. The item ids, in order, let a load
    # check it got every item back and hand them to the loop in the order an uninterrupted job had
    # (the loop draws items by position).
    store.put_json(
        f"{prefix}/complete.json",
        {
            "training_set_sha256": sha256,
            "classes": sorted(class_key(noun) for noun in classes),
            "item_ids": [item.item_id for item in training_set.items],
        },
    )
    return training_set


def _item_stems(sources: Sequence[InstanceSource]) -> list[str]:
    """What each source's item ids begin with: ``<sku_id>-<photo_id>``, as sets were always named, unless
    another source of the set joins to the same text (both ids may hold '-': SKU 'A-1' photo 'front',
    SKU 'A' photo '1-front'); those are ``<sku_id>~<photo_id>``, '~' being in no safe id. One stem held
    both: the second photo overwrote the first, trained twice, and the set never loaded again."""
    pairs: dict[str, set[tuple[str, str]]] = {}
    for source in sources:
        pairs.setdefault(f"{source.sku_id}-{source.photo_id}", set()).add((source.sku_id, source.photo_id))
    return [
        f"{source.sku_id}-{source.photo_id}"
        if len(pairs[f"{source.sku_id}-{source.photo_id}"]) == 1
        else f"{source.sku_id}~{source.photo_id}"
        for source in sources
    ]


def _scenes(
    store: ObjectStore,
    source: InstanceSource,
    recipe: TrainingRecipe,
    compositor: CompositeBackend,
    max_pixels: int,
    max_bytes: int,
    read: tuple[UInt8Array, UInt8Array] | None = None,
) -> list[tuple[UInt8Array, UInt8Array, list[str]]]:
    """The training images of one source photo, each with its mask and tags (read, unless ``read`` holds
    its photo and mask as ``_read_source`` returns them, and drawn; nothing written). Checked against the
    sha256 the captioner recorded (the job's identity): an altered photo must not be trained on under it."""
    size = recipe.resolution
    photo, mask = read if read is not None else _read_source(store, source, max_pixels, max_bytes)
    if not source.composite:
        return [(square_image(photo, size), square_image(mask, size), list(source.tags))]
    request = GenerationRequest(
        reference=photo,
        mask=mask,
        prompt=source.instance_prompt,
        negative_prompt="",
        # Of the joined ids, as before item ids were told apart: the scenes of every set stay as they were.
        seed=int(hashlib.sha256(f"{source.sku_id}-{source.photo_id}".encode()).hexdigest()[:8], 16)
        ^ recipe.seed,
        n=recipe.scenes_per_photo,
        parameters={},
        size=size,
    )
    return [
        (s.image, s.expected_mask, [*source.tags, f"{s.parameters.get('scene', 'scene')} background"])
        for s in compositor.generate(request)
    ]


def _read_source(
    store: ObjectStore, source: InstanceSource, max_pixels: int, max_bytes: int
) -> tuple[UInt8Array, UInt8Array]:
    """The source's photo (RGB) and mask (0/255), checked against the sha256 the captioner recorded (the
    job's identity: an altered photo must not be trained on under it); an in-store photo's mask cut to
    its largest blob (``cluttered_cutout``), as the generator cuts it."""
    image_bytes = store.read_checked(source.image_uri, source.image_sha256)
    photo = pixel_array(decode_image(image_bytes, max_pixels=max_pixels, max_bytes=max_bytes))
    mask_bytes = store.read_checked(source.mask_uri, source.mask_sha256)
    mask = decode_mask(mask_bytes, max_pixels=max_pixels, max_bytes=max_bytes)
    return photo, cluttered_cutout(mask) if source.cluttered else mask


class _InStorePhotos:
    """The in-store sources of a set (``InstanceSource.cluttered``), a SKU's read when the set reaches its
    first, and which of them are trained on, as the generator draws: of those that can be read, the ones
    whose cut-out is one object when any is (``one_object_photos``; before, a chain of apples or a crate
    was trained on beside the SKU's photo of one apple), else all of them.

    Each photo and mask is read once: the chosen photos' are kept until the set reaches them, and a
    refusal to read one is raised there (``take``), then let go, so a set of 2000 photos holds one
    SKU's chosen photos at a time. The photos passed over are read again only when every chosen photo
    of their SKU is refused when the set is built (``fallback``)."""

    def __init__(
        self, store: ObjectStore, sources: Sequence[InstanceSource], max_pixels: int, max_bytes: int
    ) -> None:
        self._store, self._sources, self._max_pixels, self._max_bytes = store, sources, max_pixels, max_bytes
        self._by_sku: dict[str, list[int]] = {}
        for position, source in enumerate(sources):
            if source.cluttered:
                self._by_sku.setdefault(source.sku_id, []).append(position)
        self._read: dict[int, tuple[UInt8Array, UInt8Array] | BadInput | ValueError] = {}
        self._passed_over: dict[str, list[int]] = {}  # by SKU, in the set's order
        self._chosen_left: dict[str, set[int]] = {}  # by SKU: chosen photos the set has not reached
        self._trained: set[str] = set()  # SKUs a chosen photo of which gave items

    def _read_sku(self, sku_id: str) -> None:
        positions = self._by_sku.pop(sku_id)
        masks: dict[str, UInt8Array] = {}  # by photo id, as one_object_photos looks them up
        for position in positions:
            try:
                read = _read_source(self._store, self._sources[position], self._max_pixels, self._max_bytes)
            except (BadInput, ValueError) as exc:
                # Not passed over: refused, and logged, when the set reaches it (kept without its
                # traceback, whose frames hold what was read).
                self._read[position] = exc.with_traceback(None)
                continue
            self._read[position] = read
            masks[self._sources[position].photo_id] = read[1]
        readable = [self._sources[p] for p in positions if self._sources[p].photo_id in masks]
        chosen = {source.photo_id for source in one_object_photos(readable, masks)}
        passed_over = [
            p
            for p in positions
            if self._sources[p].photo_id in masks and self._sources[p].photo_id not in chosen
        ]
        for position in passed_over:
            del self._read[position]  # read again only if the chosen ones are all refused
        self._passed_over[sku_id] = passed_over
        self._chosen_left[sku_id] = {p for p in positions if p not in passed_over}

    def _reached(self, position: int) -> str | None:
        """The SKU of an in-store source, its photos read once the set reaches the first; None for others."""
        source = self._sources[position]
        if not source.cluttered:
            return None
        if source.sku_id in self._by_sku:
            self._read_sku(source.sku_id)
        return source.sku_id

    def passed_over(self, position: int) -> bool:
        """Whether the source at ``position`` is left out as not one object (for now: ``fallback``)."""
        sku_id = self._reached(position)
        return sku_id is not None and position in self._passed_over[sku_id]

    def take(self, position: int) -> tuple[UInt8Array, UInt8Array] | None:
        """The photo and mask read for ``position``, let go of here (None: not read, or passed over and
        read again now); raises what reading it raised."""
        self._reached(position)
        read = self._read.pop(position, None)
        if isinstance(read, (BadInput, ValueError)):
            raise read
        return read

    def fallback(self, position: int, built: bool) -> list[int]:
        """After ``position`` was built (``built``) or refused: once its SKU's chosen photos are all
        reached and none was built, its photos passed over are not any more (as ``one_object_photos``
        takes every photo when none is one object), and those the set has passed are returned, to be
        built now; the later ones are built when reached. Before, the SKU was left out altogether."""
        sku_id = self._reached(position)
        left = self._chosen_left.get(sku_id or "", set())
        if sku_id is None or position not in left:
            return []
        if built:
            self._trained.add(sku_id)
        left.discard(position)
        if left or sku_id in self._trained or not self._passed_over[sku_id]:
            return []
        passed_over, self._passed_over[sku_id] = self._passed_over[sku_id], []
        log.warning(
            "in-store photos that are not one object are trained on: their SKU's photos of one object "
            "were all refused",
            extra={"sku_id": sku_id, "photo_ids": [self._sources[p].photo_id for p in passed_over]},
        )
        return [p for p in passed_over if p < position]


def load_training_set(store: ObjectStore, prefix: str, sha256: str) -> TrainingSet | None:
    """The set from its per-class indexes (no image is opened), or None unless it was written whole.

    The items come back exactly as ``build_training_set`` returned them, in its order; a set whose
    indexes do not hold exactly the items ``complete.json`` lists (one written before class keys
    had a hash, where two classes overwrote each other's index), or whose records cannot be read (cut
    short, not JSON, a field mistyped: logged), is None, so it is built again.
    """
    complete_key = f"{prefix}/complete.json"
    if not store.exists(complete_key):
        return None
    try:
        return _read_training_set(store, prefix, sha256, complete_key)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # Raised, a ValueError read as the job's own refusal: the job was failed for good, though the
        # set is only a step on the way, built again from the photos its hash names.
        log.warning(
            "training set records cannot be read: the set is built again",
            extra={"prefix": prefix, "reason": f"{type(exc).__name__}: {exc}"[:300]},
        )
        return None


def _read_training_set(store: ObjectStore, prefix: str, sha256: str, complete_key: str) -> TrainingSet | None:
    """``load_training_set``'s reading, which raises when a record is not what it wrote."""
    complete = json.loads(store.get_bytes(complete_key))
    item_ids = complete.get("item_ids")
    if complete.get("training_set_sha256") != sha256 or not isinstance(item_ids, list):
        return None
    wanted = {f"{prefix}/index/{name}.json" for name in complete.get("classes", [])}
    if not wanted <= set(store.list_keys(f"{prefix}/index/")):
        return None
    items: list[TrainingItem] = []
    for key in sorted(wanted):
        index = json.loads(store.get_bytes(key))
        if index.get("training_set_sha256") != sha256:
            return None
        items.extend(TrainingItem(**item) for item in index["items"])
    by_id = {item.item_id: item for item in items}
    if not items or len(by_id) != len(items) or sorted(by_id) != sorted(item_ids):
        return None
    return TrainingSet(prefix=prefix, sha256=sha256, items=[by_id[item_id] for item_id in item_ids])


def _class_images(
    class_noun: str,
    class_prompt: str,
    recipe: TrainingRecipe,
    class_folder: Mapping[str, Sequence[UInt8Array]] | None,
    paint: ClassPainter | None,
) -> Iterable[UInt8Array]:
    if recipe.class_images == 0 or recipe.prior_loss_weight == 0:
        return []  # weight 0: a class item is never drawn, so none is painted (minutes on a GPU)
    real = (class_folder or {}).get(slug(class_noun))
    if real:
        return real[: recipe.class_images]
    if paint is None:
        return []
    return paint(class_prompt, recipe.class_images, recipe.seed, recipe.resolution)


def square_image(pixels: UInt8Array, size: int) -> UInt8Array:
    """Centre-crop to a square and resize to ``size`` (masks stay 0/255)."""
    from PIL import Image

    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = Image.fromarray(np.ascontiguousarray(pixels[top : top + side, left : left + side]))
    resample = Image.Resampling.NEAREST if pixels.ndim == 2 else Image.Resampling.BICUBIC
    return np.asarray(crop.resize((size, size), resample), dtype=np.uint8)
