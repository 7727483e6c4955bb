"""Review 47 of small truths: ``shared.commands``' guarded stderr and watched stdout below their text
(``.buffer``, ``.raw``)."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.grocery import grocery_dataset_default
from services.lora_trainer import stage as lora_stage
from services.lora_trainer.stage import JOB_MAX_ATTEMPTS
from shared.commands import run_command
from shared.store import FileStore
from tests.support.lora import cola_trainer

ROOT = Path(__file__).resolve().parents[1]


def test_a_stderr_without_bytes_below_its_text_has_no_buffer_under_run_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stderr that is an io.StringIO (pytest's capture, a caller's redirect) has no ``.buffer``; under
    # run_command it had one, so ``hasattr(sys.stderr, "buffer")`` said yes and the write through it then
    # raised AttributeError: a command that writes bytes where it can, text where it cannot, failed.
    said = io.StringIO()
    monkeypatch.setattr(sys, "stderr", said)

    def command() -> int:
        if hasattr(sys.stderr, "buffer"):
            sys.stderr.buffer.write(b"progress\n")
        else:
            sys.stderr.write("progress\n")
        return 3

    assert run_command("skuforge planted", command) == 3
    assert said.getvalue() == "progress\n"


def _run_planted(body: str, **streams: int) -> subprocess.CompletedProcess[str]:
    """A planted command whose body is ``body`` (then ``return 3``), run under run_command from the
    repository root; stdout and stderr captured unless given as descriptors. Both are buffered files
    (bytes, and below them the raw file) whatever PYTHONUNBUFFERED says."""
    code = (
        "import sys\nfrom shared.commands import run_command\n"
        "sys.stdout = open(1, 'w', closefd=False)\nsys.stderr = open(2, 'w', closefd=False)\n"
        f"def command():\n    {body}\n    return 3\n"
        "sys.exit(run_command('skuforge planted', command))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        stdout=streams.get("stdout", subprocess.PIPE),
        stderr=streams.get("stderr", subprocess.PIPE),
        cwd=ROOT,
        timeout=120,
        check=False,
        text=True,
    )


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_bytes_written_on_stderrs_raw_file_on_a_full_disk_keep_the_commands_status() -> None:
    # ``sys.stderr.buffer.raw`` was stderr's own unguarded file: a write through it on a full disk raised
    # out of run_command, and a command that had done its work ended with status 1 and a traceback.
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        done = _run_planted("sys.stderr.buffer.raw.write(b'progress\\n'); print('done')", stderr=full)
    finally:
        os.close(full)
    assert (done.returncode, done.stdout) == (3, "done\n")


def test_bytes_written_on_stderrs_raw_file_still_reach_it() -> None:
    done = _run_planted("sys.stderr.buffer.raw.write(b'progress\\n'); print('done')")
    assert (done.returncode, done.stdout, done.stderr) == (3, "done\n", "progress\n")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize(
    "body",
    [
        "sys.stdout.buffer.write(b'x' * 1_000_000)",
        "sys.stdout.buffer.write(b'report\\n'); sys.stdout.buffer.flush()",
        "sys.stdout.buffer.raw.write(b'report\\n')",
    ],
    ids=["bytes past the buffer", "bytes flushed", "bytes on the raw file"],
)
def test_bytes_written_on_a_stdout_on_a_full_disk_are_one_line(body: str) -> None:
    # ``sys.stdout.buffer`` was stdout's own, unwatched: its write on a full disk (``> report.bin``) ended
    # the command with a traceback ending in "[Errno 28]" instead of the line a text write gets.
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        done = _run_planted(body, stdout=full)
    finally:
        os.close(full)
    assert done.returncode == 1
    assert done.stderr.startswith("skuforge planted: its output could not be written: [Errno 28]")
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_bytes_written_on_stdout_still_reach_it() -> None:
    done = _run_planted("sys.stdout.buffer.write(b'a'); sys.stdout.buffer.raw.write(b'b'); print('c')")
    assert (done.returncode, done.stderr) == (3, "")
    assert sorted(done.stdout) == ["\n", "a", "b", "c"]


def test_the_lora_retrying_alert_lists_the_trainers_poll_fault() -> None:
    # The trainer logs a fault that is not a job's (its own, a bug) as "the poll failed; ...": the
    # SkuforgeLoraJobsRetrying runbook listed every other line its log may say, not that one.
    line = "the poll failed; it is tried again after the poll interval"
    assert f'log.exception("{line}")' in (ROOT / "services/lora_trainer/stage.py").read_text()
    ops = (ROOT / "docs/ops.md").read_text()
    section = ops.split("### SkuforgeLoraJobsRetrying", 1)[1].split("\n### ", 1)[0]
    assert f'"{line}"' in " ".join(section.split())


def test_a_training_fault_raised_again_at_each_attempt_carries_only_that_attempts_note(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same exception object raised at every attempt (one a library keeps and raises again) kept
    # each attempt's note: the second attempt's reason said "attempt 1 of 3" and "attempt 2 of 3", and
    # the failed job's reason (failed.json, "training job cannot run") carried both earlier notes.
    kept = RuntimeError("the loss is NaN")

    def diverged(*_: Any, **__: Any) -> None:
        raise kept

    monkeypatch.setattr(lora_stage, "train_lora", diverged)
    trainer = cola_trainer(FileStore(tmp_path / "store"), FileStore(tmp_path / "registry"), tmp_path)
    reasons = []
    for _ in range(JOB_MAX_ATTEMPTS):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="skuforge.lora-trainer"):
            trainer.poll()
        reasons += [getattr(r, "reason", "") for r in caplog.records if r.levelno >= logging.ERROR]
    last = f"{JOB_MAX_ATTEMPTS} attempts failed, the last with RuntimeError: the loss is NaN"
    noted = [
        f"RuntimeError: the loss is NaN (attempt {n} of {JOB_MAX_ATTEMPTS})"
        for n in range(1, JOB_MAX_ATTEMPTS)
    ]
    assert reasons == [*noted, last]


def test_the_bench_commands_read_the_grocery_dataset_variable_in_one_place() -> None:
    # Four bench commands each wrote `os.environ.get("SKUFORGE_GROCERY_DATASET") or None` (an empty one
    # is unset, as Compose and Helm pass one): a fifth could forget the `or None` and read "" as the
    # current folder. Now they share bench.grocery.grocery_dataset_default.
    readers = [
        path.relative_to(ROOT).as_posix()
        for path in sorted((ROOT / "bench").rglob("*.py"))
        if 'environ.get("SKUFORGE_GROCERY_DATASET")' in path.read_text()
    ]
    assert readers == ["bench/grocery.py"]


@pytest.mark.parametrize(("value", "default"), [(None, None), ("", None), ("/data/grocery", "/data/grocery")])
def test_the_grocery_dataset_default_is_the_variable_and_an_empty_one_is_unset(
    monkeypatch: pytest.MonkeyPatch, value: str | None, default: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("SKUFORGE_GROCERY_DATASET", raising=False)
    else:
        monkeypatch.setenv("SKUFORGE_GROCERY_DATASET", value)
    assert grocery_dataset_default() == default
