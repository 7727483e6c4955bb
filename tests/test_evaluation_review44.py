"""The evaluation library and its benchmark (review 44): a k larger than a class's train photos or
given twice; the report's curve when the SKUs have different numbers of real photos; the bench's
held-out photos that have no perceptual hash."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

from bench import augment
from shared.evaluation.backbone import BackboneSpec, FeatureCache, open_backbone
from shared.evaluation.experiment import (
    EvaluationConfig,
    Featurizer,
    Photo,
    Source,
    encode_jpeg,
    photo_from_bytes,
    run_evaluation,
)
from shared.evaluation.report import render_report
from shared.images import encode_png
from tests.support.evaluation import (  # noqa: F401 (one_torch_thread: autouse)
    COLOURS,
    colour_photo,
    one_torch_thread,
    shelf_photo,
)


class _RunStarted(Exception):
    """The options and the dataset passed the checks: the run's work (a stub) began."""


def _grocery_lists(root: Path, train_photos: dict[str, int]) -> Path:
    """A GroceryStoreDataset folder's lists only (classes.csv and the split files, no photo): what
    ``read_grocery`` reads; each class with the number of train photos given."""
    root.mkdir(parents=True)
    header = "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
    rows = [header + "Iconic Image Path (str),Product Description Path (str)\n"]
    train = []
    for class_id, (name, count) in enumerate(train_photos.items()):
        rows.append(f"{name},{class_id},{name},{class_id},/iconic/{name}.jpg,/desc.txt\n")
        train += [f"train/{name}/{n}.jpg, {class_id}, {class_id}\n" for n in range(count)]
    (root / "classes.csv").write_text("".join(rows))
    (root / "train.txt").write_text("".join(train))
    (root / "val.txt").write_text("")
    (root / "test.txt").write_text("")
    return root


def test_a_k_larger_than_a_class_has_train_photos_is_refused_naming_the_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # --k 5 with a class of 3 train photos gave that class's SKU its 3 (references took what there was)
    # and the results recorded k=5 for every SKU: a figure for k photos per SKU that was not one.
    def started(*args: object) -> None:
        raise _RunStarted

    monkeypatch.setattr(augment, "references", started)
    dataset = _grocery_lists(tmp_path / "dataset", {"Kiwi": 6, "Lime": 3})
    argv = ["--dataset", str(dataset), "--split", "val", "--tag", "t", "--out", str(tmp_path / "o.json")]
    with pytest.raises(SystemExit) as refused:
        augment.main([*argv, "--k", "0,5"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "--k 0,5" in err and "Lime has 3 train photos" in err
    # k up to the fewest a class has goes ahead; so does --classes leaving the small class out.
    with pytest.raises(_RunStarted):
        augment.main([*argv, "--k", "0,3"])
    with pytest.raises(_RunStarted):
        augment.main([*argv, "--k", "5", "--classes", "1"])


def _colour_photos(sku_id: str, source: Source, count: int, seed: int) -> list[Photo]:
    """``count`` photos in ``sku_id``'s colour, each its own."""
    return [
        photo_from_bytes(
            sku_id, source, f"{sku_id}-{source}-{n}.png", encode_png(colour_photo(COLOURS[sku_id], seed + n))
        )
        for n in range(count)
    ]


def test_the_report_says_when_the_curve_gives_skus_fewer_real_photos_than_its_points_say() -> None:
    # With SKU-RED's 4 real photos and the others' 1, the curve's point "4 real photos per SKU" trained
    # the others on their one photo: the page read as if every SKU had had 4.
    featurizer = Featurizer(open_backbone(BackboneSpec(name="tiny", image_px=32)), FeatureCache(None))
    config = EvaluationConfig(seed=3, classic_px=32)

    def page(real_of: dict[str, int]) -> str:
        training, heldout = [], []
        for index, sku_id in enumerate(COLOURS):
            training += _colour_photos(sku_id, "real", real_of[sku_id], 10 * index)
            training += _colour_photos(sku_id, "synthetic", 2, 100 + 10 * index)
            heldout += _colour_photos(sku_id, "real", 2, 200 + 10 * index)
        result = run_evaluation(training, heldout, featurizer, config)
        assert result.curve["real_per_sku"] == [float(j) for j in range(1, max(real_of.values()) + 1)]
        return render_report(result, lambda name: None)

    uneven = page({"SKU-RED": 4, "SKU-GREEN": 1, "SKU-BLUE": 2})
    assert "The SKUs have 1 to 4 real photos" in uneven
    assert "The SKUs have" not in page({"SKU-RED": 3, "SKU-GREEN": 3, "SKU-BLUE": 3})


@pytest.mark.parametrize("given", ["0,00", "1,01,3", "3, 3"])
def test_a_k_given_twice_under_another_spelling_is_refused(given: str) -> None:
    # "distinct" was checked on the text: --k 0,00 ran k=0 twice, the second run's figures written
    # over the first's under one key.
    with pytest.raises(argparse.ArgumentTypeError, match="distinct"):
        augment.k_values(given)
    assert augment.k_values("0, 01,3") == "0,1,3"


def test_the_bench_names_held_out_photos_it_cannot_compare_by_perceptual_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A held-out photo with too little detail for a perceptual hash (a plain product on a plain
    # background) was left out of the near-duplicate check without a word: a resized copy of it among
    # the references or the scenes would have passed. skuforge evaluate notes such photos; so does the
    # bench now.
    dataset = tmp_path / "dataset"
    photos = {
        "iconic/Kiwi.jpg": shelf_photo(1),
        "train/Kiwi/0.jpg": shelf_photo(2),
        "test/Kiwi/plain.jpg": Image.new("RGB", (320, 240), (128, 128, 128)),
        "test/Kiwi/shelf.jpg": shelf_photo(3),
    }
    for name, photo in photos.items():
        (dataset / name).parent.mkdir(parents=True, exist_ok=True)
        (dataset / name).write_bytes(encode_jpeg(photo))
    header = "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
    (dataset / "classes.csv").write_text(
        f"{header}Iconic Image Path (str),Product Description Path (str)\nKiwi,0,Kiwi,0,/iconic/Kiwi.jpg,/d\n"
    )
    for split in ("train", "val", "test"):
        listed = [name for name in photos if name.startswith(f"{split}/")]
        (dataset / f"{split}.txt").write_text("".join(f"{name}, 0, 0\n" for name in listed))

    def started(*args: object) -> None:
        raise _RunStarted

    monkeypatch.setattr(augment, "open_backbone", started)
    argv = [
        "--dataset",
        str(dataset),
        "--k",
        "0",
        "--scenes-per-class",
        "1",
        "--workdir",
        str(tmp_path / "work"),
    ]
    with pytest.raises(_RunStarted):
        augment.main([*argv, "--out", str(tmp_path / "o.json")])
    err = capsys.readouterr().err
    assert "1 held-out photo(s) have too little detail for a perceptual hash" in err
    assert str(dataset / "test/Kiwi/plain.jpg") in err and "shelf.jpg" not in err


def test_a_group_with_no_scored_sku_has_no_mean_in_the_bench_results() -> None:
    # A group none of whose classes had a held-out photo in the half scored (a class with one val photo
    # is all in half a) got the mean of no SKUs: NaN, written into the results as a bare NaN, which is
    # not JSON.
    evaluation = argparse.Namespace(
        gain={"Kiwi": 0.1, "Lime": -0.3}, gain_over_classic={"Kiwi": 0.0, "Lime": -0.2}
    )
    groups = {"Kiwi": "Fruit", "Lime": "Fruit", "Leek": "Vegetables"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice"
        figures = augment.by_group(evaluation, groups)
    assert figures == {"Fruit": {"n_skus": 2, "gain_top1": -0.1, "gain_over_classic_top1": -0.1}}
    json.dumps(figures, allow_nan=False)
