"""Trainstore: the writer of the retraining store the product classifier is trained from.

Consumes:

* ``gate.accepted``        a synthetic item that passed the gate: image and predicted mask stored (row
                           ``accepted``);
* ``correction.resolved``  a person's decision: approved items stored with the human's final mask (row
                           ``approved``); rejected items are recorded (row ``rejected``), never stored as
                           training data, and any earlier objects of the item are removed, unless they
                           are another render of it that was accepted or approved (a variant rendered
                           again from a changed scene library keeps its item id): that one stays, and
                           its row remembers the rejected render (``rejected_renders``; when, in
                           ``rejected_at``), which the gate's acceptance, replayed, then never brings
                           in;
* ``correction.pending``   recorded (row ``pending``, no objects) so ``skuforge dataset stats`` can count
                           what waits for review; a pending row never replaces a decision;
* ``sku.captioned``        the real reference photos with their masks (rows ``reference``, source ``real``;
                           a photo whose mask found no product, ``no_product_found`` or
                           ``mask_full_frame``, is stored without a mask, even one the event carries,
                           as is a usable photo whose mask marks no pixel (``no_product_found``) or
                           that comes without a mask (``no_mask``): a real photo for a classifier all
                           the same; other photos the captioner found unusable are recorded as
                           ``unusable``).

A photo its owner withdrew (``skuforge ingest --withdraw-missing``; ``shared/trainstore/withdrawals.py``)
stays out: while its marker exists, every row of it or of an image generated from it is written as
``withdrawn`` (no objects; a reviewer's rejection stays a rejection), a replayed older ``sku.captioned``
included, and their objects are deleted. Two members writing one SKU at once may still store one
(docs/delivery.md); every later write of the SKU withdraws any such row it finds. An image withdrawn
with its photo stays withdrawn after the photo is reinstated (a replayed ``gate.accepted`` of it is
kept out; the photo's new images have new item ids).

Produces no events. Writes, under ``SKUFORGE_TRAINSTORE_PREFIX`` (layout in docs/architecture.md and
``shared/trainstore/manifest.py``): ``images/<sku_id>/<real|synthetic>/<item_id>-<sha256[:16]>.png``,
``masks/<sku_id>/<item_id>-<sha256[:16]>.png`` and the SKU's manifest parts, compacted every
``SKUFORGE_TRAINSTORE_COMPACT_AFTER_PARTS`` deltas.

Idempotent by item id and content: object keys come from the item id and the bytes' sha256 (so the
row that stands names its own bytes, also when two members write one item at once), and a row equal
to the one the manifest already has is not written again, so a redelivered event writes nothing at
all. Objects a replaced row named (an earlier render) are deleted once no row names them; when an
item is replaced, its objects no row names that are older than ``SKUFORGE_TRAINSTORE_SWEEP_GRACE_S``
(a deletion cut short, a writer whose row lost) are swept too; objects a written row names that
another member's deletion took meanwhile are put back (``_put_back_deleted``). An older event never
undoes a newer one: each row records its event's ``produced_at``, and a row of an event older than the
item's stored row is neither written nor are its objects (an old ``gate.accepted`` of
a first render, replayed after a reviewer approved a second render of the item, leaves the approval
and its image; an old ``sku.captioned`` leaves the photos a newer one stored or found unusable). A reviewer's
decision beats the gate's acceptance whatever the times, a rejection of the same render, an approval
of any render: a replay of the gate after a threshold change leaves a rejection (or an approval and
its corrected mask) as it is, and a first render's acceptance made again leaves the approval of a
second (``_overrides_review``, ``_past_gate_decision``). Between two reviewers' decisions the later
made wins, by their events' own times (``_past_review``; a row dated past the gate's keeps its own
in ``event_produced_at``). The unnamed objects of an item never replaced again are left to ``skuforge
dataset sweep`` (``shared/trainstore/sweep.py``, which ``_sweep`` shares).

Bad input goes to the DLQ and nothing of the event is written: every object the event points at
is read, checked against its sha256 and decoded *before* the first write. Reasons:
``object_missing``, ``checksum_mismatch``, ``foreign_uri``, the image refusals of
``shared/images.py`` (``corrupt``, ``not_an_image``...; ``too_many_pixels`` and ``too_large_bytes``
also for an image or mask the event says is over ``SKUFORGE_MAX_IMAGE_PIXELS`` or
``SKUFORGE_MAX_IMAGE_BYTES``, before it or its pair is read), ``dimension_mismatch`` (mask and image
sizes differ, or image and event), ``final_mask_missing`` (an approval without a mask), ``mask_empty``
(an accepted or approved item whose mask marks no product: an image of the SKU without it),
``other_sku_object`` (an image or mask whose key the flow's layout gives to another SKU than the event's:
``generated/<other sku_id>/...``, or of no SKU: ``generated/x.png``, directly in a flow folder; stored,
one image would be in two SKUs' classes),
``key_too_long`` (a key of the event's objects or its SKU's manifest parts past the room the store leaves,
checked before the first write) and
``clock_skew`` (an event produced more than ``SKUFORGE_TRAINSTORE_MAX_CLOCK_AHEAD_S`` ahead of this
stage's clock: its time orders the item's rows, so it would outrank every later event of the item).
The detail names the object refused (``image``, ``predicted mask``, ``final mask``, ``photo <id>`` or
``mask of photo <id>``) and its uri: one SKU's photos are many.
Replayed once the clock has caught up (``skuforge dlq replay --reason clock_skew``), such an event is
ordered by the time it carries, still later than it was made: it beats what was decided for its item
in between, except a reviewer's decision against the gate's acceptance (docs/gate-and-trainstore.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from PIL import Image
from prometheus_client import CollectorRegistry, Counter

from schemas.common import ImageRef
from schemas.envelope import Envelope
from schemas.events import CorrectionPending, CorrectionResolved, GateAccepted, ImageGenerated, SkuCaptioned
from schemas.flow import TRAINSTORE
from schemas.topics import CORRECTION_PENDING, CORRECTION_RESOLVED, GATE_ACCEPTED, SKU_CAPTIONED, Topic
from shared import keys
from shared.captioning.attributes import MASK_PROBLEMS
from shared.config import load_settings
from shared.errors import BadInput, ObjectMissing, TransientError, naming
from shared.images import decode_image, decode_mask, encode_png
from shared.runtime import Context, Emit, Handler, Stage, refuse_clock_skew, run_stage, stage_command
from shared.store import ObjectStore, sha256_hex
from shared.trainstore.manifest import ManifestRow, ManifestStore, Status, content_keys, stands
from shared.trainstore.settings import TrainstoreSettings
from shared.trainstore.sweep import past_grace
from shared.trainstore.withdrawals import Withdrawals, photo_of, withdrawable, withdrawn_row, withdrawn_rows

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Why an image or mask over the pixel limit is refused unread (``Context.refuse_unread``): the manifest
# records the event's size, and ``_image_png`` refuses an image decoded at another.
_STORED_AS_STATED = "it is stored at the size the event says"
# Why a usable photo an event sends without a mask is stored without one (its row's reasons).
_NO_MASK = "no_mask"
# A reviewer's decisions (correction.resolved); the gate's are accepted and pending.
_REVIEWED: frozenset[str] = frozenset({"approved", "rejected"})


@dataclass(frozen=True)
class StagedItem:
    """A row and the verified bytes its objects will hold (None for rows without objects).

    A real photo's image, a PNG stored byte for byte, is not held: ``image_ref`` is where it is read
    again when it is written (checked against its sha256 again). Held, a captioning's 64 photos of up to
    ``SKUFORGE_MAX_IMAGE_BYTES`` each were gigabytes, past the pod's memory limit: killed, the stage
    took the event again and again."""

    row: ManifestRow
    image_png: bytes | None = None
    mask_png: bytes | None = None
    image_ref: ImageRef | None = None

    @property
    def has_image(self) -> bool:
        """Whether the item has image bytes to store."""
        return self.image_png is not None or self.image_ref is not None

    def image_bytes(self, store: ObjectStore) -> bytes | None:
        """The image bytes to store: those held, else the photo's read again from ``image_ref`` (gone or
        changed since it was checked: refused as then, naming the photo; ``_write`` writes the row of one
        withdrawn meanwhile as withdrawn)."""
        if self.image_png is not None or self.image_ref is None:
            return self.image_png
        with naming(f"photo {self.row.item_id}", self.image_ref.uri):
            return store.read_verified(self.image_ref)


class TrainstoreMetrics:
    """What reached the retraining store, in the stage's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.images_stored = Counter(
            "skuforge_trainstore_images_stored_total",
            "Training images written to the retraining store, by source (real, synthetic); an image "
            "its item's row already named, written again, is not counted again. A manifest write that "
            "raised but landed is counted at its retry: if the stage restarts (or a rebalance moves the "
            "partition) before that retry, its images are not counted.",
            ["source"],
            registry=registry,
        )
        for source in ("real", "synthetic"):
            self.images_stored.labels(source)
        self.items_withdrawn = Counter(
            "skuforge_trainstore_items_withdrawn_total",
            "Rows of withdrawn photos (skuforge ingest --withdraw-missing) the stage kept out of the "
            "retraining store: images that arrived after the withdrawal, or that another writer stored "
            "meanwhile, by source (real, synthetic). A manifest write that raised but landed is counted "
            "at its retry: if the stage restarts (or a rebalance moves the partition) before that retry, "
            "its rows are not counted.",
            ["source"],
            registry=registry,
        )
        for source in ("real", "synthetic"):
            self.items_withdrawn.labels(source)


class Trainstore:
    """Turns events into staged items, then writes objects and manifest rows, in that order."""

    def __init__(
        self,
        manifests: ManifestStore,
        compact_after_parts: int,
        registry: CollectorRegistry | None = None,
        max_clock_ahead_s: float = 300.0,
        sweep_grace_s: float = 86_400.0,
    ) -> None:
        self.manifests = manifests
        self.withdrawals = Withdrawals(manifests)
        self.compact_after_parts = compact_after_parts
        self.max_clock_ahead_s = max_clock_ahead_s
        self.sweep_grace_s = sweep_grace_s
        self.metrics = TrainstoreMetrics(registry or CollectorRegistry())
        # Per SKU, the rows a manifest write that raised would have counted (``_count_landed``).
        self._uncounted: dict[str, list[ManifestRow]] = {}

    # -- one method per input topic -------------------------------------------------------------

    def handlers(self) -> dict[Topic[Any], Handler]:
        """Each input topic with its method, behind ``_refuse_clock_skew``: an event's time orders its
        item's rows whatever its topic, so the check is here, once, not in each method (where a new
        one could leave it out). The stage registers these; a method called directly is not checked."""
        methods: dict[Topic[Any], Handler] = {
            GATE_ACCEPTED: self.accepted,
            CORRECTION_RESOLVED: self.resolved,
            CORRECTION_PENDING: self.pending,
            SKU_CAPTIONED: self.captioned,
        }
        return {topic: self._refusing_clock_skew(handle) for topic, handle in methods.items()}

    def accepted(self, event: Envelope[GateAccepted], ctx: Context) -> list[Emit]:
        """A gate-accepted synthetic item: store the image and the predicted mask."""
        accepted = event.payload
        generated = accepted.matted.generated
        item = self._stage_pair(
            ctx,
            generated.sku.sku_id,
            generated.image,
            accepted.matted.predicted_mask,
            ("image", "predicted mask"),
            product=True,
        )
        row = _synthetic_row(generated, event, status="accepted", iou=accepted.iou, item=item)
        self._write(ctx, generated.sku.sku_id, [StagedItem(row, *item)])
        return []

    def resolved(self, event: Envelope[CorrectionResolved], ctx: Context) -> list[Emit]:
        """A person's decision: an approval is stored with its final mask, a rejection only recorded."""
        resolved = event.payload
        pending = resolved.pending
        generated = pending.matted.generated
        common: dict[str, Any] = {
            "iou": pending.iou,
            "reasons": pending.reasons,
            "reviewed_by": resolved.reviewer,
            "decision": resolved.decision,
        }
        if resolved.decision == "reject":
            current = self.manifests.read_sku(generated.sku.sku_id)
            kept = _kept_render(current.get(generated.item_id), generated)
            if kept is not None:
                ctx.log.warning(
                    "rejection of another render kept out of the store",
                    extra={"sku_id": generated.sku.sku_id, "item_id": generated.item_id, "kept": kept},
                )
                # Remembered on the row that stays: unrecorded, the gate replayed after a threshold
                # change accepted the rejected render, later, and it replaced the one kept.
                stays = current[generated.item_id]
                remembered = sorted({*stays.rejected_renders, generated.image.sha256})
                # When, too; a time already recorded stays (a redelivery writes nothing).
                times = {generated.image.sha256: _produced_at(event), **stays.rejected_at}
                row = stays.model_copy(
                    update={"rejected_renders": remembered, "rejected_at": _times_of(remembered, times)}
                )
                self._write(ctx, generated.sku.sku_id, [StagedItem(row)], current=current)
                return []
            # The rejected render's sha256, without its objects: which pixels the reviewer judged.
            row = _synthetic_row(
                generated, event, status="rejected", item=None, image_sha256=generated.image.sha256, **common
            )
            self._write(ctx, generated.sku.sku_id, [StagedItem(row)], current=current)
            self.manifests.delete_objects(generated.sku.sku_id, [("synthetic", generated.item_id)])
            return []
        if resolved.final_mask is None:
            raise BadInput("final_mask_missing", f"decision {resolved.decision} carries no final_mask")
        item = self._stage_pair(
            ctx,
            generated.sku.sku_id,
            generated.image,
            resolved.final_mask,
            ("image", "final mask"),
            product=True,
        )
        row = _synthetic_row(generated, event, status="approved", item=item, **common)
        self._write(ctx, generated.sku.sku_id, [StagedItem(row, *item)])
        return []

    def pending(self, event: Envelope[CorrectionPending], ctx: Context) -> list[Emit]:
        """An item waiting for review: a row without objects, for the stats."""
        pending = event.payload
        generated = pending.matted.generated
        row = _synthetic_row(
            generated, event, status="pending", iou=pending.iou, reasons=pending.reasons, item=None
        )
        self._write(ctx, generated.sku.sku_id, [StagedItem(row)])
        return []

    def captioned(self, event: Envelope[SkuCaptioned], ctx: Context) -> list[Emit]:
        """The SKU's real photos: every usable one with its mask; all verified before any is written."""
        captioned = event.payload
        sku = captioned.sku
        # A withdrawn photo's file is gone from incoming/: its row is written as withdrawn (by _write)
        # without reading it, where reading it dead-lettered the whole event, the other photos too.
        marked = self.withdrawals.photo_ids(sku.sku_id)
        staged: list[StagedItem] = []
        for photo in captioned.photos:
            base: dict[str, Any] = {
                "item_id": photo.photo_id,
                "sku_id": sku.sku_id,
                "category": sku.category,
                "source": "real",
                "caption": photo.caption,
                "trace_id": event.trace_id,
                "produced_at": _produced_at(event),
            }
            if photo.usable:
                # Usable but sent without a mask (the captioner sends one; another producer, an older
                # captioner): a real photo of the product all the same, stored without one. Recorded
                # unusable before, it was left out of every training set.
                reason = None if photo.mask is not None else _NO_MASK
            else:
                reason = photo.unusable_reason or "no mask"
            if not photo.usable and reason not in MASK_PROBLEMS:
                staged.append(StagedItem(ManifestRow(status="unusable", reasons=[reason], **base)))
                continue
            if photo.photo_id in marked:
                staged.append(StagedItem(withdrawn_row(ManifestRow(status="reference", **base))))
                continue
            if photo.mask is None or reason is not None:
                # Matting found no single product in it (loose produce filling the frame): a real photo
                # of the product all the same, which a classifier trains on; stored without a mask, also
                # one the event carries (the export handed it to training as the product's outline).
                # Left out before: 4 of 162 in-store photos of the few-shot benchmark at k = 1.
                image_png = self._stage_image(ctx, sku.sku_id, photo.image, f"photo {photo.photo_id}")
                objects = _object_fields(sku.sku_id, "real", photo.photo_id, photo.image, image_png, None)
                row = ManifestRow(status="reference", reasons=[str(reason)], **base, **objects)
                staged.append(_let_go(StagedItem(row, image_png), photo.image))
                continue
            image_png, mask_png = self._stage_pair(
                ctx,
                sku.sku_id,
                photo.image,
                photo.mask,
                (f"photo {photo.photo_id}", f"mask of photo {photo.photo_id}"),
            )
            # A usable photo whose mask marks nothing is a photo whose mask found no product.
            reasons = [] if mask_png is not None else ["no_product_found"]
            objects = _object_fields(sku.sku_id, "real", photo.photo_id, photo.image, image_png, mask_png)
            row = ManifestRow(status="reference", reasons=reasons, **base, **objects)
            staged.append(_let_go(StagedItem(row, image_png, mask_png), photo.image))
        older = self._write(ctx, sku.sku_id, staged, marked=marked)
        # What a newer captioning decided for a photo stays, its objects too.
        staged = [item for item in staged if item.row.item_id not in older]
        # A photo stored as a reference that a later captioning (a replay, a re-run) found unusable:
        # its row now says "no objects", so its copies go too. Checked by existence, so a delete cut
        # short is finished by the event delivered again.
        unusable = [item.row.item_id for item in staged if item.row.status == "unusable"]
        stale = [("real", photo_id) for photo_id in unusable if self._stored(sku.sku_id, "real", photo_id)]
        if stale:
            self.manifests.delete_objects(sku.sku_id, stale)
            ctx.log.info(
                "objects of photos now unusable deleted",
                extra={"sku_id": sku.sku_id, "photos": [photo_id for _, photo_id in stale]},
            )
        # A photo now stored without a mask whose mask an earlier captioning stored: that mask goes,
        # unless a row names it by now (a newer captioning another member stored meanwhile, with its
        # mask): the SKU is read again just before, as ``_delete_replaced_objects`` does.
        maskless = [
            item.row.item_id
            for item in staged
            if item.row.status == "reference" and item.row.image is not None and item.row.mask is None
        ]
        if maskless:
            rows = self.manifests.read_sku(sku.sku_id)
            named = self.manifests.named_keys(rows)
            for photo_id in maskless:
                for mask_key in self.manifests.stored_objects(
                    sku.sku_id, "real", photo_id, images=False, current=rows
                ):
                    if mask_key not in named:
                        self.manifests.store.delete(mask_key)
        return []

    # -- reading and verifying ------------------------------------------------------------------

    def _refusing_clock_skew(self, handle: Handler) -> Handler:
        """``handle``, called only for an event ``_refuse_clock_skew`` lets through."""

        def checked(event: Envelope[Any], ctx: Context) -> Sequence[Emit]:
            self._refuse_clock_skew(event)
            return handle(event, ctx)

        return checked

    def _refuse_clock_skew(self, event: Envelope[Any]) -> None:
        """Refuse an event dated further ahead of this stage's clock than ``max_clock_ahead_s``.

        Its time orders the item's rows (``stands``): a producer's clock running ahead (or a hostile
        producer) kept its row in place against every later event of the item while the skew lasted."""
        refuse_clock_skew(event, self.max_clock_ahead_s, "SKUFORGE_TRAINSTORE_MAX_CLOCK_AHEAD_S")

    def _stage_pair(
        self,
        ctx: Context,
        sku_id: str,
        image_ref: ImageRef,
        mask_ref: ImageRef,
        names: tuple[str, str],
        *,
        product: bool = False,
    ) -> tuple[bytes, bytes | None]:
        """Read, verify and decode an image and its mask; returns the PNG bytes to store. Both are
        refused on the event's figures (``Context.refuse_unread``) before either is read; a refusal
        names the object (``names``: the image's, the mask's) and its uri; an object of another SKU than
        ``sku_id`` is refused too (``_refuse_other_skus_object``). ``product``: the mask must
        mark some product (``mask_empty`` otherwise); without it, a mask that marks none is None (a
        real photo's, stored without it)."""
        image_name, mask_name = names
        for name, ref in ((image_name, image_ref), (mask_name, mask_ref)):
            with naming(name, ref.uri):
                ctx.refuse_unread(ref, _STORED_AS_STATED)
                _refuse_other_skus_object(ctx, ref, sku_id)
        max_pixels, max_bytes = ctx.settings.max_image_pixels, ctx.settings.max_image_bytes
        with naming(image_name, image_ref.uri):
            image_bytes = ctx.store.read_verified(image_ref)
            image = decode_image(image_bytes, max_pixels=max_pixels, max_bytes=max_bytes)
        with naming(mask_name, mask_ref.uri):
            mask = decode_mask(ctx.store.read_verified(mask_ref), max_pixels=max_pixels, max_bytes=max_bytes)
            marked = bool(mask.any())
            if product and not marked:
                # The gate flags an empty mask whatever its thresholds, but an approval of one, or an
                # event of an older gate, was stored: an image of the SKU with no product marked in it.
                raise BadInput(
                    "mask_empty", "marks no product pixels: an image of the SKU with no product in it"
                )
        if mask.shape != (image.height, image.width):
            raise BadInput(
                "dimension_mismatch",
                f"mask {mask_ref.uri} is {mask.shape[1]}x{mask.shape[0]}, "
                f"image {image_ref.uri} is {image.width}x{image.height}",
            )
        return _image_png(image_ref, image_bytes, image), encode_png(mask) if marked else None

    def _stage_image(self, ctx: Context, sku_id: str, image_ref: ImageRef, name: str) -> bytes:
        """Read, verify and decode an image of ``sku_id`` without a mask; returns the PNG bytes to store.
        A refusal names the image (``name``) and its uri."""
        settings = ctx.settings
        with naming(name, image_ref.uri):
            ctx.refuse_unread(image_ref, _STORED_AS_STATED)
            _refuse_other_skus_object(ctx, image_ref, sku_id)
            image_bytes = ctx.store.read_verified(image_ref)
            image = decode_image(
                image_bytes, max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes
            )
        return _image_png(image_ref, image_bytes, image)

    # -- writing --------------------------------------------------------------------------------

    def _write(
        self,
        ctx: Context,
        sku_id: str,
        staged: list[StagedItem],
        *,
        current: dict[str, ManifestRow] | None = None,
        marked: set[str] | None = None,
    ) -> set[str]:
        """Objects first, then the manifest delta; nothing at all when every row is already there.
        ``current``: the SKU's rows, ``marked``: its withdrawn photos, when the caller has just read them.
        Returns the item ids left out because a newer event decided them (``stands``)."""
        current = self.manifests.read_sku(sku_id) if current is None else current
        marked = self.withdrawals.photo_ids(sku_id) if marked is None else marked
        given = staged
        self._count_landed(sku_id, current)
        staged = [replace(item, row=_dated(current.get(item.row.item_id), item.row)) for item in staged]
        # Before the objects: an older event's image must not overwrite the newer row's, nor the gate's
        # a reviewer's. Before the withdrawal too, which then still withdraws the stored row of such an item.
        older = {
            item.row.item_id
            for item in staged
            if not stands(item.row, current.get(item.row.item_id))
            or _overrides_review(current.get(item.row.item_id), item.row)
        }
        if older:
            # Expected now and then (a pending row after its decision; a redelivery after a newer event).
            ctx.log.info(
                "rows left out: a newer decision of their items is stored",
                extra={"sku_id": sku_id, "items": sorted(older)},
            )
            staged = [item for item in staged if item.row.item_id not in older]
        staged = _withdraw(staged, current, marked)
        kept_out = [
            item.row.item_id for item in staged if _stays_withdrawn(current.get(item.row.item_id), item.row)
        ]
        if kept_out:
            # Generated from a photo withdrawn since (its marker lifted by a reinstatement since, which
            # gives the photo's new images new item ids): a replayed or redelivered event of such an
            # image brought it back into the store.
            ctx.log.warning(
                "image generated from a withdrawn photo kept withdrawn",
                extra={"sku_id": sku_id, "items": kept_out},
            )
            staged = [item for item in staged if item.row.item_id not in kept_out]
        changed = [item for item in staged if current.get(item.row.item_id) != item.row]
        # Every key before the first write: a manifest part's key can be longer than the objects', which
        # were written before it was refused, and no row named them.
        if changed:
            self.manifests.check_room(sku_id)
        for key in (key for item in changed for key in (item.row.image, item.row.mask) if key):
            self.manifests.store.check_room(self.manifests.key(key))
        for item in changed:
            row = item.row
            try:
                image_bytes = item.image_bytes(self.manifests.store) if row.image else None
            except BadInput:
                # A photo read again (``StagedItem``) gone since its check: ingest withdrew it meanwhile
                # (its marker first, then the photo). Written again with that marker, its row is
                # withdrawn; refused, the whole captioning was dead-lettered, every other photo too.
                withdrawn_since = self.withdrawals.photo_ids(sku_id)
                if withdrawn_since <= marked:
                    raise
                # Against the rows as they are now (``current`` read again): the withdrawal wrote rows
                # too. Against those read before, its rows (an image generated from the photo) were
                # written a second time, and counted as rows this stage kept out.
                return self._write(ctx, sku_id, given, marked=withdrawn_since)
            if row.image and image_bytes is not None:
                self.manifests.store.put_bytes(self.manifests.key(row.image), image_bytes, "image/png")
            del image_bytes  # one photo at a time
            if row.mask and item.mask_png is not None:
                self.manifests.store.put_bytes(self.manifests.key(row.mask), item.mask_png, "image/png")
        counted = [item.row for item in changed if item.row.status == "withdrawn"]
        for item in changed:
            before = current.get(item.row.item_id)
            # Only an image its item's row did not name: an event made again (a restarted producer's, a
            # new envelope) counted it twice.
            if item.row.image and item.has_image and (before is None or before.image != item.row.image):
                counted.append(item.row)
        try:
            written = self.manifests.append(sku_id, [item.row for item in changed], current=current)
        except TransientError:
            # The rows may be written all the same (a timeout once S3 stored the part): the retry finds
            # them there and writes nothing, so it counts them (``_count_landed``).
            self._uncounted[sku_id] = counted
            raise
        if written:
            # Counted once the rows are durable: a retried event (the manifest write failed) puts
            # its images again, and would otherwise count them again. Before the clean-up below:
            # retried after it failed, the event finds its rows written and counts nothing.
            self._count(counted)
            ctx.log.info(
                "manifest rows written", extra={"sku_id": sku_id, "rows": len(changed), "part": written}
            )
            withdrawn = [item.row for item in changed if item.row.status == "withdrawn"]
            if withdrawn:
                ctx.log.info(
                    "items withdrawn",
                    extra={"sku_id": sku_id, "items": len(withdrawn), "photos": _photo_ids(withdrawn)},
                )
            self._put_back_deleted(ctx, sku_id, changed)
            self._delete_replaced_objects(ctx, sku_id, changed, current, written)
            self.manifests.compact(sku_id, min_deltas=self.compact_after_parts)
        if marked:
            self._delete_withdrawn_objects(
                sku_id, {**current, **{item.row.item_id: item.row for item in staged}}, marked
            )
        return older

    def _count_landed(self, sku_id: str, current: dict[str, ManifestRow]) -> None:
        """Count the rows of the SKU's last manifest write that raised which ``current`` (just read) has:
        written all the same. Each once: a replay of their event, which finds them written, counts none."""
        self._count([row for row in self._uncounted.pop(sku_id, []) if current.get(row.item_id) == row])

    def _count(self, rows: list[ManifestRow]) -> None:
        """Count the written ``rows``: withdrawn ones, else their images stored."""
        for row in rows:
            counter = (
                self.metrics.items_withdrawn if row.status == "withdrawn" else self.metrics.images_stored
            )
            counter.labels(row.source).inc()

    def _delete_withdrawn_objects(self, sku_id: str, rows: dict[str, ManifestRow], marked: set[str]) -> None:
        """Delete the objects still stored for the withdrawn rows of the ``marked`` photos: those this
        write withdrew, and those an earlier one withdrew and was stopped before deleting (the event,
        delivered again, found its rows written and wrote nothing; ingest no longer has the photo to
        withdraw it again). Costs an existence check per withdrawn row, only for SKUs with a withdrawn
        photo."""
        left = [
            (row.source, row.item_id)
            for row in rows.values()
            if row.status == "withdrawn"
            and photo_of(row) in marked
            and self._stored(sku_id, row.source, row.item_id, rows)
        ]
        if left:
            self.manifests.delete_objects(sku_id, left)

    def _stored(
        self, sku_id: str, source: str, item_id: str, current: dict[str, ManifestRow] | None = None
    ) -> bool:
        """Whether an image or mask of the item is still in the store (``current``: the SKU's rows, when
        the caller has them)."""
        return bool(self.manifests.stored_objects(sku_id, source, item_id, current=current))

    def _delete_replaced_objects(
        self,
        ctx: Context,
        sku_id: str,
        changed: list[StagedItem],
        current: dict[str, ManifestRow],
        written: str,
    ) -> None:
        """Delete the objects that rows ``changed`` replaced named and their new rows, which store
        objects of their own, do not (an earlier render, a mask a reviewer corrected), once no row of
        the SKU names them: the SKU is read again just before, since another member may have stored
        a row naming one meanwhile (which narrows that race, as ``ManifestStore.delete_objects`` does).
        A row that stores nothing (rejected, withdrawn, unusable) has its item's objects deleted by
        its own path, which also finds what a writer whose row lost left (``stored_objects``). Cut
        short (the store away), the event delivered again writes no row and deletes none of them:
        ``_sweep`` deletes them when the item is replaced again. ``written``: the delta just written."""
        replaced: set[str] = set()
        renders: list[ManifestRow] = []
        for item in changed:
            before, row = current.get(item.row.item_id), item.row
            if before is not None and before.image is not None and row.image is not None:
                replaced |= {key for key in (before.image, before.mask) if key} - {row.image, row.mask}
                renders.append(row)
        if not renders:
            return
        rows = self.manifests.read_sku(sku_id)
        named = self.manifests.named_keys(rows)
        for key in sorted({self.manifests.key(key) for key in replaced} - named):
            self.manifests.store.delete(key)
        self._sweep(ctx, sku_id, renders, rows, named, written)

    def _sweep(
        self,
        ctx: Context,
        sku_id: str,
        renders: list[ManifestRow],
        rows: dict[str, ManifestRow],
        named: set[str],
        written: str,
    ) -> None:
        """Delete the objects of the items of ``renders`` (rows that replaced a row) that no row of the
        SKU (``rows``, just read) names and that were written ``sweep_grace_s`` or more before the delta
        ``written``: what a deletion cut short left (``_delete_replaced_objects``), or a writer whose row
        lost. Both times are the store's (S3's LastModified), so this stage's clock does not matter. A
        younger object may be another member's whose row is still on its way (it puts objects, then
        its row): every put refreshes the time, so only a writer stalled between the two for longer
        than the grace period could lose one."""
        left = [
            key
            for row in renders
            for key in self.manifests.stored_objects(sku_id, row.source, row.item_id, current=rows)
            if key not in named
        ]
        if not left:
            return
        try:
            now = self.manifests.store.modified_at(written)
        except ObjectMissing:
            # Compacted meanwhile (another member, ``skuforge dataset compact``): its time is not the
            # event's fault, and what is left is swept at the item's next replacement.
            return
        swept = past_grace(self.manifests.store, left, now=now, grace_s=self.sweep_grace_s)
        for key in swept:
            self.manifests.store.delete(key)
        if swept:
            ctx.log.info(
                "unnamed objects of replaced items swept", extra={"sku_id": sku_id, "objects": swept}
            )

    def _put_back_deleted(self, ctx: Context, sku_id: str, changed: list[StagedItem]) -> None:
        """Put back the objects of ``changed`` that are gone now that their rows are written, where a
        row of the SKU still names them: another member deleting the item's objects (a rejection, a
        withdrawal, a photo found unusable) read the manifest before these rows were there and took
        the objects put for them; the row, a later event's, then named objects that were gone. This
        narrows that race to the moment between such a deleter's read and its delete."""
        gone = [
            (key, item)
            for item in changed
            for key, held in ((item.row.image, item.has_image), (item.row.mask, item.mask_png is not None))
            if key and held and not self.manifests.store.exists(self.manifests.key(key))
        ]
        if not gone:
            return
        named = self.manifests.named_keys(self.manifests.read_sku(sku_id))
        put_back = [key for key, _ in gone if self.manifests.key(key) in named]
        restored: list[str] = []
        for key, item in gone:
            if key not in put_back:
                continue
            try:
                data = item.mask_png if key == item.row.mask else item.image_bytes(self.manifests.store)
            except BadInput as refusal:
                # The photo itself is gone too (a withdrawal deletes the copies, then the photo): the row
                # is written, and the SKU's next write withdraws it. Raised, it dead-lettered the event.
                ctx.log.warning(
                    "object another member deleted meanwhile not put back: its photo is gone",
                    extra={"sku_id": sku_id, "key": key, "reason": refusal.reason},
                )
                continue
            if data is not None:
                self.manifests.store.put_bytes(self.manifests.key(key), data, "image/png")
                restored.append(key)
        if restored:
            ctx.log.warning(
                "objects another member deleted meanwhile put back",
                extra={"sku_id": sku_id, "keys": restored},
            )


def _withdraw(
    staged: list[StagedItem], current: dict[str, ManifestRow], withdrawn: set[str]
) -> list[StagedItem]:
    """``staged`` with every row of a ``withdrawn`` photo, or of an image generated from one, turned
    into a ``withdrawn`` row (no objects), plus such rows for what ``current`` still has of them."""
    if not withdrawn:
        return staged
    out = [
        StagedItem(withdrawn_row(item.row)) if withdrawable(item.row, withdrawn) else item for item in staged
    ]
    staged_ids = {item.row.item_id for item in out}
    return out + [
        StagedItem(row) for row in withdrawn_rows(current, withdrawn) if row.item_id not in staged_ids
    ]


def _let_go(item: StagedItem, image_ref: ImageRef) -> StagedItem:
    """``item`` without its image bytes where they are ``image_ref``'s as they are (a PNG, stored byte for
    byte): read again when written (``StagedItem``). An image re-encoded as PNG is held."""
    if item.image_png is None or item.row.image_sha256 != image_ref.sha256:
        return item
    return replace(item, image_png=None, image_ref=image_ref)


def _stays_withdrawn(current: ManifestRow | None, row: ManifestRow) -> bool:
    """Whether ``row`` would bring back a synthetic image that was withdrawn: that stays withdrawn, also
    after its photo is reinstated. (A real photo's row does come back: a reinstated photo is a
    reference again.)"""
    return (
        current is not None
        and current.status == "withdrawn"
        and current.source == "synthetic"
        and row.status != "withdrawn"
    )


def _photo_ids(rows: list[ManifestRow]) -> list[str]:
    """The withdrawn photos ``rows`` are or were generated from (for the log)."""
    return sorted({str(photo_of(row)) for row in rows})


def _produced_at(event: Envelope[Any]) -> datetime:
    """The event's time, which orders the rows of an item (``stands``); a naive one is taken as UTC
    (every producer writes UTC), since naive and aware times do not compare."""
    produced_at = event.produced_at
    return produced_at if produced_at.tzinfo is not None else produced_at.replace(tzinfo=UTC)


def _refuse_other_skus_object(ctx: Context, ref: ImageRef, sku_id: str) -> None:
    """Refuse an object that the flow wrote for another SKU (its folder's SKU, ``shared.keys.sku_of``):
    stored under ``sku_id`` as well, one image would be in two SKUs' classes, with two labels (a producer
    pairing one SKU's event with another's render or mask). A key outside the flow's folders says
    nothing of its SKU; one directly in a flow folder (no SKU folder) is of no SKU, so not of ``sku_id``."""
    try:
        owner = keys.sku_of(ctx.store.key_for(ref.uri))
    except ValueError as exc:
        raise BadInput("other_sku_object", f"{exc}: not an object of the event's SKU {sku_id}") from None
    if owner is not None and owner != sku_id:
        raise BadInput("other_sku_object", f"an object of SKU {owner}, not of the event's SKU {sku_id}")


def _image_png(image_ref: ImageRef, image_bytes: bytes, image: Image.Image) -> bytes:
    """The bytes to store of an image read from ``image_ref``, checked against the event's size."""
    # The manifest records the event's width and height: they must be the image's.
    if (image_ref.width, image_ref.height) != (image.width, image.height):
        raise BadInput(
            "dimension_mismatch",
            f"image {image_ref.uri} is {image.width}x{image.height}, "
            f"the event says {image_ref.width}x{image_ref.height}",
        )
    # A PNG is kept byte for byte (same sha256 as upstream); other formats are re-encoded as PNG.
    return image_bytes if image_bytes.startswith(_PNG_SIGNATURE) else encode_png(image)


def _kept_render(current: ManifestRow | None, generated: ImageGenerated) -> str | None:
    """The status of ``current``, the item's stored row, when it is a trainable render other than the
    one ``generated`` names (its image's sha256 differs); None otherwise.

    A variant rendered again from a changed scene library keeps its item id: the gate may accept
    the first render and flag the second. A reviewer's rejection of the second says nothing about
    the first, which stays (nothing already accepted is lost). The generator writes PNGs, which
    the store keeps byte for byte, so the same render has the same sha256 on both sides.
    """
    if current is None or current.status not in ("accepted", "approved") or current.image_sha256 is None:
        return None
    return current.status if current.image_sha256 != generated.image.sha256 else None


def _past_other_render(current: ManifestRow | None, row: ManifestRow) -> ManifestRow:
    """``row``, dated no earlier than ``current`` when that is a rejection of another render of the item
    (its image's sha256 differs): that rejection judged other pixels and says nothing about these, so
    a trainable row of them stands whichever event came first (``_kept_render``, the other order)."""
    if (
        current is None
        or current.status != "rejected"
        or not row.trainable
        or current.image_sha256 in (None, row.image_sha256)
    ):
        return row
    return _no_earlier_than(current, row)


def _dated(current: ManifestRow | None, row: ManifestRow) -> ManifestRow:
    """``row`` with the time it is ordered by against ``current`` (``_past_other_render``,
    ``_past_gate_decision``, ``_past_review``), remembering the renders reviewers rejected
    (``_remembering_rejections``)."""
    dated = _past_review(current, _past_gate_decision(current, _past_other_render(current, row)))
    return _remembering_rejections(current, dated)


def _rejected_renders(row: ManifestRow) -> set[str]:
    """The sha256 of the renders of ``row``'s item that reviewers rejected: those it remembers, and its
    own when it is a rejection."""
    own = {row.image_sha256} if row.status == "rejected" and row.image_sha256 is not None else set()
    return {*row.rejected_renders, *own}


def _remembering_rejections(current: ManifestRow | None, row: ManifestRow) -> ManifestRow:
    """``row``, remembering the renders reviewers rejected that ``current``, the row it replaces, knew of
    (``ManifestRow.rejected_renders``), so that the gate's acceptance of one never replaces it
    (``_overrides_review``): a rejection of one render replaced by an acceptance of another, or left
    out beside an accepted one (``_kept_render``). Not its own render: a rejection records that as its
    ``image_sha256``, and a reviewer's approval of it is the later decision."""
    if current is None:
        return row
    own = {row.image_sha256} if row.status in _REVIEWED else set()
    remembered = sorted((_rejected_renders(current) | set(row.rejected_renders)) - own)
    rejected_at = _times_of(remembered, {**row.rejected_at, **_rejection_times(current)})
    if remembered == row.rejected_renders and rejected_at == row.rejected_at:
        return row
    return row.model_copy(update={"rejected_renders": remembered, "rejected_at": rejected_at})


def _rejection_times(row: ManifestRow) -> dict[str, datetime]:
    """When the renders ``_rejected_renders`` gives for ``row`` were rejected, where known: those it
    remembers (``ManifestRow.rejected_at``), and its own, a rejection's, its event's time."""
    own = (
        {row.image_sha256: row.event_time}
        if row.status == "rejected" and row.image_sha256 is not None and row.event_time is not None
        else {}
    )
    return {**row.rejected_at, **own}


def _times_of(remembered: list[str], times: dict[str, datetime]) -> dict[str, datetime]:
    """``times`` of the ``remembered`` renders only: a render no longer remembered (approved since) has
    none, nor one whose rejection was remembered before rows recorded the time."""
    return {sha256: times[sha256] for sha256 in remembered if sha256 in times}


def _same_render(row: ManifestRow, other: ManifestRow) -> bool:
    """Whether two rows of an item are of one render (its image's sha256; ``_kept_render``)."""
    return row.image_sha256 is not None and row.image_sha256 == other.image_sha256


def _overrides_review(current: ManifestRow | None, row: ManifestRow) -> bool:
    """Whether ``row``, the gate's acceptance, would replace a reviewer's decision: an approval of any
    render of the item, a rejection of the same render.

    A person's decision stands against the gate's whatever the times: the gate replayed after a
    threshold change accepts, later, an item a reviewer rejected (or approved with a corrected mask),
    and a restarted gate makes a first render's acceptance again, dated now (shared/runtime.py,
    ``_encode_outputs``), after a reviewer approved the second render. A rejection of another render
    judged other pixels: an acceptance stands over it (``_past_other_render``, ``_kept_render``).
    Between two reviewers' decisions the later made wins (``_past_review``), between two of the gate's
    the later event (``stands``).
    """
    if current is None or row.status != "accepted":
        return False
    if row.image_sha256 is not None and row.image_sha256 in current.rejected_renders:
        return True  # a render a reviewer rejected while another render of the item stood
    return current.status in _REVIEWED and (current.status == "approved" or _same_render(current, row))


def _past_gate_decision(current: ManifestRow | None, row: ManifestRow) -> ManifestRow:
    """``row``, a reviewer's decision, dated no earlier than ``current`` when that is the gate's
    acceptance that the decision replaces (``_overrides_review``: of the same render, or of any render
    for an approval), such as a replay of the gate that got here first: the person's decision wins,
    and its row then keeps winning after restarts and compactions."""
    if (
        current is None
        or current.status != "accepted"
        or row.status not in _REVIEWED
        or not (row.status == "approved" or _same_render(current, row))
    ):
        return row
    return _no_earlier_than(current, row)


def _past_review(current: ManifestRow | None, row: ManifestRow) -> ManifestRow:
    """``row``, a reviewer's decision, dated no earlier than ``current`` when that is a reviewer's
    decision made no later than ``row``'s (their events' own times, ``ManifestRow.event_time``).

    ``current`` may be dated past a gate's acceptance (``_past_gate_decision``): a second reviewer's
    decision made after it but before that acceptance's time is still the later decision. By the
    time ``current`` is ordered by, it was left out as the older one."""
    if (
        current is None
        or current.status not in _REVIEWED
        or row.status not in _REVIEWED
        or current.event_time is None
        or row.event_time is None
        or row.event_time < current.event_time
    ):
        return row
    return _no_earlier_than(current, row)


def _no_earlier_than(current: ManifestRow, row: ManifestRow) -> ManifestRow:
    """``row``, dated ``current``'s time where that is later, so it stands against ``current``
    (``stands``: the later event wins, and a tie goes to the later write); its event's own time is
    kept in ``event_produced_at``. A row without a time, or against a row without one, is left as it is."""
    if current.produced_at is None or row.produced_at is None or row.produced_at >= current.produced_at:
        return row
    return row.model_copy(update={"produced_at": current.produced_at, "event_produced_at": row.event_time})


def _object_fields(
    sku_id: str, source: str, item_id: str, image_ref: ImageRef, image_png: bytes, mask_png: bytes | None
) -> dict[str, Any]:
    """Where an item's objects go (keys from the item id and the bytes' sha256: ``content_keys``) and
    their sha256; no mask fields for an item stored without one."""
    image_sha256 = sha256_hex(image_png)
    mask_sha256 = sha256_hex(mask_png) if mask_png is not None else ""
    image, mask = content_keys(sku_id, source, item_id, image_sha256, mask_sha256)
    fields: dict[str, Any] = {
        "image": image,
        "image_sha256": image_sha256,
        "width": image_ref.width,
        "height": image_ref.height,
    }
    if mask_png is not None:
        fields |= {"mask": mask, "mask_sha256": mask_sha256}
    return fields


def _synthetic_row(
    generated: ImageGenerated,
    event: Envelope[Any],
    *,
    status: Status,
    item: tuple[bytes, bytes | None] | None,
    **fields: Any,
) -> ManifestRow:
    sku_id = generated.sku.sku_id
    objects: dict[str, Any] = {}
    if item is not None:
        objects = _object_fields(sku_id, "synthetic", generated.item_id, generated.image, *item)
    return ManifestRow(
        item_id=generated.item_id,
        sku_id=sku_id,
        category=generated.sku.category,
        source="synthetic",
        status=status,
        caption=generated.prompt,
        adapter_id=generated.adapter_id,
        seed=generated.seed,
        backend=generated.backend,
        reference_photo_id=generated.reference_photo_id,
        trace_id=event.trace_id,
        produced_at=_produced_at(event),
        **objects,
        **fields,
    )


def build_stage(*, trainstore: TrainstoreSettings | None = None, **kwargs: Any) -> Stage:
    """The stage, ready to run; kwargs go to Stage (settings, store...)."""
    trainstore = trainstore or load_settings(TrainstoreSettings)
    stage = Stage(TRAINSTORE.name, default_metrics_port=TRAINSTORE.default_metrics_port, **kwargs)
    manifests = ManifestStore(stage.store, trainstore.trainstore_prefix)
    manifests.check_prefix_room()
    writer = Trainstore(
        manifests,
        trainstore.trainstore_compact_after_parts,
        stage.metrics.registry,
        trainstore.trainstore_max_clock_ahead_s,
        trainstore.trainstore_sweep_grace_s,
    )
    for topic, handle in writer.handlers().items():
        stage.handler(topic)(handle)
    return stage


def main() -> int:
    """Run the trainstore stage until SIGTERM."""
    return run_stage(build_stage())


if __name__ == "__main__":
    raise SystemExit(stage_command("python -m services.trainstore.stage", main))
