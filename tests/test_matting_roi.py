"""Region-of-interest matting: the box around the expected mask, and predicting in it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from PIL import Image

from shared.matting.roi import Box, paste, product_box
from shared.matting.session import (
    MaskOptions,
    U2NetPSession,
    normalise_min_max,
    open_session,
    otsu_thresholds,
    resize_confidence,
    threshold_mask,
)
from shared.synth import make_product, render_photo


def mask_with(height: int, width: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[top:bottom, left:right] = 255
    return mask


def test_box_is_square_centred_and_wider_by_the_margin() -> None:
    # A 40 (w) x 20 (h) product centred at (100, 80): side 40 * 1.5 = 60.
    box = product_box(mask_with(200, 200, 70, 80, 90, 120), 0.25)
    assert box == (70, 50, 130, 110)


def test_margin_zero_is_the_bounding_box_side() -> None:
    assert product_box(mask_with(100, 100, 10, 10, 30, 30), 0.0) == (10, 10, 30, 30)


def test_box_moves_to_stay_inside_the_image() -> None:
    # Product in the top-left corner: the 60 px box starts at the image's edge, not before it.
    assert product_box(mask_with(200, 300, 0, 0, 40, 40), 0.25) == (0, 0, 60, 60)
    # And the bottom-right corner.
    assert product_box(mask_with(200, 300, 160, 260, 200, 300), 0.25) == (240, 140, 300, 200)


def test_box_is_cut_only_where_the_image_is_smaller() -> None:
    # A product as tall as the image: the box is the image's height and wider only sideways.
    assert product_box(mask_with(100, 300, 0, 140, 100, 160), 0.25) == (75, 0, 225, 100)
    assert product_box(mask_with(100, 100, 0, 0, 100, 100), 1.0) == (0, 0, 100, 100)


def test_no_product_no_box() -> None:
    assert product_box(np.zeros((50, 60), np.uint8)) is None
    # Below the mask threshold (128) is background.
    assert product_box(np.full((50, 60), 127, np.uint8)) is None


def test_centre_shift_moves_the_box() -> None:
    mask = mask_with(400, 400, 180, 180, 220, 220)
    assert product_box(mask, 0.5, centre_shift=(0.1, -0.1)) == (168, 152, 248, 232)


def test_negative_margin_is_refused() -> None:
    with pytest.raises(ValueError, match="margin"):
        product_box(mask_with(10, 10, 2, 2, 5, 5), -0.1)


def test_paste_puts_the_region_in_place_and_zeros_elsewhere() -> None:
    region = np.arange(1, 7, dtype=np.uint8).reshape(2, 3)
    out = paste(region, (4, 1, 7, 3), (10, 5))
    assert out.shape == (5, 10)
    assert np.array_equal(out[1:3, 4:7], region)
    assert out.sum() == region.sum()
    with pytest.raises(ValueError, match="box"):
        paste(region, (0, 0, 2, 2), (10, 5))


def test_predict_in_boxes(random_u2netp_onnx: Path) -> None:
    session = U2NetPSession(random_u2netp_onnx, threads=1, use_gpu=False, max_batch=4)
    photos = [render_photo(make_product(index, seed=5), 0, seed=5, size_px=160) for index in range(3)]
    images = [photo.image for photo in photos]
    boxes = [product_box(photos[0].mask), None, product_box(photos[2].mask)]
    assert boxes[0] is not None and boxes[2] is not None

    boxed = session.predict(images, boxes=boxes)
    whole = session.predict(images)
    crops = session.predict([images[0].crop(boxes[0]), images[2].crop(boxes[2])])

    for result in boxed:
        assert result.mask.shape == (160, 160) and result.confidence.shape == (160, 160)
    # No box: the same as predicting the whole image.
    assert np.array_equal(boxed[1].mask, whole[1].mask)
    # A box: the crop's answer in place, nothing outside it.
    for result, box, crop in ((boxed[0], boxes[0], crops[0]), (boxed[2], boxes[2], crops[1])):
        left, top, right, bottom = box
        assert np.array_equal(result.mask[top:bottom, left:right], crop.mask)
        assert np.count_nonzero(result.mask) == np.count_nonzero(crop.mask)
        assert result.foreground_fraction == pytest.approx(np.count_nonzero(crop.mask) / (160 * 160))
        assert result.mean_confidence == pytest.approx(crop.mean_confidence, abs=1e-6)
    with pytest.raises(ValueError, match="boxes"):
        session.predict(images, boxes=boxes[:2])


def test_predict_in_a_box_ignores_what_lies_outside(random_u2netp_onnx: Path) -> None:
    session = U2NetPSession(random_u2netp_onnx, threads=1, use_gpu=False)
    photo = render_photo(make_product(1, seed=5), 0, seed=5, size_px=160)
    box = product_box(photo.mask)
    assert box is not None
    noisy = np.asarray(photo.image).copy()
    left, top, right, bottom = box
    outside = np.ones(noisy.shape[:2], bool)
    outside[top:bottom, left:right] = False
    noisy[outside] = np.random.default_rng(0).integers(0, 256, size=(int(outside.sum()), 3), dtype=np.uint8)
    clean_result, noisy_result = session.predict([photo.image, Image.fromarray(noisy)], boxes=[box, box])
    assert np.array_equal(clean_result.mask, noisy_result.mask)


@pytest.mark.parametrize(
    ("box", "problem"),
    [
        ((100, 100, 200, 200), "not inside the 160x160 image"),  # partly outside
        ((-10, 0, 50, 50), "not inside the 160x160 image"),
        ((170, 170, 230, 230), "not inside the 160x160 image"),  # wholly outside
        ((50, 50, 50, 80), "empty (0x30)"),
        ((60, 80, 40, 100), "empty (-20x20)"),
    ],
)
def test_a_box_that_is_no_region_of_its_image_is_named(
    random_u2netp_onnx: Path, box: tuple[int, int, int, int], problem: str
) -> None:
    """Before, a box past the edge failed after the model ran, in a numpy broadcast error."""
    session = U2NetPSession(random_u2netp_onnx, threads=1, use_gpu=False)
    image = render_photo(make_product(1, seed=5), 0, seed=5, size_px=160).image
    with pytest.raises(ValueError) as refused:
        session.predict([image, image], boxes=[(0, 0, 160, 160), box])
    assert str(refused.value).startswith(f"boxes[1] {box}: {problem}")
    assert not session.ready, "no image may be matted before every box is checked"


def matted_the_old_way(
    session: U2NetPSession, images: list[Image.Image], boxes: list[Box | None]
) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """(mask, confidence, fraction, mean confidence) per image, as ``predict`` made them before it
    post-processed one image at a time: every crop of a chunk held, full-size float32 confidence
    maps for the whole chunk, then pasted into full-size arrays."""
    crops = [image if box is None else image.crop(box) for image, box in zip(images, boxes, strict=True)]
    answers = []
    for first in range(0, len(crops), session.max_batch):
        chunk = crops[first : first + session.max_batch]
        maps = normalise_min_max(session._run(session.preprocess(chunk))[:, 0])
        if session.mask_options.threshold == "otsu":
            thresholds = [float(t) for t in otsu_thresholds(maps)]
        else:
            thresholds = [float(session.mask_options.threshold)] * len(chunk)
        for index, (model_map, crop, threshold) in enumerate(zip(maps, chunk, thresholds, strict=True)):
            confidence = resize_confidence(model_map, crop.size)
            mask = threshold_mask(confidence, threshold, session.mask_options)
            box, size = boxes[first + index], images[first + index].size
            if box is not None:
                confidence, mask = paste(confidence, box, size), paste(mask, box, size)
            foreground = mask > 0
            pixels = int(np.count_nonzero(foreground))
            mean = float(confidence[foreground].mean()) if pixels else 0.0
            answers.append((mask, confidence, pixels / mask.size, min(1.0, max(0.0, mean))))
    return answers


@pytest.mark.parametrize(("threshold", "max_batch"), [(0.5, 8), ("otsu", 3)])
def test_predict_gives_the_masks_it_gave_when_it_held_the_whole_chunk_at_full_size(
    threshold: float | Literal["otsu"], max_batch: int
) -> None:
    """The committed model on photos of several sizes, boxed, whole, and boxed to the whole image:
    the same masks, bit for bit, as the pre-change path (guards equality, not memory)."""
    session = open_session(
        None,
        threads=1,
        use_gpu=False,
        store=None,
        max_batch=max_batch,
        mask=MaskOptions(threshold=threshold),
        uri_from=None,
    )
    assert isinstance(session, U2NetPSession)  # the committed model, which matted_the_old_way runs
    shapes = [(256, 256), (300, 200), (200, 340), (410, 290), (256, 256), (333, 333)]
    images, boxes = [], []
    for index, (width, height) in enumerate(shapes):
        photo = render_photo(make_product(index, seed=9), index, seed=9, size_px=max(width, height))
        images.append(photo.image.crop((0, 0, width, height)))
        boxes.append(product_box(np.asarray(photo.mask)[:height, :width]))
    boxes[1] = None  # matted whole
    boxes[4] = (0, 0, 256, 256)  # a box that is the whole image
    boxes[5] = (333 - 120, 333 - 90, 333, 333)  # a box in the corner, not square
    assert all(box is not None for index, box in enumerate(boxes) if index != 1)

    results = session.predict(images, boxes=boxes)
    for result, (mask, confidence, fraction, mean) in zip(
        results, matted_the_old_way(session, images, boxes), strict=True
    ):
        assert result.mask.dtype == np.uint8 and np.array_equal(result.mask, mask)
        assert np.array_equal(result.confidence, confidence)
        assert result.foreground_fraction == fraction and result.mean_confidence == mean
    assert any(0.0 < result.foreground_fraction < 1.0 for result in results), "the masks say something"
