"""Review 46 of the bench commands: the real-photo mask scripts without OpenCV, and with a photo missing;
bench/augment.py's --curve-max (tiny synthetic dataset, tiny backbone, stand-in composites).

OpenCV (``cv2``) is no skuforge dependency: the scripts that re-derive the reference masks imported it at
the top, so even ``--help`` was a ModuleNotFoundError, and a photo missing under ``--data`` a traceback.
OpenCV is hidden from the import system here, so the tests read the same with or without it installed.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.evaluation import grocery_dataset, one_torch_thread, shelf_photo  # noqa: F401 (autouse)

MASKS = Path(__file__).resolve().parents[1] / "bench" / "data" / "matting_real"
SCRIPTS = ["make_catalogue_masks", "make_instore_masks"]
# One in-store photo is enough: --only names it.
INSTORE = json.loads((MASKS / "instore_reserved.json").read_text())[0]


@pytest.fixture
def without_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError, as where it is absent


def _script(name: str) -> ModuleType:
    return importlib.import_module(f"bench.data.matting_real.{name}")


def _photos(name: str) -> list[str]:
    """The dataset paths the script reads (with ``_argv``'s options)."""
    if name == "make_catalogue_masks":
        return list(json.loads((MASKS / "split.json").read_text())["bench_catalogue"])
    return [INSTORE["path"]]


def _argv(name: str, data: Path) -> list[str]:
    return ["--data", str(data), *(["--only", INSTORE["id"]] if name == "make_instore_masks" else [])]


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.usefixtures("without_opencv")
def test_a_mask_script_shows_its_help_without_opencv(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        _script(name).main(["--help"])
    assert stopped.value.code == 0
    assert "--data" in capsys.readouterr().out


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.usefixtures("without_opencv")
def test_a_missing_photo_is_named_before_any_mask_is_written(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: FileNotFoundError (catalogue) or AttributeError on None (in-store, cv2.imread) as a traceback.
    masks_before = {path.name: path.stat().st_mtime_ns for path in (MASKS / "masks").iterdir()}
    with pytest.raises(SystemExit) as stopped:
        _script(name).main(_argv(name, tmp_path))
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / _photos(name)[0]) in err
    assert "--data" in err  # what to change
    assert "Traceback" not in err
    assert {path.name: path.stat().st_mtime_ns for path in (MASKS / "masks").iterdir()} == masks_before


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.usefixtures("without_opencv")
def test_without_opencv_a_mask_script_says_how_to_get_it(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for rel in _photos(name):  # the photos present (their contents are not read before OpenCV is needed)
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    with pytest.raises(SystemExit) as stopped:
        _script(name).main(_argv(name, tmp_path))
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "opencv-python-headless" in err
    assert "Traceback" not in err


def test_bench_augment_bounds_each_k_curve_with_curve_max(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bench.augment drew every k's curve to the most real photos a SKU had (two fits a point, two
    # fine-tunings with --tune-stages) and had no --curve-max: it refused the option skuforge evaluate takes.
    from bench import augment
    from shared.evaluation.backbone import BackboneSpec, open_backbone

    def composites(
        refs: dict[str, list[Path]], scenes: Path, args: Any, out: Path, *rest: Any, k: int
    ) -> dict[str, list[Path]]:
        made: dict[str, list[Path]] = {}
        for index, name in enumerate(refs):
            (out / name).mkdir(parents=True, exist_ok=True)
            made[name] = [out / name / f"{variant}.png" for variant in range(2)]
            for variant, path in enumerate(made[name]):
                shelf_photo(1_000 + 10 * index + variant).save(path)
        return made

    monkeypatch.setattr(augment, "generate_in_process", composites)
    monkeypatch.setattr(
        augment, "open_backbone", lambda spec: open_backbone(BackboneSpec("tiny", image_px=32))
    )
    dataset = grocery_dataset(
        tmp_path / "dataset", {"Kiwi": {"train": 4, "val": 1}, "Lemon": {"train": 4, "val": 1}}
    )
    argv = [*("--dataset", str(dataset), "--split", "val", "--mode", "in-process", "--k", "2")]
    argv += [*("--scenes-per-class", "1", "--variants-per-sku", "2", "--workdir", str(tmp_path / "w"))]
    assert augment.main([*argv, "--curve-max", "2", "--out", str(tmp_path / "o.json")]) == 0
    (evaluation_file,) = (tmp_path / "w").glob("evaluation-*-k2.json")
    evaluation = json.loads(evaluation_file.read_text())
    # Each SKU's references: its iconic photo and k = 2 train photos, 3 real photos; the curve stops at 2.
    assert evaluation["train_counts"]["Kiwi"]["real"] == 3
    assert evaluation["curve"]["real_per_sku"] == [1.0, 2.0]
    assert evaluation["curve_cut"] == {"curve_max": 2, "most_real_per_sku": 3}


def test_bench_matting_real_names_a_missing_photo() -> None:
    # A dataset folder without the set's photos (a partial clone) was a FileNotFoundError traceback, after
    # the models were checked; now the message run_command's caller prints, as for a photo that differs.
    from bench import matting_real

    first = json.loads((MASKS / "catalogue.json").read_text())[0]["path"]
    with pytest.raises(SystemExit) as stopped:
        matting_real.load_items(Path("/nonexistent/dataset"))
    message = str(stopped.value.code)
    assert f"{Path('/nonexistent/dataset') / first} is missing" in message and "full clone" in message
