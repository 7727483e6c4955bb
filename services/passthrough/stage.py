"""Pass-through: the runtime's reference stage, and a smoke test for a deployment.

Consumes: ``sku.ingested``.
Produces: the same payload on ``passthrough.sku.ingested.v1``, after writing one marker object
``passthrough/<sku_id>/<output event id>.json`` to the object store.
Bad input: whatever the runtime refuses (not JSON, wrong schema) goes to the DLQ; an event
whose first photo is missing or corrupt in the store goes to the DLQ (``object_missing``,
``checksum_mismatch``), because the stage reads it back with its checksum, and one the event says is
over ``SKUFORGE_MAX_IMAGE_BYTES`` too (``too_large_bytes``), unread.

It does no model work, so the delivery tests use it to prove at-least-once and redelivery without
duplicates (the bus benchmark, bench/bus.py, times a forwarding handler of its own).
"""

from __future__ import annotations

from schemas.envelope import Envelope, derive_id
from schemas.events import SkuIngested
from schemas.flow import PASSTHROUGH
from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from shared.config import Settings
from shared.images import refuse_oversized
from shared.runtime import Context, Emit, Stage, run_stage, stage_command
from shared.store import ObjectStore


def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
    """Verify the first photo, record a marker object, forward the payload."""
    photo = event.payload.photos[0].image
    # By the event's figure, as every stage reads photos: read_verified holds the object whole.
    refuse_oversized(photo.bytes, ctx.settings.max_image_bytes)
    ctx.store.read_verified(photo)
    marker_id = derive_id(event.event_id, ctx.stage, "out")
    ctx.store.put_json(
        f"passthrough/{event.sku_id}/{marker_id}.json",
        {"input_event_id": event.event_id, "output_event_id": marker_id},
    )
    return [Emit(PASSTHROUGH_OUT, event.payload, key="out")]


def build_stage(*, settings: Settings | None = None, store: ObjectStore | None = None) -> Stage:
    """The stage, ready to run (``settings`` and ``store`` as Stage takes them: loaded, opened if None)."""
    stage = Stage(
        PASSTHROUGH.name,
        settings=settings,
        store=store,
        default_metrics_port=PASSTHROUGH.default_metrics_port,
    )
    stage.handler(SKU_INGESTED)(handle)
    return stage


def main() -> int:
    """Run the pass-through stage until SIGTERM."""
    return run_stage(build_stage())


if __name__ == "__main__":
    raise SystemExit(stage_command("python -m services.passthrough.stage", main))
