"""Payloads of every topic in the flow (see docs/architecture.md, "Flow").

Downstream payloads embed the upstream payload they were made from, so every event carries
its whole lineage (reference photo → generated image → masks → decision) and no stage has
to look anything up to explain itself.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, Field, JsonValue, WithJsonSchema, field_validator

from schemas.common import (
    BIDI_CONTROL,
    NOT_PLAIN,
    Chars,
    Contract,
    ImageRef,
    OneLineText,
    PlainText,
    SafeId,
    Sha256Hex,
    SkuMetadata,
    UtcDatetime,
    escaped_when_read,
)

Shape = Literal["can", "bottle", "box", "pouch", "jar", "produce", "other"]
Backend = Literal["composite", "diffusion"]
# A hard ceiling far above any real SKU (ingest takes SKUFORGE_MAX_PHOTOS_PER_SKU, 10 by default): the
# captioner decodes every photo of an event at once, so an unbounded list is an unbounded allocation.
MAX_PHOTOS_PER_EVENT = 64
_PHOTOS_DESCRIPTION = f"at most {MAX_PHOTOS_PER_EVENT}; each photo_id at most once"
# Free text is bounded far above what any skuforge producer writes, so an oversized event is refused once,
# as schema_invalid naming the field, when it is read, not variant by variant at the generator's server
# (MAX_TEXT_BYTES, 8 KiB): an instance prompt, ", " and a caption, all in 4-byte characters, fit it. A
# caption is the attribute template over SkuMetadata's bounded fields (~700 characters at most) plus a
# BLIP sentence (at most 200 tokens); a generated image's prompt is an instance prompt and a caption.
MAX_CAPTION_CHARS = 1800
MAX_PROMPT_CHARS = 2500
MAX_PHRASE_CHARS = 200  # a word or phrase: a tag, a colour, a view, a class noun, a check's code
MAX_MESSAGE_CHARS = 1000  # a sentence for people: why a photo is unusable, a check's message, a reject reason
MAX_MODEL_ID_CHARS = 1000  # model ids and registry URIs, which may hold a path
MAX_TRAINING_PROMPT_CHARS = 8192
MAX_TAGS = 64
MAX_FILENAME_CHARS = 255  # a photo's original file name (a file system's 255)
# The counts of the other lists (and of a generated image's parameters) for the same reason: an event
# with a million checks, reasons or SKU ids was read into memory whole, handled, and forwarded embedded
# in every later event of its item. Each bound is far above what its producer writes.
MAX_CHECKS = 64  # the gate runs 6 checks (shared/gate/checks.py: CHECK_CODES); a reason is a failed one
MAX_ADAPTER_SKUS = 50_000  # one per instance image at most: a general adapter takes 2000 by default
MAX_PARAMETERS = 256  # backend knobs: the composite backend knows 24, the diffusion backend records 21
MAX_PARAMETER_VALUES = 1024  # every value inside them, a list's items each (a colour gain is 3)
# A word or phrase on one line that reads as written (OneLineText). Read from a topic, a console's tasks or
# the trainer's requests, such text an event holds from before the field refused it is taken escaped.
OneLinePhrase = Annotated[OneLineText, Chars(MAX_PHRASE_CHARS), escaped_when_read(MAX_PHRASE_CHARS)]
# A gate check's code, and one among a flagged item's reasons. They took any text, and another producer's
# U+202E, terminal escape or newline went on to the console's pages and the trainstore's rows; the gate
# writes only CHECK_CODES (shared/gate/checks.py).
CheckCode = OneLinePhrase
# The captioner's text (sku.captioned: a photo's caption, tags, colours, view and why it is unusable; the
# SKU's instance token, class noun and prompts) is one line too. It took any text, and another producer's
# U+202E, terminal escape or newline went on into the generator's prompts, the trainer's captions and
# the console's pages. The captioner writes none: its words are SkuMetadata's (which refuses control
# characters and bidirectional controls) single-spaced, which takes the line separators out, a VLM
# sentence's letters and digits, and fixed words (colours, shapes, views, reasons).
CaptionText = Annotated[OneLineText, Chars(MAX_CAPTION_CHARS), escaped_when_read(MAX_CAPTION_CHARS)]
# A model's id (the captioner's, the generator's model and adapter, the matting model's, an adapter's base
# model) and an adapter's registry URI: one line that reads as written, a space included (a model file's
# name, a store's folder may hold one). They took any text, and another producer's U+202E, terminal escape
# or newline went on to the console's pages, Label Studio, the trainstore's rows and log lines. skuforge
# writes names of its settings and files; an event holding one from before is read with it escaped.
ModelId = Annotated[OneLineText, Chars(MAX_MODEL_ID_CHARS), escaped_when_read(MAX_MODEL_ID_CHARS)]
# A parameter's value in the committed JSON Schemas: any JSON, its strings at any depth at most a model
# id long, as ``_check_parameter`` has it (each keyword applies to its own type only). pydantic wrote an
# empty schema, so a producer validating against it sent a longer string, which every consumer then
# dead-lettered as schema_invalid. The schema refers to itself, which pydantic cannot write:
# ``schemas.jsonschema`` puts it in ``$defs`` and each mark's place. The count of values in all is beyond
# a JSON Schema; the field's description gives it.
PARAMETER_VALUE_DEF = "ParameterValue"
PARAMETER_VALUE_MARK = {"x-skuforge-def": PARAMETER_VALUE_DEF}
PARAMETER_VALUE_SCHEMA = {
    "maxLength": MAX_MODEL_ID_CHARS,
    "items": {"$ref": f"#/$defs/{PARAMETER_VALUE_DEF}"},
    "additionalProperties": {"$ref": f"#/$defs/{PARAMETER_VALUE_DEF}"},
}
ParameterValue = Annotated[JsonValue, WithJsonSchema(PARAMETER_VALUE_MARK)]


def _check_parameter(value: JsonValue, where: str) -> int:
    """Refuse NaN and infinity anywhere in free-form JSON (the float fields' ``allow_inf_nan=False``),
    and a string longer than a model id; returns how many values ``value`` holds, itself included."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}; JSON has no NaN or infinity, give a finite number")
    if isinstance(value, str) and len(value) > MAX_MODEL_ID_CHARS:
        raise ValueError(f"{where} is {len(value)} characters long; at most {MAX_MODEL_ID_CHARS} are allowed")
    if isinstance(value, dict):
        return 1 + sum(_check_parameter(item, f"{where}.{key}") for key, item in value.items())
    if isinstance(value, list):
        return 1 + sum(_check_parameter(item, f"{where}[{index}]") for index, item in enumerate(value))
    return 1


def _unique_photo_ids(photo_ids: list[str]) -> None:
    """Refuse a photo_id given twice: stages key objects and look photos up by it."""
    seen: set[str] = set()
    for photo_id in photo_ids:
        if photo_id in seen:
            raise ValueError(f"photo_id {photo_id!r} appears more than once; each photo needs its own id")
        seen.add(photo_id)


class ReferencePhoto(Contract):
    """One real photo of the product as ingested."""

    photo_id: SafeId
    image: ImageRef
    # No control characters (``skuforge ingest`` escapes them in a file name on disk): a newline or a
    # terminal escape here went on into the console, the demo's report and log lines.
    original_filename: PlainText = Field(max_length=MAX_FILENAME_CHARS)
    mask: ImageRef | None = Field(
        default=None,
        description="the photo file's own transparency (white = opaque), when it had some: a cut-out's "
        "exact outline, which the captioner uses instead of the matting model's mask",
    )


class SkuIngested(Contract):
    """A new product arrived with its real photos (topic ``sku.ingested``)."""

    sku: SkuMetadata
    photos: list[ReferencePhoto] = Field(
        min_length=1, max_length=MAX_PHOTOS_PER_EVENT, description=_PHOTOS_DESCRIPTION
    )

    @field_validator("photos")
    @classmethod
    def _photo_ids_unique(cls, photos: list[ReferencePhoto]) -> list[ReferencePhoto]:
        _unique_photo_ids([photo.photo_id for photo in photos])
        return photos


class CaptionedPhoto(Contract):
    """A reference photo with its product mask and caption; unusable photos say why."""

    photo_id: SafeId
    image: ImageRef
    mask: ImageRef | None = Field(default=None, description="product mask (U2-Net); None if unusable")
    usable: bool
    unusable_reason: (
        Annotated[OneLineText, Chars(MAX_MESSAGE_CHARS), escaped_when_read(MAX_MESSAGE_CHARS)] | None
    ) = None
    caption: CaptionText = ""
    tags: list[OneLinePhrase] = Field(default_factory=list, max_length=MAX_TAGS)
    colours: list[OneLinePhrase] = Field(
        default_factory=list, max_length=MAX_TAGS, description="dominant colour names, most dominant first"
    )
    shape: Shape = "other"
    view: OneLinePhrase = ""
    plain_background: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="share of the background near the border's colour (~1 catalogue photo, <0.6 in-store); "
        "the generator composites from plain-background photos first; None = not measured",
    )


class SkuCaptioned(Contract):
    """Captions and prompts for one SKU (topic ``sku.captioned``)."""

    sku: SkuMetadata
    photos: list[CaptionedPhoto] = Field(
        min_length=1, max_length=MAX_PHOTOS_PER_EVENT, description=_PHOTOS_DESCRIPTION
    )
    instance_token: OneLinePhrase = Field(
        min_length=1, description="rare token unique to this SKU, stable across runs"
    )
    class_noun: OneLinePhrase = Field(min_length=1)
    instance_prompt: OneLinePhrase = Field(min_length=1, description="e.g. 'a photo of <token> <class>'")
    class_prompt: OneLinePhrase = Field(
        min_length=1, description="regularisation prompt, e.g. 'a photo of a <class>'"
    )
    negative_prompt: CaptionText = ""
    captioner: ModelId = Field(description="backend and model id that wrote the captions")

    @field_validator("photos")
    @classmethod
    def _photo_ids_unique(cls, photos: list[CaptionedPhoto]) -> list[CaptionedPhoto]:
        _unique_photo_ids([photo.photo_id for photo in photos])
        return photos


# A seed is what the Triton protocol carries for it, an int64, negative ones included: every backend
# refuses any other (``shared/generation/backend.py``: ``seed_entropy``), so no event records one.
MIN_SEED, MAX_SEED = -(2**63), 2**63 - 1


class ImageGenerated(Contract):
    """One generated training image with the mask of where the product is (topic ``image.generated``)."""

    item_id: SafeId = Field(description="deterministic id of this generated item")
    sku: SkuMetadata
    reference_photo_id: SafeId
    reference_image: ImageRef
    reference_mask: ImageRef
    image: ImageRef
    expected_mask: ImageRef = Field(description="where the product's own pixels are in the output")
    backend: Backend
    model_id: ModelId
    adapter_id: ModelId | None = Field(default=None, description="LoRA adapter used, None for the base model")
    # One line, as the captioner's text they are made of (an instance prompt, ", " and a photo's caption;
    # the SKU's negative prompt): they took any text, and another producer's U+202E, terminal escape or
    # newline went on to the console's pages, the trainstore's rows and the general adapter's prompts.
    prompt: Annotated[OneLineText, Chars(MAX_PROMPT_CHARS), escaped_when_read(MAX_PROMPT_CHARS)] = ""
    negative_prompt: CaptionText = ""
    seed: int = Field(ge=MIN_SEED, le=MAX_SEED, description="an int64, as the Triton protocol carries it")
    variant_index: int = Field(ge=0)
    parameters: dict[str, ParameterValue] = Field(
        default_factory=dict,
        max_length=MAX_PARAMETERS,
        description=f"variant parameters used: at most {MAX_PARAMETERS} knobs, {MAX_PARAMETER_VALUES} values "
        f"in all (a list's items each), strings of at most {MAX_MODEL_ID_CHARS} characters",
    )
    colour_gain: Annotated[
        tuple[float, float, float] | None,
        # The validator's (0, 16) in the JSON Schema too: it showed plain numbers.
        WithJsonSchema(
            {
                "anyOf": [
                    {
                        "type": "array",
                        "prefixItems": [{"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 16}]
                        * 3,
                        "minItems": 3,
                        "maxItems": 3,
                    },
                    {"type": "null"},
                ]
            }
        ),
    ] = Field(
        default=None,
        description="per-channel (R, G, B) gain the generator applied to the product's colours on purpose "
        "(the composite backend: its match to a photo scene times the scene light on the product); the gate "
        "applies it to the reference photo before it measures colour drift. None: no deliberate change",
    )

    @field_validator("parameters")
    @classmethod
    def _bounded_finite_parameters(cls, parameters: dict[str, JsonValue]) -> dict[str, JsonValue]:
        values = sum(_check_parameter(value, name) for name, value in parameters.items())
        if values > MAX_PARAMETER_VALUES:
            raise ValueError(
                f"the parameters hold {values} values (a list's items each); at most "
                f"{MAX_PARAMETER_VALUES} are allowed"
            )
        return parameters

    @field_validator("colour_gain")
    @classmethod
    def _positive_gain(cls, gain: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        # Kept as it was first published: narrowing it would make events and console tasks stored
        # under it unreadable. The gate bounds what it computes from a vanishing gain instead.
        if gain is not None and not all(0.0 < value < 16.0 for value in gain):
            raise ValueError(f"colour_gain values must be in (0, 16), got {gain}")
        return gain


class ImageMatted(Contract):
    """The matting model's mask and cut-out of a generated image (topic ``image.matted``)."""

    generated: ImageGenerated
    predicted_mask: ImageRef
    cutout: ImageRef = Field(description="RGBA PNG: the image with the predicted mask as alpha")
    foreground_fraction: float = Field(ge=0.0, le=1.0)
    mean_confidence: float = Field(ge=0.0, le=1.0)
    matting_model_id: ModelId


class GateCheck(Contract):
    """One measured check of the gate, with its figure and the threshold it was held to."""

    code: CheckCode = Field(
        description="e.g. iou_below_threshold, mask_empty, mask_full_frame, product_drift"
    )
    passed: bool
    value: float = Field(allow_inf_nan=False)
    threshold: float = Field(allow_inf_nan=False)
    # One line for people, as a reject reason is: the gate writes a sentence of figures.
    message: Annotated[OneLineText, escaped_when_read(MAX_MESSAGE_CHARS)] = Field(
        default="", max_length=MAX_MESSAGE_CHARS
    )


class GateAccepted(Contract):
    """An item good enough to train on (topic ``gate.accepted``)."""

    matted: ImageMatted
    iou: float = Field(ge=0.0, le=1.0)
    checks: list[GateCheck] = Field(max_length=MAX_CHECKS)


class CorrectionPending(Contract):
    """An item a person must review (topic ``correction.pending``)."""

    matted: ImageMatted
    iou: float = Field(ge=0.0, le=1.0)
    checks: list[GateCheck] = Field(max_length=MAX_CHECKS)
    reasons: list[CheckCode] = Field(
        min_length=1, max_length=MAX_CHECKS, description="codes of the failed checks"
    )


Decision = Literal["approve_predicted", "approve_expected", "approve_edited", "reject"]


class CorrectionResolved(Contract):
    """A person's decision on a flagged item (topic ``correction.resolved``)."""

    pending: CorrectionPending
    decision: Decision
    final_mask: ImageRef | None = Field(default=None, description="the mask to train with; None if rejected")
    # Shown on the console's item page and in its audit: no control character, line separator or
    # bidirectional control (which reordered it to read as another reason), as the console refuses.
    # A console before this contract refused them (4dce3f95) sent a reason's bidirectional controls as
    # typed (it refused control characters and line breaks already). Such a decision already in the topic
    # was dead-lettered by its reader, and a replay was again: the reviewer's decision was lost. A reader
    # takes it with them escaped, as the console's item page shows it (cut between two escapes to the
    # field's length; a reason over it no console wrote is refused); producers stay strict.
    reject_reason: (
        Annotated[OneLineText, Chars(MAX_MESSAGE_CHARS), escaped_when_read(MAX_MESSAGE_CHARS, BIDI_CONTROL)]
        | None
    ) = None
    # Who decided, on the console's pages and in its audit: one line that reads as written. The console
    # writes a login name (ASCII), "labelstudio:" and an annotator's printable characters, or its own.
    reviewer: OneLinePhrase = Field(min_length=1)
    decided_at: UtcDatetime = Field(description="with an offset; a naive time is read as UTC")


# An adapter's series: the SKUs' own (SkuMetadata.series), as they take it, plain text, a line separator
# included. `skuforge adapters register --series` is held to it too.
AdapterSeries = Annotated[PlainText, Chars(MAX_PHRASE_CHARS), escaped_when_read(MAX_PHRASE_CHARS, NOT_PLAIN)]
# One of an adapter's training prompts: one line, as the captioner's text and a generated image's prompt
# they are made of. They took any text, and another producer's U+202E, terminal escape or newline went on
# to `skuforge adapters list` and the registry; `skuforge adapters register --prompt` is held to it too.
TrainingPrompt = Annotated[
    OneLineText, Chars(MAX_TRAINING_PROMPT_CHARS), escaped_when_read(MAX_TRAINING_PROMPT_CHARS)
]


class AdapterPublished(Contract):
    """A LoRA adapter the trainer wrote to the adapter registry; the generator may now choose it.

    The envelope's ``sku_id`` (and Kafka key) is the adapter id, so one adapter's events stay ordered.
    """

    adapter_id: SafeId = Field(description="registry id: '<series or general>-<training set sha256[:12]>'")
    kind: Literal["general", "specialized"]
    series: AdapterSeries | None = Field(default=None, description="the series a specialised adapter is for")
    base_model: ModelId = Field(min_length=1)
    registry_uri: ModelId = Field(min_length=1, description="the adapter's folder in the registry")
    weights_sha256: Sha256Hex
    training_set_sha256: Sha256Hex = Field(
        description="content hash of the training set and recipe: the job's identity"
    )
    sku_ids: list[SafeId] = Field(
        default_factory=list,
        max_length=MAX_ADAPTER_SKUS,
        description="SKUs whose photos it was trained on, sorted; cut to the first that fit one Kafka "
        "record (a general adapter of tens of thousands: the job's result.json names them all)",
    )
    instance_images: int = Field(ge=0)
    class_images: int = Field(ge=0)
    steps: int = Field(ge=0, description="optimiser steps run (early stop may end before the cap)")
    final_loss: float | None = None
    resumed_from_step: int = Field(
        default=0, ge=0, description="the checkpoint step a restarted job began at"
    )
    # The trainer's first 50 distinct prompts, each an instance prompt with its tags appended (a series'),
    # an accepted image's prompt (the general adapter's) or a class prompt.
    training_prompts: list[TrainingPrompt] = Field(default_factory=list, max_length=MAX_TAGS)
    publication: int = Field(
        default=1,
        ge=1,
        description="which publication of this adapter it is: 1, then one more each time a training set "
        "rolled back to makes it current again; the event id names it, so a roll-back is not a duplicate",
    )


def subject_sku_id(payload: BaseModel) -> str | None:
    """The SKU an event of the flow is about, which its envelope's ``sku_id`` (its Kafka key) must be;
    None for an event about no one SKU (``AdapterPublished`` is keyed by its adapter)."""
    if isinstance(payload, SkuIngested | SkuCaptioned | ImageGenerated):
        return payload.sku.sku_id
    if isinstance(payload, ImageMatted):
        return payload.generated.sku.sku_id
    if isinstance(payload, GateAccepted | CorrectionPending):
        return payload.matted.generated.sku.sku_id
    if isinstance(payload, CorrectionResolved):
        return payload.pending.matted.generated.sku.sku_id
    return None
