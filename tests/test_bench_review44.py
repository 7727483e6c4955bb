"""The benches `make bench` runs, at their boundary: options that could only fail after the run (or write
figures with keys missing) are refused at start, exit 2. Cheap: no broker, no model run (the long work
is replaced by a stub that fails if reached)."""

from __future__ import annotations

from pathlib import Path

import pytest


class _RunStarted(Exception):
    """The options were accepted and the long work began."""


def _refuse_to_run(*args: object, **kwargs: object) -> None:
    raise _RunStarted


def _refusal(main: object, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``main(argv)`` says on stderr as it stops with exit 2, before the long work."""
    assert callable(main)
    try:
        code = main(argv)
    except SystemExit as exited:  # a usage error
        code = exited.code
    assert code == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_store_refuses_more_skus_than_items(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every SKU gets a row: with fewer items the loaded SKU count never matched, and the run stopped
    on "loaded rows do not match the store" after building the whole store."""
    from bench import store

    monkeypatch.setattr(store, "build_store", _refuse_to_run)
    argv = ["--items", "5", "--skus", "10", "--out", str(tmp_path / "store.json")]
    assert "--skus 10: more SKUs than --items 5" in _refusal(store.main, argv, capsys)
    with pytest.raises(_RunStarted):  # as many as the items: accepted
        store.main(["--items", "10", "--skus", "10", "--out", str(tmp_path / "store.json")])


@pytest.mark.parametrize("name", ["folder", "x" * 300])
def test_dlq_memory_checks_its_out_before_the_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """--out was written only after a broker started and every DLQ was measured: a folder there, or a
    name too long, was a traceback at the end."""
    from bench import dlq_memory

    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", "127.0.0.1:9")  # no broker of its own
    monkeypatch.setattr(dlq_memory, "measure", _refuse_to_run)
    out = tmp_path / name
    if name == "folder":
        out.mkdir()
    assert f"--out {out}: " in _refusal(dlq_memory.main, ["--out", str(out)], capsys)
    with pytest.raises(_RunStarted):
        dlq_memory.main(["--out", str(tmp_path / "dlq.json")])
