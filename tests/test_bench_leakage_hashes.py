"""``bench.augment``'s leakage check hashes its photos as ``skuforge evaluate`` does: under
SKUFORGE_MAX_IMAGE_PIXELS. Before, it hashed under the default limit whatever the setting, so a large
JPEG's hash was not evaluate's (its product's larger decode, given up near the limit, moves it). Its
features are decoded, and its scenes (bench.edge_recolour's too) loaded, under the same limits."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from bench import augment
from services.trainstore.evaluation import heldout_hashes, scene_files
from shared.errors import ImageRejected
from shared.evaluation.backbone import BackboneSpec, open_backbone
from shared.evaluation.experiment import Photo
from shared.generation.scenes import SceneLibrary
from shared.store import sha256_hex
from tests.support.evaluation import large_product_shot, shelf_photo


def test_the_bench_hashes_as_skuforge_evaluate_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKUFORGE_MAX_IMAGE_PIXELS", "1000000")  # the product's larger decode is past it
    scene = large_product_shot(tmp_path / "scenes" / "shelves" / "product.jpg")
    assert augment._hashed([scene]) == scene_files(f"file://{tmp_path / 'scenes'}")[1]
    photo = Photo("SKU-1", "real", str(scene), sha256_hex(scene.read_bytes()), scene.read_bytes)
    assert augment._hashed([scene], heldout=True) == heldout_hashes([photo], None)[0]


def test_a_stack_run_hashes_its_exported_images_under_the_limit_of_its_held_out_photos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The held-out photos were hashed under the shell's limit, then the stack's environment (which
    # dropped every SKUFORGE_* of the shell, the limit among them) was put in place and the exported
    # images hashed under the default: a large JPEG's copy could read too far from its original.
    monkeypatch.setenv("SKUFORGE_MAX_IMAGE_PIXELS", "1000000")
    exported = large_product_shot(tmp_path / "export" / "real.jpg")
    before = augment._hashed([exported])
    args = argparse.Namespace(workdir=tmp_path, **{name: "1" for name in augment.STACK_SETTINGS})
    saved = dict(os.environ)
    try:
        augment.use_stack_environment(augment.stack_environment(args, tmp_path / "scenes"))
        assert augment._hashed([exported]) == before
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_an_in_process_run_loads_its_scenes_under_the_limit_its_checks_hash_by(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scenes were loaded under the default limit whatever the setting: a scene past it, which the
    # leakage check's hash refuses, was composited all the same.
    monkeypatch.setenv("SKUFORGE_MAX_IMAGE_PIXELS", "2000000")
    scenes = tmp_path / "scenes" / "shelves"
    scenes.mkdir(parents=True)
    shelf_photo(1).save(scenes / "shelf.png")
    shelf_photo(2, (2000, 1001)).save(scenes / "wide.png")
    library = augment.in_process_scenes(tmp_path / "scenes", photo_share=1.0)
    assert library is not None and len(library) == 1
    assert "shelves/wide.png" in library.skipped


def test_the_bench_decodes_its_photos_for_features_under_the_limits_it_hashes_them_by(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Featurizer decoded under the default limits whatever the settings: a photo past
    # SKUFORGE_MAX_IMAGE_PIXELS, which the leakage checks and skuforge evaluate refuse, was scored all
    # the same, and a large JPEG's features came from another decode than its hash.
    monkeypatch.setenv("SKUFORGE_MAX_IMAGE_PIXELS", "4096")  # 64 px squared, the least photo ingest takes
    path = tmp_path / "photo.png"
    shelf_photo(1, (80, 80)).save(path)
    featurizer = augment.run_featurizer(open_backbone(BackboneSpec(name="tiny", image_px=32)), tmp_path)
    with pytest.raises(ImageRejected, match="4096"):
        featurizer.of([augment.file_photo("SKU-1", "real", path)])


class _Composited(Exception):
    """The edge-recolour bench made its composite backends (the library they draw from is kept)."""


def test_the_edge_recolour_bench_loads_its_scenes_under_the_limit_its_checks_hash_by(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It loaded them under the default limit whatever SKUFORGE_MAX_IMAGE_PIXELS said, as bench.augment
    # did before in_process_scenes: a scene past the setting was composited all the same.
    import shared.generation.composite
    from bench import edge_recolour

    monkeypatch.setenv("SKUFORGE_MAX_IMAGE_PIXELS", "2000000")
    scenes = tmp_path / "work" / "scenes" / "shelves"
    scenes.mkdir(parents=True)
    shelf_photo(1).save(scenes / "shelf.png")
    shelf_photo(2, (2000, 1001)).save(scenes / "wide.png")
    (tmp_path / "train.txt").write_text("")
    monkeypatch.setattr(augment, "read_grocery", lambda root: None)
    monkeypatch.setattr(augment, "references", lambda data, k, seed: {})
    libraries: list[SceneLibrary] = []

    def backend(library: SceneLibrary, *args: object, **kwargs: object) -> None:
        libraries.append(library)
        raise _Composited

    monkeypatch.setattr(shared.generation.composite, "CompositeBackend", backend)
    out = ["--out", str(tmp_path / "e.json")]
    with pytest.raises(_Composited):
        edge_recolour.main(["--dataset", str(tmp_path), "--workdir", str(tmp_path / "work"), *out])
    assert len(libraries[0]) == 1 and "shelves/wide.png" in libraries[0].skipped
