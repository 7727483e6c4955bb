"""Every command's path options refuse an empty path (review 45).

``type=Path`` reads "" (``--out "$OUT"`` with OUT unset) as Path(""), the current folder: ``skuforge
synth --out ""`` rendered its SKUs where the user stood, ``skuforge demo --out ""`` put its report.html
and images/ there, a benchmark's ``--out ""`` ran for minutes before "is a folder". Each path
option of the skuforge commands, the local stack and the benchmarks is ``path_argument`` now: exit 2,
naming the option, before any work.

Each empty path is given beside an option no command has: a value the parser took ends in
"unrecognized arguments" there, never in a run (``skuforge up`` and ``demo`` would start a stack).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.support.cli import refusal_of

REPO = Path(__file__).resolve().parents[1]
UNKNOWN = "--no-such-option-review45"

# (module, argv with "" where the path goes, the option argparse names)
EMPTY_PATHS = [
    (
        "services.generator.cli",
        ["register", "a1", "", "--kind", "general", "--base-model", "m"],
        "weights",
    ),
    ("services.console.cli", ["export-labelstudio", "--out", ""], "--out"),
    ("services.console.cli", ["export-labelstudio", "--out", "t.json", "--config-out", ""], "--config-out"),
    ("services.console.cli", ["import-labelstudio", ""], "export"),
    ("devstack.broker", ["start", "--data-dir", ""], "--data-dir"),
    ("devstack.broker", ["stop", "--data-dir", ""], "--data-dir"),
    ("devstack.dashboard", ["render", "--prometheus", "http://127.0.0.1:9090", "--out", ""], "--out"),
    ("devstack.up", ["--workdir", ""], "--workdir"),
    ("devstack.up", ["--with-prometheus", "--prometheus-rules", ""], "--prometheus-rules"),
    ("devstack.demo.demo", ["--out", ""], "--out"),
    ("devstack.demo.demo", ["--workdir", ""], "--workdir"),
    ("devstack.demo.demo", ["--skus", ""], "--skus"),
    (
        "skuforge_cli.synth",
        ["--out", "", "--skus", "1", "--photos-per-sku", "1", "--seed", "1"],
        "--out",
    ),
    ("bench.generation", ["--out", ""], "--out"),
    ("bench.bus", ["--out", ""], "--out"),
    ("bench.adapters", ["--out", ""], "--out"),
    ("bench.leakage_bars", ["--grocery-dataset", ""], "--grocery-dataset"),
    ("bench.dlq_memory", ["--before", ""], "--before"),
    ("bench.dlq_memory", ["--out", ""], "--out"),
    ("bench.gate", ["--out", ""], "--out"),
    ("bench.scale", ["--out", ""], "--out"),
    ("bench.scale", ["--workdir", ""], "--workdir"),
    ("bench.captioner", ["--grocery-dataset", ""], "--grocery-dataset"),
    ("bench.captioner", ["--out", ""], "--out"),
    ("bench.store", ["--out", ""], "--out"),
    ("bench.augment", ["--dataset", ""], "--dataset"),
    ("bench.augment", ["--dataset", "d", "--drop-synthetic-from", ""], "--drop-synthetic-from"),
    ("bench.augment", ["--dataset", "d", "--workdir", ""], "--workdir"),
    ("bench.augment", ["--dataset", "d", "--out", ""], "--out"),
    ("bench.matting", ["--fp32", ""], "--fp32"),
    ("bench.matting", ["--int8", ""], "--int8"),
    ("bench.matting", ["--weights", ""], "--weights"),
    ("bench.matting", ["--out", ""], "--out"),
    ("bench.caption_colours", ["--grocery-dataset", ""], "--grocery-dataset"),
    ("bench.caption_colours", ["--mask-cache", ""], "--mask-cache"),
    ("bench.edge_recolour", ["--dataset", ""], "--dataset"),
    ("bench.edge_recolour", ["--dataset", "d", "--workdir", ""], "--workdir"),
    ("bench.edge_recolour", ["--dataset", "d", "--out", ""], "--out"),
]


@pytest.mark.parametrize(("module", "argv", "option"), EMPTY_PATHS, ids=lambda value: str(value))
def test_an_empty_path_is_refused_naming_its_option(
    module: str,
    argv: list[str],
    option: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Run in an empty folder: read as ".", the option named the folder the command ran in.
    monkeypatch.chdir(tmp_path)
    refusal = refusal_of(importlib.import_module(module).main, [*argv, UNKNOWN], capsys)
    assert f"argument {option}: the path is empty (an unset shell variable?)" in refusal
    assert "unrecognized arguments" not in refusal
    assert not any(tmp_path.iterdir()), "it wrote into the folder it ran in"


def _path_types(source: str) -> list[int]:
    """The lines of ``source`` that give an argument ``type=Path`` (or ``pathlib.Path``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.keyword) and node.arg == "type":
            value = node.value
            name = value.attr if isinstance(value, ast.Attribute) else getattr(value, "id", None)
            if name == "Path":
                found.append(node.value.lineno)
    return found


def test_no_command_reads_a_path_option_as_a_bare_path() -> None:
    # A new `type=Path` would read an unset shell variable as the current folder again.
    folders = ["services", "devstack", "skuforge_cli", "bench", "shared", "schemas"]
    offenders = [
        f"{file.relative_to(REPO)}:{line}"
        for folder in folders
        for file in sorted((REPO / folder).rglob("*.py"))
        for line in _path_types(file.read_text())
    ]
    assert not offenders, f"type=Path, which reads '' as the current folder; use path_argument: {offenders}"


def test_the_check_finds_a_bare_path_type() -> None:
    source = 'p.add_argument("--out", type=Path)\np.add_argument("--in", type=pathlib.Path)\n'
    assert _path_types(source) == [1, 2]
    assert _path_types('p.add_argument("--out", type=path_argument("file"))\n') == []
