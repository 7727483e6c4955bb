"""bench/augment.py harness guards: options that would mislabel or overwrite results, caches that
would hand one try another try's data. Cheap: no dataset, no backbone, no stack."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench import augment


def _exit_code(argv: list[str]) -> object:
    with pytest.raises(SystemExit) as exc:
        augment.main(argv)
    return exc.value.code


def test_spare_train_only_with_val(tmp_path: Path) -> None:
    # With --split test the spare photos were silently not added, yet the results said "test+spare-train".
    assert _exit_code(["--dataset", str(tmp_path), "--split", "test", "--with-spare-train"]) == 2


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
