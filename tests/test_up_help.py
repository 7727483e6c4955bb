"""``skuforge up --help`` and ``skuforge demo --help`` say what the code does and what
docs/up-and-demo.md says: an option's help names its real default and its real limits, and an option
the doc writes with a placeholder (``--size PX``) is shown with the same one."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from devstack.demo.demo import main as demo_main
from devstack.up import main as up_main

DOC = Path(__file__).resolve().parent.parent / "docs" / "up-and-demo.md"
COMMANDS: dict[str, Callable[[list[str]], int]] = {"skuforge up": up_main, "skuforge demo": demo_main}


def help_text(command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """What ``COMMAND --help`` prints, each option's help on one line (a wide terminal)."""
    monkeypatch.setenv("COLUMNS", "2000")
    with pytest.raises(SystemExit):
        COMMANDS[command](["--help"])
    return capsys.readouterr().out


def option_help(
    command: str, option: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> str:
    """The help of ``option`` in ``COMMAND --help``, in one line (a long option's help starts below it)."""
    lines = help_text(command, capsys, monkeypatch).splitlines()
    (start,) = [i for i, line in enumerate(lines) if re.match(rf"\s+{option}( |$)", line)]
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(r"\s{1,4}-", lines[i]) or not lines[i].strip()),
        len(lines),
    )
    return " ".join(" ".join(lines[start:end]).split())


def test_ups_backend_help_says_it_repeats_and_must_name_every_backend_of_the_mix(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said neither: `--backend composite` under a composite + diffusion mix is refused (exit 2),
    and the doc says so, but the help read as one backend, any of them."""
    shown = option_help("skuforge up", "--backend", capsys, monkeypatch)
    assert "repeat" in shown
    assert re.search(r"every backend (of|that) SKUFORGE_GENERATION_BACKEND_MIX", shown), shown


def test_demos_variants_help_names_the_setting_it_defaults_to(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said "(default 6)", while a stack the demo starts makes SKUFORGE_GENERATION_VARIANTS_PER_SKU
    images per SKU when that is set (test_demo_report checks that it does)."""
    shown = option_help("skuforge demo", "--variants", capsys, monkeypatch)
    assert "SKUFORGE_GENERATION_VARIANTS_PER_SKU" in shown and "else 6" in shown, shown


def doc_placeholders() -> list[tuple[str, str]]:
    """Every ``--option PLACEHOLDER`` docs/up-and-demo.md writes in code (``--size PX``)."""
    return sorted(set(re.findall(r"`[^`]*?(--[a-z][a-z-]*) ([A-Z][A-Z:_]*)(?![a-z])", DOC.read_text())))


def test_the_doc_writes_options_with_placeholders() -> None:
    assert ("--skus", "DIR") in doc_placeholders()


@pytest.mark.parametrize(("option", "placeholder"), doc_placeholders())
def test_an_option_the_doc_writes_with_a_placeholder_shows_the_same_one_in_its_help(
    option: str, placeholder: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The doc wrote `--size PX`, the help `--size N`; `--kafka-bootstrap HOST:PORT`, the help
    `--kafka-bootstrap KAFKA_BOOTSTRAP`."""
    shown = {command: help_text(command, capsys, monkeypatch) for command in COMMANDS}
    having = [command for command, text in shown.items() if re.search(rf"\s{option}\b", text)]
    assert having, f"docs/up-and-demo.md writes {option}, which neither command has"
    for command in having:
        assert f"{option} {placeholder}" in shown[command], (
            f"docs/up-and-demo.md writes `{option} {placeholder}`; `{command} --help` shows it otherwise"
        )


def test_ups_grace_help_names_its_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The doc says SIGKILL after `--grace-s` (20 s); the help named no default."""
    assert "(default 20)" in option_help("skuforge up", "--grace-s", capsys, monkeypatch)


def test_ups_ports_help_says_which_ports_auto_moves_and_when_it_refuses(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said "auto: ... free ones if taken", and a Triton or console port taken while the stack started
    stopped the start-up (not moved: every service's settings carry them), read as auto not covering
    them. The help now names the ports auto covers, and the ones it then refuses instead of moving."""
    shown = option_help("skuforge up", "--ports", capsys, monkeypatch)
    auto = shown.split("auto", 1)[1].split("default:", 1)[0]
    assert "Triton" in auto and "console" in auto, shown
    assert "stops the start-up" in auto, shown
