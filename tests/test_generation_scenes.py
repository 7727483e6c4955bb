"""The composite backend on real scene photos: exact expected mask under occlusion, scenes of any size,
corrupt, unreadable or badly named library files skipped (logged, counted, and the count scraped from
the running generator server's /metrics), a SKU never on its own series' photos (whatever the spelling
or script), replay."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import socket
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from schemas.events import GateCheck
from services.generator.server import load_scenes
from shared.config import ConfigError, load_settings
from shared.errors import ObjectMissing, TransientError
from shared.gate.checks import GateThresholds, evaluate
from shared.generation.backend import COLOUR_GAIN_KEY, GeneratedSample, GenerationRequest
from shared.generation.composite import PHOTO_SCENE, CompositeBackend, CompositeError, _Plan
from shared.generation.scenes import SCENES_SKIPPED, Scene, SceneLibrary
from shared.generation.settings import GenerationSettings
from shared.images import encode_png
from shared.store import FileStore, ObjectStore, S3Store
from tests.support.generation import NEUTRAL_LIGHT, marker_pixels, marker_reference, marker_request
from tests.support.store import ReadCountingStore
from tests.support.triton import TritonServerProcess

# Only what the product itself shows: no shadow, no scene matching, neutral light (see NEUTRAL_LIGHT).
PLAIN = {**NEUTRAL_LIGHT, "shadow": "none", "scene_match": 0.0}


def textured_scene(height: int, width: int, rgb: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A photo-like backdrop of one hue (stripes and noise), far from the magenta product."""
    rng = np.random.default_rng(seed)
    stripes = 20 * np.sin(np.arange(width) / 5.0)[None, :, None]
    pixels = np.array(rgb, dtype=np.float32) + stripes + rng.normal(0, 8, (height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def library(*scenes: tuple[str, np.ndarray]) -> SceneLibrary:
    return SceneLibrary(
        [Scene(key, key.split("/", 1)[0] if "/" in key else "", pixels) for key, pixels in scenes]
    )


def drift(
    sample: GeneratedSample, reference: np.ndarray, mask: np.ndarray, colour_gain: tuple[float, ...] | None
) -> GateCheck:
    """The gate's product_drift check of a composite whose matting is perfect (tolerance 5)."""
    _, checks = evaluate(
        predicted_mask=sample.expected_mask,
        expected_mask=sample.expected_mask,
        image=sample.image,
        reference_image=reference,
        reference_mask=mask,
        thresholds=GateThresholds(drift_tolerance=5.0),
        colour_gain=colour_gain,  # type: ignore[arg-type]
    )
    return checks[-1]


def photo_request(seed: int, **parameters: Any) -> GenerationRequest:
    reference, mask = marker_reference()
    return marker_request(reference, mask, seed=seed, scene=PHOTO_SCENE, **parameters)


@pytest.mark.parametrize("seed", range(4))
def test_photo_scene_expected_mask_is_exact_under_occlusion(seed: int) -> None:
    backend = CompositeBackend(library(("shelves/green.png", textured_scene(240, 320, (40, 150, 60)))), 1.0)
    key = {"scene_key": "shelves/green.png"}
    clear = backend.generate(photo_request(seed, occluders=0, **key, **PLAIN))[0]
    hidden = backend.generate(photo_request(seed, occluders=1, **key, **PLAIN))[0]
    assert hidden.parameters["scene"] == PHOTO_SCENE and hidden.parameters["occluders"] == 1
    clear_mask, hidden_mask = clear.expected_mask > 0, hidden.expected_mask > 0
    # Inside the mask, away from the anti-aliased outline, every pixel is the product's own colour;
    # outside it none is even close; the product's own pixels and the mask agree almost everywhere.
    for sample, mask in ((clear, clear_mask), (hidden, hidden_mask)):
        assert marker_pixels(sample.image)[ndimage.binary_erosion(mask, iterations=3)].all()
        close = marker_pixels(sample.image, tolerance=40)
        assert not close[~ndimage.binary_dilation(mask, iterations=1)].any()
        assert (close & mask).sum() / (close | mask).sum() > 0.93
    # The piece of scene in front hides part of the product: the mask loses exactly those pixels.
    assert not (hidden_mask & ~clear_mask).any()
    lost = clear_mask & ~hidden_mask
    assert 0.01 * clear_mask.sum() < lost.sum() < 0.5 * clear_mask.sum()
    inner_lost = ndimage.binary_erosion(lost, iterations=1)
    assert inner_lost.any() and not marker_pixels(hidden.image, tolerance=40)[inner_lost].any()


def test_colour_matched_product_is_one_colour_inside_its_mask() -> None:
    # With scene matching the product's colour moves towards the scene's (here: greener), but
    # uniformly: inside the mask every pixel has one and the same matched colour. (Magenta has a zero
    # channel, which matching leaves alone, so this product is a mauve.)
    mauve = np.array([200, 70, 160], dtype=np.uint8)
    reference, mask = marker_reference()
    reference[mask > 0] = mauve
    backend = CompositeBackend(library(("shelves/green.png", textured_scene(240, 320, (40, 150, 60)))), 1.0)
    parameters = {**PLAIN, "scene_match": 0.6, "occluders": 1, "scene_key": "shelves/green.png"}
    sample = backend.generate(marker_request(reference, mask, seed=2, scene=PHOTO_SCENE, **parameters))[0]
    inside = sample.image[ndimage.binary_erosion(sample.expected_mask > 0, iterations=3)].astype(np.int16)
    assert len(inside) > 500
    assert np.ptp(inside, axis=0).max() <= 1
    matched = inside.mean(axis=0)
    assert matched[1] / matched[0] > 1.1 * mauve[1] / mauve[0]  # greener than the reference product


def test_the_reported_colour_gain_is_what_the_scene_match_applied_and_the_gate_accepts_it() -> None:
    # The same colour-matched mauve product: the gain the backend reports is the change inside the
    # mask, and the gate's drift check, given it, sees the match as no drift at all.
    mauve = np.array([200, 70, 160], dtype=np.uint8)
    reference, mask = marker_reference()
    reference[mask > 0] = mauve
    backend = CompositeBackend(library(("shelves/green.png", textured_scene(240, 320, (40, 150, 60)))), 1.0)
    parameters = {**PLAIN, "scene_match": 0.6, "scene_key": "shelves/green.png"}
    sample = backend.generate(marker_request(reference, mask, seed=2, scene=PHOTO_SCENE, **parameters))[0]
    gain = tuple(sample.parameters[COLOUR_GAIN_KEY])
    assert len(gain) == 3 and gain[1] > 1.05 > 0.97 > gain[0]
    inside = sample.image[ndimage.binary_erosion(sample.expected_mask > 0, iterations=3)].mean(axis=0)
    assert np.allclose(inside, mauve * np.array(gain), atol=2.0)

    # (What is left is the anti-aliased outline, where the scene shows through.)
    undeclared, declared = drift(sample, reference, mask, None), drift(sample, reference, mask, gain)
    assert not undeclared.passed
    assert declared.passed and declared.value < undeclared.value / 3
    # Without scene matching there is nothing to declare.
    plain = backend.generate(
        marker_request(reference, mask, seed=2, scene=PHOTO_SCENE, **{**parameters, "scene_match": 0.0})
    )[0]
    assert plain.parameters[COLOUR_GAIN_KEY] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("aspect", [1, 10, 25, 50])
def test_a_long_thin_product_is_framed_as_its_reference_photo_frames_it(aspect: int) -> None:
    """Its height was floored at 5% of the frame: past about 10:1 the width limit took over, and a 25:1
    product filled 0.9 of the frame whatever its reference framing (0.4 here) said."""
    height, width = 200 // aspect, 200
    reference = np.full((height + 20, width + 20, 3), 255, np.uint8)
    reference[10 : 10 + height, 10 : 10 + width] = (200, 50, 50)
    mask = np.zeros(reference.shape[:2], np.uint8)
    mask[10 : 10 + height, 10 : 10 + width] = 255
    backend = CompositeBackend(library(("shelves/grey.png", np.full((100, 100, 3), 128, np.uint8))), 1.0)
    straight: dict[str, Any] = {
        "rotation_deg": 0.0,
        "perspective_x": 0.0,
        "perspective_y": 0.0,
        "occluders": 0,
    }
    framed: dict[str, Any] = {
        "scene": PHOTO_SCENE,
        "scene_key": "shelves/grey.png",
        "reference_framing": 0.4,
        "framing": 1.0,
    }
    sample = backend.generate(marker_request(reference, mask, seed=0, size=256, **framed, **straight))[0]
    shown = sample.expected_mask >= 128
    longer = max(np.flatnonzero(shown.any(axis=0)).size, np.flatnonzero(shown.any(axis=1)).size)
    assert abs(longer / 256 - 0.4) <= 0.03, longer / 256


def test_a_pile_of_a_thin_product_leaves_out_the_copies_too_small_to_place() -> None:
    """One copy shrunk below a pixel failed the whole variant ("the product vanished when placed:
    height_fraction is too small", a knob piles never use): 5 of 20 seeds of an 8 x 400 px product."""
    reference = np.full((420, 28, 3), 255, np.uint8)
    reference[10:410, 10:18] = (200, 50, 50)
    mask = np.zeros((420, 28), np.uint8)
    mask[10:410, 10:18] = 255
    backend = CompositeBackend(library(("shelves/grey.png", np.full((100, 100, 3), 128, np.uint8))), 1.0)
    for seed in range(20):
        pile: dict[str, Any] = {"scene": PHOTO_SCENE, "scene_key": "shelves/grey.png", "arrangement": "pile"}
        sample = backend.generate(marker_request(reference, mask, seed=seed, size=128, **pile))[0]
        assert (sample.expected_mask > 0).sum() > 20, seed


def test_a_procedural_scene_asked_for_is_the_same_augmentation_with_or_without_a_library() -> None:
    """With a library loaded, a variant that drew a photo was made a photo plan (fewer occluders, no cast
    shadow, a photo's key reported) before {"scene": "table"} set the scene back: over 200 seeds, no
    cast shadow at all and a photo key on every procedural image."""
    reference, mask = marker_reference()
    scenes = library(("shelves/green.png", textured_scene(240, 320, (40, 150, 60))))
    with_library, without = CompositeBackend(scenes, 1.0), CompositeBackend()
    for seed in range(12):
        asked = marker_request(reference, mask, seed=seed, scene="table")
        assert with_library.generate(asked)[0].parameters == without.generate(asked)[0].parameters, seed


@pytest.mark.parametrize("arrangement", ["single", "pile"])
def test_a_white_product_brightened_to_match_then_dimmed_is_declared_as_it_came_out(arrangement: str) -> None:
    """The match is capped at white per pixel before the light dims the frame: a white product asked x1.2
    got x1.0, and was declared x1.2 x 0.8 = 0.96 where it came out at 0.8 (the gate, which caps once,
    measured a drift of 6 of its 20 from the generator itself). The gain declared is the one applied."""
    reference, mask = marker_reference()
    reference[mask > 0] = (255, 255, 255)
    orange = np.full((240, 320, 3), (180, 120, 60), np.uint8)  # flat: the match is the whole story
    backend = CompositeBackend(library(("shelves/orange.png", orange)), 1.0)
    light = {"light_gain": 0.8, "light_gradient": 0.0, "colour_temperature": 0.0, "shadow": "none"}
    parameters: dict[str, Any] = {
        **PLAIN,
        **light,
        "scene_match": 0.6,
        "scene_key": "shelves/orange.png",
        "occluders": 0,
    }
    if arrangement == "pile":
        parameters["arrangement"] = "pile"
    sample = backend.generate(marker_request(reference, mask, seed=1, scene=PHOTO_SCENE, **parameters))[0]
    gain = np.array(sample.parameters[COLOUR_GAIN_KEY])
    inside = sample.image[ndimage.binary_erosion(sample.expected_mask > 0, iterations=2)].mean(axis=0)
    assert np.abs(np.minimum(255.0 * gain, 255.0) - inside).max() <= 2.0, (gain, inside)
    check = drift(sample, reference, mask, tuple(gain))
    assert check.passed and check.value < 2.0, check.message


@pytest.mark.parametrize("scene", ["studio", "shelf", PHOTO_SCENE])
@pytest.mark.parametrize("light_gain, colour_temperature", [(0.8, 1.0), (1.15, -1.0)])
def test_the_declared_colour_gain_includes_the_light_that_falls_on_the_product(
    scene: str, light_gain: float, colour_temperature: float
) -> None:
    # The frame's light (overall gain, gradient, colour temperature) dims and tints the product as
    # well as the scene, on purpose: the gain the backend declares must say so, on procedural scenes
    # too, or the gate measures the product against a reference it was never meant to match.
    mauve = np.array([200, 70, 160], dtype=np.uint8)
    reference, mask = marker_reference()
    reference[mask > 0] = mauve
    light = {
        "light_gain": light_gain,
        "light_gradient": 0.3,
        "light_angle_deg": 30.0,
        "colour_temperature": colour_temperature,
    }
    if scene == PHOTO_SCENE:
        scenes = library(("shelves/green.png", textured_scene(240, 320, (40, 150, 60))))
        backend = CompositeBackend(scenes, 1.0)
        parameters = {**PLAIN, **light, "scene_match": 0.6, "scene_key": "shelves/green.png"}
    else:
        backend, parameters = CompositeBackend(), {**PLAIN, **light, "scene_key": ""}
    sample = backend.generate(
        marker_request(reference, mask, seed=2, scene=scene, occluders=0, **parameters)
    )[0]
    gain = np.array(sample.parameters[COLOUR_GAIN_KEY])
    inside = sample.image[ndimage.binary_erosion(sample.expected_mask > 0, iterations=3)].mean(axis=0)
    # What the light did is in the declaration, well beyond the rounding that stays.
    assert np.abs(mauve * gain - inside).max() <= 3.0 < np.abs(mauve.astype(float) - inside).max() / 3
    check = drift(sample, reference, mask, tuple(gain))
    assert check.passed, check.message


@pytest.mark.parametrize("seed", range(3))
def test_a_pile_is_many_copies_and_its_expected_mask_is_every_visible_copy(seed: int) -> None:
    backend = CompositeBackend(library(("shelves/green.png", textured_scene(240, 320, (40, 150, 60)))), 1.0)
    parameters = {**PLAIN, "arrangement": "pile", "occluders": 0, "scene_key": "shelves/green.png"}
    sample = backend.generate(photo_request(seed, size=192, **parameters))[0]
    assert sample.parameters["arrangement"] == "pile"
    mask = sample.expected_mask > 0
    # Copies, together most of the frame below a band of scene at the top: one copy's longer side is
    # at most a third of the frame, so one copy of this bottle covers at most about 5% of it.
    assert 0.35 < mask.mean() < 0.9
    assert not mask[:10].any()
    # Inside the mask (away from outlines) the product's colour, but for a few pixels of the hairline
    # cracks where two copies' soft edges meet over the scene; outside it none of it.
    inner = ndimage.binary_erosion(mask, iterations=3)
    assert marker_pixels(sample.image)[inner].mean() > 0.995
    close = marker_pixels(sample.image, tolerance=40)
    assert close[inner].mean() > 0.999
    assert not close[~ndimage.binary_dilation(mask, iterations=1)].any()
    # Replays byte for byte, like every variant.
    reference, product_mask = marker_reference()
    replayed = json.loads(json.dumps(sample.parameters))
    replay = backend.generate(marker_request(reference, product_mask, seed=seed + 100, size=192, **replayed))[
        0
    ]
    assert encode_png(replay.image) == encode_png(sample.image)


def test_a_pile_on_a_procedural_scene_drawn_is_one_product_and_says_so() -> None:
    # The generator asks for piles before the scene is drawn: a variant that draws a procedural one
    # places one product and records it.
    reference, mask = marker_reference()
    sample = CompositeBackend().generate(
        marker_request(reference, mask, seed=3, occluders=0, arrangement="pile")
    )[0]
    assert sample.parameters["arrangement"] == "single"
    assert ndimage.label(sample.expected_mask > 0)[1] == 1


def test_a_pile_on_a_procedural_scene_asked_for_is_refused_here_and_at_start_up() -> None:
    # It was turned into one product without a word: another image than the request asked for.
    refusal = "arrangement 'pile' heaps copies on a photo scene, but scene 'studio' is procedural"
    reference, mask = marker_reference()
    with pytest.raises(CompositeError, match=refusal):
        CompositeBackend().generate(
            marker_request(reference, mask, seed=3, scene="studio", arrangement="pile")
        )
    with pytest.raises(ConfigError, match=refusal):
        load_settings(GenerationSettings, generation_parameters={"scene": "studio", "arrangement": "pile"})
    # A pile share puts piles on top of the knobs configured: with a procedural scene it can make none.
    with pytest.raises(ConfigError, match="PILE_SHARE asks for piles.*" + refusal):
        studio = {"scene": "studio"}
        load_settings(GenerationSettings, generation_pile_share=0.5, generation_parameters=studio)


def test_an_unknown_arrangement_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown arrangement 'stack'; known: single, pile"):
        CompositeBackend().generate(marker_request(*marker_reference(), seed=3, arrangement="stack"))


def test_a_forced_photo_scene_draws_a_photo_for_every_variant_whatever_the_share() -> None:
    """{"scene": "photo"} without a scene_key: before, a variant whose roll fell on a procedural scene
    (half of them at share 0.5) kept scene_key "" and was refused, and with it the whole SKU."""
    scenes = library(
        ("shelf/a", textured_scene(96, 96, (40, 120, 40))), ("crate/b", textured_scene(96, 96, (90, 60, 30)))
    )
    reference, mask = marker_reference()
    for share in (0.0, 0.5):
        samples = CompositeBackend(scenes, photo_share=share).generate(
            marker_request(reference, mask, seed=3, n=8, scene=PHOTO_SCENE)
        )
        assert {sample.parameters["scene"] for sample in samples} == {PHOTO_SCENE}
        assert {sample.parameters["scene_key"] for sample in samples} <= {"shelf/a", "crate/b"}
    # No scene the SKU may use (every one tagged like it): refused, saying why.
    own = library(("shelf/a", textured_scene(96, 96, (40, 120, 40))))
    with pytest.raises(CompositeError, match="every scene in the library is tagged like this SKU"):
        CompositeBackend(own, photo_share=0.5).generate(
            dataclasses.replace(
                marker_request(reference, mask, seed=3, n=2, scene=PHOTO_SCENE), series="shelf"
            )
        )


def test_a_scene_smaller_than_the_canvas_is_scaled_up() -> None:
    backend = CompositeBackend(library(("tiny.png", textured_scene(15, 20, (60, 60, 170)))), 1.0)
    samples = backend.generate(photo_request(3, n=4, size=128, **PLAIN))
    assert {s.parameters["scene_key"] for s in samples} == {"tiny.png"}
    for sample in samples:
        assert sample.image.shape == (128, 128, 3) and sample.expected_mask.shape == (128, 128)
        mask = sample.expected_mask > 0
        assert 0.05 < mask.mean() < 0.95
        assert marker_pixels(sample.image)[ndimage.binary_erosion(mask, iterations=3)].all()
        assert not marker_pixels(sample.image, tolerance=40)[~ndimage.binary_dilation(mask)].any()


def skipped_total(reason: str | None = None) -> float:
    """Scenes skipped so far (this process), all or those of one ``reason`` label."""
    return sum(
        sample.value
        for metric in SCENES_SKIPPED.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and reason in (None, sample.labels["reason"])
    )


def write_scenes(folder: Path, *keys: str) -> None:
    """A small decodable photo under each key (folders made as needed)."""
    for number, key in enumerate(keys):
        path = folder.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(textured_scene(30, 40, (40, 150, 60), number)))


def test_corrupt_scene_files_are_skipped_with_a_logged_reason_and_a_metric(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = encode_png(textured_scene(60, 80, (40, 150, 60)))
    (tmp_path / "shelves").mkdir()
    (tmp_path / "shelves" / "good.png").write_bytes(good)
    (tmp_path / "shelves" / "garbage.jpg").write_bytes(b"this is not a photo at all")
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 3])
    (tmp_path / "empty.webp").write_bytes(b"")
    before = skipped_total()
    with caplog.at_level(logging.WARNING, logger="shared.generation.scenes"):
        scenes = SceneLibrary.load(FileStore(tmp_path))
    assert len(scenes) == 1 and "shelves/good.png" in scenes
    assert set(scenes.skipped) == {"shelves/garbage.jpg", "truncated.png", "empty.webp"}
    assert skipped_total() - before == 3
    logged = [record.getMessage() for record in caplog.records if "skipped" in record.getMessage()]
    assert len(logged) == 3
    for key, reason in scenes.skipped.items():
        assert reason and any(key in line and reason in line for line in logged), (key, reason, logged)
    # The backend works on what is left.
    sample = CompositeBackend(scenes, 1.0).generate(photo_request(1, size=96))[0]
    assert sample.parameters["scene_key"] == "shelves/good.png"


def test_a_heic_scene_is_skipped_with_what_to_do(tmp_path: Path) -> None:
    # Before: "not_a_photo_suffix: .heic (scene photos are ...)", where ingest and evaluate say to
    # export an iPhone's photo as JPEG or PNG.
    Image.fromarray(textured_scene(30, 40, (40, 150, 60))).save(tmp_path / "shelf.png")
    (tmp_path / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    scenes = SceneLibrary.load(FileStore(tmp_path))
    assert scenes.keys_for(None) == ["shelf.png"]
    assert scenes.skipped == {
        "IMG_0001.HEIC": "not_a_photo_suffix: .heic: HEIC/HEIF is not read here; export it as JPEG or PNG"
    }


def test_scene_photos_are_what_ingest_reads_and_hidden_files_are_left_out_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before, .tif/.tiff/.bmp/.jfif/.jpe scenes were ignored without a word, while macOS's "._x.jpg"
    # and "__MACOSX/..." files were logged as WARNINGs and counted as not_an_image.
    for name, fmt in (
        ("shelves/a.tif", "TIFF"),
        ("shelves/b.TIFF", "TIFF"),
        ("c.bmp", "BMP"),
        ("d.jfif", "JPEG"),
        ("e.JPE", "JPEG"),
        ("f.png", "PNG"),
    ):
        path = tmp_path.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(textured_scene(30, 40, (40, 150, 60))).save(path, format=fmt)
    fork = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "
    (tmp_path / "shelves" / "._a.tif").write_bytes(fork)
    (tmp_path / "__MACOSX" / "shelves").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "shelves" / "._a.tif").write_bytes(fork)
    (tmp_path / ".thumbnails").mkdir()
    (tmp_path / ".thumbnails" / "f.png").write_bytes(b"not decodable")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tmp_path / "README.txt").write_text("not a scene")
    Image.fromarray(textured_scene(30, 40, (40, 150, 60))).save(tmp_path / "anim.gif", format="GIF")
    before = {reason: skipped_total(reason) for reason in ("not_a_photo_suffix", "not_an_image")}
    with caplog.at_level(logging.WARNING, logger="shared.generation.scenes"):
        scenes = SceneLibrary.load(FileStore(tmp_path))
    assert scenes.keys_for(None) == ["c.bmp", "d.jfif", "e.JPE", "f.png", "shelves/a.tif", "shelves/b.TIFF"]
    assert set(scenes.skipped) == {"README.txt", "anim.gif"}
    assert scenes.skipped["README.txt"].startswith("not_a_photo_suffix: .txt (scene photos are .bmp, ")
    assert scenes.skipped["anim.gif"].startswith("not_a_photo_suffix: .gif")
    assert skipped_total("not_a_photo_suffix") - before["not_a_photo_suffix"] == 2
    assert skipped_total("not_an_image") == before["not_an_image"], "hidden files are not counted"
    logged = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(logged) == 2 and all("README.txt" in line or "anim.gif" in line for line in logged), logged


def test_a_library_with_no_usable_photo_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(ValueError, match=r"no usable scene photo under file://.* \(1 skipped\).*SCENES_URI"):
        SceneLibrary.load(FileStore(tmp_path))


@pytest.mark.slow
def test_the_generator_server_serves_the_skipped_scene_count_on_its_own_metrics(tmp_path: Path) -> None:
    # `skuforge serve generator` loads the scenes: what it skipped must be scrapeable from that
    # process (its own /metrics, not Triton's), with the reason in its log.
    library = tmp_path / "scenes"
    (library / "shelves").mkdir(parents=True)
    (library / "shelves" / "good.png").write_bytes(encode_png(textured_scene(60, 80, (40, 150, 60))))
    # A JPEG's signature, then garbage where its header and pixels should be.
    (library / "shelves" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbled where the pixels should be")
    server = TritonServerProcess(tmp_path, extra_env={"SKUFORGE_SCENES_URI": f"file://{library}"})
    server.start()
    try:
        metrics = server.server_metrics()
    finally:
        server.stop()
    assert 'skuforge_generator_scenes_skipped_total{reason="corrupt"} 1.0' in metrics.splitlines()
    assert f"scene file://{library}/shelves/corrupt.jpg skipped: corrupt" in server.log_path.read_text()


@pytest.mark.slow
def test_through_triton_a_sku_never_gets_a_scene_tagged_like_its_category_or_name(tmp_path: Path) -> None:
    # The library left out scenes tagged like a category or product name, but the Triton request named
    # only the series: in production a lemon without a series landed on the pile of lemons of `Lemon/`.
    from services.generator.client import TritonGenerator
    from services.generator.protocol import VariantRequest, VariantResult

    library = tmp_path / "scenes"
    for key, rgb in (("Lemon/a.png", (200, 200, 40)), ("Milk/b.png", (40, 40, 150))):
        (library / key).parent.mkdir(parents=True, exist_ok=True)
        (library / key).write_bytes(encode_png(textured_scene(60, 80, rgb)))
    reference, mask = marker_reference()
    server = TritonServerProcess(tmp_path, extra_env={"SKUFORGE_SCENES_URI": f"file://{library}"})
    server.start()
    try:
        scenes_of: dict[tuple[str, tuple[str, ...]], set[str]] = {}
        for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
            client = TritonGenerator(url, protocol=protocol, concurrency=2)
            try:
                for own_names in ((), ("Lemon", "Amalfi Lemons")):
                    variants = [
                        VariantRequest(
                            reference=reference,
                            mask=mask,
                            prompt="a photo of a lemon",
                            negative_prompt="",
                            seed=seed,
                            parameters_json="{}",
                            adapter_id=None,
                            series=None,
                            size=64,
                            own_names=own_names,
                        )
                        for seed in range(12)
                    ]
                    results = client.generate("composite", variants)
                    assert all(isinstance(result, VariantResult) for result in results)
                    scenes_of[protocol, own_names] = {
                        json.loads(result.parameters_json)["scene_key"]
                        for result in results
                        if isinstance(result, VariantResult)
                    }
            finally:
                client.close()
    finally:
        server.stop()
    for protocol in ("grpc", "http"):
        assert scenes_of[protocol, ()] == {"Lemon/a.png", "Milk/b.png"}, protocol
        assert scenes_of[protocol, ("Lemon", "Amalfi Lemons")] == {"Milk/b.png"}, protocol


def test_unreadable_and_badly_named_scene_files_are_skipped_and_the_rest_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_scenes(tmp_path, "shelves/good.png", "top.png")
    os.symlink(tmp_path / "shelves" / "loop.jpg", tmp_path / "shelves" / "loop.jpg")  # ELOOP on read
    (tmp_path / "back\\slash.jpg").write_bytes((tmp_path / "top.png").read_bytes())  # no valid key
    (tmp_path / "new\nline.png").write_bytes((tmp_path / "top.png").read_bytes())
    before = {reason: skipped_total(reason) for reason in ("bad_key", "unreadable")}
    with caplog.at_level(logging.WARNING, logger="shared.generation.scenes"):
        scenes = SceneLibrary.load(FileStore(tmp_path))
    assert sorted(scenes.keys_for(None)) == ["shelves/good.png", "top.png"]
    assert scenes.skipped == {
        "shelves/loop.jpg": "unreadable: Too many levels of symbolic links",
        "back\\slash.jpg": "bad_key: key 'back\\\\slash.jpg' contains a backslash",
        "new\nline.png": (
            "bad_key: key 'new\\nline.png' contains a control character (U+000A at character 4); "
            "write it without newlines, tabs or escape codes"
        ),
    }
    assert skipped_total("bad_key") - before["bad_key"] == 2
    assert skipped_total("unreadable") - before["unreadable"] == 1
    logged = [record.getMessage() for record in caplog.records if "skipped" in record.getMessage()]
    for key, reason in scenes.skipped.items():
        # A refused key is logged as its repr (what makes it odd shows), the others as their URI.
        shown = repr(key) if reason.startswith("bad_key") else f"{tmp_path}/{key}"
        assert any(shown in line and reason in line for line in logged), (key, logged)


def _make_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))  # the file stays when the socket is closed


@pytest.mark.parametrize("make", [os.mkfifo, _make_socket], ids=["pipe", "socket"])
def test_a_pipe_named_like_a_scene_photo_is_skipped_not_waited_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make: Callable[[Path], None]
) -> None:
    # Opened to be read, a named pipe waits for a writer that never comes: the generator's start-up
    # (and evaluate's scene check, which reads the library's files the same way) hung on it for good.
    # The file store refuses it (and a socket) unopened; the reason is the store's, passed on.
    write_scenes(tmp_path, "shelves/good.png")
    make(tmp_path / "shelves" / "pipe.jpg")
    before = skipped_total("unreadable")
    with caplog.at_level(logging.WARNING, logger="shared.generation.scenes"):
        scenes = SceneLibrary.load(FileStore(tmp_path))
    assert scenes.keys_for() == ["shelves/good.png"]
    reason = "unreadable: not a regular file (a pipe, socket or device)"
    assert scenes.skipped == {"shelves/pipe.jpg": reason}
    assert skipped_total("unreadable") - before == 1
    assert any(f"{tmp_path}/shelves/pipe.jpg skipped: {reason}" in r.getMessage() for r in caplog.records)


def test_a_scene_linked_outside_the_library_is_skipped_saying_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The store refuses a symlink leading out of its root; the skip said only "unreadable: BadInput",
    # the exception's type, which left the reader to guess what was wrong with a photo that opens fine.
    scenes_folder = tmp_path / "scenes"
    write_scenes(scenes_folder, "shelves/good.png")
    write_scenes(tmp_path, "elsewhere.png")
    os.symlink(tmp_path / "elsewhere.png", scenes_folder / "shelves" / "linked.png")
    before = skipped_total("unreadable")
    with caplog.at_level(logging.WARNING, logger="shared.generation.scenes"):
        scenes = SceneLibrary.load(FileStore(scenes_folder))
    assert scenes.keys_for() == ["shelves/good.png"]
    reason = "unreadable: 'shelves/linked.png' resolves outside the store root"
    assert scenes.skipped == {"shelves/linked.png": reason}
    assert skipped_total("unreadable") - before == 1
    assert any(
        f"{scenes_folder}/shelves/linked.png skipped: {reason}" in record.getMessage()
        for record in caplog.records
    )


def test_a_nas_thumbnail_folder_is_no_scene(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Synology keeps "@eaDir" (resized copies of each photo) in every folder it shares: they loaded as
    # scenes, the top-level one under the tag "eadir", each shelf photo then drawn two or three times
    # as often and at thumbnail resolution. Left out as skuforge evaluate leaves them out, said once.
    write_scenes(
        tmp_path,
        "shelves/good.png",
        "shelves/@eaDir/good.png/SYNOPHOTO_THUMB_M.png",
        "@eaDir/top.png/SYNOPHOTO_THUMB_S.jpg",
        "top.png",
    )
    before = skipped_total()
    with caplog.at_level(logging.INFO, logger="shared.generation.scenes"):
        scenes = SceneLibrary.load(FileStore(tmp_path))
    assert scenes.keys_for(None) == ["shelves/good.png", "top.png"]
    assert scenes.skipped == {} and skipped_total() == before, "no file of the library is bad"
    [said] = [record.getMessage() for record in caplog.records if "@eaDir" in record.getMessage()]
    assert said.startswith("scene library: 2 file(s) in NAS thumbnail folders (@eaDir) left out")


def test_a_scene_over_the_byte_limit_is_skipped_by_its_size_unread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It was read whole (get_bytes), and only then refused by decode_image: a 3 GB file in the
    # library was 3 GB in the generator's memory at start-up, past SKUFORGE_MAX_IMAGE_BYTES.
    write_scenes(tmp_path, "shelves/good.png")
    big = encode_png(textured_scene(300, 400, (40, 150, 60)))
    (tmp_path / "shelves" / "huge.png").write_bytes(big)
    limit = (tmp_path / "shelves" / "good.png").stat().st_size + 1
    assert len(big) > limit
    store = ReadCountingStore(tmp_path)
    before = skipped_total("too_large_bytes")
    with caplog.at_level(logging.WARNING, logger="shared.generation.scenes"):
        scenes = SceneLibrary.load(store, max_bytes=limit)
    assert scenes.keys_for(None) == ["shelves/good.png"]
    assert scenes.skipped == {
        "shelves/huge.png": f"too_large_bytes: {len(big)} bytes; at most {limit} are allowed"
    }
    assert store.keys_read == ["shelves/good.png"], "the large file is refused by its size, unread"
    assert skipped_total("too_large_bytes") - before == 1
    assert any("shelves/huge.png" in record.getMessage() for record in caplog.records)


def test_an_s3_key_the_store_refuses_is_skipped(s3_store: ObjectStore) -> None:
    assert isinstance(s3_store, S3Store)
    photo = encode_png(textured_scene(30, 40, (40, 150, 60)))
    s3_store.put_bytes("shelves/good.png", photo, "image/png")
    # S3 takes a doubled '/' (a careless upload script); the store refuses such a key.
    s3_store.client.put_object(Bucket=s3_store.bucket, Key="pfx/shelves//a.png", Body=photo)
    before = skipped_total("bad_key")
    scenes = SceneLibrary.load(s3_store)
    assert len(scenes) == 1 and "shelves/good.png" in scenes
    assert list(scenes.skipped) == ["shelves//a.png"]
    assert scenes.skipped["shelves//a.png"].startswith("bad_key: key 'shelves//a.png' has an empty segment")
    assert skipped_total("bad_key") - before == 1


def test_an_s3_scene_over_the_byte_limit_is_skipped_by_its_size(s3_store: ObjectStore) -> None:
    small = encode_png(textured_scene(30, 40, (40, 150, 60)))
    big = encode_png(textured_scene(300, 400, (40, 150, 60)))
    s3_store.put_bytes("shelves/good.png", small, "image/png")
    s3_store.put_bytes("shelves/huge.png", big, "image/png")
    scenes = SceneLibrary.load(s3_store, max_bytes=len(small))
    assert scenes.keys_for(None) == ["shelves/good.png"]
    assert scenes.skipped == {
        "shelves/huge.png": f"too_large_bytes: {len(big)} bytes; at most {len(small)} are allowed"
    }


class RemoteStoreGoingDown(ObjectStore):
    """A remote store that lists its photos, then stops answering at ``down_at``."""

    base_uri = "s3://scenes/library"

    def __init__(self, photos: dict[str, bytes], down_at: str) -> None:
        self.photos, self.down_at = photos, down_at

    def _read(self, key: str) -> bytes:
        if key == self.down_at:
            raise TransientError(f"S3 unreachable for {self.uri_for(key)}: connection refused")
        if key not in self.photos:
            raise ObjectMissing(self.uri_for(key))
        return self.photos[key]

    def _list(self, prefix: str) -> Iterator[str]:
        return iter(sorted(key for key in self.photos if key.startswith(prefix)))

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        raise NotImplementedError

    def _exists(self, key: str) -> bool:
        return key in self.photos

    def _delete(self, key: str) -> None:
        raise NotImplementedError


def test_a_remote_store_that_goes_down_mid_load_fails_start_up() -> None:
    photo = encode_png(textured_scene(30, 40, (40, 150, 60)))
    store = RemoteStoreGoingDown({"shelves/a.png": photo, "shelves/b.png": photo}, down_at="shelves/b.png")
    with pytest.raises(TransientError) as failed:
        SceneLibrary.load(store)
    assert str(failed.value).startswith("scene library s3://scenes/library unreadable at shelves/b.png")


def test_a_sku_never_gets_a_scene_tagged_like_its_series() -> None:
    scenes = library(
        ("cola/a.png", textured_scene(40, 40, (150, 40, 40), 1)),
        ("cola/b.png", textured_scene(40, 40, (150, 40, 40), 2)),
        ("water/c.png", textured_scene(40, 40, (40, 40, 150), 3)),
        ("d.png", textured_scene(40, 40, (40, 150, 40), 4)),
    )
    reference, mask = marker_reference()
    backend = CompositeBackend(scenes, 1.0)
    cola = dataclasses.replace(marker_request(reference, mask, seed=4, n=24, size=64), series="cola")
    used = {s.parameters["scene_key"] for s in backend.generate(cola)}
    assert used == {"water/c.png", "d.png"}
    anyone = dataclasses.replace(cola, series=None)
    assert {s.parameters["scene_key"] for s in backend.generate(anyone)} >= {"cola/a.png", "cola/b.png"}
    # When every scene is the SKU's own, its variants go on procedural scenes instead.
    only_cola = CompositeBackend(library(("cola/a.png", textured_scene(40, 40, (150, 40, 40)))), 1.0)
    assert {s.parameters["scene"] for s in only_cola.generate(cola)} & {PHOTO_SCENE} == set()


def test_a_scene_key_asked_for_that_is_tagged_like_the_sku_is_refused_not_served() -> None:
    # Drawn keys left out the SKU's own photos, but a key asked for (a replay, or scene_key in
    # SKUFORGE_GENERATION_PARAMETERS for every SKU) was served as asked: a lemon on a pile of lemons.
    scenes = library(
        ("lemon/a.png", textured_scene(40, 40, (150, 150, 40), 1)),
        ("shelves/b.png", textured_scene(40, 40, (40, 40, 150), 2)),
    )
    reference, mask = marker_reference()
    backend = CompositeBackend(scenes, 1.0)
    asked = marker_request(reference, mask, seed=4, n=2, size=64, scene_key="lemon/a.png")
    for own in ({"series": "Lemon"}, {"own_names": ("Fruit", "lemon")}):
        with pytest.raises(CompositeError, match=r"scene_key 'lemon/a\.png' is tagged like this SKU's"):
            backend.generate(dataclasses.replace(asked, **own))
    # Another SKU gets it, and the SKU gets a photo of another kind.
    assert {s.parameters["scene_key"] for s in backend.generate(asked)} == {"lemon/a.png"}
    shelves = dataclasses.replace(
        asked, series="Lemon", parameters={**asked.parameters, "scene_key": "shelves/b.png"}
    )
    assert {s.parameters["scene_key"] for s in backend.generate(shelves)} == {"shelves/b.png"}


def test_a_sku_never_gets_a_scene_tagged_like_its_category_or_name_even_without_a_series(
    tmp_path: Path,
) -> None:
    # The samples' folders are named like the products: a lemon must not land on a pile of lemons.
    write_scenes(
        tmp_path, "Lemon/a.png", "lemons/b.png", "Lemon Tea/c.png", "Fruit/d.png", "Banana/e.png", "f.png"
    )
    scenes = SceneLibrary.load(FileStore(tmp_path))
    assert scenes.keys_for("", "Fruit", "LEMON") == [
        "Banana/e.png",
        "Lemon Tea/c.png",
        "f.png",
        "lemons/b.png",
    ]
    # Whole tags only: "Lemon" is not "lemons" nor "Lemon Tea"; blank names exclude nothing.
    assert scenes.keys_for(None, "", "  ", "Lemo") == scenes.keys_for() == scenes.keys_for(None)
    assert len(scenes.keys_for()) == 6


def test_excluding_a_sku_s_own_kind_changes_no_draw_of_any_other_sku() -> None:
    # Only the scene key of a variant that would have gone on its own kind's photo changes: the plan
    # takes the same draws in the same order, so every other variant (and every other SKU) is unchanged.
    scenes = library(
        ("lemon/a.png", textured_scene(40, 40, (200, 200, 40), 1)),
        ("banana/b.png", textured_scene(40, 40, (200, 180, 40), 2)),
        ("shelves/c.png", textured_scene(40, 40, (40, 40, 150), 3)),
    )
    changed = 0
    for seed in range(40):

        def plan(*own_names: str | None, seed: int = seed) -> _Plan:
            rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
            return _Plan.draw(rng, scenes, 0.7, own_names)

        anyone, lemon, other = plan(), plan("", "Fruit", "Lemon"), plan(None, "Dairy", "Arla Milk")
        assert other == anyone
        assert lemon.scene_key != "lemon/a.png"
        if anyone.scene_key == "lemon/a.png":
            changed += 1
            assert lemon.scene_key in {"banana/b.png", "shelves/c.png"}
        assert dataclasses.replace(lemon, scene_key=anyone.scene_key) == anyone
    assert changed > 0


@pytest.mark.parametrize(
    ("series", "folder"),
    [
        ("Fizzo Zero", "fizzo-zero"),
        ("Café Crème", "cafe-creme"),
        ("Café Crème", "CAFE_CREME"),
        ("Café Crème", unicodedata.normalize("NFD", "Café Crème")),  # as macOS writes the name
        ("Dr Pepper's", "Dr Peppers"),
        ("可口可乐", "可口可乐"),
        ("Кока-Кола", "кока кола"),
        ("★★", "★★"),  # no letter or digit at all: still its own folder
    ],
)
def test_a_series_matches_its_folder_whatever_the_case_accents_punctuation_or_script(
    tmp_path: Path, series: str, folder: str
) -> None:
    write_scenes(tmp_path, f"{folder}/own.png", "other/a.png", "top.png")
    scenes = SceneLibrary.load(FileStore(tmp_path))
    assert scenes.keys_for(series) == ["other/a.png", "top.png"]
    assert len(scenes.keys_for(None)) == 3


def test_similar_but_different_series_still_share_scenes(tmp_path: Path) -> None:
    write_scenes(tmp_path, "Cola/a.png", "Cola Zero/b.png", "可口可乐/c.png", "Кока-Кола/d.png")
    scenes = SceneLibrary.load(FileStore(tmp_path))
    assert scenes.keys_for("cola") == ["Cola Zero/b.png", "Кока-Кола/d.png", "可口可乐/c.png"]
    assert scenes.keys_for("可口") == scenes.keys_for(None)


def test_a_sku_of_a_non_latin_series_never_gets_its_own_folders_scenes(tmp_path: Path) -> None:
    write_scenes(tmp_path, "可口可乐/a.png", "可口可乐/b.png", "Кока-Кола/c.png", "d.png")
    backend = CompositeBackend(SceneLibrary.load(FileStore(tmp_path)), 1.0)
    reference, mask = marker_reference()
    sku = dataclasses.replace(marker_request(reference, mask, seed=4, n=24, size=64), series="可口可乐")
    assert {s.parameters["scene_key"] for s in backend.generate(sku)} == {"Кока-Кола/c.png", "d.png"}
    cyrillic = dataclasses.replace(sku, series="Кока-Кола".upper())
    assert {s.parameters["scene_key"] for s in backend.generate(cyrillic)} == {
        "可口可乐/a.png",
        "可口可乐/b.png",
        "d.png",
    }


def test_photo_variant_parameters_replay_the_image_byte_for_byte() -> None:
    scenes = library(
        ("shelves/a.png", textured_scene(120, 200, (90, 120, 60), 1)),
        ("baskets/b.png", textured_scene(200, 120, (160, 120, 60), 2)),
    )
    backend = CompositeBackend(scenes, 1.0)
    reference, mask = marker_reference()
    samples = backend.generate(marker_request(reference, mask, seed=21, n=6, size=128))
    assert {s.parameters["scene"] for s in samples} == {PHOTO_SCENE}
    assert len({s.parameters["scene_key"] for s in samples}) == 2
    for sample in samples:
        # Parameters travel as JSON (the Triton model's output), then come back as a request.
        parameters = json.loads(json.dumps(sample.parameters))
        replay = backend.generate(marker_request(reference, mask, seed=999, n=1, size=128, **parameters))[0]
        assert encode_png(replay.image) == encode_png(sample.image)
        assert np.array_equal(replay.expected_mask, sample.expected_mask)
        assert replay.parameters == sample.parameters  # the measured colour gain included


def test_scenes_uri_in_the_generator_settings_builds_the_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("shelves/one.jpg", "hands/two.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(textured_scene(700, 900, (120, 100, 80))).save(
            buffer, format="PNG" if name.endswith("png") else "JPEG"
        )
        (tmp_path / name).write_bytes(buffer.getvalue())
    monkeypatch.setenv("SKUFORGE_SCENES_URI", f"file://{tmp_path}")
    monkeypatch.setenv("SKUFORGE_SCENES_MAX_SIDE_PX", "256")
    generation = load_settings(GenerationSettings)
    scenes = load_scenes(generation, load_settings())
    assert scenes is not None and len(scenes) == 2
    assert scenes.get("shelves/one.jpg").tag == "shelves"
    assert max(scenes.get("hands/two.png").pixels.shape[:2]) == 256
    # The operator's image limits hold for scenes too: here 700 x 900 is over the pixel limit, so the
    # PNG is skipped and the JPEG is decoded at 1/4 of its size (shared.images.decode_image).
    before = skipped_total("too_many_pixels")
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "three.png").write_bytes(encode_png(textured_scene(20, 20, (40, 150, 60))))
    limited = load_scenes(generation, load_settings(max_image_pixels=100_000))
    assert limited is not None and list(limited.keys_for(None)) == ["shelves/one.jpg", "small/three.png"]
    assert limited.get("shelves/one.jpg").pixels.shape[:2] == (175, 225)
    assert skipped_total("too_many_pixels") == before + 1
    monkeypatch.delenv("SKUFORGE_SCENES_URI")
    assert load_scenes(load_settings(GenerationSettings), load_settings()) is None


# A Triton model as the previous skuforge declared it: the same callable, no optional input.
_OLDER_SERVER = """
import sys
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
from services.generator.protocol import INPUTS, OUTPUTS, model_name
from services.generator.server import GenerationModel, put_libpython_first
from shared.generation.composite import CompositeBackend
from shared.generation.scenes import SceneLibrary
from shared.store import open_store

put_libpython_first()
grpc_port, http_port, metrics_port, scenes = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
library = SceneLibrary.load(open_store(scenes, uri_from="the test"))
config = TritonConfig(grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port, exit_on_error=True)
with Triton(config=config) as triton:
    triton.bind(
        model_name=model_name("composite"),
        infer_func=GenerationModel(CompositeBackend(library, 1.0)),
        inputs=[Tensor(name=n, dtype=dtype, shape=shape) for n, dtype, shape in INPUTS],
        outputs=[Tensor(name=n, dtype=dtype, shape=shape) for n, dtype, shape in OUTPUTS],
        config=ModelConfig(max_batch_size=8),
        strict=True,
    )
    triton.serve()
"""


@pytest.mark.slow
def test_a_new_stage_is_served_by_an_older_triton_mid_rollout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Stages and Triton roll out apart; with several Triton replicas the metadata and the request may
    # reach different versions. An older model refuses an input it does not declare.
    import signal
    import subprocess
    import sys
    import time

    import tritonclient.grpc as grpcclient

    from devstack.broker import free_port
    from services.generator.client import TritonGenerator
    from services.generator.protocol import VariantRequest, VariantResult, model_name

    library = tmp_path / "scenes"
    (library / "Lemon").mkdir(parents=True)
    (library / "Lemon" / "a.png").write_bytes(encode_png(textured_scene(60, 80, (200, 200, 40))))
    ports = [free_port() for _ in range(3)]
    log = (tmp_path / "older.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-c", _OLDER_SERVER, *map(str, ports), f"file://{library}"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    reference, mask = marker_reference()
    variant = VariantRequest(
        reference=reference,
        mask=mask,
        prompt="a photo of a lemon",
        negative_prompt="",
        seed=3,
        parameters_json="{}",
        adapter_id=None,
        series=None,
        size=64,
        own_names=("Lemon",),
    )
    try:
        ready = grpcclient.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "older.log").read_text()[-2000:]
            with contextlib.suppress(Exception):
                if ready.is_model_ready(model_name("composite")):
                    break
            assert time.monotonic() < deadline, "the older Triton did not start"
            time.sleep(0.3)
        for protocol, port in (("grpc", ports[0]), ("http", ports[1])):
            client = TritonGenerator(f"127.0.0.1:{port}", protocol=protocol, concurrency=1)
            try:
                with caplog.at_level(logging.WARNING):
                    (declared,) = client.generate("composite", [variant])  # the metadata says: older
                    (refused,) = [client._infer_one("composite", variant, frozenset({"own_names"}))]
            finally:
                client.close()
            assert isinstance(declared, VariantResult) and isinstance(refused, VariantResult), protocol
            assert np.array_equal(declared.image, refused.image)
        assert "does not declare own_names" in caplog.text
        assert "refused the optional inputs ['own_names']; sent again without them" in caplog.text
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
