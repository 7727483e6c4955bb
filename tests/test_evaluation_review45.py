"""The evaluation library and its benchmarks (review 45): a SKU trained on with no held-out photo; a
bound on the accuracy-against-real-photos curve; the edge-recolour bench on a dataset too small for its
scenes. Tiny synthetic inputs and the tiny backbone only."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from bench import edge_recolour
from services.trainstore.evaluate import build_parser
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
from shared.store import FileStore
from shared.trainstore.manifest import ManifestStore
from skuforge_cli.main import main as cli_main
from tests.support.cli import refusal_of
from tests.support.evaluation import (  # noqa: F401 (one_torch_thread: autouse)
    COLOURS,
    colour_photo,
    evaluate_args,
    fill_colour_store,
    one_torch_thread,
    shelf_photo,
)
from tests.support.trainstore import PREFIX


def _colour_photos(
    sku_id: str, source: Source, count: int, seed: int, *, looks_like: str = ""
) -> list[Photo]:
    """``count`` photos filed under ``sku_id``, in the colour of ``looks_like`` (default its own)."""
    rgb = COLOURS[looks_like or sku_id]
    return [
        photo_from_bytes(
            sku_id, source, f"{sku_id}-{source}-{seed + n}.png", encode_png(colour_photo(rgb, seed + n))
        )
        for n in range(count)
    ]


def _featurizer() -> Featurizer:
    return Featurizer(open_backbone(BackboneSpec(name="tiny", image_px=32)), FeatureCache(None))


def _training(real_per_sku: int) -> list[Photo]:
    training: list[Photo] = []
    for index, sku_id in enumerate(COLOURS):
        training += _colour_photos(sku_id, "real", real_per_sku, 10 * index)
        training += _colour_photos(sku_id, "synthetic", 2, 100 + 10 * index)
    return training


def test_a_sku_trained_on_without_a_held_out_photo_is_a_class_and_is_listed_as_not_scored() -> None:
    # SKU-BLUE has training images and no held-out photo (bench.augment's half b of a class with one val
    # photo). Its images were dropped without a word: the classifiers chose among the scored SKUs only,
    # while the bench said it was "trained on but not scored". It is a class now, named as not scored,
    # and left out of the per-SKU figures and their share (no figure of no photo).
    heldout = _colour_photos("SKU-RED", "real", 2, 200) + _colour_photos("SKU-GREEN", "real", 2, 210)
    heldout += _colour_photos("SKU-GREEN", "real", 1, 220, looks_like="SKU-BLUE")  # a blue photo misfiled
    result = run_evaluation(_training(2), heldout, _featurizer(), EvaluationConfig(seed=3, classic_px=32))
    assert result.not_scored == {"SKU-BLUE": "no held-out photo"}
    assert sorted(result.per_sku) == sorted(result.gain) == ["SKU-GREEN", "SKU-RED"]
    assert result.n_skus == 2 and "SKU-BLUE" in result.train_counts
    # The blue photo is taken for the SKU it looks like: SKU-BLUE is among the answers.
    assert {"true": "SKU-GREEN", "predicted": "SKU-BLUE"}.items() <= next(
        item for item in result.misclassified if item["name"].startswith("SKU-GREEN-real-220")
    ).items()
    json.dumps(asdict(result), allow_nan=False)
    page = render_report(result, lambda name: None)
    assert "1 SKU trained on but not scored (no held-out photo): SKU-BLUE" in page


def test_the_curve_stops_at_curve_max_real_photos_and_curve_max_0_leaves_it_out() -> None:
    # The curve fitted 2 classifiers per j up to the largest SKU's real photos (two fine-tunings each
    # with --tune-stages), with no way to bound it: most of a run with 10 photos per SKU.
    heldout = [photo for i, sku in enumerate(COLOURS) for photo in _colour_photos(sku, "real", 1, 200 + i)]
    featurizer = _featurizer()

    def curve(curve_max: int | None = None) -> list[float]:
        config = EvaluationConfig(seed=3, classic_px=32, curve_max=curve_max)
        return run_evaluation(_training(4), heldout, featurizer, config).curve["real_per_sku"]

    assert curve() == [1.0, 2.0, 3.0, 4.0]
    assert curve(curve_max=2) == [1.0, 2.0]
    assert curve(curve_max=9) == [1.0, 2.0, 3.0, 4.0]
    assert curve(curve_max=0) == []


def test_skuforge_evaluate_bounds_the_curve_with_curve_max(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    fill_colour_store(ManifestStore(FileStore(tmp_path / "store"), PREFIX))  # 2 real photos per SKU
    heldout = tmp_path / "heldout"
    for index, (sku_id, rgb) in enumerate(COLOURS.items()):
        (heldout / sku_id).mkdir(parents=True)
        for n in range(2):
            (heldout / sku_id / f"{n}.jpg").write_bytes(encode_jpeg(colour_photo(rgb, 500 + 10 * index + n)))

    def curve(*options: str) -> list[float]:
        out = tmp_path / f"eval{len(options)}"
        assert cli_main(evaluate_args(heldout, out, tmp_path, *options)) == 0
        document = json.loads((out / "evaluation.json").read_text(), parse_constant=_refuse_constant)
        return list(document["curve"]["real_per_sku"])

    assert curve() == [1.0, 2.0]
    assert curve("--curve-max", "0") == []
    assert "--curve-max 0" in (tmp_path / "eval2" / "report.html").read_text()  # the page says why
    parser = build_parser()
    assert "--curve-max N" in " ".join(parser.format_help().split())
    base = ["--heldout", "h", "--out", "o", "--max-synthetic-per-real", "2"]
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--curve-max", "-1"])
    assert "--curve-max" in capsys.readouterr().err


def _refuse_constant(name: str) -> float:
    raise AssertionError(f"evaluation.json holds {name}, which is not JSON")


def _grocery(root: Path, train: dict[str, int]) -> Path:
    """A GroceryStoreDataset folder: per class its iconic photo and ``train[class]`` train photos."""
    header = "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
    rows = [header + "Iconic Image Path (str),Product Description Path (str)\n"]
    lines = []
    seed = 0
    for class_id, (name, count) in enumerate(train.items()):
        iconic = f"iconic-images-and-descriptions/Fruit/{name}/{name}_Iconic.jpg"
        (root / iconic).parent.mkdir(parents=True)
        (root / iconic).write_bytes(encode_jpeg(shelf_photo(seed := seed + 1)))
        rows.append(f"{name},{class_id},{name},{class_id},/{iconic},/desc.txt\n")
        (root / "train" / name).mkdir(parents=True)
        for n in range(count):
            (root / "train" / name / f"{n}.jpg").write_bytes(encode_jpeg(shelf_photo(seed := seed + 1)))
            lines.append(f"train/{name}/{n}.jpg, {class_id}, {class_id}\n")
    (root / "classes.csv").write_text("".join(rows))
    (root / "train.txt").write_text("".join(lines))
    for split in ("val", "test"):
        (root / f"{split}.txt").write_text("")
    return root


def test_the_edge_recolour_bench_refuses_a_dataset_with_too_few_photos_for_its_scenes_in_a_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # bench.augment now refuses fewer scenes than asked; the edge-recolour bench asks it for 4 per class,
    # and on a small dataset stopped in a ValueError traceback that told it to give an option it lacks.
    dataset = _grocery(tmp_path / "dataset", {"Kiwi": 6, "Lemon": 3})
    argv = ["--dataset", str(dataset), "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "e.json")]
    said = refusal_of(edge_recolour.main, argv, capsys)
    assert "Lemon has 2 train photos left after its reference" in said, said
    assert "--scenes-per-class" not in said and "Traceback" not in said
    assert not (tmp_path / "w" / "scenes").exists()
