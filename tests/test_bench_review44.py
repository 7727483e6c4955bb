"""The benches `make bench` runs, at their boundary: options that could only fail after the run (or write
figures with keys missing) are refused at start, exit 2. Cheap: no broker, no model run (the long work
is replaced by a stub that fails if reached)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import RunStarted, refusal_of, refuse_to_run


def test_store_refuses_more_skus_than_items(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every SKU gets a row: with fewer items the loaded SKU count never matched, and the run stopped
    on "loaded rows do not match the store" after building the whole store."""
    from bench import store

    monkeypatch.setattr(store, "build_store", refuse_to_run)
    argv = ["--items", "5", "--skus", "10", "--out", str(tmp_path / "store.json")]
    assert "--skus 10: more SKUs than --items 5" in refusal_of(store.main, argv, capsys)
    with pytest.raises(RunStarted):  # as many as the items: accepted
        store.main(["--items", "10", "--skus", "10", "--out", str(tmp_path / "store.json")])


@pytest.mark.parametrize("name", ["folder", "x" * 300])
def test_dlq_memory_checks_its_out_before_the_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """--out was written only after a broker started and every DLQ was measured: a folder there, or a
    name too long, was a traceback at the end."""
    from bench import dlq_memory

    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", "127.0.0.1:9")  # no broker of its own
    monkeypatch.setattr(dlq_memory, "measure", refuse_to_run)
    out = tmp_path / name
    if name == "folder":
        out.mkdir()
    assert f"--out {out}: " in refusal_of(dlq_memory.main, ["--out", str(out)], capsys)
    with pytest.raises(RunStarted):
        dlq_memory.main(["--out", str(tmp_path / "dlq.json")])


@pytest.fixture
def grocery(tmp_path: Path) -> Path:
    """A folder the captioner bench takes as GroceryStoreDataset's dataset/ (its check: the iconic folder)."""
    dataset = tmp_path / "dataset"
    (dataset / "iconic-images-and-descriptions").mkdir(parents=True)
    return dataset


@pytest.mark.parametrize("mode", ["--real-only", "--dev-only"])
def test_captioner_keeps_figures_only_from_a_file_that_has_them(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    grocery: Path,
    mode: str,
) -> None:
    """--real-only and --dev-only keep the other figures of --out: on a new file there are none, and the
    run wrote a results JSON with the renderer's figures missing."""
    import shared.matting.session as session_module
    from bench import captioner

    monkeypatch.setattr(session_module, "open_tool_session", refuse_to_run)
    new = tmp_path / "new.json"
    err = refusal_of(captioner.main, [mode, "--grocery-dataset", str(grocery), "--out", str(new)], capsys)
    assert f"{mode} keeps the figures of --out {new}" in err
    kept = tmp_path / "kept.json"
    kept.write_text(json.dumps({"colour_accuracy": 0.5}))
    with pytest.raises(RunStarted):
        captioner.main([mode, "--grocery-dataset", str(grocery), "--out", str(kept)])


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_captioner_names_an_out_it_cannot_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    """--out is updated in place: a file there that is not a JSON object was a JSONDecodeError (or an
    AttributeError on a list) traceback once the model had opened."""
    import shared.matting.session as session_module
    from bench import captioner

    monkeypatch.setattr(session_module, "open_tool_session", refuse_to_run)
    out = tmp_path / "captioner.json"
    out.write_text(content)
    assert f"--out {out}: " in refusal_of(captioner.main, ["--out", str(out)], capsys)


def test_folders_given_with_a_name_too_long_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Looking into a folder whose name is over the file system's limit raises (is_dir and is_file
    ignore a missing path, not ENAMETOOLONG): it was a traceback at the first check."""
    import shared.matting.session as session_module
    from bench import captioner, dlq_memory

    monkeypatch.setattr(session_module, "open_tool_session", refuse_to_run)
    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    monkeypatch.setattr(dlq_memory, "measure", refuse_to_run)
    too_long = tmp_path / ("x" * 300)
    argv = ["--grocery-dataset", str(too_long), "--out", str(tmp_path / "c.json")]
    assert f"--grocery-dataset {too_long}: cannot reach it (File name too long)" in refusal_of(
        captioner.main, argv, capsys
    )
    assert f"--before {too_long}: cannot reach it (File name too long)" in refusal_of(
        dlq_memory.main, ["--before", str(too_long)], capsys
    )


def test_scale_checks_its_workdir_before_the_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--workdir (member logs, the store) was first made by the first round, after a broker started: a
    file in its place was a FileExistsError traceback there."""
    from bench import scale

    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", "127.0.0.1:9")  # no broker of its own
    monkeypatch.setattr(scale, "throughput", refuse_to_run)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    argv = ["--workdir", str(blocked), "--out", str(tmp_path / "scale.json")]
    assert f"--workdir {blocked}: " in refusal_of(scale.main, argv, capsys)
    with pytest.raises(RunStarted):
        scale.main(["--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "scale.json")])


def test_matting_names_a_model_path_it_cannot_look_at(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model path with a name too long was an OSError traceback at the check meant to name it."""
    from bench import matting

    too_long = tmp_path / ("x" * 300)
    argv = ["--fp32", str(too_long), "--out", str(tmp_path / "matting.json")]
    assert f"--fp32 {too_long}: cannot reach it (File name too long)" in refusal_of(
        matting.main, argv, capsys
    )


@pytest.mark.parametrize("size", ["4", str(256 * 1024 + 8)])
def test_dlq_memory_takes_only_an_original_a_letter_carries_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], size: str
) -> None:
    """Under 8 bytes the originals were empty (rounded down to whole 8-byte numbers); over the 256 kB a
    letter carries inline they are no dead letter a stage writes, and went to the broker only after it
    had started. Both are refused at parse time."""
    from bench import dlq_memory

    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    monkeypatch.setattr(dlq_memory, "measure", refuse_to_run)
    assert "--size: must be from 8 to 262144" in refusal_of(dlq_memory.main, ["--size", size], capsys)
    with pytest.raises(RunStarted):
        dlq_memory.main(["--size", str(256 * 1024)])
