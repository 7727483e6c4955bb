"""Turning a reviewer's action into a ``correction.resolved`` payload.

The final mask of each decision:

* ``approve_predicted`` the matting model's mask (``pending.matted.predicted_mask``)
* ``approve_expected``  the generator's mask (``pending.matted.generated.expected_mask``); either is
                        refused when it marks no product pixel (``check_model_mask``)
* ``approve_edited``    the reviewer's mask, checked (a PNG/BMP/TIFF/WebP at the generated image's
                        size, marking some product and some background; ``read_edited_mask``),
                        thresholded to 0/255 and stored as
                        ``masks/corrected/<sku_id>/<item_id>-<sha16>.png`` (written before the decision's
                        transaction, under its PNG's sha256: a decision that loses a race leaves an
                        object nothing points at, never other pixels under the recorded one's key)
* ``reject``            no mask; a reason is required

``record_decision`` is the whole rule for one request: the reviewer must hold the task's claim (a
rejection of a task the gate accepted needs none: a person's rejection stands, as in the trainstore), only
a rejection takes a reason, only ``approve_edited`` takes a mask (and needs one), and a decision made
on pixels the task no longer holds (``shown``: a replay of the gate replaced them while the page was
open, or while the request was checked) is refused; the decision and its ``correction.resolved``
event are then committed together (``TaskStore.decide``, an outbox).
"""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
from PIL import Image

from schemas.common import BIDI_CONTROL, ImageRef, check_one_line
from schemas.events import CorrectionResolved, Decision
from services.console.tasks import OutboxEvent, Task, TaskConflict, TaskStore, TaskUnsendable, unsendable
from shared import keys
from shared.errors import ImageRejected
from shared.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    apply_exif_orientation,
    decode_mask,
    pixel_array,
    seek_photo_page,
    to_rgb,
    transparency_mask,
)
from shared.store import ObjectStore

DECISIONS: tuple[Decision, ...] = ("approve_predicted", "approve_expected", "approve_edited", "reject")
# Offered on the item page; any other short printable reason is accepted too.
REJECT_REASONS: tuple[str, ...] = (
    "wrong_product",
    "generation_artefacts",
    "product_cut_off",
    "unusable_image",
    "other",
)
MAX_REASON_CHARS = 200


class DecisionInvalid(ValueError):
    """The request does not describe a valid decision; the message says what to change."""


def shown_pixels(task: Task) -> str:
    """What a reviewer decides on, as a short digest: the generated image and the predicted and expected
    masks (their sha256). The item page sends it with a decision; the gate's reasons and figures are
    left out, since a replay that changes only those leaves the reviewer's judgement of the pixels."""
    matted = task.pending.matted
    refs = (matted.generated.image, matted.predicted_mask, matted.generated.expected_mask)
    return hashlib.sha256("\0".join(ref.sha256 for ref in refs).encode()).hexdigest()[:16]


def _check_shown(task: Task, shown: str | None) -> None:
    """TaskConflict when ``shown`` (if given) is not the task's pixels any more."""
    if shown is not None and shown != shown_pixels(task):
        raise TaskConflict(
            f"task {task.task_id} changed since this page showed it (the gate was replayed with another "
            "image or mask): reload the page and decide on what it holds now"
        )


def check_reject_reason(reason: str | None) -> str:
    """A non-empty, single-line reason of at most MAX_REASON_CHARS characters, without a bidirectional
    control (U+202A-U+202E, U+2066-U+2069)."""
    reason = (reason or "").strip()
    if not reason:
        raise DecisionInvalid("a rejection needs a reason")
    if len(reason) > MAX_REASON_CHARS:
        raise DecisionInvalid(f"the reason is {len(reason)} characters; at most {MAX_REASON_CHARS}")
    try:
        # The contract's rule for a reason (correction.resolved's reject_reason), so the form refuses
        # what any producer's event is refused for: no C0 or C1 control character nor line separator (a
        # reason is one line in the audit trail and the event; U+2028 and NEL broke it into several), no
        # bidirectional control (shown on the item page, an override or isolate reorders the text after
        # it, so the reason reads as another). The console's own words for it.
        check_one_line(reason)
    except ValueError:
        found = BIDI_CONTROL.search(reason)
        if found is None:
            raise DecisionInvalid(
                "the reason contains control characters or line breaks: one line, please"
            ) from None
        raise DecisionInvalid(
            f"the reason contains a bidirectional control character (U+{ord(found.group()):04X} at character "
            f"{found.start() + 1}), which reorders the text shown after it: write it without one"
        ) from None
    try:
        reason.encode("utf-8")  # a lone surrogate (a form sent as utf-7) was a 500 at the database
    except UnicodeEncodeError:
        raise DecisionInvalid("the reason is not valid text (a lone surrogate character)") from None
    return reason


def read_edited_mask(data: bytes, task: Task, *, max_pixels: int, max_bytes: int) -> npt.NDArray[np.uint8]:
    """Decode an uploaded mask, check it has the generated image's size and marks some product.

    White marks the product (luminance at least 128); an image with transparent pixels is read by
    its alpha (a cut-out: opaque = product), and a 0/1 label image (an index-1 palette image, a
    VOC-style class mask) by its labels. A mask with no product pixels, or only product pixels, is
    refused: it would teach the model nothing true, and rejecting the item says what was meant.

    A mask with more pixels than the image is refused from its header, before it is decoded: a
    small file of a huge, flat image would otherwise cost hundreds of MB to find out."""
    image = task.pending.matted.generated.image
    try:
        mask = decode_mask(data, max_pixels=min(max_pixels, image.width * image.height), max_bytes=max_bytes)
    except ImageRejected as exc:
        if exc.reason == "too_many_pixels":
            raise DecisionInvalid(
                f"the mask has more pixels than the generated image ({image.width}x{image.height}): {exc}"
            ) from exc
        raise DecisionInvalid(f"the mask is not acceptable ({exc.reason}): {exc}") from exc
    height, width = mask.shape
    if (width, height) != (image.width, image.height):
        raise DecisionInvalid(
            f"the mask is {width}x{height}; the generated image is {image.width}x{image.height}"
        )
    # Decoded once within the limits above, so opening it again is safe.
    by_alpha, by_label, labels_first = _alpha_and_labels(data)
    if by_alpha is not None:
        mask = by_alpha
    elif by_label is not None and (labels_first or not mask.any()):
        mask = by_label
    product = int(np.count_nonzero(mask))
    if product == 0:
        raise DecisionInvalid(
            "the mask marks no product pixels: white (or, in an image with transparency, opaque) "
            "pixels mark the product; to leave the item out, reject it"
        )
    if product == mask.size:
        raise DecisionInvalid("the mask marks every pixel as product: black marks the background")
    return mask


def _alpha_and_labels(
    data: bytes,
) -> tuple[npt.NDArray[np.uint8] | None, npt.NDArray[np.uint8] | None, bool]:
    """The mask an image's transparency draws (None unless some pixels are transparent and some
    opaque; an all-clear image then reads as its luminance, no product), the mask of a 0/1 label
    image (None unless its only values are 0 and 1, or, in a palette image, 0, 1 and PASCAL VOC's
    void index 255), each aligned by EXIF orientation, and whether the labels come before brightness
    (a VOC mask: its void band along the edge is a bright colour, and read by brightness the band
    alone was the product). The void band counts as background."""
    with Image.open(io.BytesIO(data)) as opened:
        seek_photo_page(opened, "mask")  # the page decode_mask read, past a TIFF's preview ahead of it
        # As decode_mask read it: a malformed EXIF block loses only its orientation (it was a 500).
        upright = apply_exif_orientation(opened)
        # What ingest takes a cut-out's outline from (alpha, a palette's or a PNG's transparent colour).
        by_alpha = transparency_mask(upright, data)
        if by_alpha is not None and _black_and_white_where_opaque(upright, by_alpha):
            # A black-and-white mask with some pixels erased to transparent (an editor's eraser): its
            # opaque black is background, as its brightness says, not product as its alpha would.
            by_alpha = None
        by_label = None
        labels_first = False
        if upright.mode in ("L", "P", "I", "I;16"):
            values = pixel_array(upright)
            present = set(np.unique(values).tolist()) if values.size else set()
            labels_first = upright.mode == "P" and present == {0, 1, 255}
            if present == {0, 1} or labels_first:
                by_label = np.where(values == 1, np.uint8(255), np.uint8(0)).astype(np.uint8)
    return by_alpha, by_label, labels_first


def _black_and_white_where_opaque(image: Image.Image, opaque: npt.NDArray[np.uint8]) -> bool:
    """Whether the opaque pixels are all pure black or pure white, and both occur (a mask, not a cut-out)."""
    # Through to_rgb, as decoding does: Pillow has no conversion of some alpha modes (a premultiplied
    # grey TIFF, "La") straight to RGB, and a mask in one was a 500.
    rgb = pixel_array(to_rgb(image))[opaque > 0]
    black = (rgb == 0).all(axis=1)
    white = (rgb == 255).all(axis=1)
    return bool((black | white).all() and black.any() and white.any())


def store_edited_mask(store: ObjectStore, task: Task, mask: npt.NDArray[np.uint8]) -> ImageRef:
    """Write the reviewer's mask to the object store; returns its reference for the decision."""
    # The PNG's sha256 in the key: two decisions on one item (re-flagged under a new event) never share it.
    return store.put_image(keys.corrected_mask_key(task.sku_id, task.item_id), mask, digest_in_key=True)


def resolve(
    task: Task,
    *,
    decision: Decision,
    reviewer: str,
    decided_at: float,
    edited_mask: ImageRef | None = None,
    reject_reason: str | None = None,
) -> CorrectionResolved:
    """The ``correction.resolved`` payload of a decision (validated: mask and reason as required)."""
    matted = task.pending.matted
    final_mask: ImageRef | None
    if decision == "approve_predicted":
        final_mask = matted.predicted_mask
    elif decision == "approve_expected":
        final_mask = matted.generated.expected_mask
    elif decision == "approve_edited":
        if edited_mask is None:
            raise DecisionInvalid("approve_edited needs the edited mask")
        final_mask = edited_mask
    elif decision == "reject":
        final_mask = None
        reject_reason = check_reject_reason(reject_reason)
    else:  # pragma: no cover - Decision is a Literal, the web layer validates it
        raise DecisionInvalid(f"unknown decision {decision!r}; expected one of {', '.join(DECISIONS)}")
    if decision != "reject" and reject_reason:
        raise DecisionInvalid("only a rejection takes a reason")
    return CorrectionResolved(
        pending=task.pending,
        decision=decision,
        final_mask=final_mask,
        reject_reason=reject_reason if decision == "reject" else None,
        reviewer=reviewer,
        decided_at=datetime.fromtimestamp(decided_at, UTC),
    )


def record_decision(
    tasks: TaskStore,
    store: ObjectStore,
    *,
    task_id: str,
    reviewer: str,
    decision: Decision,
    reject_reason: str | None,
    mask_bytes: bytes | None,
    max_pixels: int,
    max_bytes: int,
    shown: str | None = None,
) -> tuple[Task, OutboxEvent]:
    """Check and record ``reviewer``'s ``decision`` on a task they hold; returns the task as it was
    held and the recorded event.

    ``mask_bytes`` is the uploaded mask file (``approve_edited`` only), checked first and stored
    before the decision's transaction (under a key with its sha256). ``shown`` is ``shown_pixels`` of
    the task as the reviewer's page showed it (None, for scripts: no page to check). Raises
    ``TaskUnsendable`` (422) when no decision on the task can be sent (``tasks.unsendable``),
    ``TaskConflict`` when the reviewer does not hold the task (a rejection of a task the gate accepted
    is recorded all the same: ``TaskStore.decide``) or it holds other pixels than ``shown``, or, when
    the decision is recorded, than it held when the request was checked,
    ``DecisionInvalid`` when the request breaks a rule (the message says which).
    """
    task = tasks.check_held(task_id, reviewer, rejecting=decision == "reject")
    if (why := unsendable(task)) is not None:
        raise TaskUnsendable(why)  # before the store is read or written: nothing stored for a refusal
    _check_shown(task, shown)
    if decision != "reject" and reject_reason:
        raise DecisionInvalid("only a rejection takes a reason")
    pixels: npt.NDArray[np.uint8] | None = None
    if decision == "approve_edited":
        if mask_bytes is None:
            raise DecisionInvalid("approve_edited needs the edited mask as the 'mask' file")
        pixels = read_edited_mask(mask_bytes, task, max_pixels=max_pixels, max_bytes=max_bytes)
    elif mask_bytes is not None:
        raise DecisionInvalid(f"{decision} takes no mask; use approve_edited to send one")
    if decision != "reject":
        # What an approval sends the trainstore must be there as named: otherwise it would be
        # recorded and published, dead-lettered downstream, and the decided task closed to review.
        store.read_verified(task.pending.matted.generated.image)  # BadInput (502 with the reason)
        if decision in ("approve_predicted", "approve_expected"):
            check_model_mask(store, task, decision, max_pixels=max_pixels, max_bytes=max_bytes)

    # Written before the decision's transaction, not inside it: an S3 write there (up to minutes with
    # its retries) held the task table's write lock, and every claim, renewal and intake write waited
    # and failed. A losing request (double submit, lease lost meanwhile) cannot overwrite the mask the
    # recorded decision points at: the key carries the mask's sha256, so other pixels are another
    # object, and the same pixels the same bytes. At worst it leaves an object nothing points at.
    edited = None if pixels is None else store_edited_mask(store, task, pixels)

    checked = shown_pixels(task)  # what the mask and the stored images were checked against (= shown)

    def payload(held: Task, at: float) -> CorrectionResolved:
        # Again under the table's lock, against the pixels checked above, ``shown`` or not: the intake may
        # have replaced them since, and a script's mask checked against the old render was recorded
        # on the new one (another size: dead-lettered by the trainstore, the item decided here).
        _check_shown(held, checked)
        return resolve(
            held,
            decision=decision,
            reviewer=reviewer,
            decided_at=at,
            edited_mask=edited,
            reject_reason=reject_reason,
        )

    event = tasks.decide(task_id, reviewer, decision, payload)
    return task, event


def check_model_mask(
    store: ObjectStore,
    task: Task,
    decision: Decision,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> None:
    """Check the mask ``approve_predicted`` or ``approve_expected`` would send for training: stored as
    named (``BadInput`` otherwise) and marking some product (``DecisionInvalid`` otherwise). The gate
    sends an empty predicted mask to review (``mask_empty``); approved, it was published, and the
    trainstore dead-letters such an item (an image of the SKU with no product in it), the task closed."""
    matted = task.pending.matted
    name, ref = (
        ("predicted", matted.predicted_mask)
        if decision == "approve_predicted"
        else ("expected", matted.generated.expected_mask)
    )
    if not mask_from_ref(store, ref, max_pixels=max_pixels, max_bytes=max_bytes).any():
        raise DecisionInvalid(
            f"the {name} mask marks no product pixels: approve the other mask or an edited one, "
            "or reject the item to leave it out"
        )


def mask_from_ref(
    store: ObjectStore,
    ref: ImageRef,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> npt.NDArray[np.uint8]:
    """A stored mask as 0/255 uint8, read with its checksum verified (BadInput if it cannot be)."""
    return decode_mask(store.read_verified(ref), max_pixels=max_pixels, max_bytes=max_bytes)
