"""Composite backend review 42: what a photo-scene variant records is what its image has."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from shared.generation.backend import GenerationRequest
from shared.generation.composite import CompositeBackend, CompositeError
from shared.generation.scenes import Scene, SceneLibrary
from shared.photos import PHOTO_FILE_SUFFIXES
from tests.support.generation import red_box_request


def _photo_backend() -> CompositeBackend:
    pixels = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    return CompositeBackend(SceneLibrary([Scene("shelves/a.jpg", "shelves", pixels)]), 1.0)


def test_a_photo_scene_records_the_one_occluder_it_places_however_many_were_asked() -> None:
    # A photo scene puts one piece of itself in front of the product: occluders 2 and 4 drew the image
    # of 1 and recorded 2 and 4, so the lineage named occluders no pixel had.
    backend = _photo_backend()
    one, two, four = (backend.generate(red_box_request(scene="photo", occluders=k))[0] for k in (1, 2, 4))
    assert np.array_equal(two.image, one.image) and np.array_equal(four.image, one.image)
    assert one.parameters["occluders"] == two.parameters["occluders"] == four.parameters["occluders"] == 1
    # A record made before (occluders 2) is not refused: it replays the same image, and records 1.
    [replayed] = backend.generate(
        replace(red_box_request(), seed=99, parameters={**one.parameters, "occluders": 2})
    )
    assert np.array_equal(replayed.image, one.image)
    assert replayed.parameters == one.parameters
    # None asked for is none placed; a procedural scene still places as many as asked.
    [none] = backend.generate(red_box_request(scene="photo", occluders=0))
    assert none.parameters["occluders"] == 0 and not np.array_equal(none.image, one.image)
    [table] = backend.generate(red_box_request(scene="table", occluders=2))
    assert table.parameters["occluders"] == 2


def test_a_product_all_hidden_by_what_stands_in_front_is_refused_not_drawn_with_an_empty_mask() -> None:
    # A scattered mask (a quarter of its pixels) comes out as a pixel or two at half coverage, and the
    # piece of the scene in front, sized to that, hid them: the variant was an image with an empty
    # expected mask, stored and sent to the gate as one of the product.
    scattered = np.random.default_rng(0).random((114, 30)) < 0.27
    mask = np.where(scattered, 255, 0).astype(np.uint8)
    reference = np.full((114, 30, 3), 200, np.uint8)
    backend = _photo_backend()
    refused = 0
    for seed in range(6):
        parameters = {"occluders": 1, "reference_framing": 0.2}
        request = GenerationRequest(reference, mask, "", "", seed=seed, n=1, parameters=parameters, size=128)
        try:
            [sample] = backend.generate(request)
        except CompositeError as refusal:
            assert "hides all of it" in str(refusal) and "check the reference mask" in str(refusal)
            refused += 1
            continue
        assert sample.expected_mask.any()
    assert refused >= 1


def test_deploys_scene_library_section_names_every_photo_file_the_library_reads() -> None:
    # It said "JPEG, PNG or WebP photos": an operator with .tif or .bmp shop photos read that they would
    # be skipped, though the library reads every file ingest takes as a photo.
    deploy = (Path(__file__).parent.parent / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = deploy.split("\n### A scene library\n", 1)[1].split("\n#", 1)[0]
    named = set(re.findall(r"\.[a-z]+\b", section))
    assert not PHOTO_FILE_SUFFIXES - named
