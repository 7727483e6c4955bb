"""A folder a command will write to is tried before the run, not judged by permission bits: as root,
``os.access`` says yes to ``/proc/x``, and the run then failed at its end with a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.argtypes import file_problem, folder_problem
from skuforge_cli.main import main as cli_main

pytestmark = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")


def test_a_folder_under_proc_cannot_be_written() -> None:
    for path in (Path("/proc/skuforge-x"), Path("/proc/skuforge-x/y")):
        assert (problem := folder_problem(path)) is not None and problem.startswith("cannot write in /proc (")
    assert folder_problem(Path("/proc/skuforge-x"), writable=False) is None


def test_a_file_to_write_is_refused_where_a_folder_or_a_file_above_it_stands(tmp_path: Path) -> None:
    # One check for every command's output file (matting, fit_shape, bench.gate, bench.matting_real, the
    # console's task table): each read its own copy, and the copies said it differently.
    assert file_problem(tmp_path / "new" / "out.json", "out.json") is None
    assert not (tmp_path / "new").exists()
    assert (
        file_problem(tmp_path, "out.json")
        == f"is a folder; name the file to write, e.g. {tmp_path / 'out.json'}"
    )
    (tmp_path / "a-file").write_text("")
    assert (
        file_problem(tmp_path / "a-file" / "out.json", "out.json")
        == f"{tmp_path / 'a-file'} is a file, not a folder"
    )


def test_the_check_of_a_folder_to_be_made_leaves_nothing_behind(tmp_path: Path) -> None:
    assert folder_problem(tmp_path / "a" / "b" / "c") is None
    assert folder_problem(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        cli_main(argv)
    assert exited.value.code == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["evaluate", "--heldout", "h", "--max-synthetic-per-real", "1", "--out", "/proc/skuforge-x"],
            "--out /proc/skuforge-x: cannot write in /proc",
        ),
        (["up", "--workdir", "/proc/skuforge-x"], "--workdir /proc/skuforge-x: cannot write in /proc"),
        (
            ["matting", "pairs", "--n", "1", "--out", "/proc/skuforge-x"],
            "--out /proc/skuforge-x: cannot write in /proc",
        ),
    ],
    ids=["evaluate", "up", "matting-pairs"],
)
def test_commands_refuse_a_folder_under_proc_before_the_run(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    assert message in _usage_error(argv, capsys)


def test_evaluate_refuses_a_cache_dir_under_proc_and_leaves_no_out_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results" / "eval"
    argv = ["evaluate", "--heldout", "h", "--max-synthetic-per-real", "1", "--out", str(out)]
    err = _usage_error([*argv, "--cache-dir", "/proc/skuforge-y"], capsys)
    assert "--cache-dir /proc/skuforge-y: cannot write in /proc" in err
    assert list(tmp_path.iterdir()) == []  # --out was tried and passed, and is not left made
