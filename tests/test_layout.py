"""The tree is the architecture: a service's folder imports the platform, the model libraries and the
contracts, never another service's folder. What two services share lives in ``shared/`` (or, for a
message shape, in ``schemas/``), so a service can be read, changed and deployed on its own. Likewise
a model library (``shared/matting/``, ``shared/captioning/``...) reaches another only through the entry
points docs/architecture.md names, and takes shared arithmetic from ``shared/arith/``.

Read with ``ast``, not by importing, so the check needs none of the services' dependencies.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "services"


def _service_files() -> Iterator[tuple[str, Path]]:
    """(service, file) for every Python file under ``services/<service>/``."""
    for folder in sorted(p for p in SERVICES.iterdir() if p.is_dir() and p.name != "__pycache__"):
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" not in path.parts:
                yield folder.name, path


def imported_services(source: str, module: str) -> Iterator[tuple[int, str]]:
    """(line, service) for each import in ``source`` that reaches ``services.<service>``.

    ``module`` is the file's dotted name (``services.gate.stage``), to resolve relative imports.
    Covers ``import services.x``, ``from services.x import ...``, ``from services import x``,
    relative imports, and ``import_module("services.x...")`` with a literal name.
    """
    package = module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Import | ast.ImportFrom | ast.Call):
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            stem = ".".join([*base, *([node.module] if node.module else [])])
            names = [f"{stem}.{alias.name}" for alias in node.names]  # 'from services import x'
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        for name in names:
            parts = name.split(".")
            if len(parts) >= 2 and parts[0] == "services":
                yield node.lineno, parts[1]


def test_the_check_sees_every_form_of_import() -> None:
    source = """
import services.gate.stage
from services.matting.config import MattingSettings
from services import captioner
from ..generator import config
from . import helpers
from .config import LoraTrainerSettings
importlib.import_module("services.console.api")
from shared.config import Settings
"""
    found = {service for _, service in imported_services(source, "services.lora_trainer.stage")}
    assert found == {"gate", "matting", "captioner", "generator", "lora_trainer", "console"}


def test_no_service_imports_another_service() -> None:
    files = list(_service_files())
    assert len({service for service, _ in files}) >= 5, f"no services found under {SERVICES}"
    crossings = []
    for service, path in files:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for line, other in imported_services(path.read_text(encoding="utf-8"), module):
            if other != service:
                crossings.append(f"{path.relative_to(ROOT)}:{line} imports services.{other}")
    if crossings:
        pytest.fail(
            "a service reaches into another service's folder; move what they share to shared/ "
            "(or schemas/ for a message shape):\n  " + "\n  ".join(crossings)
        )


LIBRARIES = ("matting", "captioning", "generation", "lora_training", "gate", "trainstore", "evaluation")
# What docs/architecture.md names as the libraries' public entry points into each other; arithmetic two
# libraries share lives in shared/arith/ (the renderer, shared/synth/, is open to all).
ENTRY_POINTS = {
    "matting": {"generation.backend", "generation.composite"},  # training renders composite scenes
    "lora_training": {"generation.adapters", "generation.backend", "generation.composite"},
}
# One file's crossing, where its library as a whole has none: a command, not the library, opens the
# other library's model.
FILE_ENTRY_POINTS = {
    "shared/captioning/fit_shape.py": {"matting.session"},  # its --mask-source session opens U2-NetP
}


def imported_modules(source: str, module: str = "") -> Iterator[tuple[int, str]]:
    """(line, dotted module) for each import in ``source``, wherever it is (in a function too).

    ``module`` is the file's dotted name (``shared.captioning.evaluate``), to resolve relative imports.
    ``from a.b import c`` gives ``a.b`` and ``a.b.c`` (``c`` may be a module: ``from shared import
    matting``); ``import_module("a.b")`` and ``__import__("a.b")`` with a literal name give ``a.b``.
    """
    package = module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            stem = ".".join([*base, *([node.module] if node.module else [])])
            if not stem:
                continue
            yield node.lineno, stem
            yield from ((node.lineno, f"{stem}.{alias.name}") for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def library_crossings(source: str, path: str) -> list[tuple[int, str]]:
    """(line, module) for each import in the file at ``path`` (``shared/<library>/...``, relative to the
    root) that reaches another model library other than through an entry point it is allowed."""
    library = path.split("/")[1]
    allowed = ENTRY_POINTS.get(library, set()) | FILE_ENTRY_POINTS.get(path, set())
    module = path.removesuffix(".py").replace("/", ".")
    crossings: list[tuple[int, str]] = []
    for line, name in imported_modules(source, module):
        parts = name.split(".")
        if len(parts) < 2 or parts[0] != "shared" or parts[1] not in LIBRARIES or parts[1] == library:
            continue
        seen = any(line == other and name.startswith(f"{crossed}.") for other, crossed in crossings)
        if ".".join(parts[1:3]) not in allowed and not seen:  # `from a.b import c`: a.b, not a.b.c too
            crossings.append((line, name))
    return crossings


def test_the_library_check_sees_every_form_of_import() -> None:
    # `from shared import matting`, a relative import and an import inside a function each reached the
    # matting library from captioning unseen: only `from shared.matting.x import` at any depth was read.
    source = """
from shared import matting
from ..matting.roi import Box
from .attributes import shape_features
from shared.arith.masks import convex_hull

def fit():
    from shared.matting.session import open_session
    import shared.gate.checks
    importlib.import_module("shared.generation.backend")
"""
    found = {name for _, name in library_crossings(source, "shared/captioning/evaluate.py")}
    assert found == {
        "shared.matting",
        "shared.matting.roi",
        "shared.matting.session",
        "shared.gate.checks",
        "shared.generation.backend",
    }
    # The one file allowed a crossing is allowed that one only.
    found = {name for _, name in library_crossings(source, "shared/captioning/fit_shape.py")}
    assert found == {
        "shared.matting",
        "shared.matting.roi",
        "shared.gate.checks",
        "shared.generation.backend",
    }


def test_a_model_library_reaches_another_only_through_its_entry_points() -> None:
    # shared/matting/grocery.py took hull_mask from the captioner's attributes module: arithmetic that
    # belongs in shared/arith/, reached through another library's internals.
    crossings = []
    for library in LIBRARIES:
        for path in sorted((ROOT / "shared" / library).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            for line, module in library_crossings(path.read_text(encoding="utf-8"), relative):
                crossings.append(f"{relative}:{line} imports {module}")
    if crossings:
        pytest.fail(
            "a model library reaches into another one; move shared arithmetic to shared/arith/, or name "
            "the entry point in docs/architecture.md and ENTRY_POINTS:\n  " + "\n  ".join(crossings)
        )


# Code that ships or runs outside the test suite: the benches (`make bench`) and everything the image holds.
OUTSIDE_THE_TESTS = ("bench", "devstack", "schemas", "services", "shared", "skuforge_cli")


def test_nothing_outside_the_tests_imports_the_test_tree() -> None:
    # bench/bus.py, bench/scale.py, bench/generation.py and bench/adapters.py took their Kafka, Triton
    # and tiny-model helpers from tests/support/: a shipped bench depended on the test tree. The tests
    # may import bench/, not the other way.
    crossings = []
    for top in OUTSIDE_THE_TESTS:
        for path in sorted((ROOT / top).rglob("*.py")):
            for line, module in imported_modules(path.read_text(encoding="utf-8")):
                if module == "tests" or module.startswith("tests."):
                    crossings.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    if crossings:
        pytest.fail(
            "code outside tests/ imports the test tree; move the helper to bench/ (or shared/ when a "
            "service needs it too) and have tests/support/ import it from there:\n  " + "\n  ".join(crossings)
        )


# docs/architecture.md's "may import" words for the folders at the bottom of the tree, and the imports
# they stand for.
MAY_IMPORT_WORDS = {
    "pydantic": "pydantic",
    "numpy": "numpy",
    "PIL": "PIL",
    "`arith/`": "shared.arith",
    "`schemas/`": "schemas",
}


def may_import(architecture: str, folder: str) -> set[str]:
    """What the "Where the code lives" table says ``folder`` (``shared/synth/``) may import."""
    row = next(line for line in architecture.splitlines() if line.startswith(f"| `{folder}` |"))
    cell = row.rstrip(" |").rsplit(" | ", 1)[1]
    return {module for word, module in MAY_IMPORT_WORDS.items() if word in cell}


def imports_beyond_stdlib(folder: str) -> dict[str, set[str]]:
    """What the files of ``folder`` import outside the standard library and the folder itself: a
    package's name, or ``shared.arith`` and ``schemas`` for those parts of this tree → the files."""
    import sys

    own = folder.rstrip("/").replace("/", ".")
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root in sys.stdlib_module_names or root == "__future__" or name.startswith(own):
                    continue
                module = "shared.arith" if name.startswith("shared.arith") else root
                found.setdefault(module, set()).add(f"{path.relative_to(ROOT)}")
    return found


@pytest.mark.parametrize("folder", ["schemas/", "shared/arith/", "shared/synth/"])
def test_the_bottom_of_the_tree_imports_what_the_architecture_says(folder: str) -> None:
    architecture = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    beyond = {
        module: sorted(files)
        for module, files in imports_beyond_stdlib(folder).items()
        if module not in may_import(architecture, folder)
    }
    assert not beyond, f"{folder} imports what docs/architecture.md's table does not allow it: {beyond}"


def test_an_import_the_architecture_does_not_allow_is_caught() -> None:
    table = (
        "| `shared/arith/` | small shared arithmetic | numpy |\n| `shared/synth/` | the renderer | numpy |"
    )
    assert may_import(table, "shared/synth/") == {"numpy"}
    assert "PIL" in imports_beyond_stdlib("shared/synth/")
