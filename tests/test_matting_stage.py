"""The matting stage on the real broker: every image is matted or dead-lettered with its reason.

The model is a random-weight U2-NetP, so what the masks say is not checked here, only that
masks and cut-outs of the right size land in the store, that nothing outside the box around
the expected mask (ROI, on by default) is called product, and that the events carry them.
"""

from __future__ import annotations

import io
import itertools
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from schemas.common import ImageRef
from schemas.envelope import DeadLetter, Envelope
from schemas.events import ImageGenerated, ImageMatted
from schemas.topics import IMAGE_GENERATED, IMAGE_MATTED
from services.matting.config import MattingSettings
from services.matting.stage import build_stage
from shared.config import load_settings
from shared.images import decode_mask
from shared.matting.roi import DEFAULT_ROI_MARGIN, product_box
from shared.store import ObjectStore
from shared.synth import make_product, render_photo
from tests.support.bus import create_topics, file_store_uri, isolated_settings, produce, read_topic, running
from tests.support.matting import green_with_a_red_tinge, image_generated, nan_where_red_onnx_bytes

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SIZE_PX = 256
MAX_IMAGE_PIXELS = 100_000  # 256x256 passes, 400x400 does not


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def stored_image(store: ObjectStore, key: str, data: bytes, width: int, height: int) -> ImageRef:
    """Store bytes as they are (no re-encoding) and reference them with their true sha256."""
    ref = store.put_bytes(key, data, "image/png")
    return ImageRef(uri=ref.uri, sha256=ref.sha256, bytes=ref.bytes, width=width, height=height)


def generated_event(
    store: ObjectStore, name: str, image: ImageRef, index: int, expected: ImageRef | None = None
) -> ImageGenerated:
    """An image.generated payload for ``image``; the reference photo and masks are a rendered product.

    The expected mask is the rendered product's (SIZE_PX square) unless ``expected`` is given.
    """
    photo = render_photo(make_product(index, seed=3), 0, seed=3, size_px=SIZE_PX)
    reference = store.put_image(f"fixtures/{name}/reference.png", photo.image)
    mask = store.put_image(f"fixtures/{name}/mask.png", photo.mask)
    return image_generated(
        image,
        mask,
        reference=reference,
        expected_mask=expected,
        item_id=f"item-{name}",
        sku_id=f"SKU-{name}",
        sku_name=f"Product {name}",
        seed=index,
    )


def good_inputs(store: ObjectStore) -> dict[str, ImageGenerated]:
    """Rendered photos, and valid images in odd layouts; name -> payload."""
    events: dict[str, ImageGenerated] = {}
    for index in range(3):
        photo = render_photo(make_product(index, seed=11), index, seed=11, size_px=SIZE_PX)
        ref = store.put_image(f"generated/photo-{index}.png", photo.image)
        events[f"photo-{index}"] = generated_event(store, f"photo-{index}", ref, index)
    base = render_photo(make_product(5, seed=11), 0, seed=11, size_px=SIZE_PX).image
    gray16 = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    assert gray16.mode == "I;16"
    odd = {
        "gray16": encoded(gray16, "PNG"),
        "cmyk": encoded(base.convert("CMYK"), "JPEG"),
        "palette": encoded(base.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "gray": encoded(base.convert("L"), "PNG"),
    }
    for index, (name, data) in enumerate(odd.items()):
        ref = stored_image(store, f"generated/{name}", data, SIZE_PX, SIZE_PX)
        events[name] = generated_event(store, name, ref, 10 + index)
    return events


def bad_inputs(store: ObjectStore) -> dict[str, tuple[ImageGenerated, str]]:
    """Images that must be refused; name -> (payload, expected DLQ reason)."""
    png = encoded(render_photo(make_product(7, seed=11), 0, seed=11, size_px=SIZE_PX).image, "PNG")
    corrupt = bytearray(png)
    corrupt[len(corrupt) // 2] ^= 0xFF  # inside the pixel data: its CRC no longer matches
    assert zlib.crc32(bytes(corrupt)) != zlib.crc32(png)
    cases = {
        "corrupt": (bytes(corrupt), "corrupt", SIZE_PX),
        "garbage": (np.random.default_rng(0).bytes(4096), "not_an_image", SIZE_PX),
        "truncated": (png[: len(png) // 2], "truncated", SIZE_PX),
        "oversized": (encoded(Image.new("RGB", (400, 400), "white"), "PNG"), "too_many_pixels", 400),
        "zero-byte": (b"", "empty", SIZE_PX),
        "wrong-size": (png, "dimension_mismatch", SIZE_PX + 1),  # the event lies about the size
    }
    events = {}
    for index, (name, (data, reason, claimed_px)) in enumerate(cases.items()):
        ref = stored_image(store, f"generated/bad-{name}", data, claimed_px, claimed_px)
        events[name] = (generated_event(store, name, ref, 20 + index), reason)
    # A good image whose expected mask (which gives the ROI) is missing, or of another size.
    image = store.put_image(
        "generated/good-for-bad-masks.png", Image.fromarray(np.full((SIZE_PX, SIZE_PX, 3), 90, np.uint8))
    )
    missing = store.put_image("fixtures/missing-mask.png", np.zeros((SIZE_PX, SIZE_PX), np.uint8))
    store.delete(store.key_for(missing.uri))
    small = store.put_image("fixtures/small-mask.png", np.zeros((SIZE_PX // 2, SIZE_PX // 2), np.uint8))
    events["mask-missing"] = (
        generated_event(store, "mask-missing", image, 30, expected=missing),
        "object_missing",
    )
    events["mask-size"] = (
        generated_event(store, "mask-size", image, 31, expected=small),
        "dimension_mismatch",
    )
    return events


def test_every_image_is_matted_or_dead_lettered(
    kafka_bootstrap: str, tmp_path: Path, random_u2netp_onnx: Path
) -> None:
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path), max_image_pixels=MAX_IMAGE_PIXELS)
    matting = load_settings(
        MattingSettings, matting_model=str(random_u2netp_onnx), matting_use_gpu=False, matting_max_batch=3
    )
    create_topics(settings, IMAGE_GENERATED, IMAGE_MATTED)
    stage = build_stage(settings=settings, matting=matting)
    store = stage.store
    good = good_inputs(store)
    bad = bad_inputs(store)
    # Bad images between good ones, so micro-batches mix both.
    pairs = itertools.zip_longest(good.values(), (event for event, _ in bad.values()))
    produce(settings, IMAGE_GENERATED, [event for pair in pairs for event in pair if event is not None])

    with running(stage):
        outputs = read_topic(
            kafka_bootstrap, settings.topic_name(IMAGE_MATTED), expect=len(good), timeout_s=180
        )
        letters = read_topic(
            kafka_bootstrap, settings.dlq_name(IMAGE_GENERATED), expect=len(bad), timeout_s=60
        )
        # Still running after all that: one more image goes through.
        # Its expected mask is empty: no region, so the whole image is matted.
        last = generated_event(
            store,
            "after",
            store.put_image("generated/after.png", Image.new("RGB", (99, 77))),
            99,
            expected=store.put_image("fixtures/after-mask.png", np.zeros((77, 99), np.uint8)),
        )
        produce(settings, IMAGE_GENERATED, [last])
        outputs = read_topic(
            kafka_bootstrap, settings.topic_name(IMAGE_MATTED), expect=len(good) + 1, timeout_s=60
        )
        assert stage.ready()

    matted = {
        event.payload.generated.item_id: event.payload
        for event in (Envelope[ImageMatted].model_validate_json(record.value) for record in outputs)
    }
    assert sorted(matted) == sorted([f"item-{name}" for name in good] + ["item-after"])
    for payload in matted.values():
        check_matted(store, payload)

    dead = [DeadLetter.model_validate_json(record.value) for record in letters]
    assert len(dead) == len(bad)
    assert {letter.sku_id: letter.reason for letter in dead} == {
        f"SKU-{name}": reason for name, (_, reason) in bad.items()
    }
    assert all(letter.stage == "matting" for letter in dead)


def test_an_image_the_model_gives_nan_for_is_dead_lettered_alone_and_the_stage_stays_ready(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Before, the image failed its batch's model call, was retried and dead-lettered as
    ``handler_error``, and /readyz stayed down after it until the next batch came: one input's fault
    taken for the model's. The model still mats its blank warm-up image, so it is healthy."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    model = tmp_path / "nan-where-red.onnx"
    model.write_bytes(nan_where_red_onnx_bytes())
    matting = load_settings(
        MattingSettings, matting_model=str(model), matting_use_gpu=False, matting_max_batch=3
    )
    create_topics(settings, IMAGE_GENERATED, IMAGE_MATTED)
    stage = build_stage(settings=settings, matting=matting)
    store = stage.store
    whole = store.put_image("fixtures/whole-mask.png", np.full((48, 64), 255, np.uint8))
    green = store.put_image("generated/green.png", green_with_a_red_tinge())
    white = store.put_image("generated/white.png", Image.new("RGB", (64, 48), "white"))
    events = [
        generated_event(store, "green", green, 1, expected=whole),
        generated_event(store, "white", white, 2, expected=whole),  # the last of its batch
    ]
    produce(settings, IMAGE_GENERATED, events)
    with running(stage):
        outputs = read_topic(kafka_bootstrap, settings.topic_name(IMAGE_MATTED), expect=1, timeout_s=60)
        letters = read_topic(kafka_bootstrap, settings.dlq_name(IMAGE_GENERATED), expect=1, timeout_s=60)
        assert stage.ready()
    (matted,) = (Envelope[ImageMatted].model_validate_json(record.value).payload for record in outputs)
    assert matted.generated.item_id == "item-green"
    (letter,) = (DeadLetter.model_validate_json(record.value) for record in letters)
    assert (letter.sku_id, letter.reason) == ("SKU-white", "model_output_not_finite")
    assert "nan-where-red.onnx" in (letter.detail or "")


def check_matted(store: ObjectStore, matted: ImageMatted) -> None:
    """The mask and the cut-out are stored where the item says, at the image's size."""
    generated = matted.generated
    width, height = generated.image.width, generated.image.height
    sku_id = generated.sku.sku_id
    for ref, folder in ((matted.predicted_mask, "masks/predicted"), (matted.cutout, "cutouts")):
        assert ref.uri == store.uri_for(f"{folder}/{sku_id}/{generated.item_id}-{ref.sha256[:16]}.png")
    mask = decode_mask(store.read_verified(matted.predicted_mask))
    assert mask.shape == (height, width)
    cutout = Image.open(io.BytesIO(store.read_verified(matted.cutout)))
    assert cutout.mode == "RGBA" and cutout.size == (width, height)
    alpha = np.asarray(cutout)[..., 3]
    assert np.array_equal(alpha, mask)
    box = product_box(decode_mask(store.read_verified(generated.expected_mask)), DEFAULT_ROI_MARGIN)
    if box is not None:
        left, top, right, bottom = box
        outside = np.ones_like(mask, dtype=bool)
        outside[top:bottom, left:right] = False
        assert not mask[outside].any(), "product found outside the ROI"
    assert matted.foreground_fraction == pytest.approx(np.count_nonzero(mask) / mask.size)
    assert matted.matting_model_id.startswith("u2netp-random.onnx@sha256:")


def test_a_matting_batch_larger_than_a_poll_is_named_at_start(
    random_u2netp_onnx: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler gets one poll's records: SKUFORGE_MATTING_MAX_BATCH=64 beside the default 16 records
    per poll never made a call of more than 16 images, and nothing said so."""
    from services.matting.stage import open_matting_session

    matting = load_settings(
        MattingSettings, matting_model=str(random_u2netp_onnx), matting_use_gpu=False, matting_max_batch=64
    )
    open_matting_session(matting, load_settings(max_poll_records=16))
    assert "SKUFORGE_MATTING_MAX_BATCH=64 is more than a poll brings" in caplog.text
    caplog.clear()
    open_matting_session(matting, load_settings(max_poll_records=64))
    assert "more than a poll brings" not in caplog.text
