"""Label Studio hand-off: pending items out as tasks with a brush pre-annotation, annotations back in.

``export_tasks`` writes one Label Studio task per pending item: the generated image's URL, the
console's ids in ``data``, and the predicted mask as a ``brushlabels`` prediction in Label Studio's
``rle`` format. ``import_annotations`` reads Label Studio's JSON export: an annotation whose
``decision`` choice is ``reject`` rejects the item (reason from the ``reason`` text area; one longer
than the web page takes is cut, ending in ``CUT_MARK``), one with brush results approves the union of
its strokes as an edited mask (the ``mask`` control's ``product`` strokes only, in the ``rle`` format:
other brushes are ignored, a product stroke in another format skips the item with the reason; strokes
that are exactly the predicted mask approve the prediction), one whose ``decision``
is ``approve`` without a stroke approves the predicted mask. Of several annotations the latest is
taken; annotators who disagree (one approves, another rejects, or two approve masks that overlap at
an IoU below ``agree_iou``, by default ``MASKS_AGREE_IOU``) are skipped, not settled. All go
through the same task table, audit and outbox as the web page's decisions, under the reviewer
``labelstudio:<annotator>``.

The RLE is Label Studio's brush format (label-studio-converter ``brush.py``, itself thi.ng's
rle-pack): the mask is flattened as RGBA (each pixel's value repeated in 4 channels), then a bit
stream of a 32-bit value count, a 5-bit word size minus one (8 bits → 7), four 4-bit run-length
field sizes minus one (3, 4, 8, 16), and per run either ``0`` + size index + (count-1) + that many
words, or ``1`` + size index + (count-1) + one repeated word; padded to whole bytes, as a list of ints.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.common import ImageRef
from services.console.decisions import (
    MAX_REASON_CHARS,
    DecisionInvalid,
    check_model_mask,
    check_reject_reason,
    mask_from_ref,
    resolve,
    shown_pixels,
    store_edited_mask,
)
from services.console.tasks import (
    PENDING,
    Task,
    TaskConflict,
    TaskFilter,
    TaskNotFound,
    TaskStore,
    unsendable,
)
from shared.arith.masks import mask_iou
from shared.errors import BadInput, TransientError
from shared.store import ObjectStore

log = logging.getLogger("skuforge.console.labelstudio")

WORD_SIZE = 8
RLE_SIZES = (3, 4, 8, 16)
FROM_NAME = "mask"
TO_NAME = "image"
LABEL = "product"
DECISION_NAME = "decision"
REASON_NAME = "reason"
CUT_MARK = "… [cut]"  # ends a reject reason longer than the table takes
# Approving annotators whose masks overlap less than this disagree, by default (the gate's default
# iou_min: masks that would fail the gate against each other cannot both be the corrected mask);
# ``import-labelstudio --agree-iou`` sets another.
MASKS_AGREE_IOU = 0.90
# A labeling config matching the exported tasks (``--config-out`` writes it).
LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="mask" toName="image">
    <Label value="product" background="#3b82f6"/>
  </BrushLabels>
  <Choices name="decision" toName="image" choice="single" showInline="true">
    <Choice value="approve"/>
    <Choice value="reject"/>
  </Choices>
  <TextArea name="reason" toName="image" placeholder="why rejected" maxSubmissions="1"/>
</View>
"""


# -- Label Studio's brush RLE ---------------------------------------------------------------


def encode_rle(values: npt.NDArray[np.uint8]) -> list[int]:
    """Encode a flat uint8 array in Label Studio's ``rle`` format (byte-compatible with its converter)."""
    flat = np.asarray(values, dtype=np.uint8).ravel()
    bits: list[str] = [f"{flat.size:032b}", f"{WORD_SIZE - 1:05b}", *(f"{s - 1:04b}" for s in RLE_SIZES)]
    if flat.size:
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        starts = np.concatenate(([0], change))
        lengths = np.diff(np.concatenate((starts, [flat.size])))
        for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
            word = f"{int(flat[start]):08b}"
            if length == 1:
                bits.append("0" + "00" + "000" + word)
                continue
            if length > 2**8:
                # Long runs: 16-bit counts only, the remainder too (as the converter does).
                while length > 2**16:
                    bits.append("1" + "11" + f"{2**16 - 1:016b}" + word)
                    length -= 2**16
                bits.append("1" + "11" + f"{length - 1:016b}" + word)
                continue
            for index, size in enumerate(RLE_SIZES[:3]):
                if length <= 2**size:
                    bits.append("1" + f"{index:02b}" + f"{length - 1:0{size}b}" + word)
                    break
    stream = "".join(bits)
    # The converter always pads with 8 - len % 8 zero bits (a whole zero byte when already aligned).
    stream += "0" * (8 - len(stream) % 8)
    return [int(stream[i : i + 8], 2) for i in range(0, len(stream), 8)]


class _BitReader:
    # The bits as ASCII digits, which int(..., 2) reads at C speed: a bit at a time in Python, a mask
    # of a 2048 px image painted in Label Studio's legacy brush took seconds to decode.
    def __init__(self, data: bytes) -> None:
        self._digits = (np.unpackbits(np.frombuffer(data, dtype=np.uint8)) + ord("0")).tobytes()
        self._pos = 0

    def read(self, count: int) -> int:
        end = self._pos + count
        if end > len(self._digits):
            raise ValueError("RLE data ends early")
        value = int(self._digits[self._pos : end], 2)
        self._pos = end
        return value

    def read_words(self, count: int, size: int) -> npt.NDArray[np.uint8]:
        """``count`` words of ``size`` bits (at most 8) at once: a literal run."""
        end = self._pos + count * size
        if end > len(self._digits):
            raise ValueError("RLE data ends early")
        bits = np.frombuffer(self._digits, dtype=np.uint8, count=count * size, offset=self._pos) - ord("0")
        words = bits.reshape(count, size) @ (1 << np.arange(size - 1, -1, -1))
        self._pos = end
        return words.astype(np.uint8)


def decode_rle(rle: Iterable[int], *, max_values: int = 4 * 40_000_000) -> npt.NDArray[np.uint8]:
    """Decode Label Studio's ``rle`` into the flat uint8 array it encodes; ValueError if malformed
    (words wider than 8 bits included)."""
    try:
        data = bytes(rle)
    except TypeError as exc:  # bytes() says ValueError for out-of-range ints, TypeError for non-ints
        raise ValueError(f"RLE must be a list of integers 0-255: {exc}") from exc
    reader = _BitReader(data)
    count = reader.read(32)
    if count > max_values:
        raise ValueError(f"RLE declares {count} values; at most {max_values} are allowed")
    word_size = reader.read(5) + 1
    if word_size > WORD_SIZE:
        # The values are RGBA bytes: wider words were cut to their low byte without a word (numpy 1),
        # or raised OverflowError, which the import does not skip (numpy 2).
        raise ValueError(f"RLE words are {word_size} bits; brush values have at most {WORD_SIZE}")
    sizes = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.uint8)
    i = 0
    while i < count:
        repeated = reader.read(1)
        end = i + 1 + reader.read(sizes[reader.read(2)])
        if end > count:
            raise ValueError("RLE run goes past the declared length")
        if repeated:
            out[i:end] = reader.read(word_size)
            i = end
        else:
            out[i:end] = reader.read_words(end - i, word_size)
            i = end
    return out


def mask_to_rle(mask: npt.NDArray[np.uint8]) -> list[int]:
    """A HxW 0/255 mask as Label Studio brush RLE (RGBA: the value in every channel)."""
    if mask.ndim != 2:
        raise ValueError("mask must be a HxW array")
    return encode_rle(np.repeat(mask.astype(np.uint8).ravel(), 4))


def rle_to_mask(rle: Iterable[int], width: int, height: int) -> npt.NDArray[np.uint8]:
    """Label Studio brush RLE → HxW 0/255 mask (alpha channel, thresholded at 128)."""
    flat = decode_rle(rle, max_values=4 * width * height)
    if flat.size != 4 * width * height:
        raise ValueError(f"RLE holds {flat.size // 4} pixels; the image has {width}x{height}")
    alpha = flat.reshape(height, width, 4)[:, :, 3]
    return np.where(alpha >= 128, np.uint8(255), np.uint8(0)).astype(np.uint8)


# -- export / import -------------------------------------------------------------------------


IMAGE_URL_FIELDS = ("uri", "key", "sku_id", "item_id")


def check_image_url(template: str) -> str:
    """The ``image_url`` template if it uses only the known fields; ValueError naming them otherwise."""
    try:
        template.format(**dict.fromkeys(IMAGE_URL_FIELDS, ""))
    except (KeyError, IndexError, ValueError) as exc:
        known = ", ".join("{" + name + "}" for name in IMAGE_URL_FIELDS)
        raise ValueError(f"bad image URL template {template!r} ({exc!r}); it may use {known}") from None
    return template


def _image_url(template: str, ref: ImageRef, store: ObjectStore, sku_id: str, item_id: str) -> str:
    key = store.key_for(ref.uri)
    return template.format(uri=ref.uri, key=key, sku_id=sku_id, item_id=item_id)


@dataclass(frozen=True)
class LabelStudioExport:
    """What ``export_tasks`` wrote: the Label Studio tasks, and the items left out, each with why."""

    tasks: list[dict[str, Any]]
    skipped: list[ImportOutcome]


def export_tasks(
    tasks: TaskStore,
    store: ObjectStore,
    *,
    filters: TaskFilter = PENDING,
    image_url: str = "{uri}",
    limit: int | None = None,
) -> LabelStudioExport:
    """Label Studio tasks for the queue's items (pending by default), predicted mask pre-annotated.

    ``image_url`` is a template for the image Label Studio loads: ``{uri}``, ``{key}`` (object key),
    ``{sku_id}``, ``{item_id}``; e.g. ``https://images.example/{key}``. An item whose predicted mask
    cannot be read (missing, corrupt, store unavailable), or whose generated image is not in ``store``
    (it has no key), or no decision on which can be sent (``tasks.unsendable``), is left out with the
    reason; the others are exported. Every matching item by
    default (``limit`` caps it; a fixed 10,000 once cut the hand-off short without a word).
    """
    check_image_url(image_url)
    exported = []
    skipped = []
    if limit is None:
        limit = max(1, tasks.count(filters))
    for task in tasks.query(filters, limit=limit):
        if (why := unsendable(task)) is not None:
            # Annotated, its decision could not be sent either (the import would skip it, work lost).
            skipped.append(ImportOutcome(task.task_id, "skipped", why))
            continue
        matted = task.pending.matted
        image = matted.generated.image
        try:
            predicted = mask_from_ref(store, matted.predicted_mask)
        except (BadInput, TransientError) as exc:
            skipped.append(ImportOutcome(task.task_id, "skipped", f"predicted mask unreadable: {exc}"))
            continue
        try:
            # An image outside this store (an event from before a store move) has no key: before, its
            # BadInput ended the export with a traceback, and no file was written for the others.
            url = _image_url(image_url, image, store, task.sku_id, task.item_id)
        except BadInput as exc:
            skipped.append(ImportOutcome(task.task_id, "skipped", f"image not in the store: {exc}"))
            continue
        exported.append(
            {
                "data": {
                    TO_NAME: url,
                    "skuforge_task_id": task.task_id,
                    # The pixels sent (decisions.shown_pixels): an annotation of them is not recorded
                    # once a replay of the gate has replaced them.
                    "skuforge_shown": shown_pixels(task),
                    "sku_id": task.sku_id,
                    "item_id": task.item_id,
                    "iou": task.iou,
                    "reasons": ", ".join(task.reasons),
                },
                "predictions": [
                    {
                        "model_version": matted.matting_model_id,
                        "score": task.iou,
                        "result": [
                            {
                                "id": f"predicted-{task.item_id}"[:64],
                                "from_name": FROM_NAME,
                                "to_name": TO_NAME,
                                "type": "brushlabels",
                                "original_width": image.width,
                                "original_height": image.height,
                                "image_rotation": 0,
                                "value": {
                                    "format": "rle",
                                    "rle": mask_to_rle(predicted),
                                    "brushlabels": [LABEL],
                                },
                            }
                        ],
                    }
                ],
            }
        )
    return LabelStudioExport(tasks=exported, skipped=skipped)


@dataclass(frozen=True)
class ImportOutcome:
    """What happened to one Label Studio task on import."""

    task_id: str
    outcome: str  # approve_edited, approve_predicted, reject, skipped
    detail: str = ""

    @property
    def annotation_lost(self) -> bool:
        """Skipped although it held an annotation: what was done in Label Studio was not recorded."""
        return self.outcome == "skipped" and self.detail not in (
            NO_ANNOTATION,
            ALREADY_DECIDED,
            WITHDRAWN,
            GATE_ACCEPTED,
        )


# The skips that lose nothing: Label Studio exports tasks nobody annotated too, and an export imported
# again finds its tasks decided (by this import before, or by a reviewer on the web page).
NO_ANNOTATION = "no annotation"
ALREADY_DECIDED = "already decided"
WITHDRAWN = "withdrawn: its reference photo was withdrawn by its owner"
GATE_ACCEPTED = "accepted: the gate accepted the item when replayed, and it is stored"
# A skip that loses the annotation: it is of pixels the task no longer holds.
CHANGED_SINCE_EXPORT = (
    "the item's image or masks changed since the export (the gate was replayed): export it again"
    " and annotate what it holds now, or decide it on the web page"
)


def _annotator(annotation: dict[str, Any]) -> str:
    """The reviewer an annotation's decision is recorded under: ``labelstudio:`` and its annotator (the
    user's email, else id). One that names nobody (no ``completed_by``) is an annotator of its own,
    ``labelstudio:anonymous-<annotation id>`` (``labelstudio:unknown`` with no id either, told apart by
    ``_latest_by_annotator``): as one ``labelstudio:unknown``, two people's annotations read as one
    person's drafts, and a disagreement between them was settled by the latest without a word."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    if who not in (None, ""):
        text = str(who)
    elif annotation.get("id") not in (None, ""):
        text = f"anonymous-{annotation['id']}"
    else:
        text = _UNKNOWN
    return "labelstudio:" + "".join(ch for ch in text if ch.isprintable())[:64]


_UNKNOWN = "unknown"


def _decision_of(annotation: dict[str, Any], width: int, height: int) -> tuple[str, Any]:
    """('reject', reason), ('approve_edited', mask), ('approve_predicted', None) or ('skipped', why)
    for one annotation.

    ValueError when the annotation is not shaped like Label Studio's or has a product stroke in a
    format other than ``rle`` (the import skips it).
    """
    results = _results(annotation)
    choices = _decision_choices(results)
    if "reject" in choices:
        # Only the ``reason`` text area: another one in the project's config (an annotator's notes, a
        # per-region comment) was joined into the reason that is published with the decision.
        texts = [
            text
            for item in results
            if item.get("type") == "textarea" and item.get("from_name") == REASON_NAME
            for text in _strings(item, "text")
        ]
        # A text area may hold several lines; a reason is one line, so whitespace runs become a space.
        reason = " ".join(" ".join(texts).split())
        if len(reason) > MAX_REASON_CHARS:
            # The table takes as many characters as from the web page; the mark says in the audit and
            # the published decision that the rest is in Label Studio (it was cut without a sign).
            reason = reason[: MAX_REASON_CHARS - len(CUT_MARK)].rstrip() + CUT_MARK
        return "reject", check_reject_reason(reason or "rejected in Label Studio")
    # Only the product mask's control and label, as ``LABEL_CONFIG`` names them: before, every brush
    # counted, and a project's other brush control (defects, say) was painted into the product mask.
    brush_results = [item for item in results if item.get("type") == "brushlabels"]
    brushes = _product_strokes(results)
    if not brushes and "approve" in choices:
        # Approved without a stroke: the prediction was not copied into the annotation (Label Studio
        # does that only when the project uses predictions to pre-label), and the annotator judged the
        # predicted mask right. It was skipped as lost; the web page's approve records the prediction.
        return "approve_predicted", None
    if not brushes:
        why = "no brush mask and no reject choice"
        if brush_results:
            why += (
                f" ({len(brush_results)} brush result(s) of another control or label ignored: the product"
                f" mask is the {FROM_NAME!r} control's {LABEL!r} label)"
            )
        return "skipped", why
    mask = np.zeros((height, width), dtype=np.uint8)
    for item in brushes:
        rle = _value(item).get("rle")
        if not isinstance(rle, list):
            raise ValueError("a brush result has no 'rle' list")
        mask |= rle_to_mask(rle, width, height)
    # As the web page refuses them: an annotator who erased every stroke (or painted everything)
    # would publish an empty (or full) "corrected" mask for training.
    product = int(np.count_nonzero(mask))
    if product == 0:
        raise DecisionInvalid("the brush mask marks no product pixels; to leave the item out, reject it")
    if product == mask.size:
        raise DecisionInvalid("the brush mask marks every pixel as product")
    return "approve_edited", mask


def _verdict_of(annotation: dict[str, Any]) -> str | None:
    """'reject', 'approve' (a product stroke or the approve choice) or None (neither), as
    ``_decision_of`` would decide; ValueError when the annotation is not shaped like Label Studio's or
    has a product stroke in a format other than ``rle`` (as ``_decision_of``)."""
    results = _results(annotation)
    choices = _decision_choices(results)
    if "reject" in choices:
        return "reject"
    return "approve" if _product_strokes(results) or "approve" in choices else None


def _product_strokes(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The product mask's brush results (the ``mask`` control's ``product`` label); ValueError for one
    in a format other than ``rle``. Such a stroke counted as an approval among the annotators but was
    dropped from the mask: with the approve choice, the predicted mask was recorded instead."""
    strokes = [
        item
        for item in results
        if item.get("type") == "brushlabels"
        and item.get("from_name") == FROM_NAME
        and LABEL in _strings(item, "brushlabels")
    ]
    for item in strokes:
        if _value(item).get("format") != "rle":
            raise ValueError(
                f"a {LABEL!r} brush result's format is {_value(item).get('format')!r:.40}, not 'rle':"
                " the import reads Label Studio's rle brushes only"
            )
    return strokes


def _annotated_at(annotation: dict[str, Any]) -> datetime:
    """When the annotation was last saved (``updated_at``, else ``created_at``); ValueError if neither
    is a time. Compared as times: as text, "10:00:00Z" sorted after "10:00:00.500Z"."""
    text = annotation.get("updated_at") or annotation.get("created_at")
    try:
        at = datetime.fromisoformat(str(text))
    except ValueError:
        raise ValueError(f"an annotation's updated_at/created_at is {text!r:.40}, not a time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)  # Label Studio writes UTC


def _results(annotation: dict[str, Any]) -> list[dict[str, Any]]:
    """The annotation's results; ValueError when they are not a list of objects."""
    results = annotation.get("result") or []
    if not isinstance(results, list) or not all(isinstance(item, dict) for item in results):
        raise ValueError("the annotation's 'result' is not a list of objects")
    return results


def _decision_choices(results: list[dict[str, Any]]) -> list[str]:
    """What the ``decision`` control's choices say (``approve``, ``reject``), as chosen."""
    return [
        choice
        for item in results
        if item.get("type") == "choices" and item.get("from_name") == DECISION_NAME
        for choice in _strings(item, "choices")
    ]


def _strings(item: dict[str, Any], name: str) -> list[str]:
    """A result value's list of strings (Label Studio's ``choices`` and ``text``); ValueError for any
    other shape. A bare string would be read letter by letter, a number not at all."""
    values = _value(item).get(name)
    if values is None:
        return []
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise ValueError(f"a {item.get('type')} result's {name!r} is not a list of strings: {values!r:.80}")
    return values


def _value(item: dict[str, Any]) -> dict[str, Any]:
    """A result's ``value`` object (empty when it is missing or not an object)."""
    value = item.get("value")
    return value if isinstance(value, dict) else {}


def import_annotations(
    tasks: TaskStore,
    store: ObjectStore,
    export: list[dict[str, Any]],
    *,
    lease_s: float = 300.0,
    agree_iou: float = MASKS_AGREE_IOU,
) -> list[ImportOutcome]:
    """Record Label Studio's annotations as decisions (table, audit, outbox); publish them afterwards.

    Approving annotators whose masks overlap at an IoU below ``agree_iou`` (0 to 1) disagree.

    A task that cannot be used (unknown, decided, held by a reviewer, unreadable, malformed, its mask
    not storable, the table or store unavailable) is skipped with the reason and left as it was, and
    the import goes on with the next one. The annotations of Label Studio tasks that name the same
    item are read together (one outcome for the item).
    """
    # One step per Label Studio task, in the export's order: a skip known from the task alone, or an
    # item's annotations. The tasks file imported twice into a project gives an item two tasks: the
    # first one's annotation was recorded and the other's skipped as "already decided" (nothing lost,
    # exit 0), though another annotator may have rejected the item there. They are now read together.
    steps: list[ImportOutcome | tuple[str, list[dict[str, Any]]]] = []
    annotations_of: dict[str, list[dict[str, Any]]] = {}
    shown_of: dict[str, set[str]] = {}  # the pixels each item's Label Studio tasks were exported with
    for entry in export:
        data = entry.get("data")
        task_id = str(data.get("skuforge_task_id", "")) if isinstance(data, dict) else ""
        if isinstance(data, dict) and data.get("skuforge_shown") is not None:
            shown_of.setdefault(task_id, set()).add(str(data["skuforge_shown"]))
        annotations = entry.get("annotations") or []
        if not isinstance(annotations, list):
            annotations = []
        annotations = [a for a in annotations if isinstance(a, dict)]
        # Label Studio writes true or false (or leaves it out); any other value is a skip with its reason,
        # not a guess: the string "false" is truthy, and a rejection so marked was dropped as "no
        # annotation", which is not counted as lost.
        cancelled = [a.get("was_cancelled") for a in annotations]
        unclear = [value for value in cancelled if value is not None and not isinstance(value, bool)]
        if unclear:
            why = f"an annotation's 'was_cancelled' is {unclear[0]!r:.40}, not true or false"
            steps.append(ImportOutcome(task_id, "skipped", why))
            continue
        annotations = [a for a in annotations if not a.get("was_cancelled")]
        if not annotations:
            steps.append(ImportOutcome(task_id, "skipped", NO_ANNOTATION))
        elif task_id and task_id in annotations_of:
            annotations_of[task_id].extend(annotations)
        else:
            annotations_of[task_id] = annotations
            steps.append((task_id, annotations))
    if not 0.0 <= agree_iou <= 1.0:  # also refuses nan
        raise ValueError(f"agree_iou must be a number from 0 to 1, got {agree_iou}")
    outcomes: list[ImportOutcome] = []
    for step in steps:
        if isinstance(step, ImportOutcome):
            outcomes.append(step)
            continue
        task_id, annotations = step
        try:
            task = tasks.get(task_id)
            outcomes.append(
                _import_one(tasks, store, task, annotations, lease_s, agree_iou, shown_of.get(task_id, set()))
            )
        except _SKIPPABLE as exc:
            outcomes.append(ImportOutcome(task_id, "skipped", _why(exc)))
    return outcomes


# What makes one task unusable without saying anything about the next: the import goes on.
_SKIPPABLE = (TaskNotFound, TaskConflict, DecisionInvalid, ValueError, BadInput, TransientError)


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _import_one(
    tasks: TaskStore,
    store: ObjectStore,
    task: Task,
    annotations: list[dict[str, Any]],
    lease_s: float,
    agree_iou: float,
    shown: set[str],
) -> ImportOutcome:
    if task.state in ("approved", "rejected"):
        return ImportOutcome(task.task_id, "skipped", ALREADY_DECIDED)
    if task.state == "withdrawn":
        # Its photo's owner withdrew it: nothing to record. Before, the claim's refusal counted it as
        # an annotation lost, and every import of that export exited 1 asking to fix it.
        return ImportOutcome(task.task_id, "skipped", WITHDRAWN)
    # Each annotator with their latest annotation: one person's earlier ones are drafts of it, not a
    # disagreement (an annotator who rejected and then approved disagreed with themselves, and every
    # import skipped the task). The latest of these is the latest annotation of all.
    annotations = _latest_by_annotator(annotations)
    verdicts = [_verdict_of(annotation) for annotation in annotations]
    if task.state == "accepted" and "reject" not in verdicts:
        # Closed since the export: the gate, replayed, accepted the item (TaskStore.close_accepted), and
        # the trainstore stores it. A rejection is recorded all the same (below): as in the trainstore, a
        # person's rejection stands against the gate's acceptance; it was skipped here, and the item a
        # person had rejected stayed in the store.
        return ImportOutcome(task.task_id, "skipped", GATE_ACCEPTED)
    if shown - {shown_pixels(task)}:
        # Exported before a replay of the gate replaced the image or a mask (the item matted again): an
        # approval of the prediction would have recorded a mask no annotator saw.
        return ImportOutcome(task.task_id, "skipped", CHANGED_SINCE_EXPORT)
    if "approve" in verdicts and "reject" in verdicts:
        # Annotators disagree: the latest one silently won. Someone has to settle it.
        approving = ", ".join(
            _annotator(a) for a, v in zip(annotations, verdicts, strict=True) if v == "approve"
        )
        rejecting = ", ".join(
            _annotator(a) for a, v in zip(annotations, verdicts, strict=True) if v == "reject"
        )
        why = (
            f"annotators disagree (approved by {approving}, rejected by {rejecting}); settle it in Label"
            " Studio and export again, or decide it on the web page"
        )
        return ImportOutcome(task.task_id, "skipped", why)
    if (refused := unsendable(task)) is not None:
        # Before the store is read or written: ``decide`` refuses it, and an edited mask stored first was
        # left behind, an object nothing points at, at every import of the export.
        return ImportOutcome(task.task_id, "skipped", refused)
    image = task.pending.matted.generated.image
    disagreement = _masks_disagree(store, task, annotations, verdicts, image.width, image.height, agree_iou)
    if disagreement:
        return ImportOutcome(task.task_id, "skipped", disagreement)
    annotation = _latest(annotations)
    reviewer = _annotator(annotation)
    # Everything is checked before the claim, so a refused annotation leaves no stray claim behind.
    decision, value = _decision_of(annotation, image.width, image.height)
    if decision == "skipped":
        return ImportOutcome(task.task_id, "skipped", str(value))
    if task.state == "accepted":
        # A rejection (the only decision left here): recorded without a claim, as nobody is handed a
        # task the gate accepted (TaskStore.decide).
        return _decide(tasks, store, task, reviewer, decision, value)
    tasks.claim(task.task_id, reviewer, lease_s)
    try:
        return _decide(tasks, store, task, reviewer, decision, value)
    except _SKIPPABLE as exc:
        return ImportOutcome(task.task_id, "skipped", _why(exc) + _release(tasks, task.task_id, reviewer))
    except BaseException:
        _release(tasks, task.task_id, reviewer)
        raise


def _latest(annotations: list[dict[str, Any]]) -> dict[str, Any]:
    """The latest annotation (its time is read only when there are several to choose from)."""
    return annotations[0] if len(annotations) == 1 else max(annotations, key=_annotated_at)


def _latest_by_annotator(annotations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each annotator's latest annotation, in the order the annotators first appear. An annotation that
    names neither its annotator nor itself (``labelstudio:unknown``) is nobody's draft: each counts."""
    by_annotator: dict[str | int, list[dict[str, Any]]] = {}
    for position, annotation in enumerate(annotations):
        who = _annotator(annotation)
        by_annotator.setdefault(position if who == f"labelstudio:{_UNKNOWN}" else who, []).append(annotation)
    return [_latest(theirs) for theirs in by_annotator.values()]


def _masks_disagree(
    store: ObjectStore,
    task: Task,
    annotations: list[dict[str, Any]],
    verdicts: list[str | None],
    width: int,
    height: int,
    agree_iou: float,
) -> str | None:
    """Why the approving annotators' masks cannot stand for one another (two of them overlap less
    than ``agree_iou``), or None. Each annotator counts once, with their latest annotation: one
    person saving twice is a draft and its revision, not a disagreement."""
    approving = [
        annotation for annotation, verdict in zip(annotations, verdicts, strict=True) if verdict == "approve"
    ]
    approving = _latest_by_annotator(approving)
    if len(approving) < 2:
        return None
    # A list, not a dict by name: two annotations naming nobody are both labelstudio:unknown.
    masks: list[tuple[str, npt.NDArray[np.uint8]]] = []
    for annotation in sorted(approving, key=_annotator):
        decision, value = _decision_of(annotation, width, height)
        if decision == "approve_edited":
            masks.append((_annotator(annotation), value))
        elif decision == "approve_predicted":
            masks.append((_annotator(annotation), mask_from_ref(store, task.pending.matted.predicted_mask)))
    worst = min(
        ((mask_iou(a[1], b[1]), a[0], b[0]) for a, b in itertools.combinations(masks, 2)), default=None
    )
    if worst is None or worst[0] >= agree_iou:
        return None
    iou, first, second = worst
    return (
        f"annotators' masks disagree ({first} and {second} overlap at IoU {iou:.2f}, below"
        f" {agree_iou:.2f}); settle it in Label Studio and export again, or decide it on the web page"
    )


def _unchanged(held: Task, task: Task) -> Task:
    """``held`` (the task as its decision is recorded, under the table's lock) when it holds the pixels of
    ``task`` (as the annotation was checked against), else TaskConflict: the intake may have taken a
    replay of the gate in between, and a mask checked for the old render was recorded on the new one."""
    if shown_pixels(held) != shown_pixels(task):
        raise TaskConflict(CHANGED_SINCE_EXPORT)
    return held


def _decide(
    tasks: TaskStore, store: ObjectStore, task: Task, reviewer: str, decision: str, value: Any
) -> ImportOutcome:
    if decision == "approve_edited" and _is_prediction(store, task, value):
        # A project that pre-labels copies the prediction into the annotation: approved untouched, it
        # was recorded as an edit with a copy of the mask, and the audit and metrics counted edits no
        # one made.
        decision = "approve_predicted"
    if decision == "reject":
        reason = str(value)
        tasks.decide(
            task.task_id,
            reviewer,
            "reject",
            lambda held, at: resolve(
                _unchanged(held, task),
                decision="reject",
                reviewer=reviewer,
                decided_at=at,
                reject_reason=reason,
            ),
        )
        return ImportOutcome(task.task_id, "reject", reason)
    if decision == "approve_predicted":
        # As the web page's approve: the image and the predicted mask must be there as named, and the
        # mask must mark some product.
        store.read_verified(task.pending.matted.generated.image)
        check_model_mask(store, task, "approve_predicted")
        event = tasks.decide(
            task.task_id,
            reviewer,
            "approve_predicted",
            lambda held, at: resolve(
                _unchanged(held, task), decision="approve_predicted", reviewer=reviewer, decided_at=at
            ),
        )
        final_mask = event.payload.final_mask
        return ImportOutcome(task.task_id, "approve_predicted", final_mask.uri if final_mask else "")
    # As the web page does: the generated image must be there as named (an approval of a missing one
    # is dead-lettered downstream with the task closed), and the mask is written before the decision's
    # transaction, not inside it (an S3 write with its retries held the table's write lock, and every
    # claim, renewal and intake write waited). Its key carries its sha256: a lost race leaves an object
    # nothing points at, never another mask under the recorded decision's key.
    store.read_verified(task.pending.matted.generated.image)
    edited = store_edited_mask(store, task, value)
    event = tasks.decide(
        task.task_id,
        reviewer,
        "approve_edited",
        lambda held, at: resolve(
            _unchanged(held, task),
            decision="approve_edited",
            reviewer=reviewer,
            decided_at=at,
            edited_mask=edited,
        ),
    )
    final_mask = event.payload.final_mask
    return ImportOutcome(task.task_id, "approve_edited", final_mask.uri if final_mask else "")


def _is_prediction(store: ObjectStore, task: Task, mask: npt.NDArray[np.uint8]) -> bool:
    """Whether the annotator's mask is, pixel for pixel, the predicted mask the export sent."""
    try:
        predicted = mask_from_ref(store, task.pending.matted.predicted_mask)
    except BadInput:
        return False  # nothing to compare with: the annotator's mask is recorded as drawn
    return bool(np.array_equal(mask, predicted))


def _release(tasks: TaskStore, task_id: str, reviewer: str) -> str:
    """Give back the import's claim after a failed decision, so the web reviewers see the task at
    once; returns what to add to the skip's reason when even that fails."""
    try:
        tasks.release(task_id, reviewer)
    except (TaskNotFound, TaskConflict, BadInput, TransientError) as exc:
        log.warning("could not release an imported claim", extra={"task_id": task_id, "error": str(exc)})
        return (
            f" (its claim by {reviewer} could not be released: {exc}; it returns to the queue when the"
            " lease runs out)"
        )
    return ""


def read_export(text: str | bytes) -> list[dict[str, Any]]:
    """Parse Label Studio's JSON export (a list of tasks); ValueError with the reason otherwise.

    Give it the file's bytes: JSON is UTF-8, and a file read as text in a non-UTF-8 locale garbled
    every non-ASCII reason (read as Latin-1, an en dash became control characters: the rejection refused).
    Every task of that export has its ``data``. Its JSON-MIN export (a list of objects too) has none:
    each task read as "no annotation", and the import recorded nothing and exited 0.
    """
    try:
        data = json.loads(text)
    except UnicodeDecodeError as exc:
        raise ValueError(f"it is not UTF-8 text, as JSON is ({exc})") from None
    except RecursionError:  # not a ValueError: the command's "cannot read" missed it (a traceback)
        raise ValueError("its JSON is nested too deeply to be Label Studio's export") from None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ValueError("expected Label Studio's JSON export: a list of task objects")
    for index, item in enumerate(data):
        if "data" not in item:
            raise ValueError(
                f"task {index} has no 'data': expected Label Studio's JSON export (Export, JSON), "
                "not JSON-MIN or another format"
            )
    return data
