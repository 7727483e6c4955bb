"""Benchmark command lines: options that would overwrite committed figures or fail only after the run
are refused up front. Cheap: no dataset, no model run (the long work is replaced by a stub that fails)."""

from __future__ import annotations

from pathlib import Path

import pytest


class _RunStarted(Exception):
    """The options were accepted and the long work began."""


def _refuse_to_run(*args: object, **kwargs: object) -> None:
    raise _RunStarted


def test_an_edge_recolour_smoke_run_does_not_replace_the_committed_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # --classes N (the docstring's smoke run) wrote a few classes' figures over the committed
    # bench/results/edge_recolour.json, which docs/evaluation.md cites.
    from bench import augment, edge_recolour

    (tmp_path / "train.txt").write_text("")
    monkeypatch.setattr(augment, "read_grocery", _refuse_to_run)
    argv = ["--dataset", str(tmp_path), "--classes", "2"]
    with pytest.raises(SystemExit) as refused:
        edge_recolour.main(argv)
    assert refused.value.code == 2 and "give --out" in capsys.readouterr().err
    with pytest.raises(_RunStarted):  # its own --out: the smoke run goes ahead
        edge_recolour.main([*argv, "--out", str(tmp_path / "smoke.json")])
