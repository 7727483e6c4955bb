"""Captioner: masks, measured attributes, captions and prompts for every new SKU.

Consumes: ``sku.ingested``.
Produces: one ``sku.captioned`` per SKU, after writing one mask per usable reference photo to
the object store, under a key derived from the photo and the first 16 hex digits of the PNG's
sha256 (a redelivered event with the same mask writes the same key; a mask made again with another
model goes beside the first, which the ``sku.captioned`` already sent still names):

* ``masks/reference/<sku_id>/<photo_id>-<sha16>.png``  the product mask (0 background, 255 product);
  of an in-store photo (``plain_background`` below ``PLAIN_BACKGROUND_FROM``) its largest blob only, as
  the generator cuts it (``cluttered_cutout``): there the other blobs are the neighbouring products

Per photo the event carries the mask, the dominant colour names, the packaging shape, the view,
a detailed caption and auto-tagger style tags; per SKU the instance token, the class noun, the
instance / class / negative prompts (``shared/captioning/prompts.py`` documents those choices)
and which backend and models wrote them. The same SKU always gets the same captions.

Bad input: a photo that cannot be used is kept in the event with ``usable=False`` and its reason,
and the SKU goes on with the others: missing from the store (``object_missing``), bytes that do
not match its sha256 (``checksum_mismatch``), not an acceptable image (``corrupt``, ``truncated``,
``too_many_pixels``... see ``shared/images.py``; a photo the event says is over
``SKUFORGE_MAX_IMAGE_PIXELS`` is ``too_many_pixels`` before it is read, a JPEG too: its mask is stored at
its own size), dimensions other than the event says (``dimension_mismatch``), a shorter side below
``SKUFORGE_MIN_PHOTO_SIDE_PX`` (``too_small``: ingest refuses those, but not every event comes from
``skuforge ingest``; so is a long thin photo whose shorter side falls below it once shrunk to
``WORKING_SIDE_PX`` on its longer side, a 20000x64 strip), a uniform picture (``blank_photo``), a
photo the matting model gives NaN or infinite confidences for while it still mats its blank warm-up
image (``model_output_not_finite``, as the matting stage refuses it), or a mask that finds no product
(``no_product_found``: almost empty, or an in-store photo's largest blob is; ``mask_full_frame``:
almost everything). A SKU with no usable
photo at all goes to the DLQ as ``no_usable_photo``, with each photo's reason in the detail, photos
refused alike named together (``all 3 photos (p1, p2, p3): model_output_not_finite (...)``), or, when
that would not fit in a dead letter, those refused for one reason, with the first detail and how many
more (``... object_missing (...; and 2 more)``), the first ids of each reason only where the ids
alone would not fit (``p1 and 63 more: object_missing (...)``); as
``object_missing`` when a photo is missing from the store, so a plain DLQ replay retries it once the
object is back. A SKU with
more photos than ``SKUFORGE_MAX_PHOTOS_PER_SKU`` (what ingest accepts) goes to the DLQ as
``too_many_photos`` before any photo is read: all of a SKU's photos are decoded at once.

The models: the matting session (``SKUFORGE_CAPTIONER_MATTING_MODEL``, unset = the committed
U2-NetP; a URI's copy is kept in ``SKUFORGE_CAPTIONER_MATTING_CACHE_DIR``) makes the masks; all
photos of a SKU go through it in one call (one photo a call when the model fails on them together: an
export that folded or fixed its batch; BLIP's too), but a photo whose
file was a cut-out: its transparency, stored by ingest (``ReferencePhoto.mask``), is its mask.
The attribute backend (default) measures colours, shape and view on the masks
(``shared/captioning/attributes.py``); on a plain-background photo of a box, carton or can, big dents
in a predicted mask are then filled and the photo measured again (``_fill_dents``: such packaging has
a convex outline);
``SKUFORGE_CAPTIONER_BACKEND=vlm`` adds a BLIP sentence per photo from
``SKUFORGE_CAPTIONER_VLM_MODEL`` (``shared/captioning/vlm.py``), merged into the caption without
overruling the measured colours and shape. Other knobs: ``services/captioner/config.py``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from schemas.common import SkuMetadata
from schemas.envelope import MAX_DEAD_LETTER_DETAIL_CHARS, Envelope
from schemas.events import CaptionedPhoto, ReferencePhoto, Shape, SkuCaptioned, SkuIngested
from schemas.flow import CAPTIONER
from schemas.topics import SKU_CAPTIONED, SKU_INGESTED
from services.captioner.config import CaptionerSettings
from shared import keys
from shared.captioning.attributes import (
    SHAPE_NAMES,
    ProductAttributes,
    colour_spread,
    describe_product,
    fill_concavities,
    mask_problem,
    plain_background_share,
    shape_tree_id,
)
from shared.captioning.prompts import (
    class_noun,
    compose_caption,
    compose_tags,
    declared_shape,
    merge_sentence,
    sku_prompts,
)
from shared.captioning.vlm import VlmCaptioner, VlmModelError, open_vlm
from shared.config import ConfigError, Settings, load_settings
from shared.dlq import is_permanent
from shared.errors import BadInput
from shared.generation.backend import PLAIN_BACKGROUND_FROM, cluttered_cutout
from shared.images import pixel_array
from shared.matting.session import (
    MaskOptions,
    MattingModelError,
    MattingResult,
    open_session,
)
from shared.photos import WORKING_SIDE_PX, refuse_too_small
from shared.runtime import Context, Emit, Stage, run_stage_loading, stage_command
from shared.store import ObjectStore

# The ``model`` labels of the stage's model call metrics (``skuforge_model_seconds``, ``_batch_size``).
MATTING_MODEL_LABEL = "matting"
VLM_MODEL_LABEL = "vlm"
# 2: colours are named as under neutral light on in-store photos (``attributes.correct_light``).
ATTRIBUTES_BACKEND = "attributes/2"
# Packaging whose outline is convex from every side (a box or carton, a can): dents in its mask are
# parts the model dropped. Filled only on photos with a plain backdrop (``PLAIN_BACKGROUND_FROM``):
# there the dropped part is a face the colour of the backdrop, while in a store a dent may be a hand
# or the next product in front.
CONVEX_SHAPES: frozenset[Shape] = frozenset({"box", "can"})
# More than this share added is not a dropped face but another outline (or a mask gone wrong): left.
FILL_MAX_ADDED_SHARE = 0.5


# --- models ------------------------------------------------------------------------------------


class MattingModel(Protocol):
    """What the captioner asks of its matting model: ``MattingSession`` in service, a stand-in that
    answers given masks in tests."""

    @property
    def model_id(self) -> str:
        """Name and checksum, for the event's lineage."""
        ...

    @property
    def ready(self) -> bool:
        """Whether the latest run succeeded (the stage's /readyz)."""
        ...

    def predict_each(self, images: Sequence[Image.Image]) -> Sequence[MattingResult | BadInput]:
        """Per image, in order, its mask, or why the model could not mat it."""
        ...


@dataclass(frozen=True)
class CaptionerModels:
    """What the handler runs: the matting session, the optional BLIP model, and the settings."""

    session: MattingModel
    vlm: VlmCaptioner | None
    options: CaptionerSettings

    @property
    def captioner_id(self) -> str:
        """Backend and model ids, and each setting that changes a caption when off its default, for the
        event's ``captioner`` field (lineage): captioners that caption differently sign differently, and
        the id of a captioner as shipped stays as it was. BLIP's num_beams is in its model id: the
        directory digest covers ``generation_config.json``."""
        attributes = f"{ATTRIBUTES_BACKEND} shape-tree@{shape_tree_id()} matting:{self.session.model_id}"
        if self.options.captioner_fill_dents_share > 0:
            attributes += f" fill-dents@{self.options.captioner_fill_dents_share:g}"
        for field, label in _CAPTION_SETTINGS.items():
            value = getattr(self.options, field)
            if value != CaptionerSettings.model_fields[field].default:
                attributes += f" {label}@{value:g}"
        if self.vlm is None:
            return attributes
        vlm = f"vlm:{self.vlm.model_id}"
        if self.vlm.prompt != _DEFAULT_PROMPT:
            prompt = json.dumps(self.vlm.prompt)
            if len(prompt) > _MAX_PROMPT_ID_CHARS:  # written whole, every event was past its limit
                prompt = f"sha256:{hashlib.sha256(self.vlm.prompt.encode()).hexdigest()[:12]}"
            vlm += f" prompt@{prompt}"
        if self.vlm.max_new_tokens != _DEFAULT_MAX_NEW_TOKENS:
            vlm += f" max-new-tokens@{self.vlm.max_new_tokens}"
        return f"{vlm} + {attributes}"


# The settings besides the models that change what a photo's caption says (or whether it has one),
# and their names in the captioner id.
_CAPTION_SETTINGS = {
    "captioner_mask_threshold": "mask-threshold",
    "captioner_min_mask_fraction": "min-mask",
    "captioner_max_mask_fraction": "max-mask",
    "captioner_blank_spread": "blank-spread",
    "captioner_colours": "colours",
    "captioner_max_colour_names": "colour-names",
    "captioner_min_colour_share": "min-colour-share",
}
# A longer prompt is named by its digest: an event's model ids are at most MAX_MODEL_ID_CHARS.
_MAX_PROMPT_ID_CHARS = 80
_DEFAULT_PROMPT = str(CaptionerSettings.model_fields["captioner_vlm_prompt"].default).strip()
_DEFAULT_MAX_NEW_TOKENS = CaptionerSettings.model_fields["captioner_vlm_max_new_tokens"].default


def open_models(
    options: CaptionerSettings, settings: Settings, store: ObjectStore | None = None
) -> CaptionerModels:
    """Open and warm up the matting session, and BLIP when configured; problems are ConfigErrors."""
    try:
        session = open_session(
            options.captioner_matting_model,
            threads=options.captioner_matting_threads,
            use_gpu=options.captioner_use_gpu,
            store=store,
            max_batch=options.captioner_matting_max_batch,
            mask=MaskOptions(threshold=options.captioner_mask_threshold),
            s3_endpoint_url=settings.s3_endpoint_url,
            s3_region=settings.s3_region,
            cache_unused_days=settings.model_cache_unused_days,
            cache=options.captioner_matting_cache_dir,
            cache_from="SKUFORGE_CAPTIONER_MATTING_CACHE_DIR",
            uri_from="SKUFORGE_CAPTIONER_MATTING_MODEL",
        )
        session.warm_up()
    except MattingModelError as exc:
        raise ConfigError(str(exc)) from exc
    vlm = None
    if options.captioner_backend == "vlm":
        assert options.captioner_vlm_model is not None  # the settings validator guarantees it
        try:
            vlm = open_vlm(
                options.captioner_vlm_model,
                cache_dir=options.captioner_vlm_cache_dir,
                threads=options.captioner_matting_threads,
                use_gpu=options.captioner_use_gpu,
                prompt=options.captioner_vlm_prompt,
                max_new_tokens=options.captioner_vlm_max_new_tokens,
                store=store,
                s3_endpoint_url=settings.s3_endpoint_url,
                s3_region=settings.s3_region,
                cache_unused_days=settings.model_cache_unused_days,
                uri_from="SKUFORGE_CAPTIONER_VLM_MODEL",
            )
        except VlmModelError as exc:
            raise ConfigError(str(exc)) from exc
    return CaptionerModels(session=session, vlm=vlm, options=options)


# --- the handler -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unusable:
    """A photo that cannot be captioned, and why."""

    reason: str
    detail: str = ""


@dataclass(frozen=True)
class _Found:
    """A photo with a product in it: the photo, its mask and what was measured on them."""

    image: Image.Image
    mask: npt.NDArray[np.uint8]
    attributes: ProductAttributes
    # How plain the backdrop is, measured on the mask as found: a dent filled later is backdrop-coloured,
    # and taking it out of the backdrop would make the photo read less plain.
    plain_background: float


@dataclass(frozen=True)
class _Transparency:
    """A cut-out's own transparency, read once: its mask at the working size, to measure the photo by,
    and, for a photo shrunk to that size, the full-size outline ingest stored, 1 bit a pixel (a 40 MP
    mask in 5 MB), to store as its reference mask. Read again to be stored, an object changed between
    the reads failed the whole SKU on its checksum."""

    mask: npt.NDArray[np.uint8]
    full_size_bits: npt.NDArray[np.uint8] | None = None  # np.packbits of the full-size mask >= 128

    def full_size_mask(self, height: int, width: int) -> npt.NDArray[np.uint8]:
        """The mask at the photo's own size, 0 or 255."""
        if self.full_size_bits is None:
            return self.mask
        product = np.unpackbits(self.full_size_bits, count=height * width).reshape(height, width)
        return product * np.uint8(255)


def handle(event: Envelope[SkuIngested], ctx: Context, *, models: CaptionerModels) -> list[Emit]:
    """Mask, measure and caption every photo of the SKU; emit one ``sku.captioned``."""
    sku = event.payload.sku
    photos = event.payload.photos
    # Every photo is decoded before masking, so the count bounds the memory: refuse before reading any.
    limit = ctx.settings.max_photos_per_sku
    if len(photos) > limit:
        raise BadInput(
            "too_many_photos",
            f"{sku.sku_id} has {len(photos)} photos; "
            f"at most {limit} (SKUFORGE_MAX_PHOTOS_PER_SKU) are captioned",
        )
    images = [_read_photo(photo, ctx) for photo in photos]
    transparencies = [
        _transparency_mask(photo, image, ctx, models.options)
        for photo, image in zip(photos, images, strict=True)
    ]
    provided = [None if transparency is None else transparency.mask for transparency in transparencies]
    # Blank only matters where the model must find the product: a near-white cut-out is near-white
    # over white, but its own outline says where it is (it was refused as blank_photo).
    images = [
        _not_blank(image, models.options) if mask is None else image
        for image, mask in zip(images, provided, strict=True)
    ]
    found = _find_products(images, models, ctx, provided)
    for photo, outcome in zip(photos, found, strict=True):
        if isinstance(outcome, _Unusable):
            ctx.log.warning(
                "photo unusable",
                extra={"photo_id": photo.photo_id, "reason": outcome.reason, "detail": outcome.detail[:300]},
            )
    if not any(isinstance(outcome, _Found) for outcome in found):
        reasons = _why_unusable([photo.photo_id for photo in photos], found)
        # A photo missing from the store may come back: then the letter must be one a plain DLQ replay
        # retries (no_usable_photo is permanent), named by that photo's reason.
        curable = next(
            (
                outcome.reason
                for outcome in found
                if isinstance(outcome, _Unusable) and not is_permanent(outcome.reason)
            ),
            None,
        )
        raise BadInput(
            curable or "no_usable_photo", f"no photo of {sku.sku_id} shows a usable product ({reasons})"
        )

    # The owner's word first: a category that names its packaging ("juice carton") is not overruled by
    # a mask a torn outline or an odd view misleads; the masks decide only when it names none.
    shape = declared_shape(sku.category) or _consensus_shape(
        [outcome.attributes for outcome in found if isinstance(outcome, _Found)]
    )
    if shape in CONVEX_SHAPES and models.options.captioner_fill_dents_share > 0:
        found = [
            _fill_dents(outcome, photo, ctx, models.options)
            if isinstance(outcome, _Found) and given is None
            else outcome
            for photo, outcome, given in zip(photos, found, provided, strict=True)
        ]
    sentences = _sentences(found, models.vlm, ctx)
    captioned = [
        _caption_photo(photo, outcome, sentence, shape, sku, ctx, models.options, transparency=transparency)
        for photo, outcome, sentence, transparency in zip(
            photos, found, sentences, transparencies, strict=True
        )
    ]
    prompts = sku_prompts(sku)
    payload = SkuCaptioned(
        sku=sku,
        photos=captioned,
        instance_token=prompts.instance_token,
        class_noun=prompts.class_noun,
        instance_prompt=prompts.instance_prompt,
        class_prompt=prompts.class_prompt,
        negative_prompt=prompts.negative_prompt,
        captioner=models.captioner_id,
    )
    return [Emit(SKU_CAPTIONED, payload, key="captioned")]


def _why_unusable(photo_ids: Sequence[str], found: Sequence[_Found | _Unusable]) -> str:
    """Why each unusable photo was, those with the same reason and detail named together:
    ``all 3 photos (p1, p2, p3): model_output_not_finite (...)``, ``p1, p2: blank_photo (...); p3: ...``.
    When that would not fit in a dead letter, those with the same reason are named together with the
    first detail and how many other details there were: ``p1, p2: object_missing (...p1.png; and 1 more)``,
    and if their ids still do not fit, the first ids of each reason: ``p1 and 63 more: object_missing``.
    Repeated per photo, one model's sentence about NaN, or each missing photo's URI, filled the dead
    letter's detail, and the reasons of the photos after the 15th or so were cut."""
    unusable = [
        (photo_id, outcome)
        for photo_id, outcome in zip(photo_ids, found, strict=True)
        if isinstance(outcome, _Unusable)
    ]
    alike: dict[tuple[str, str], list[str]] = {}
    for photo_id, outcome in unusable:
        alike.setdefault((outcome.reason, outcome.detail), []).append(photo_id)
    each = _named_groups(len(photo_ids), [(reason, ids, [detail]) for (reason, detail), ids in alike.items()])
    if len(each) <= _WHY_UNUSABLE_CHARS:
        return each
    by_reason: dict[str, tuple[list[str], list[str]]] = {}
    for photo_id, outcome in unusable:
        ids, details = by_reason.setdefault(outcome.reason, ([], []))
        ids.append(photo_id)
        if outcome.detail[:300] not in details:
            details.append(outcome.detail[:300])
    groups = [(reason, *group) for reason, group in by_reason.items()]
    shown = [len(ids) for _, ids, _ in groups]
    said = _named_groups(len(photo_ids), groups, shown)
    # The ids alone may not fit (64 of 64 characters are 4,224): the group naming the most names one
    # fewer, counting the others ("and 50 more"), until the letter fits; each reason keeps its first.
    while len(said) > _WHY_UNUSABLE_CHARS and max(shown) > 1:
        shown[shown.index(max(shown))] -= 1
        said = _named_groups(len(photo_ids), groups, shown)
    return said


# Room left in a dead letter's detail (MAX_DEAD_LETTER_DETAIL_CHARS) for the SKU's id and the sentence.
_WHY_UNUSABLE_CHARS = MAX_DEAD_LETTER_DETAIL_CHARS - 400


def _named_groups(
    photo_count: int, groups: Sequence[tuple[str, list[str], list[str]]], shown: Sequence[int] | None = None
) -> str:
    """``ids: reason (first detail; and N more)`` per (reason, photo ids, details) group, ``all N
    photos (...)`` when one group holds every photo of several; with ``shown``, each group names its
    first that many ids and counts the others (``p1, p2 and 5 more: blank_photo (...)``)."""
    parts = []
    for index, (reason, ids, details) in enumerate(groups):
        count = len(ids) if shown is None else shown[index]
        listed = ", ".join(ids[:count]) + (f" and {len(ids) - count} more" if count < len(ids) else "")
        every = len(groups) == 1 and len(ids) == photo_count > 1
        named = f"all {len(ids)} photos ({listed})" if every else listed
        said = [detail for detail in details if detail]
        sample = said[0] + (f"; and {len(said) - 1} more" if len(said) > 1 else "") if said else ""
        parts.append(f"{named}: {reason}" + (f" ({sample})" if sample else ""))
    return "; ".join(parts)


def _read_photo(photo: ReferencePhoto, ctx: Context) -> Image.Image | _Unusable:
    """The photo, checked against its sha256 and dimensions, decoded within the limits, not too small
    (whether it is blank is asked once its transparency is known: ``_not_blank``).

    Store outages (``TransientError``) propagate: the runtime retries the whole SKU later.
    """
    ref = photo.image
    try:
        ctx.refuse_unread(ref, "its mask is stored at its own size")
        image = ctx.read_image(ref)
    except BadInput as refusal:
        return _Unusable(refusal.reason, refusal.detail)
    if image.size != (ref.width, ref.height):
        return _Unusable(
            "dimension_mismatch", f"{image.width}x{image.height}, the event says {ref.width}x{ref.height}"
        )
    try:
        refuse_too_small(image.width, image.height, ctx.settings.min_photo_side_px)
    except BadInput as refusal:
        return _Unusable(refusal.reason, refusal.detail)
    if max(image.size) > WORKING_SIDE_PX:
        # At shared.photos.working_size: refuse_too_small has checked the shorter side there too.
        image.thumbnail((WORKING_SIDE_PX, WORKING_SIDE_PX), Image.Resampling.BILINEAR)  # frees the full size
    return image


def _not_blank(image: Image.Image | _Unusable, options: CaptionerSettings) -> Image.Image | _Unusable:
    """``image``, or ``blank_photo`` when it is one flat colour (no product for the model to find)."""
    if isinstance(image, Image.Image) and colour_spread(image) < options.captioner_blank_spread:
        return _Unusable("blank_photo", "the photo is one flat colour")
    return image


def _transparency_mask(
    photo: ReferencePhoto, image: Image.Image | _Unusable, ctx: Context, options: CaptionerSettings
) -> _Transparency | None:
    """The photo file's own transparency as its mask, at the working size, when ingest stored one
    (``ReferencePhoto.mask``) and it is a plausible product outline; else None, and the matting
    model masks the photo. A cut-out's alpha is exact where the model only estimates: a white
    product composited over white loses its edges to the model. A mask the event says is over the
    pixel or byte limit (``Context.refuse_unread``), or at a size other than its photo's, is left
    unread."""
    if photo.mask is None or not isinstance(image, Image.Image):
        return None
    if (photo.mask.width, photo.mask.height) != (photo.image.width, photo.image.height):
        _log_mask_size_mismatch(photo, ctx)
        return None
    try:
        ctx.refuse_unread(photo.mask, "it must be its photo's size")
        mask = ctx.read_mask(photo.mask)
    except BadInput as refusal:
        ctx.log.warning(
            "transparency mask unreadable; the matting model masks the photo",
            extra={"photo_id": photo.photo_id, "reason": refusal.reason},
        )
        return None
    if mask.shape != (photo.image.height, photo.image.width):  # the mask's own figures were wrong
        _log_mask_size_mismatch(photo, ctx)
        return None
    full_size_bits = None
    if mask.shape != (image.height, image.width):  # the photo is worked on at WORKING_SIDE_PX
        full_size_bits = np.packbits(mask >= 128)
        mask = pixel_array(Image.fromarray(mask).resize(image.size, Image.Resampling.NEAREST))
    if mask_problem(
        mask,
        min_fraction=options.captioner_min_mask_fraction,
        max_fraction=options.captioner_max_mask_fraction,
    ):
        # A few transparent corners of a rectangular shot are not an outline of the product.
        return None
    return _Transparency(mask, full_size_bits)


def _log_mask_size_mismatch(photo: ReferencePhoto, ctx: Context) -> None:
    """Log that ``photo``'s transparency mask is ignored for its size."""
    ctx.log.warning(
        "transparency mask is not the photo's size; the matting model masks the photo",
        extra={"photo_id": photo.photo_id},
    )


def _find_products(
    images: Sequence[Image.Image | _Unusable],
    models: CaptionerModels,
    ctx: Context,
    provided: Sequence[npt.NDArray[np.uint8] | None] | None = None,
) -> list[_Found | _Unusable]:
    """Mask every readable photo that has no ``provided`` mask (its transparency) in one matting call,
    refuse a photo the model gives NaN for (``model_output_not_finite``) and masks that find no
    product, measure the rest."""
    options = models.options
    provided = provided if provided is not None else [None] * len(images)
    readable = [
        image
        for image, given in zip(images, provided, strict=True)
        if isinstance(image, Image.Image) and given is None
    ]
    predictions: Iterator[MattingResult | BadInput] = iter([])
    if readable:  # no photo to mask makes no model call, so none is counted
        predictions = iter(_mat(readable, models.session, ctx))
    found: list[_Found | _Unusable] = []
    for image, given in zip(images, provided, strict=True):
        if isinstance(image, _Unusable):
            found.append(image)
            continue
        if given is not None:
            mask = given
        else:
            prediction = next(predictions)
            if isinstance(prediction, BadInput):
                found.append(_Unusable(prediction.reason, prediction.detail))
                continue
            mask = prediction.mask
        plain_background = plain_background_share(image, mask)
        cut = given is None and plain_background < PLAIN_BACKGROUND_FROM
        if cut:
            # In a store the model's other blobs are rarely the product's (the next apples of a crate, a
            # price tag): the mask stored is the blob the colours and shape are measured on, the one
            # the generator cuts. A cut-out's own transparency is exact, and left whole.
            mask = cluttered_cutout(mask)
        problem = mask_problem(
            mask,
            min_fraction=options.captioner_min_mask_fraction,
            max_fraction=options.captioner_max_mask_fraction,
        )
        if problem:
            what = "its largest blob" if cut else "the mask"
            found.append(
                _Unusable(problem, f"{what} covers {np.count_nonzero(mask) / mask.size:.1%} of the photo")
            )
            continue
        try:
            attributes = describe_product(
                image, mask, k=options.captioner_colours, min_colour_share=options.captioner_min_colour_share
            )
        except ValueError as exc:  # no shape to measure: this photo is unusable, not the whole SKU
            found.append(_Unusable("no_product_found", str(exc)))
            continue
        found.append(_Found(image, mask, attributes, plain_background))
    return found


def _mat(
    images: Sequence[Image.Image], session: MattingModel, ctx: Context
) -> list[MattingResult | BadInput]:
    """Per photo, its mask or why the model could not mat it (``Context.together_or_alone``).

    Per photo: one the model gives NaN for is unusable alone, as the matting stage refuses it
    (``predict`` failed the whole SKU, retried and dead-lettered as handler_error).
    """
    return ctx.together_or_alone(MATTING_MODEL_LABEL, images, session.predict_each, MattingModelError)


def _fill_dents(found: _Found, photo: ReferencePhoto, ctx: Context, options: CaptionerSettings) -> _Found:
    """``found`` with the big dents of its predicted mask filled and measured again, on a plain
    background (``CONVEX_SHAPES``); as it was elsewhere, or when nothing was filled."""
    if found.plain_background < PLAIN_BACKGROUND_FROM:
        return found
    filled, added = fill_concavities(found.mask > 0, options.captioner_fill_dents_share)
    if added == 0.0 or added > FILL_MAX_ADDED_SHARE:
        return found
    mask = np.where(filled, np.uint8(255), np.uint8(0))
    if mask_problem(
        mask,
        min_fraction=options.captioner_min_mask_fraction,
        max_fraction=options.captioner_max_mask_fraction,
    ):
        return found
    ctx.log.info(
        "reference mask dents filled (convex packaging)",
        extra={"photo_id": photo.photo_id, "added_share": round(added, 4)},
    )
    attributes = describe_product(
        found.image, mask, k=options.captioner_colours, min_colour_share=options.captioner_min_colour_share
    )
    return _Found(found.image, mask, attributes, found.plain_background)


def _sentences(
    found: Sequence[_Found | _Unusable], vlm: VlmCaptioner | None, ctx: Context
) -> list[str | None]:
    """The BLIP sentence of each usable photo (one batched call, or one a call:
    ``Context.together_or_alone``), None elsewhere or without BLIP."""
    usable = [outcome.image for outcome in found if isinstance(outcome, _Found)]
    if vlm is None:
        return [None] * len(found)
    described = iter(ctx.together_or_alone(VLM_MODEL_LABEL, usable, vlm.describe, VlmModelError))
    return [next(described) if isinstance(outcome, _Found) else None for outcome in found]


def _caption_photo(
    photo: ReferencePhoto,
    outcome: _Found | _Unusable,
    sentence: str | None,
    shape: Shape,
    sku: SkuMetadata,
    ctx: Context,
    options: CaptionerSettings,
    *,
    transparency: _Transparency | None = None,
) -> CaptionedPhoto:
    """The event's entry for one photo; a usable one's mask is stored first. ``transparency``: the
    photo's own, its mask, stored full size as ingest read it (not the working-size copy scaled back
    up, which moved the outline of a cut-out over WORKING_SIDE_PX)."""
    if isinstance(outcome, _Unusable):
        return CaptionedPhoto(
            photo_id=photo.photo_id, image=photo.image, usable=False, unusable_reason=outcome.reason
        )
    view = outcome.attributes.view
    colours = outcome.attributes.colour_names[: options.captioner_max_colour_names]
    mask = outcome.mask
    if transparency is not None:
        mask = transparency.full_size_mask(photo.image.height, photo.image.width)
    if mask.shape != (photo.image.height, photo.image.width):  # found at the working size
        size = (photo.image.width, photo.image.height)
        # Back at the photo's own size (40 MP, maybe): read a strip at a time, not held twice.
        mask = pixel_array(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    caption = compose_caption(sku, colours, shape, view)
    if sentence is not None:
        caption = merge_sentence(caption, sentence, colours, shape, noun=class_noun(sku.category))
    return CaptionedPhoto(
        photo_id=photo.photo_id,
        image=photo.image,
        mask=ctx.store.put_image(
            keys.reference_mask_key(sku.sku_id, photo.photo_id), mask, digest_in_key=True
        ),
        usable=True,
        caption=caption,
        tags=compose_tags(sku, colours, shape, view),
        colours=colours,
        shape=shape,
        view=view,
        plain_background=round(outcome.plain_background, 4),
    )


def _consensus_shape(measured: Sequence[ProductAttributes]) -> Shape:
    """One packaging shape per SKU: the largest summed tree-leaf share over its usable photos.

    A product has one packaging; summing the photos' leaf shares lets the clearer views outvote an
    odd one, and every caption of the SKU then names the same shape.
    """
    totals = dict.fromkeys(SHAPE_NAMES, 0.0)
    for attributes in measured:
        result = attributes.shape
        if result.shape == "other":
            totals["other"] += 1.0
        else:
            for name in SHAPE_NAMES:
                totals[name] += result.probabilities.get(name, 0.0)
    best: Shape = max(SHAPE_NAMES, key=lambda name: (totals[name], -SHAPE_NAMES.index(name)))
    return best


# --- wiring ------------------------------------------------------------------------------------


def build_stage(
    *, captioner: CaptionerSettings | None = None, models: CaptionerModels | None = None, **kwargs: Any
) -> Stage:
    """The stage, ready to run; its models are opened (or ``models`` used) before it joins the group.

    kwargs go to Stage (settings, store...).
    """
    settings: Settings = kwargs.pop("settings", None) or load_settings()
    if models is None:
        models = open_models(captioner or load_settings(CaptionerSettings), settings, kwargs.get("store"))
    session = models.session
    stage = Stage(
        CAPTIONER.name,
        settings=settings,
        default_metrics_port=CAPTIONER.default_metrics_port,
        ready=lambda: session.ready,
        **kwargs,
    )
    # From 0, so rate() counts the first call after a restart (a series born at 1 shows no increase).
    stage.metrics.declare_model(MATTING_MODEL_LABEL)
    if models.vlm is not None:
        stage.metrics.declare_model(VLM_MODEL_LABEL)
    stage.handler(SKU_INGESTED)(functools.partial(handle, models=models))
    return stage


def main() -> int:
    """Run the captioner stage until SIGTERM."""
    return run_stage_loading(CAPTIONER.name, CAPTIONER.default_metrics_port, build_stage)


if __name__ == "__main__":
    raise SystemExit(stage_command("python -m services.captioner.stage", main))
