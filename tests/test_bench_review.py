"""bench/augment.py harness guards: options that would mislabel or overwrite results, caches that
would hand one try another try's data. Cheap: no dataset, no backbone, no stack."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench import augment
from shared import keys
from shared.store import FileStore


@pytest.fixture
def environment_restored() -> Iterator[None]:
    """A stack run makes its settings the process's only SKUFORGE_*: the tests after it get theirs back."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


class StackStarted(Exception):
    """Raised by ``started_stack``'s stand-in for the local stack, in place of starting it."""


@pytest.fixture
def started_stack(monkeypatch: pytest.MonkeyPatch, environment_restored: None) -> dict[str, str]:
    """The environment a stack run starts its stack with; the stack itself is not started (the run
    stops in ``StackStarted``)."""
    import devstack.demo.demo

    started_with: dict[str, str] = {}

    def stack(*args: object, **kwargs: object) -> None:
        started_with.update(os.environ)
        raise StackStarted

    monkeypatch.setattr(devstack.demo.demo, "stack", stack)
    return started_with


def _exit_code(argv: list[str]) -> object:
    with pytest.raises(SystemExit) as exc:
        augment.main(argv)
    return exc.value.code


def test_spare_train_only_with_val(tmp_path: Path) -> None:
    # With --split test the spare photos were silently not added, yet the results said "test+spare-train".
    assert _exit_code(["--dataset", str(tmp_path), "--split", "test", "--with-spare-train"]) == 2


def test_the_edge_recolour_try_is_in_process_only(tmp_path: Path) -> None:
    # A stack runs the composite backend as served: "off" there would record a try that never happened.
    assert _exit_code(["--dataset", str(tmp_path), "--split", "val", "--edge-recolour", "off"]) == 2


def test_smoke_run_needs_its_own_out(tmp_path: Path) -> None:
    # --classes N without --out replaced the committed bench/results/augment.json with a smoke run.
    assert _exit_code(["--dataset", str(tmp_path), "--classes", "2"]) == 2


def test_evaluation_files_of_other_heldout_sets_or_classifiers_differ() -> None:
    def name(**overrides: Any) -> str:
        options = {"split": "val", "with_spare_train": False, "mode": "in-process", "tag": "base"}
        return augment.evaluation_name(argparse.Namespace(**{"tune_stages": 0, **options, **overrides}))

    names = {name(), name(with_spare_train=True), name(tune_stages=2), name(tag="other")}
    assert len(names) == 4


class _FakeSession:
    def __init__(self, value: int) -> None:
        self.value, self.calls = value, 0

    def predict(self, images: list[Image.Image]) -> list[Any]:
        self.calls += 1
        return [argparse.Namespace(mask=np.full((4, 4), self.value, np.uint8)) for _ in images]


def test_mask_cache_is_per_model(tmp_path: Path) -> None:
    photos, images = [tmp_path / "a.jpg"], [Image.new("RGB", (4, 4))]
    first, second = _FakeSession(255), _FakeSession(7)
    assert augment._cached_masks(first, images, photos, tmp_path / "masks", "model-a|1024")[0].max() == 255
    # Another model: its own masks, not model-a's from the cache.
    assert augment._cached_masks(second, images, photos, tmp_path / "masks", "model-b|1024")[0].max() == 7
    assert second.calls == 1
    # The same model again: from the cache.
    assert augment._cached_masks(first, images, photos, tmp_path / "masks", "model-a|1024")[0].max() == 255
    assert first.calls == 1


def test_a_fresh_stack_run_refuses_a_stack_folder_an_earlier_run_used(tmp_path: Path) -> None:
    # The 2026-12-02 05:53 test run reused the 23:17 run's store: one image this run's gate flagged was
    # exported as the earlier run had accepted it (same item id).
    stack_dir = tmp_path / "stack"
    augment.refuse_a_used_stack(stack_dir)  # nothing there yet
    (stack_dir / "store").mkdir(parents=True)
    augment.refuse_a_used_stack(stack_dir)  # an empty store is fresh
    (stack_dir / "store" / "trainstore").mkdir()
    with pytest.raises(SystemExit, match="holds an earlier stack run"):
        augment.refuse_a_used_stack(stack_dir)


_DATASET = {"path": "/data", "photos": 648, "fingerprint": "f" * 64, "fingerprint_version": 2}


def _options(workdir: Path, **overrides: Any) -> argparse.Namespace:
    values: dict[str, Any] = {name: None for name in augment.GENERATION_OPTIONS}
    values.update(
        seed=0, parameters="{}", photo_share=1.0, tag="", workdir=workdir, k="0,1,3", edge_recolour="on"
    )
    values.update(dataset=Path("/data"), dataset_identity=_DATASET)
    values.update(overrides)
    return argparse.Namespace(**values)


def _stored_stack_options(work: Path, *, series: str) -> dict[str, Any]:
    """The generation options a stored stack run of k = 0 on ``_grocery`` records (the bench's defaults,
    but one scene per class: _grocery's class has one train photo; ``series``)."""
    options = _options(
        work,
        variants_per_sku=12,
        scenes_per_class=1,
        pile_share=0.0,
        size=384,
        series=series,
        max_reference_px=1024,
        min_plain_background=0.7,
        own_scene_share=0.0,
        min_cutout_solidity=0.0,
    )
    return {**augment.generation_options(options), "k": [0]}


def test_in_process_images_of_other_generation_options_are_cached_apart(tmp_path: Path) -> None:
    # The cache folder was generated-<tag>-k<k>: a try with another seed or other parameters was scored on
    # the previous try's images, while its results file recorded the new options.
    base = augment.generated_dir(_options(tmp_path), 1)
    assert augment.generated_dir(_options(tmp_path, parameters="{ }"), 1) == base  # same parameters
    others = [
        _options(tmp_path, seed=1),
        _options(tmp_path, parameters='{"blur_px": 1.2}'),
        _options(tmp_path, own_scene_share=0.5),
        _options(tmp_path, scenes_per_class=8),
        _options(tmp_path, matting_model="var/models/other.onnx"),
        _options(tmp_path, edge_recolour="off"),
    ]
    assert len({base, *(augment.generated_dir(args, 1) for args in others)}) == 1 + len(others)
    assert augment.generated_dir(_options(tmp_path), 3) != base
    # The k list decides the scenes (train photos no SKU of any k uses): k=1 alone drew other scenes
    # than k=0,1,3, and its cached images were scored where those scenes were held-out spare photos.
    assert augment.generated_dir(_options(tmp_path, k="1"), 1) != base
    assert augment.generated_dir(_options(tmp_path, k="3,1,0"), 1) == base


def test_a_try_is_not_scored_on_the_test_split(tmp_path: Path) -> None:
    # An in-process try defaulted to --split test and replaced bench/results/augment.json.
    assert _exit_code(["--dataset", str(tmp_path), "--mode", "in-process"]) == 2
    assert _exit_code(["--dataset", str(tmp_path), "--mode", "in-process", "--tag", "t"]) == 2


def test_a_val_run_does_not_replace_the_kept_val_record(tmp_path: Path) -> None:
    # bench/results/augment-val.json holds the tries the docs cite; an untagged val run replaced it.
    assert (augment.RESULTS / "augment-val.json").exists()
    assert _exit_code(["--dataset", str(tmp_path), "--split", "val", "--mode", "in-process"]) == 2


def test_reuse_stack_refuses_a_stack_run_with_other_options(tmp_path: Path) -> None:
    # With another --seed, val + spare train would hold the stored run's references and scenes.
    recorded = {**augment.generation_options(_options(tmp_path)), "k": [0, 1, 3]}
    run = {"images_per_min": 90.0, "options": recorded, "dataset": _DATASET}
    (tmp_path / augment.STACK_RUN).write_text(json.dumps(run))
    augment.refuse_another_stack_run(_options(tmp_path), [0, 1, 3])  # the same: scored again
    with pytest.raises(SystemExit, match=r"--seed 0 \(asked: 1\)"):
        augment.refuse_another_stack_run(_options(tmp_path, seed=1), [0, 1, 3])
    with pytest.raises(SystemExit, match="--k"):
        augment.refuse_another_stack_run(_options(tmp_path), [1])
    (tmp_path / augment.STACK_RUN).write_text(json.dumps({"images_per_min": 90.0}))  # an older run
    with pytest.raises(SystemExit, match="does not record the options"):
        augment.refuse_another_stack_run(_options(tmp_path), [0, 1, 3])


def test_the_captioner_bench_scores_another_matting_model_beside_the_committed_figures(
    tmp_path: Path,
) -> None:
    # Its own docstring's example (--matting-model official) replaced bench/results/captioner.json's real
    # figures, the committed model's, with the official model's.
    from bench import captioner

    (tmp_path / "iconic-images-and-descriptions").mkdir()  # a dataset folder, as far as the checks go
    with pytest.raises(SystemExit) as exc:
        captioner.main(["--real-only", "--grocery-dataset", str(tmp_path), "--matting-model", "x.onnx"])
    assert exc.value.code == 2


def test_the_report_says_where_the_gain_sits_by_the_datasets_groups(tmp_path: Path) -> None:
    # The per-group figures the docs quote (packaged +7.5 over classic, fruit -0.9) had no source in the
    # committed results: they were worked out by hand from the per-SKU files.
    root = tmp_path / "dataset"
    items = [
        augment.GroceryClass(
            name, index, name, root / "iconic-images-and-descriptions" / group / name / "i.jpg"
        )
        for index, (name, group) in enumerate([("Oatly", "Packages"), ("Kiwi", "Fruit"), ("Lime", "Fruit")])
    ]
    groups = {item.name: augment.group_of(item, root) for item in items}
    assert groups == {"Oatly": "Packages", "Kiwi": "Fruit", "Lime": "Fruit"}
    evaluation = argparse.Namespace(
        gain={"Oatly": 0.2, "Kiwi": 0.1, "Lime": -0.3},
        gain_over_classic={"Oatly": 0.1, "Kiwi": 0.0, "Lime": -0.2},
    )
    assert augment.by_group(evaluation, groups) == {
        "Fruit": {"n_skus": 2, "gain_top1": -0.1, "gain_over_classic_top1": -0.1},
        "Packages": {"n_skus": 1, "gain_top1": 0.2, "gain_over_classic_top1": 0.1},
    }


def test_a_speedup_is_the_median_of_per_round_ratios() -> None:
    # bench/results/generation.json's rounds: the ratio of the two medians paired round 3's c8 with
    # round 2's c1 and read 1.91x; the rounds themselves say 1.65, 2.19 and 1.54.
    from bench.rounds import median_round_ratio

    assert median_round_ratio([2.56, 6.94, 6.06], [1.55, 3.17, 3.93]) == 1.65


def test_the_matting_bench_says_when_rembg_is_missing_before_any_round(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without REMBG_PYTHON the rembg worker failed after round 1's other workers, as a
    # CalledProcessError whose ModuleNotFoundError was never shown.
    from bench import matting

    monkeypatch.setenv("REMBG_PYTHON", "/nonexistent/python")
    started: list[str] = []
    monkeypatch.setattr(matting, "_run_worker", lambda kind, *args: started.append(kind))
    with pytest.raises(SystemExit) as refused:
        matting.main(["--out", "/dev/null"])
    assert refused.value.code == 2 and started == []
    assert "cannot import rembg" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("augment", ["--k", "1,"]),
        ("gate", ["--n", "0"]),
        ("store", ["--rounds", "0"]),
        ("captioner", ["--products", "0"]),
        ("matting_memory", ["--worker", "memory"]),
    ],
)
def test_a_bad_count_is_an_argument_error_not_a_traceback(module: str, argv: list[str]) -> None:
    # Were ValueError / ZeroDivisionError / empty-median tracebacks, or (captioner --products 0) a
    # results file of accuracy 0.0 written over the committed one.
    import importlib

    bench_module = importlib.import_module(f"bench.{module}")
    with pytest.raises(SystemExit) as refused:
        bench_module.main([*argv, "--out", "/nonexistent/out.json"])
    assert refused.value.code == 2


def test_the_test_split_is_scored_with_the_committed_classifier_only(tmp_path: Path) -> None:
    # --reuse-stack --split test with another --l2 or --real-weight re-scored the stored stack in
    # seconds: a way to try classifiers on the test split, into augment.json, which did not say so.
    for option in (["--l2", "0.1"], ["--real-weight", "1"], ["--tune-stages", "1"]):
        argv = [
            "--dataset",
            str(tmp_path),
            "--split",
            "test",
            "--reuse-stack",
            "--out",
            str(tmp_path / "o.json"),
        ]
        assert _exit_code([*argv, *option]) == 2
    assert augment.CLASSIFIER_OPTIONS == ("l2", "real_weight", "tune_stages", "tune_epochs", "tune_lr")


@pytest.mark.parametrize("option", [["--threads", "0"], ["--seed", "-1"], ["--size-px", "32"]])
def test_the_captioner_bench_refuses_what_fails_after_the_model_opened(option: list[str]) -> None:
    # Each ran its options' checks, then ended in a traceback (ONNX Runtime's, numpy's, the renderer's).
    from bench import captioner

    with pytest.raises(SystemExit) as refused:
        captioner.main(option)
    assert refused.value.code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["--split", "val", "--mode", "in-process", "--tag", "t", "--out", "bench/results/augment.json"],
        ["--classes", "2", "--out", "bench/results/augment.json"],
        ["--split", "val", "--mode", "in-process", "--tag", "t", "--out", "bench/results/augment-val.json"],
        ["--split", "val", "--mode", "in-process", "--tag", "tries/one"],
    ],
)
def test_a_try_cannot_write_over_the_committed_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    # A val try or a smoke run given --out bench/results/augment.json replaced the headline test figures
    # with its own; a --tag with a "/" failed writing its first results, after the generation.
    monkeypatch.chdir(augment.RESULTS.parent.parent)

    def started(*args: object) -> None:
        raise AssertionError("the run started")

    monkeypatch.setattr(augment, "read_grocery", started)
    assert _exit_code(["--dataset", str(tmp_path), *argv]) == 2


def test_the_full_test_run_still_writes_the_committed_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Started(Exception):
        pass

    def started(*args: object) -> None:
        raise Started

    monkeypatch.chdir(augment.RESULTS.parent.parent)
    monkeypatch.setattr(augment, "read_grocery", started)
    for argv in ([], ["--out", "bench/results/augment.json"], ["--split", "val", "--tag", "new-try"]):
        with pytest.raises(Started):
            augment.main(["--dataset", str(tmp_path), *argv])


def test_a_stack_run_generates_with_the_options_its_results_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started_stack: dict[str, str]
) -> None:
    # The generator settings the bench did not set came from the shell: SKUFORGE_GENERATION_PARAMETERS
    # or _PILE_SHARE there made the stack's images while the results said parameters {} and pile 0.
    for setting in (*augment.STACK_SETTINGS.values(), "SKUFORGE_SCENES_URI"):
        monkeypatch.setenv(setting, "from the shell")
    monkeypatch.setenv("SKUFORGE_GENERATION_PARAMETERS", '{"occluders": 0}')
    monkeypatch.setenv("SKUFORGE_GENERATION_PILE_SHARE", "0.5")
    args = _options(
        tmp_path,
        variants_per_sku=12,
        size=384,
        pile_share=0.0,
        min_plain_background=0.7,
        max_reference_px=1024,
    )
    with pytest.raises(StackStarted):
        augment.run_stack(tmp_path / "skus", [], tmp_path / "scenes", args)
    recorded = augment.generation_options(args)
    assert json.loads(started_stack["SKUFORGE_GENERATION_PARAMETERS"]) == recorded["parameters"] == {}
    assert float(started_stack["SKUFORGE_GENERATION_PILE_SHARE"]) == recorded["pile_share"] == 0.0
    assert float(started_stack["SKUFORGE_GENERATION_MIN_PLAIN_BACKGROUND"]) == 0.7
    assert int(started_stack["SKUFORGE_GENERATION_MAX_REFERENCE_PX"]) == 1024
    assert int(started_stack["SKUFORGE_GENERATION_VARIANTS_PER_SKU"]) == 12


@pytest.mark.parametrize(
    "option", [["--own-scene-share", "0.5"], ["--min-cutout-solidity", "0.9"], ["--matting-model", "x.onnx"]]
)
def test_a_stack_run_refuses_the_in_process_tries(tmp_path: Path, option: list[str]) -> None:
    # The stack has no such setting: the results recorded the try under "generation", never made.
    argv = ["--dataset", str(tmp_path), "--split", "val", "--tag", "t", "--out", str(tmp_path / "o.json")]
    assert _exit_code([*argv, *option]) == 2


@pytest.mark.parametrize(
    "option", [["--max-synthetic-per-real", "3"], ["--export-px", "128"], ["--export-fit", "pad"]]
)
def test_the_test_split_is_scored_with_the_committed_export_only(tmp_path: Path, option: list[str]) -> None:
    # --reuse-stack --split test with another export cap, side or fit re-scored the stored stack in
    # seconds: a way to choose the export on the test split (and --export-px was not even recorded).
    argv = ["--dataset", str(tmp_path), "--split", "test", "--reuse-stack", "--out", str(tmp_path / "o.json")]
    assert _exit_code([*argv, *option]) == 2
    # On val, trying them is what val is for.
    val = ["--dataset", str(tmp_path), "--split", "val", "--reuse-stack", "--out", str(tmp_path / "o.json")]
    assert _exit_code([*val, *option]) != 2


def _grocery(root: Path, train: dict[str, Image.Image], test: dict[str, Image.Image]) -> Path:
    """A one-class GroceryStoreDataset folder: its iconic photo, and the train and test photos given."""
    from shared.evaluation.experiment import encode_jpeg
    from tests.support.evaluation import shelf_photo

    iconic = "iconic-images-and-descriptions/Fruit/Kiwi/Kiwi_Iconic.jpg"
    (root / iconic).parent.mkdir(parents=True)
    (root / iconic).write_bytes(encode_jpeg(shelf_photo(9)))
    (root / "classes.csv").write_text(
        "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
        "Iconic Image Path (str),Product Description Path (str)\n"
        f"Kiwi,0,Kiwi,0,/{iconic},/desc.txt\n"
    )
    for split, photos in (("train", train), ("val", {}), ("test", test)):
        (root / split / "Kiwi").mkdir(parents=True)
        for name, photo in photos.items():
            (root / split / "Kiwi" / name).write_bytes(encode_jpeg(photo))
        (root / f"{split}.txt").write_text("".join(f"{split}/Kiwi/{name}, 0, 0\n" for name in photos))
    return root


def test_a_scene_letterboxed_from_a_test_photo_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # References and scenes were compared by perceptual_hash, which takes a letterboxed photo's whole
    # frame, bars included: a test photo padded with black bars passed as a scene (the store's own check,
    # copy_hashes, compares the part inside the bars too).
    from PIL import ImageOps

    from shared.evaluation.leakage import LeakageError
    from tests.support.evaluation import shelf_photo

    held = shelf_photo(1)
    padded = ImageOps.pad(held, (320, round(240 * 1.25)), color="black")
    dataset = _grocery(tmp_path / "dataset", {"padded.jpg": padded}, {"held.jpg": held})

    def started(*args: object) -> None:
        raise AssertionError("the run started")

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
    with pytest.raises(LeakageError, match=r"padded\.jpg looks like a copy of held-out"):
        augment.main([*argv, "--out", str(tmp_path / "o.json")])
    # Another photo, letterboxed the same way, is a scene like any other: the run goes on.
    other = ImageOps.pad(shelf_photo(2), (320, round(240 * 1.25)), color="black")
    dataset = _grocery(tmp_path / "other", {"padded.jpg": other}, {"held.jpg": held})
    with pytest.raises(AssertionError, match="the run started"):
        augment.main(["--dataset", str(dataset), *argv[2:], "--out", str(tmp_path / "o.json")])


def test_a_stack_run_uses_the_seed_backend_and_matting_model_its_results_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started_stack: dict[str, str]
) -> None:
    # The generator's seed, backend and mix and the matting models came from the shell: a diffusion mix
    # or another matting model there made the images while the results said seed 0, the composite
    # backend and the committed matting model ("matting_model": null).
    monkeypatch.setenv("SKUFORGE_GENERATION_SEED", "7")
    monkeypatch.setenv("SKUFORGE_GENERATION_BACKEND", "diffusion")
    monkeypatch.setenv("SKUFORGE_GENERATION_BACKEND_MIX", '{"composite": 1, "diffusion": 1}')
    monkeypatch.setenv("SKUFORGE_MATTING_MODEL", "u2netp-official")
    monkeypatch.setenv("SKUFORGE_CAPTIONER_MATTING_MODEL", "u2netp-official")
    args = _options(tmp_path, seed=3, variants_per_sku=12, size=384, pile_share=0.0)
    with pytest.raises(StackStarted):
        augment.run_stack(tmp_path / "skus", [], tmp_path / "scenes", args)
    assert int(started_stack["SKUFORGE_GENERATION_SEED"]) == augment.generation_options(args)["seed"] == 3
    assert started_stack["SKUFORGE_GENERATION_BACKEND"] == "composite"
    assert json.loads(started_stack["SKUFORGE_GENERATION_BACKEND_MIX"]) == {}
    assert "SKUFORGE_MATTING_MODEL" not in started_stack
    assert "SKUFORGE_CAPTIONER_MATTING_MODEL" not in started_stack
    # A seed the generator refuses (its setting is 0 or more) is refused before the run, not at start-up.
    assert _exit_code(["--dataset", str(tmp_path), "--seed", "-1", "--out", str(tmp_path / "o.json")]) == 2


@pytest.mark.parametrize(
    "option",
    [
        ["--pile-share", "1.5"],
        ["--photo-share", "-0.1"],
        ["--min-plain-background", "7"],
        ["--own-scene-share", "nan"],
        ["--min-cutout-solidity", "1.2"],
    ],
)
def test_a_share_outside_0_to_1_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: list[str]
) -> None:
    # Were refused only by the stack's start-up (or not at all in-process), after the leakage checks
    # and the backbone load.
    def started(*args: object) -> None:
        raise AssertionError("the run started")

    monkeypatch.setattr(augment, "read_grocery", started)
    argv = ["--dataset", str(tmp_path), "--split", "val", "--mode", "in-process", "--tag", "t"]
    assert _exit_code([*argv, "--out", str(tmp_path / "o.json"), *option]) == 2


@pytest.mark.parametrize(
    "option",
    [
        ["--l2", "inf"],
        ["--l2", "-1"],
        ["--real-weight", "nan"],
        ["--real-weight", "0"],
        ["--tune-lr", "-0.0001"],
        ["--tune-stages", "-2"],
        ["--tune-epochs", "-1"],
        ["--tune-epochs", "80000"],
        ["--timeout-s", "-5"],
        ["--timeout-s", "inf"],
    ],
)
def test_a_classifier_option_or_timeout_evaluate_would_refuse_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], option: list[str]
) -> None:
    # Were plain floats and ints: an --l2 inf or a negative --real-weight ran the leakage checks and the
    # backbone load, then trained on it; `skuforge evaluate` refuses them (the same ranges for both).
    from services.trainstore.evaluate import build_parser

    def started(*args: object) -> None:
        raise AssertionError("the run started")

    monkeypatch.setattr(augment, "read_grocery", started)
    argv = ["--dataset", str(tmp_path), "--split", "val", "--mode", "in-process", "--tag", "t"]
    assert _exit_code([*argv, "--out", str(tmp_path / "o.json"), *option]) == 2
    reason = capsys.readouterr().err.strip().splitlines()[-1].split(" error: ", 1)[1]
    assert reason.startswith(f"argument {option[0]}: must be ")
    if option[0] != "--timeout-s":  # evaluate has no stack to wait for
        evaluate = ["--heldout", str(tmp_path), "--out", str(tmp_path), "--max-synthetic-per-real", "1"]
        with pytest.raises(SystemExit) as refused:
            build_parser().parse_args([*evaluate, *option])
        assert refused.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(reason)


def test_reuse_stack_refuses_another_dataset_than_the_stored_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # --reuse-stack checked the options, not --dataset: another dataset folder (here: the same file
    # names, other photos) was scored against the images the stored stack made from the first one.
    from tests.support.evaluation import shelf_photo

    first = _grocery(tmp_path / "first", {"a.jpg": shelf_photo(2)}, {"held.jpg": shelf_photo(1)})
    other = _grocery(tmp_path / "other", {"a.jpg": shelf_photo(3)}, {"held.jpg": shelf_photo(1)})
    work = tmp_path / "work"
    work.mkdir()
    options = _stored_stack_options(work, series="class")

    def started(*args: object) -> None:
        raise AssertionError("the run started")

    monkeypatch.setattr(augment, "open_backbone", started)
    argv = ["--k", "0", "--scenes-per-class", "1", "--workdir", str(work), "--reuse-stack"]
    argv += ["--out", str(tmp_path / "o.json")]
    # No stack run recorded there yet: a clear refusal, not a FileNotFoundError.
    with pytest.raises(SystemExit, match="no stack run"):
        augment.main(["--dataset", str(first), *argv])
    # A record without the dataset (an older run, such as the committed test run's): scored, with a note
    # that the photos it was given could not be checked.
    (work / augment.STACK_RUN).write_text(json.dumps({"images_per_min": 90.0, "options": options}))
    with pytest.raises(AssertionError, match="the run started"):
        augment.main(["--dataset", str(first), *argv])
    err = capsys.readouterr().err
    assert "does not record the dataset its stack was given" in err
    # Nor the SKUFORGE_* its stack got (it inherited the shell's): said as well, not scored silently.
    assert "does not record the SKUFORGE_* settings its stack got" in err
    # The run's record names the photos it was given: those of the first dataset only are scored.
    data = augment.read_grocery(first)
    references = {name: set(paths) for name, paths in augment.references(data, 0, 0).items()}
    scenes = augment.scene_photos(data, 1, 0, set().union(*references.values()))
    run = {
        "images_per_min": 90.0,
        "options": options,
        "dataset": augment.dataset_identity(first, references, scenes, {"Kiwi": "Kiwi"}),
    }
    (work / augment.STACK_RUN).write_text(json.dumps(run))
    with pytest.raises(SystemExit, match=r"--reuse-stack: the stored stack was given .*first"):
        augment.main(["--dataset", str(other), *argv])
    capsys.readouterr()
    with pytest.raises(AssertionError, match="the run started"):
        augment.main(["--dataset", str(first), *argv])
    assert "does not record the SKUFORGE_*" in capsys.readouterr().err
    # A record of what its stack got: no note.
    (work / augment.STACK_RUN).write_text(
        json.dumps({**run, "environment": {"SKUFORGE_GENERATION_SEED": "0"}})
    )
    with pytest.raises(AssertionError, match="the run started"):
        augment.main(["--dataset", str(first), *argv])
    assert "note:" not in capsys.readouterr().err


def test_reuse_stack_refuses_a_dataset_whose_classes_csv_gives_other_series_tags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # With --series coarse a SKU's series (and its scenes' tag) is classes.csv's coarse class, which the
    # dataset fingerprint did not cover: after an edit of classes.csv, --reuse-stack scored the images
    # the stored stack made under the old tags as if made under the new ones.
    from shared.evaluation.experiment import encode_jpeg
    from shared.store import sha256_hex
    from tests.support.evaluation import shelf_photo

    dataset = _grocery(tmp_path / "data", {"a.jpg": shelf_photo(2)}, {"held.jpg": shelf_photo(1)})
    work = tmp_path / "work"
    work.mkdir()
    options = _stored_stack_options(work, series="coarse")

    def started(*args: object) -> None:
        raise AssertionError("the run started")

    monkeypatch.setattr(augment, "open_backbone", started)
    argv = ["--dataset", str(dataset), "--series", "coarse", "--k", "0", "--workdir", str(work)]
    argv += ["--scenes-per-class", "1", "--reuse-stack", "--out", str(tmp_path / "o.json")]
    # The dataset a stack run of these options records (run_stack writes args.dataset_identity).
    refuse = augment.refuse_another_stack_run
    recorded: dict[str, Any] = {}
    monkeypatch.setattr(
        augment, "refuse_another_stack_run", lambda args, ks: recorded.update(args.dataset_identity)
    )
    with pytest.raises(AssertionError, match="the run started"):
        augment.main(argv)
    monkeypatch.setattr(augment, "refuse_another_stack_run", refuse)
    (work / augment.STACK_RUN).write_text(
        json.dumps({"images_per_min": 90.0, "options": options, "dataset": recorded})
    )
    with pytest.raises(AssertionError, match="the run started"):
        augment.main(argv)  # the same dataset: scored again
    classes_csv = dataset / "classes.csv"
    classes_csv.write_text(classes_csv.read_text().replace("Kiwi,0,Kiwi,0", "Kiwi,0,Fruit,0"))
    with pytest.raises(SystemExit, match=r"--reuse-stack: the stored stack was given .* classes\.csv"):
        augment.main(argv)
    # A record from before the fingerprint covered the tags (the photos' paths and contents alone) is
    # still compared as far as it goes: the same photos are scored, with a note; others are refused.
    photos = [
        dataset / "iconic-images-and-descriptions/Fruit/Kiwi/Kiwi_Iconic.jpg",
        dataset / "train/Kiwi/a.jpg",
    ]
    lines = sorted(f"{path.relative_to(dataset).as_posix()} {augment.sha256_file(path)}" for path in photos)
    older = {"path": str(dataset), "photos": 2, "fingerprint": sha256_hex("\n".join(lines).encode())}
    (work / augment.STACK_RUN).write_text(
        json.dumps({"images_per_min": 90.0, "options": options, "dataset": older})
    )
    capsys.readouterr()
    with pytest.raises(AssertionError, match="the run started"):
        augment.main(argv)
    assert "fingerprints only the photos its stack was given" in capsys.readouterr().err
    (dataset / "train/Kiwi/a.jpg").write_bytes(encode_jpeg(shelf_photo(3)))  # another photo
    with pytest.raises(SystemExit, match="--reuse-stack: the stored stack was given"):
        augment.main(argv)


def test_in_process_piles_fall_where_the_generator_stage_puts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The in-process path asked is_pile without the SKU's offset: with a pile share of 0.25 and 8
    # variants every SKU heaped variants 3 and 7, while the stack's generator draws where each SKU's
    # piles fall (share_offset("piles", sku_id, seed)); a pile try did not mirror the stack.
    import shared.captioning.attributes
    from services.generator.stage import share_offset
    from shared.generation.backend import is_pile

    class Session:
        model_id = "fake"

        def predict(self, images: list[Image.Image]) -> list[Any]:
            masks = []
            for image in images:
                mask = np.zeros((image.height, image.width), np.uint8)
                mask[8:24, 8:24] = 255
                masks.append(argparse.Namespace(mask=mask))
            return masks

    class Backend:
        def __init__(self) -> None:
            self.piles: dict[str, list[bool]] = {}

        def generate(self, request: Any) -> list[Any]:
            name = request.series
            self.piles.setdefault(name, []).append(request.parameters.get("arrangement") == "pile")
            return [argparse.Namespace(image=np.zeros((8, 8, 3), np.uint8))]

    produce = argparse.Namespace(shape=argparse.Namespace(shape="produce"))
    monkeypatch.setattr(shared.captioning.attributes, "describe_product", lambda *args: produce)
    names = ["Kiwi", "Lime", "Lemon", "Mango", "Melon", "Pear"]
    refs = {}
    for name in names:
        (tmp_path / "photos").mkdir(exist_ok=True)
        Image.new("RGB", (32, 32), "white").save(tmp_path / "photos" / f"{name}.png")
        refs[name] = [tmp_path / "photos" / f"{name}.png"]
    args = _options(
        tmp_path,
        seed=2,
        pile_share=0.25,
        variants_per_sku=8,
        max_reference_px=64,
        min_plain_background=0.0,
        min_cutout_solidity=0.0,
        own_scene_share=0.0,
        size=64,
        series_of={name: name for name in names},
    )
    backend = Backend()
    augment._generate_all(refs, args, tmp_path / "generated", Session(), backend, {}, k=1)
    offsets = {name: share_offset("piles", augment.sku_id(1, name), 2) for name in names}
    assert backend.piles == {
        name: [is_pile(variant, 0.25, offsets[name]) for variant in range(8)] for name in names
    }
    assert len({tuple(piles) for piles in backend.piles.values()}) > 1  # not the same for every SKU


@pytest.mark.parametrize(
    ("parameters", "pile_share", "says"),
    [
        ("{not json", "0", "not JSON"),
        ("[1, 2]", "0", "not a JSON object"),
        ('{"occluders": 1}', "0.5", "with --pile-share"),
    ],
)
def test_parameters_every_composite_would_refuse_are_refused_before_the_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    parameters: str,
    pile_share: str,
    says: str,
) -> None:
    # --parameters was not checked: bad JSON was a traceback, and since piles refuse knobs they cannot
    # honour, {"occluders": 1} with --pile-share failed partway through the generation.
    from bench import augment

    def started(*args: object) -> None:
        raise AssertionError("the run started")

    monkeypatch.setattr(augment, "read_grocery", started)
    argv = ["--dataset", str(tmp_path), "--split", "val", "--mode", "in-process", "--workdir", str(tmp_path)]
    with pytest.raises(SystemExit) as refused:
        augment.main([*argv, "--parameters", parameters, "--pile-share", pile_share, "--tag", "t"])
    assert refused.value.code == 2 and says in capsys.readouterr().err
    with pytest.raises(AssertionError, match="the run started"):  # the same knob without piles is fine
        augment.main([*argv, "--parameters", '{"occluders": 1}', "--tag", "t"])


def test_a_stack_run_gets_no_skuforge_setting_of_the_shell_and_records_what_it_got(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started_stack: dict[str, str]
) -> None:
    # The stack inherited every SKUFORGE_* of the shell: gate thresholds, the matting clean-up or the
    # captioner's options there decided what was accepted and exported, and nothing recorded them.
    monkeypatch.setenv("SKUFORGE_GATE_MIN_FOREGROUND_FRACTION", "0.9")
    monkeypatch.setenv("SKUFORGE_MATTING_ROI", "false")
    monkeypatch.setenv("SKUFORGE_CAPTIONER_MIN_MASK_FRACTION", "0.5")
    monkeypatch.setenv("SKUFORGE_KAFKA_HEAP_MB", "768")  # how fast it runs, not what it makes: kept
    args = _options(tmp_path, seed=3, variants_per_sku=12, size=384, pile_share=0.0)
    with pytest.raises(StackStarted):
        augment.run_stack(tmp_path / "skus", [], tmp_path / "scenes", args)
    given = {name: value for name, value in started_stack.items() if name.startswith("SKUFORGE_")}
    assert "SKUFORGE_GATE_MIN_FOREGROUND_FRACTION" not in given
    assert "SKUFORGE_MATTING_ROI" not in given
    assert "SKUFORGE_CAPTIONER_MIN_MASK_FRACTION" not in given
    assert given["SKUFORGE_KAFKA_HEAP_MB"] == "768"
    # What it got is what the run records (stack-run.json, and the report from it).
    assert given == augment.stack_environment(args, tmp_path / "scenes")


@pytest.mark.parametrize(
    "option",
    [["--export-px", "0"], ["--export-px", "8"], ["--own-scene-blur", "-0.1"], ["--own-scene-blur", "inf"]],
)
def test_an_export_side_or_scene_blur_the_run_would_refuse_is_refused_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: list[str]
) -> None:
    # Passed parsing and the leakage checks: the export refused a side below 16 px and the composite
    # a blur outside 0 to 0.5, after the backbone load and the generation.
    def started(*args: object) -> None:
        raise AssertionError("the run started")

    monkeypatch.setattr(augment, "read_grocery", started)
    argv = ["--dataset", str(tmp_path), "--split", "val", "--mode", "in-process", "--tag", "t"]
    argv += ["--out", str(tmp_path / "o.json")]
    assert _exit_code([*argv, *option]) == 2
    with pytest.raises(AssertionError, match="the run started"):  # the bounds themselves are taken
        augment.main([*argv, "--export-px", "16", "--own-scene-blur", "0.5"])


def test_a_fresh_stack_run_in_a_used_workdir_leaves_its_scene_library_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh stack run was refused a used stack folder only after it had written its own scenes over
    # the scene library the stored stack was started with, and after the backbone load.
    from tests.support.evaluation import shelf_photo

    dataset = _grocery(tmp_path / "dataset", {"a.jpg": shelf_photo(2)}, {"held.jpg": shelf_photo(1)})
    work = tmp_path / "work"
    (work / "stack").mkdir(parents=True)
    (work / "stack" / "stack.json").write_text("{}")
    (work / "scenes" / "Kiwi").mkdir(parents=True)
    (work / "scenes" / "Kiwi" / "stored.jpg").write_bytes(b"the stored stack's scene")

    def started(*args: object) -> None:
        raise AssertionError("the run started")

    monkeypatch.setattr(augment, "open_backbone", started)
    argv = ["--dataset", str(dataset), "--k", "0", "--scenes-per-class", "1", "--workdir", str(work)]
    argv += ["--out", str(tmp_path / "o.json")]
    with pytest.raises(SystemExit, match="holds an earlier stack run"):
        augment.main(argv)
    assert [path.name for path in (work / "scenes").rglob("*.jpg")] == ["stored.jpg"]


@pytest.mark.usefixtures("environment_restored")
def test_a_stack_run_ingests_into_the_stack_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stack takes a free Kafka port when the documented one is taken (another user's stack), but the
    # bench ingested into, and followed, whatever answered at the default address, not its own stack.
    import contextlib

    import devstack.demo.demo
    import services.ingest.ingest

    class Ingested(Exception):
        pass

    @contextlib.contextmanager
    def stack(*args: object, **kwargs: object) -> Iterator[dict[str, Any]]:
        yield {"env": {"SKUFORGE_KAFKA_BOOTSTRAP": "127.0.0.1:19092"}}

    def ingest_path(folder: Path, settings: Any, **kwargs: object) -> None:
        assert settings.kafka_bootstrap == "127.0.0.1:19092"
        raise Ingested

    monkeypatch.setattr(devstack.demo.demo, "stack", stack)
    monkeypatch.setattr(services.ingest.ingest, "ingest_path", ingest_path)
    args = _options(tmp_path, seed=0, variants_per_sku=12, size=384, pile_share=0.0)
    with pytest.raises(Ingested):
        augment.run_stack(tmp_path / "skus", [], tmp_path / "scenes", args)


def test_the_benches_images_are_stored_under_their_skus_flow_folders(tmp_path: Path) -> None:
    # bench/replicas.py stored generated/r-0.png and bench/matting_memory.py generated/image.png:
    # directly in the flow's folder, with no SKU folder, keys no stage writes (sku_of refuses them).
    from bench.matting_memory import generated_events
    from bench.replicas import generated_images

    store = FileStore(tmp_path / "store")
    generated = generated_images(store, 2, size_px=64) + [
        envelope.payload for envelope in generated_events(store, 2, width=64, height=48)
    ]
    for payload in generated:
        for ref in (payload.image, payload.expected_mask):
            assert keys.sku_of(store.key_for(ref.uri)) == payload.sku.sku_id, ref.uri
