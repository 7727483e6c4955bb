"""bench.augment's --size: the sides the composite backend and the generator take, refused at parse time."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.generation.backend import MAX_SIZE_PX
from shared.generation.composite import MIN_SIZE_PX


class _RunStarted(Exception):
    """The options were accepted: the run began reading the dataset."""


def _refuse_to_run(*_args: object, **_kwargs: object) -> None:
    raise _RunStarted


@pytest.mark.parametrize("size_px", [MIN_SIZE_PX - 1, MAX_SIZE_PX + 1, 100000])
def test_bench_augment_refuses_a_size_the_generator_would_refuse_at_parse_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], size_px: int
) -> None:
    # Before, any positive --size went through: above 2048 the composite backend was asked for
    # canvases the generator never makes (100000: a MemoryError, or the OOM killer), below 64 it
    # refused every photo, each one set aside as "refused" after the dataset was read.
    from bench import augment

    monkeypatch.setattr(augment, "read_grocery", _refuse_to_run)
    argv = ["--dataset", str(tmp_path), "--split", "val", "--out", str(tmp_path / "a.json")]
    with pytest.raises(SystemExit) as refused:
        augment.main([*argv, "--size", str(size_px)])
    assert refused.value.code == 2
    assert f"--size: must be from {MIN_SIZE_PX} to {MAX_SIZE_PX}, got {size_px}" in capsys.readouterr().err
    for accepted in (MIN_SIZE_PX, MAX_SIZE_PX):
        with pytest.raises(_RunStarted):
            augment.main([*argv, "--size", str(accepted)])
