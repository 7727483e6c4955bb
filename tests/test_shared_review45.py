"""Review 45 of the small shared libraries: signals, commands, command logging, settings, model cache."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, get_origin

import pytest
from pydantic_settings import BaseSettings, NoDecode

from services.gate.config import GateSettings
from shared.commands import run_command
from shared.config import ConfigError, load_settings
from shared.generation.settings import GenerationSettings
from shared.model_cache import fetch_file, release
from shared.observability import configure_command_logging
from shared.signals import Stopped, held_signals, raise_stopped, stopped_as_interrupt, stops_wait_for_clean_up
from skuforge_cli.main import SETTINGS_MODELS
from tests.support.model_cache import another_stage_fetching_meanwhile, copies, publish

ROOT = Path(__file__).resolve().parents[1]


def _sigterm_right_after_the_first_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM comes just after a block sets its first handler, before it sets the next: its Python
    handler runs at the next call, as a signal's does (here at once, on the main thread)."""
    real_set = signal.signal
    came: list[int] = []

    def set_then_sigterm(signum: int, handler: Any) -> Any:
        before = real_set(signum, handler)
        if not came:
            came.append(signum)
            signal.raise_signal(signal.SIGTERM)
        return before

    monkeypatch.setattr(signal, "signal", set_then_sigterm)


@pytest.mark.parametrize(
    "block", [held_signals, stops_wait_for_clean_up], ids=["held_signals", "stops_wait_for_clean_up"]
)
def test_a_stop_between_two_handler_sets_leaves_no_handler_of_the_block(
    block: Callable[[], AbstractContextManager[object]],
    monkeypatch: pytest.MonkeyPatch,
    restore_signal_handlers: None,
) -> None:
    # A stop that came after the block set Ctrl-C's handler, before it set SIGTERM's, left Ctrl-C's set
    # for good: ``held_signals``' only added each later Ctrl-C to a list nobody read (Ctrl-C did nothing).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, raise_stopped)
    _sigterm_right_after_the_first_set(monkeypatch)
    with pytest.raises(Stopped), block():
        pytest.fail("the block ran")
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is raise_stopped
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_a_sigterm_just_after_its_handler_is_set_leaves_the_default_back(
    monkeypatch: pytest.MonkeyPatch, restore_signal_handlers: None
) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    _sigterm_right_after_the_first_set(monkeypatch)
    with pytest.raises(Stopped), stopped_as_interrupt():
        pytest.fail("the block ran")
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


# A command that fails as ``run_command`` names, run with stderr on a full disk: (argv, variables, status).
_FAILING_COMMANDS = {
    "bad setting": (["-m", "skuforge_cli", "config"], {"SKUFORGE_LOG_LEVEL": "LOUD"}, 2),
    # `skuforge flow > log 2>&1` on a full disk: stdout fails, then the line that says so.
    "stdout too": (["-m", "skuforge_cli", "config", "--markdown"], {}, 1),
    "interrupted": (
        [
            "-c",
            "import sys; from shared.commands import run_command\n"
            "def interrupted():\n    raise KeyboardInterrupt\n"
            "sys.exit(run_command('skuforge planted', interrupted))",
        ],
        {},
        130,
    ),
}


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("case", sorted(_FAILING_COMMANDS))
def test_a_failure_keeps_its_exit_status_when_stderr_cannot_be_written(case: str) -> None:
    # `skuforge config 2> log` on a full disk: the one line failed too, raised from run_command, and every
    # failure ended with status 1 (a bad setting's is 2, Ctrl-C's 130), whatever a script tested for.
    argv, variables, status = _FAILING_COMMANDS[case]
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, *argv],
            stdout=full if case == "stdout too" else subprocess.DEVNULL,
            stderr=full,
            cwd=ROOT,
            env={**os.environ, **variables},
            timeout=120,
            check=False,
        )
    assert done.returncode == status


def test_the_line_that_cannot_be_written_raises_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def bad_setting() -> int:
        raise ConfigError("invalid configuration:\n  SKUFORGE_LOG_LEVEL: planted")

    with open("/dev/full", "w", buffering=1) as full:
        monkeypatch.setattr(sys, "stderr", full)
        assert run_command("skuforge planted", bad_setting) == 2
        full.flush()  # what was left of the line is not written again: the interpreter's exit flushes it


@pytest.fixture
def root_logging_back() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_commands_log_level_holds_beside_a_bad_setting_of_another_kind(
    monkeypatch: pytest.MonkeyPatch, root_logging_back: None
) -> None:
    # configure_command_logging read the log level by loading every shared setting: one bad setting the
    # command may never read set it back to INFO, and `SKUFORGE_LOG_LEVEL=WARNING` showed the INFO lines.
    monkeypatch.setenv("SKUFORGE_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("SKUFORGE_MAX_POLL_RECORDS", "many")
    configure_command_logging()
    assert logging.getLogger().level == logging.WARNING


def test_a_bad_log_level_is_left_for_the_command_to_refuse(
    monkeypatch: pytest.MonkeyPatch, root_logging_back: None, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKUFORGE_LOG_LEVEL", "LOUD")
    configure_command_logging()
    assert logging.getLogger().level == logging.INFO
    assert capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match="SKUFORGE_LOG_LEVEL: Input should be 'DEBUG', 'INFO'"):
        load_settings()


@pytest.mark.parametrize(
    ("model", "field", "from_env", "override"),
    [
        (GateSettings, "gate_category_overrides", {"apple": {"iou_min": 0.5}}, {"pear": {"iou_min": 0.6}}),
        (GenerationSettings, "generation_backend_mix", {"diffusion": 1}, {"composite": 1}),
        (GenerationSettings, "generation_parameters", {"occluders": 1}, {"scene": "studio"}),
    ],
)
def test_an_override_of_a_json_setting_replaces_the_environments(
    model: type[BaseSettings],
    field: str,
    from_env: dict[str, object],
    override: dict[str, object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pydantic-settings deep-merges a dict from the environment with one given to the model: an override
    # could then not drop a key. These settings are read as text (NoDecode), which it does not merge.
    monkeypatch.setenv(f"SKUFORGE_{field.upper()}", json.dumps(from_env))
    assert getattr(load_settings(model), field).keys() == from_env.keys()
    assert getattr(load_settings(model, **{field: override}), field).keys() == override.keys()


def test_every_dict_setting_is_read_as_text() -> None:
    # The reason the test above holds: a dict setting pydantic-settings decoded itself would be merged.
    dict_settings = [
        (model.__name__, name, NoDecode in field.metadata)
        for model in SETTINGS_MODELS
        for name, field in model.model_fields.items()
        if get_origin(field.annotation) is dict
    ]
    assert dict_settings and all(no_decode for _, _, no_decode in dict_settings), dict_settings


def _no_hard_links(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's cache on a file system without hard links (vfat, some network mounts): EPERM."""

    def refused(source: object, destination: object, **_: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", str(source))

    monkeypatch.setattr(os, "link", refused)


def test_a_cache_without_hard_links_gets_a_whole_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, store = tmp_path / "cache", tmp_path / "store"
    uri = publish(store, "v1/model.onnx", b"version one")
    _no_hard_links(monkeypatch)
    copy = fetch_file(uri, cache, uri_from="the test")
    assert copy.read_bytes() == b"version one"
    assert copies(cache) == [copy.name]  # no partial file left beside it
    release(copy)


def test_without_hard_links_a_copy_another_stage_put_in_place_is_used_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without hard links the fallback renamed this download over the whole copy another stage had just
    # put there and held: its lock was then on a deleted file, and the copy it used could be pruned.
    cache, store = tmp_path / "cache", tmp_path / "store"
    uri = publish(store, "v1/model.onnx", b"version one")
    with another_stage_fetching_meanwhile(monkeypatch, uri, cache) as theirs:
        _no_hard_links(monkeypatch)
        copy = fetch_file(uri, cache, uri_from="the test")
        assert copy.read_bytes() == b"version one"
        assert copy.stat().st_ino == theirs[0], "the copy the other stage holds was replaced under it"
        assert copies(cache) == [copy.name]
        release(copy)
