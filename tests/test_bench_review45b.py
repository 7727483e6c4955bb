"""Review 45b of the bench commands: a refusal inside a run (a NaN figure) ends in one line and an exit
status, not a traceback, for every bench module with a command line. The benchmarks are not run: the
first piece of each one's work is replaced by one that refuses."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.argtypes import NonFiniteFigure

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _files(tmp_path: Path, *names: str) -> list[Path]:
    """Empty files under ``tmp_path`` named ``names`` (models the run would open)."""
    paths = [tmp_path / name for name in names]
    for path in paths:
        path.write_bytes(b"")
    return paths


def _matting_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    (tmp_path / "val.txt").write_text("")
    ours, ours_int8, official = _files(tmp_path, "ours.onnx", "ours_int8.onnx", "official.onnx")
    monkeypatch.setattr("shared.matting.official.verify_md5", _refuse)
    argv = ["--dataset", str(tmp_path), "--ours", str(ours), "--ours-int8", str(ours_int8)]
    return [*argv, "--official", str(official), "--renderer", "0", "--out", str(tmp_path / "o.json")]


def _matting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    fp32, int8, weights = _files(tmp_path, "fp32.onnx", "int8.onnx", "weights.pth")
    monkeypatch.setenv("REMBG_PYTHON", "/bin/true")  # its probe for rembg passes
    monkeypatch.setattr("bench.matting._run_worker", _refuse)
    argv = ["--fp32", str(fp32), "--int8", str(int8), "--weights", str(weights)]
    return [*argv, "--out", str(tmp_path / "o.json")]


def _dlq_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", "127.0.0.1:9")  # no broker of its own is started
    monkeypatch.setattr("bench.dlq_memory.measure", _refuse)
    return ["--letters", "1", "--out", str(tmp_path / "o.json")]


def _patched(
    target: str, argv: Callable[[Path], list[str]]
) -> Callable[[Path, pytest.MonkeyPatch], list[str]]:
    """A case whose work starts at ``target`` (``module.attribute``), run with ``argv(tmp_path)``."""

    def case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        monkeypatch.setattr(target, _refuse)
        return argv(tmp_path)

    return case


def _out(tmp_path: Path) -> list[str]:
    return ["--out", str(tmp_path / "o.json")]


# module: how to reach its work with the work refusing; the argv to give main.
CASES: dict[str, Callable[[Path, pytest.MonkeyPatch], list[str]]] = {
    "matting_real": _matting_real,
    "matting": _matting,
    "scale": _patched("bench.scale.machine", lambda tmp: [*_out(tmp), "--workdir", str(tmp / "w")]),
    "store": _patched("bench.store.build_store", lambda tmp: ["--items", "1", "--skus", "1", *_out(tmp)]),
    "generation": _patched("bench.generation.bench_backend", _out),
    "bus": _patched("bench.bus.LocalKafka", _out),
    "adapters": _patched("bench.tiny_diffusion.build_tiny_inpaint_pipeline", _out),
    "matting_memory": _patched("bench.matting_memory._child", lambda tmp: ["--config", "1mp_x1", *_out(tmp)]),
    "dlq_memory": _dlq_memory,
    "leakage_bars": _patched("bench.leakage_bars.padded_copies", lambda tmp: ["--grocery-dataset", str(tmp)]),
}

FIGURE = "o.json: speedup_vs_rembg_b8 is nan, which JSON has not, so it was not written"


def _refuse(*args: object, **kwargs: object) -> None:
    raise NonFiniteFigure(FIGURE)


@pytest.mark.parametrize("module", sorted(CASES))
def test_a_nan_figure_inside_a_bench_run_ends_in_one_line_naming_it(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # These mains ran outside shared.commands.run_command: a NaN figure (or the store away) at the end of
    # a long run was a traceback of our frames. Now one line after the command's name, and exit 1.
    argv = CASES[module](tmp_path, monkeypatch)
    main = importlib.import_module(f"bench.{module}").main
    assert main(argv) == 1
    assert capsys.readouterr().err == f"python -m bench.{module}: {FIGURE}\n"


def _bench_mains() -> dict[str, ast.FunctionDef]:
    """Each bench script's module-level ``main``, by its name under bench/ (``matting_real``,
    ``data.matting_real.make_catalogue_masks``): the scripts in its folders too, which the mask sets'
    scripts are."""
    mains = {}
    for path in sorted(BENCH.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name == "main":
                mains[".".join(path.relative_to(BENCH).with_suffix("").parts)] = node
    return mains


def test_every_bench_main_runs_through_run_command() -> None:
    # A new bench module with a command line is caught here: outside run_command, a refusal it can name
    # (a NaN figure, a bad setting, the store away, Ctrl-C) was a traceback.
    mains = _bench_mains()
    assert set(CASES) <= set(mains)  # the cases above are mains still
    outside = [
        name
        for name, main in mains.items()
        if not any(
            isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "run_command"
            for call in ast.walk(main)
        )
    ]
    assert outside == []


@pytest.mark.parametrize(
    ("module", "work", "argv"),
    [("matting", "worker", ["--worker", "rembg"]), ("matting_memory", "speed_worker", ["--worker", "speed"])],
)
def test_a_bench_worker_child_does_not_import_what_run_command_does(
    module: str, work: str, argv: list[str]
) -> None:
    # A worker's peak RSS and its modules are figures of the run: pydantic and the settings imported for
    # run_command were counted in them, and bench.matting's rembg worker runs in a venv without pydantic.
    # In a fresh interpreter, as the run starts its workers.
    script = (
        "import sys\n"
        f"import bench.{module} as bench\n"
        f"bench.{work} = lambda *args, **kwargs: {{'images_per_s': 1.0}}\n"
        f"assert bench.main({argv!r}) == 0\n"
        "print(sorted(name for name in sys.modules if name.partition('.')[0] in ('pydantic', 'schemas')"
        " or name in ('shared.commands', 'shared.config')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=BENCH.parent, capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines()[-1] == "[]"
