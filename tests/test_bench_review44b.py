"""Benches and `skuforge matting real-pairs` at their boundary: an option out of what the run can do is
refused at start, naming it, exit 2. Cheap: the long work is replaced by a stub that fails if reached;
no model runs, no store is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import RunStarted, refusal_of, refuse_to_run


def test_the_store_bench_refuses_more_items_than_it_measures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Unbounded, --items 1000000000 held millions of rows per SKU in memory for hours before failing.
    from bench import store

    monkeypatch.setattr(store, "build_store", refuse_to_run)
    err = refusal_of(store.main, ["--items", "1000000000", "--out", str(tmp_path / "s.json")], capsys)
    assert "--items" in err
    assert "2000000" in err  # the bound: the committed run's size, which the bench is for
    with pytest.raises(RunStarted):  # the committed run's size is still accepted
        store.main(["--items", "2000000", "--out", str(tmp_path / "s.json")])


def test_the_captioner_bench_refuses_threads_past_the_services_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # SKUFORGE_CAPTIONER_MATTING_THREADS stops at 256; --threads 100000 went to ONNX Runtime as asked.
    from bench import captioner
    from shared.matting import session

    monkeypatch.setattr(session, "open_tool_session", refuse_to_run)
    err = refusal_of(captioner.main, ["--threads", "100000", "--out", str(tmp_path / "c.json")], capsys)
    assert "--threads" in err
    assert "256" in err
    with pytest.raises(RunStarted):
        captioner.main(["--threads", "256", "--out", str(tmp_path / "c.json")])


@pytest.mark.parametrize(
    ("bench_name", "option", "patched"),
    [("gate", "--model", "bench.gate"), ("captioner", "--matting-model", "shared.matting.session")],
)
def test_an_empty_model_path_is_refused_naming_the_option(
    bench_name: str,
    option: str,
    patched: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `--model "$MODEL"` with MODEL unset was read as the current folder: "no matting model file at .".
    import importlib

    bench = importlib.import_module(f"bench.{bench_name}")
    monkeypatch.setattr(importlib.import_module(patched), "open_tool_session", refuse_to_run)
    err = refusal_of(bench.main, [option, "", "--out", str(tmp_path / "r.json")], capsys)
    assert f"argument {option}: the path is empty" in err


def test_real_pairs_names_the_default_official_model_it_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without --official, an unreadable default was "--official PATH: cannot read it": an option the
    # user had not given. The default comes from SKUFORGE_OFFICIAL_U2NETP here.
    from services.matting.cli import main as matting_cli

    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "train.txt").write_text("")
    official = tmp_path / ("x" * 300)  # over the 255 bytes a file name may have: unreadable, even as root
    monkeypatch.setenv("SKUFORGE_OFFICIAL_U2NETP", str(official))
    argv = ["real-pairs", "--dataset", str(dataset), "--out", str(tmp_path / "p")]
    err = refusal_of(matting_cli, argv, capsys)
    refusal = err.splitlines()[-1]  # the usage lines above it name every option
    assert "--official" not in refusal
    assert f"SKUFORGE_OFFICIAL_U2NETP {official}: cannot read it (File name too long)" in refusal


def test_a_round_with_a_zero_baseline_is_a_clear_error() -> None:
    # A baseline round that measured 0 (no event through, say) stopped the run in a ZeroDivisionError.
    from bench.rounds import median_round_ratio

    with pytest.raises(ValueError, match=r"round 2 .*0"):
        median_round_ratio([2.0, 3.0, 4.0], [1.0, 0.0, 2.0])
    assert median_round_ratio([2.0, 3.0, 4.0], [1.0, 1.5, 2.0]) == 2.0
