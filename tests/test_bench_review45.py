"""Review 45 of bench/augment.py: as many scenes per class as asked, or a refusal; and the classes a
result counts are the classes it scored. Tiny synthetic datasets, a tiny backbone, stand-in composites."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import augment
from shared.evaluation.backbone import BackboneSpec, open_backbone
from tests.support.cli import refusal_of
from tests.support.evaluation import (  # noqa: F401 (one_torch_thread: autouse)
    grocery_dataset,
    one_torch_thread,
    shelf_photo,
)


def _started(*args: object, **kwargs: object) -> None:
    raise AssertionError("the run started")


def test_more_scenes_per_class_than_a_class_has_photos_for_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Lemon has 3 train photos, one a k=1 reference: --scenes-per-class 3 gave it 2 scenes, and the
    results recorded scenes_per_class 3 as if every class had had them."""
    dataset = grocery_dataset(
        tmp_path / "dataset", {"Kiwi": {"train": 5, "val": 1}, "Lemon": {"train": 3, "val": 1}}
    )
    monkeypatch.setattr(augment, "open_backbone", _started)
    argv = [*("--dataset", str(dataset), "--split", "val", "--k", "1")]
    argv += [*("--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "o.json"))]
    said = refusal_of(augment.main, [*argv, "--scenes-per-class", "3"], capsys)
    assert (
        "--scenes-per-class 3: Lemon has 2 train photos left after the SKUs' references, fewer than 3 "
        "scenes; give --scenes-per-class up to 2"
    ) in said, said
    with pytest.raises(AssertionError, match="the run started"):
        augment.main([*argv, "--scenes-per-class", "2"])


def test_a_class_with_no_photo_in_the_scored_half_is_not_counted_as_scored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Kiwi's one val photo falls in half a: half b scored Lemon's alone, and its result said n_classes 2
    (and Kiwi's per-SKU figures were NaN, of no photo). It says which classes it scored now."""

    def composites(refs: dict[str, list[Path]], *args: Any, **kwargs: Any) -> dict[str, list[Path]]:
        made: dict[str, list[Path]] = {}
        for index, name in enumerate(refs):
            (tmp_path / "made" / name).mkdir(parents=True, exist_ok=True)
            made[name] = []
            for variant in range(2):
                path = tmp_path / "made" / name / f"{variant}.png"
                shelf_photo(1_000 + 10 * index + variant).save(path)
                made[name].append(path)
        return made

    monkeypatch.setattr(augment, "generate_in_process", composites)
    monkeypatch.setattr(
        augment, "open_backbone", lambda spec: open_backbone(BackboneSpec("tiny", image_px=32))
    )
    dataset = grocery_dataset(
        tmp_path / "dataset", {"Kiwi": {"train": 3, "val": 1}, "Lemon": {"train": 3, "val": 2}}
    )
    argv = [*("--dataset", str(dataset), "--split", "val", "--mode", "in-process", "--k", "1")]
    argv += [*("--scenes-per-class", "1", "--variants-per-sku", "2", "--workdir", str(tmp_path / "w"))]
    for half, scored, unscored in (("a", 2, []), ("b", 1, ["Kiwi"])):
        out = tmp_path / f"{half}.json"
        assert augment.main([*argv, "--heldout-half", half, "--out", str(out)]) == 0
        result = json.loads(out.read_text())
        assert (result["n_classes"], result["classes_not_scored"]) == (scored, unscored), half
        assert result["n_test"] == {"a": 2, "b": 1}[half]
    assert "1 class(es) have no photo in held-out half b, so they are trained on but not scored: Kiwi" in (
        capsys.readouterr().err
    )
