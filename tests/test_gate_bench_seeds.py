"""bench/gate.py's seeds: one whose composite seeds no int64 holds is refused at parse time."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.gate import MAX_BENCH_SEED, SEED_STRIDE, main
from shared.generation.backend import seed_entropy


@pytest.mark.parametrize("option", ["--seed", "--other-seed"])
def test_a_seed_whose_composite_seeds_overflow_an_int64_is_refused_before_the_session_loads(
    option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The composite seed is ``seed * 100_003 + index``: before, a seed above about 9.2e13 was taken, and
    the generator raised a ValueError traceback once the matting session had loaded."""
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "--n",
                "1",
                "--no-renderer-comparison",
                option,
                str(2**63 // 100_003 + 1),
                "--out",
                str(tmp_path / "g.json"),
            ]
        )

    assert exited.value.code == 2
    assert option in capsys.readouterr().err


def test_the_largest_seed_taken_keeps_every_composite_seed_of_a_run_an_int64() -> None:
    """The bound is the stride's: any --n up to it draws seeds the generator takes."""
    assert (
        seed_entropy(MAX_BENCH_SEED * SEED_STRIDE + SEED_STRIDE - 1)
        == MAX_BENCH_SEED * SEED_STRIDE + SEED_STRIDE - 1
    )
