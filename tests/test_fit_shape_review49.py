"""`python -m shared.captioning.fit_shape`: the generated module names its --matting-model safely."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

from shared.captioning import fit_shape
from tests.support.captioning import TINY_FIT_SHAPE


def test_an_odd_matting_model_path_reaches_the_generated_docstring_whole_and_quoted(tmp_path: Path) -> None:
    """The path went raw into the generated module's docstring: a '\"\"\"' ended it (the module no longer
    parsed, or ran what followed), a backslash made an invalid escape, a bidi control reordered the
    source as read. Now the module parses, its source holds no control character, and its docstring's
    command gives the path back as one shell word."""
    model = '/models/a"""b\\N\'x\n\u202e.onnx'
    out = tmp_path / "tree.py"
    assert fit_shape.main([*TINY_FIT_SHAPE, "--matting-model", model, "--out", str(out)]) == 0
    source = out.read_text(encoding="utf-8")
    assert "\u202e" not in source
    doc = ast.get_docstring(ast.parse(source), clean=False)
    assert doc is not None
    command = doc.split("Command: ", 1)[1].split("\nData: ", 1)[0].replace("\n    ", " ")
    words = shlex.split(command)
    assert words[words.index("--matting-model") + 1] == model


def test_a_matting_model_path_of_bytes_not_utf8_is_written_escaped_and_reads_back(tmp_path: Path) -> None:
    """A path given in bytes that are not UTF-8 reaches argv with surrogate escapes (``\\udce9``):
    written as is, the module's ``write_text(encoding="utf-8")`` failed after the whole fit, with
    nothing written. Now it is written as an escape, and the docstring's command reads back as the path."""
    model = "/models/caf\udce9.onnx"  # b"/models/caf\xe9.onnx" as os.fsdecode gives it
    out = tmp_path / "tree.py"
    assert fit_shape.main([*TINY_FIT_SHAPE, "--matting-model", model, "--out", str(out)]) == 0
    source = out.read_text(encoding="utf-8")
    doc = ast.get_docstring(ast.parse(source), clean=False)
    assert doc is not None
    command = doc.split("Command: ", 1)[1].split("\nData: ", 1)[0].replace("\n    ", " ")
    words = shlex.split(command)
    assert words[words.index("--matting-model") + 1] == model
