"""Test hygiene: a test that changes torch's CPU thread count (``torch.set_num_threads``, process-wide)
gives it back, so that a later test's timing or a later stage's setting is not decided by which tests
ran before it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Collected after the tests it follows, before any of them runs: it sets a count none of them asks for.
_PROBE = """
import torch

torch.set_num_threads(3)


def test_torch_threads_are_as_the_earlier_tests_found_them():
    assert torch.get_num_threads() == 3
"""


@pytest.mark.slow  # two pytest runs, one training the tiny model
def test_tests_that_change_torch_threads_leave_them_as_they_found_them(tmp_path: Path) -> None:
    """One set one thread for its tiny model and left it so (its module now takes ``one_torch_thread``);
    one opened the trainer, which sets SKUFORGE_LORA_THREADS (undone by the suite's
    ``torch_threads_as_before``). Every test after them in the process ran on one thread."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(_PROBE)
    leakers = [
        "tests/test_lora_review2.py::test_an_adapter_trained_with_alpha_above_its_rank_is_served_at_alpha_over_rank",
        "tests/test_lora_review.py::test_training_another_model_than_the_generators_is_refused_at_start_up_without_its_label",
    ]
    for leaker in leakers:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", leaker, str(probe)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, f"{leaker}:\n{run.stdout[-3000:]}"
