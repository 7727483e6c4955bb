"""A new user's walkthrough of README and docs/, held to what the commands really do (review 45).

- `make demo`'s transcript in README shows `skuforge up` starting Kafka in one line (`up  kafka: ready`);
  run as written, the terminal showed a dozen kafka-python `ERROR ... Connection failed: ... ECONNREFUSED`
  and `Bootstrap failed` lines first: up's readiness probe opened an admin client while the JVM was
  still booting and nothing listened on the port yet.
- docs/captioner.md tells a user to run `python -m shared.captioning.fit_shape --out FILE`; its
  `--help` printed the module docstring reflowed (the three example commands run together into one
  paragraph), with its reStructuredText quotes, and nine of its options did not say their default.
  Every module the docs run with `python -m` (ten benchmarks printed that markup too, and
  bench.matting ran its list of configurations into one paragraph) is held to what `skuforge`'s
  commands are (tests/test_cli_help.py): help as text.
- Every module the docs run with `python -m` (the benchmarks too) says each option's default in its
  `--help`, as `skuforge`'s commands do: 57 options of 12 benchmarks did not.
- docs/matting.md runs `skuforge matting official --pth var/models/u2netp-official.pth`: without
  `--wheel` or `--onnx` it checks and converts the ONNX already at `--out`. Its help said only "the
  checked ONNX (default: set-up's path)", so `--out /tmp/x.onnx --pth /tmp/x.pth`, read as "write them
  there", was refused with "no official U2-NetP at /tmp/x.onnx"; and set-up's path is
  SKUFORGE_OFFICIAL_U2NETP's when set, which it did not say.
- README runs `python -m bench.gate`, `python -m bench.matting`...; their `--help` began
  `usage: gate.py [-h] ...` and their usage errors `gate.py: error: ...`: a file name no reader can
  run from the repository (`python gate.py` is no command), where `skuforge`'s and the other modules'
  say the command typed. Every module the docs or the Makefile run with `python -m` now names itself so.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

import devstack.up
from devstack.broker import LocalKafka
from devstack.up import build_config, build_specs
from shared.observability import configure_command_logging
from tests.support.docs import DOCS, ROOT, command_parsers, silent_defaults


def test_up_waiting_for_its_booting_broker_prints_no_kafka_connection_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The stack's own broker process runs but does not listen yet (a free port: nothing on it).
    monkeypatch.setattr(LocalKafka, "is_running", lambda self: True)
    config = build_config(tmp_path, ports_mode="free")
    kafka = next(spec for spec in build_specs(config) if spec.name == "kafka")
    assert kafka.ready is not None
    configure_command_logging("INFO")  # as `skuforge up` shows log lines on its terminal
    assert not kafka.ready()
    assert not devstack.up.kafka_ready(config.kafka_bootstrap)
    stderr = capsys.readouterr().err
    assert "kafka.net" not in stderr
    assert "ECONNREFUSED" not in stderr


# Every module of this repository the docs or the Makefile run with `python -m` (skuforge_cli is
# `skuforge`, checked by tests/test_cli_help.py), that parses arguments.
RUN_MODULES = sorted(
    {
        module
        for text in [*(doc.read_text() for doc in DOCS), (ROOT / "Makefile").read_text()]
        for module in re.findall(r"python3? -m ((?:bench|devstack|schemas|services|shared)(?:\.\w+)+)", text)
        if inspect.signature(importlib.import_module(module).main).parameters
    }
)


def test_the_docs_run_the_benchmarks_and_fit_shape() -> None:
    assert {"bench.gate", "bench.matting", "bench.matting_real", "shared.captioning.fit_shape"} <= set(
        RUN_MODULES
    )


@pytest.mark.parametrize("module", RUN_MODULES)
def test_a_modules_help_reads_as_text(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    assert "``" not in capsys.readouterr().out, f"python -m {module} --help prints docstring markup (``)"


@pytest.mark.parametrize("module", RUN_MODULES)
def test_a_modules_usage_names_the_command_a_reader_types(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    usage = capsys.readouterr().out.split("\n", 1)[0]
    # argparse gives a long command a line of its own, its options on the next ones.
    assert f"{usage} ".startswith(f"usage: python -m {module} "), f"python -m {module} --help: {usage!r}"


@pytest.mark.parametrize("module", RUN_MODULES)
def test_every_option_of_a_module_the_docs_run_states_its_default(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench.gate's --seed ran 2026 and bench.store's --skus 1000, and their --help said neither."""
    main = importlib.import_module(module).main
    parsers = command_parsers([], monkeypatch, entry=main)
    silent = [name for prog, parser in parsers for name in silent_defaults(prog, parser)]
    assert not silent, f"these options' help does not say their default: {silent}"


def test_matting_official_says_its_out_is_read_without_wheel_or_onnx(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from skuforge_cli.main import main as skuforge_main

    with pytest.raises(SystemExit):
        skuforge_main(["matting", "official", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    out_help = shown[shown.index("--out OUT ") : shown.index("--pth PTH ", shown.index("--out OUT "))]
    assert "without --wheel or --onnx" in out_help, out_help
    assert "SKUFORGE_OFFICIAL_U2NETP" in out_help, out_help
