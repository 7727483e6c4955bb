"""The composite backend: reproducible, varied, and its expected mask is where the product's pixels are."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from shared.config import load_settings
from shared.generation.backend import open_backend
from shared.generation.composite import PHOTO_SCENE, CompositeBackend, CompositeError, product_framing
from shared.generation.scenes import Scene, SceneLibrary
from shared.generation.settings import GenerationSettings
from shared.synth import make_product, render_photo
from tests.support.generation import NEUTRAL_LIGHT, marker_pixels, marker_reference, marker_request


def test_same_seed_same_bytes_and_variants_independent_of_n() -> None:
    photo = render_photo(make_product(2, seed=5), 0, seed=5, size_px=256)
    reference, mask = np.asarray(photo.image), photo.mask
    backend = CompositeBackend()
    first = backend.generate(marker_request(reference, mask, seed=42, n=3))
    again = backend.generate(marker_request(reference, mask, seed=42, n=3))
    alone = backend.generate(marker_request(reference, mask, seed=42, n=1))
    other = backend.generate(marker_request(reference, mask, seed=43, n=1))
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.expected_mask, b.expected_mask)
        assert a.parameters == b.parameters
    assert np.array_equal(first[0].image, alone[0].image)
    assert not np.array_equal(first[0].image, other[0].image)
    assert not np.array_equal(first[0].image, first[1].image)
    # The reported parameters reproduce the image when sent back.
    replay = backend.generate(marker_request(reference, mask, seed=42, n=1, **first[0].parameters))
    assert np.array_equal(replay[0].image, first[0].image)


@pytest.mark.parametrize("seed", range(8))
def test_expected_mask_is_where_the_product_pixels_are(seed: int) -> None:
    reference, mask = marker_reference()
    sample = CompositeBackend().generate(marker_request(reference, mask, seed=seed, **NEUTRAL_LIGHT))[0]
    expected = sample.expected_mask > 0
    assert sample.image.shape == (256, 256, 3) and sample.expected_mask.shape == (256, 256)
    assert set(np.unique(sample.expected_mask)) <= {0, 255}
    # Inside the mask, away from the anti-aliased outline, every pixel is exactly the product's own
    # colour; outside it no pixel is even close; the two masks agree almost everywhere.
    assert marker_pixels(sample.image)[ndimage.binary_erosion(expected, iterations=3)].all()
    close = marker_pixels(sample.image, tolerance=40)
    assert not close[~ndimage.binary_dilation(expected, iterations=1)].any()
    iou = (close & expected).sum() / (close | expected).sum()
    assert iou > 0.93, (iou, sample.parameters)


@pytest.mark.parametrize("seed", range(6))
def test_occlusion_removes_hidden_pixels_from_the_expected_mask(seed: int) -> None:
    reference, mask = marker_reference()
    backend = CompositeBackend()
    clear = backend.generate(marker_request(reference, mask, seed=seed, occluders=0, **NEUTRAL_LIGHT))[0]
    hidden = backend.generate(marker_request(reference, mask, seed=seed, occluders=2, **NEUTRAL_LIGHT))[0]
    clear_mask, hidden_mask = clear.expected_mask > 0, hidden.expected_mask > 0
    assert hidden.parameters["occluders"] == 2 and clear.parameters["occluders"] == 0
    assert not (hidden_mask & ~clear_mask).any()  # occluders never add product pixels
    assert hidden_mask.sum() < 0.97 * clear_mask.sum()
    assert hidden_mask.sum() > 0.3 * clear_mask.sum()  # partial, not total, occlusion
    # Where the mask lost pixels, the image shows something else than the product.
    lost = ndimage.binary_erosion(clear_mask & ~hidden_mask, iterations=1)
    assert lost.any() and not marker_pixels(hidden.image)[lost].any()
    assert marker_pixels(hidden.image)[ndimage.binary_erosion(hidden_mask, iterations=3)].all()


def test_variants_differ_in_scene_placement_and_light() -> None:
    photo = render_photo(make_product(4, seed=5), 1, seed=5, size_px=256)
    samples = CompositeBackend().generate(marker_request(np.asarray(photo.image), photo.mask, seed=9, n=24))
    params = [s.parameters for s in samples]
    assert len({p["scene"] for p in params}) >= 4
    assert len({p["shadow"] for p in params}) >= 2
    assert any(p["occluders"] > 0 for p in params)
    fractions = [float((s.expected_mask > 0).mean()) for s in samples]
    assert max(fractions) > 1.5 * min(fractions) > 0
    centres = [np.argwhere(s.expected_mask > 0).mean(axis=0) for s in samples]
    assert np.ptp(np.array(centres), axis=0).min() > 20  # the product moves, in both axes


def test_512px_images_come_out_at_512px_with_their_masks() -> None:
    # Its speed is bench/generation.py's (composite_images_per_s_c1 at 512 px), not a timed assert here.
    photo = render_photo(make_product(6, seed=5), 0, seed=5, size_px=512)
    samples = CompositeBackend().generate(marker_request(np.asarray(photo.image), photo.mask, size=512, n=2))
    assert len(samples) == 2
    for sample in samples:
        assert np.asarray(sample.image).shape[:2] == sample.expected_mask.shape == (512, 512)
        assert (sample.expected_mask > 0).any()


def test_refusals_say_what_is_wrong() -> None:
    reference, mask = marker_reference()
    backend = CompositeBackend()
    with pytest.raises(CompositeError, match="mask is empty"):
        backend.generate(marker_request(reference, np.zeros_like(mask)))
    with pytest.raises(CompositeError, match=r"unknown composite parameter\(s\) sparkle; known: .*scene"):
        backend.generate(marker_request(reference, mask, sparkle=1))
    with pytest.raises(CompositeError, match="unknown scene 'beach'"):
        backend.generate(marker_request(reference, mask, scene="beach"))
    with pytest.raises(CompositeError, match="must match"):
        backend.generate(marker_request(reference, mask[:10]))
    # Before, light knobs out of range made the declared colour gain negative or infinite: the
    # event failed validation after its PNGs were written, a handler error, not a refused variant.
    for knob, value in (("colour_temperature", 100.0), ("light_gain", 1e308), ("light_gradient", 50.0)):
        out_of_range: dict[str, Any] = {knob: value}
        with pytest.raises(CompositeError, match=f"composite parameter {knob} must be from"):
            backend.generate(marker_request(reference, mask, **out_of_range))
    with pytest.raises(CompositeError, match="scene_seed must be from 0"):
        backend.generate(marker_request(reference, mask, scene_seed=-1))
    # Specks over a large photo: shrunk to the canvas, no pixel is half product. Refused as such,
    # not with a numpy error on the procedural path, nor as an image whose expected mask is empty.
    specks = np.where(np.random.default_rng(0).random((600, 800)) < 0.05, 255, 0).astype(np.uint8)
    grey = np.full((600, 800, 3), 120, dtype=np.uint8)
    for scene in ("studio", "shelf"):
        with pytest.raises(CompositeError, match="too thin or scattered to place"):
            backend.generate(marker_request(grey, specks, scene=scene, occluders=0))


def test_open_backend_picks_composite_by_default_and_refuses_unknown_names() -> None:
    backend = open_backend(load_settings(GenerationSettings).generation_backend)
    assert backend.name == "composite" and backend.model_id
    with pytest.raises(ValueError, match="SKUFORGE_GENERATION_BACKEND"):
        open_backend("dreams")


def test_a_photo_composite_frames_the_product_as_its_whole_reference_photo_does() -> None:
    # The generator stage sends the reference cropped to the product (where it fills ~90%) and the
    # framing of the whole photo beside it; the product must fill what it filled there, not the crop.
    reference, mask = marker_reference()
    assert product_framing(mask) == pytest.approx(0.8)  # the bottle is 240 of the photo's 300 px tall
    scene = np.full((256, 256, 3), (40, 150, 60), dtype=np.uint8)
    backend = CompositeBackend(SceneLibrary([Scene("shelves/a.png", "shelves", scene)]), 1.0)
    fixed = {**NEUTRAL_LIGHT, "scene": PHOTO_SCENE, "scene_key": "shelves/a.png", "shadow": "none"}
    fixed |= {"occluders": 0, "scene_match": 0.0, "framing": 1.0, "rotation_deg": 0.0}
    fixed |= {"perspective_x": 0.0, "perspective_y": 0.0}

    def height_share(**parameters: Any) -> float:
        sample = backend.generate(marker_request(reference, mask, seed=4, **fixed, **parameters))[0]
        rows = np.flatnonzero((sample.expected_mask > 0).any(axis=1))
        return (rows[-1] + 1 - rows[0]) / sample.expected_mask.shape[0]

    assert height_share() == pytest.approx(0.8, abs=0.03)  # measured on the reference given
    assert height_share(reference_framing=0.4) == pytest.approx(0.4, abs=0.03)
    assert height_share(reference_framing=0.1) == pytest.approx(0.3, abs=0.03)  # never below 0.3
    with pytest.raises(CompositeError, match=r"reference_framing must be in 0\.\.1"):
        backend.generate(marker_request(reference, mask, seed=4, **fixed, reference_framing=1.5))


def saturation(pixels: np.ndarray) -> np.ndarray:
    """HSV saturation (0..1) of N x 3 RGB pixels."""
    rgb = pixels.astype(np.float64)
    brightest = rgb.max(axis=-1)
    return (brightest - rgb.min(axis=-1)) / np.maximum(brightest, 1.0)


def catalogue_reference() -> tuple[np.ndarray, np.ndarray]:
    """A red disc photographed on white: its outer two pixels are half product, half white background
    (as a catalogue photo's are), and the mask covers them."""
    yy, xx = np.mgrid[0:240, 0:240]
    distance = np.hypot(yy - 119.5, xx - 119.5)
    mask = np.where(distance <= 100, 255, 0).astype(np.uint8)
    red, white = np.array([190.0, 30.0, 35.0]), np.array([255.0, 255.0, 255.0])
    share = np.where(distance <= 98, 1.0, np.where(distance <= 100, 0.5, 0.0))[..., None]
    image = np.clip(share * red + (1 - share) * white + 0.5, 0, 255).astype(np.uint8)
    return image, mask


def test_the_edge_a_catalogue_photo_blended_with_white_is_not_pasted_as_a_pale_rim() -> None:
    reference, mask = catalogue_reference()
    clean = np.where(mask[..., None] > 0, np.array([190, 30, 35], dtype=np.uint8), 255).astype(np.uint8)
    scene = np.full((256, 256, 3), (40, 110, 60), dtype=np.uint8)
    backend = CompositeBackend(SceneLibrary([Scene("shelves/a.png", "shelves", scene)]), 1.0)
    fixed = {**NEUTRAL_LIGHT, "scene": PHOTO_SCENE, "scene_key": "shelves/a.png", "shadow": "none"}
    fixed |= {"occluders": 0, "scene_match": 0.0, "rotation_deg": 0.0, "perspective_x": 0.0}
    fixed |= {"perspective_y": 0.0, "framing": 1.0}
    for procedural in (False, True):
        parameters = {**fixed, "scene": "studio", "scene_key": ""} if procedural else fixed
        sample = backend.generate(marker_request(reference, mask, seed=5, **parameters))[0]
        depth = ndimage.distance_transform_edt(sample.expected_mask > 0)
        # The product's outer pixels in the output (the outermost one also holds some scene), and its inside.
        edge, inside = (depth > 1) & (depth <= 4), depth > 8
        edge_saturation = saturation(sample.image[edge]).mean()
        inside_saturation = saturation(sample.image[inside]).mean()
        assert edge_saturation == pytest.approx(inside_saturation, abs=0.06), (procedural, edge_saturation)
        assert abs(sample.image[edge].mean() - sample.image[inside].mean()) < 8
        # The expected mask is the mask's alone: the same as for the photo without the white blend.
        without_blend = backend.generate(marker_request(clean, mask, seed=5, **parameters))[0]
        assert np.array_equal(sample.expected_mask, without_blend.expected_mask)


def test_a_backend_made_without_the_edge_recolour_keeps_the_pale_rim_and_nothing_else_changes() -> None:
    # The benchmarks' try of the recolour (bench.augment --edge-recolour off, bench.edge_recolour) used to
    # swap the module's decontaminate_edge for the run; it is an option of the backend now.
    reference, mask = catalogue_reference()
    scene = np.full((256, 256, 3), (40, 110, 60), dtype=np.uint8)
    library = SceneLibrary([Scene("shelves/a.png", "shelves", scene)])
    fixed = {**NEUTRAL_LIGHT, "scene": PHOTO_SCENE, "scene_key": "shelves/a.png", "shadow": "none"}
    fixed |= {"occluders": 0, "scene_match": 0.0, "rotation_deg": 0.0, "perspective_x": 0.0}
    fixed |= {"perspective_y": 0.0, "framing": 1.0}
    recoloured, kept = (
        CompositeBackend(library, 1.0, edge_recolour=edge).generate(
            marker_request(reference, mask, seed=5, **fixed)
        )[0]
        for edge in (True, False)
    )
    depth = ndimage.distance_transform_edt(recoloured.expected_mask > 0)
    edge, inside = (depth > 1) & (depth <= 4), depth > 8
    assert saturation(kept.image[edge]).mean() < saturation(recoloured.image[edge]).mean() - 0.1
    assert np.array_equal(kept.image[inside], recoloured.image[inside])
    assert np.array_equal(kept.expected_mask, recoloured.expected_mask)
    assert kept.parameters == recoloured.parameters


def test_a_photo_composite_records_the_height_its_product_was_given() -> None:
    # On a photo scene the reference's framing decides the product's size, not the drawn height_fraction:
    # the recorded value is the one used, and sent back it reproduces the image.
    reference, mask = marker_reference()
    scene = np.full((256, 256, 3), (40, 150, 60), dtype=np.uint8)
    backend = CompositeBackend(SceneLibrary([Scene("shelves/a.png", "shelves", scene)]), 1.0)
    fixed = {**NEUTRAL_LIGHT, "scene": PHOTO_SCENE, "scene_key": "shelves/a.png", "shadow": "none"}
    fixed |= {"occluders": 0, "rotation_deg": 0.0, "perspective_x": 0.0, "perspective_y": 0.0}
    for seed, reference_framing in ((1, 0.0), (2, 0.4), (3, 0.6)):
        sample = backend.generate(
            marker_request(reference, mask, seed=seed, **fixed, reference_framing=reference_framing)
        )[0]
        rows = np.flatnonzero((sample.expected_mask > 0).any(axis=1))
        measured = (rows[-1] + 1 - rows[0]) / sample.expected_mask.shape[0]
        assert sample.parameters["height_fraction"] == pytest.approx(measured, abs=1.5 / 256)
        again = backend.generate(marker_request(reference, mask, seed=seed, **sample.parameters))[0]
        assert np.array_equal(again.image, sample.image) and again.parameters == sample.parameters
    # A pile records its copies' mean height, about a quarter of the frame for this bottle.
    pile = backend.generate(marker_request(reference, mask, seed=4, **fixed, arrangement="pile"))[0]
    assert 0.15 < pile.parameters["height_fraction"] < 0.4
    # Procedural scenes use the drawn (or given) value, and record it.
    studio = backend.generate(
        marker_request(
            reference, mask, seed=4, **{**fixed, "scene": "studio", "scene_key": ""}, height_fraction=0.5
        )
    )[0]
    assert studio.parameters["height_fraction"] == 0.5
