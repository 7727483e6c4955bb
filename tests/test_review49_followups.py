"""Review 49 follow-ups: the generated shape module names a --matting-model path with spaces whole."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

from shared.captioning import fit_shape

TINY = [
    "--products",
    "8",
    "--eval-products",
    "0",
    "--cartons",
    "0",
    "--mask-source",
    "truth",
    "--min-leaf",
    "1",
]


def test_a_matting_model_path_with_spaces_is_not_broken_across_docstring_lines(tmp_path: Path) -> None:
    """``textwrap.fill`` broke the Command line at a space inside the quoted path (and dropped the
    spaces it broke at), so the docstring's command no longer read back as the path. Now the path
    stands whole on one line and the command reads back as the same words."""
    model = "/models/" + "a" * 60 + "  two  spaces " + "b" * 60 + " end.onnx"
    out = tmp_path / "tree.py"
    assert fit_shape.main([*TINY, "--matting-model", model, "--out", str(out)]) == 0
    doc = ast.get_docstring(ast.parse(out.read_text(encoding="utf-8")), clean=False)
    assert doc is not None
    assert any(shlex.quote(model) in line for line in doc.splitlines())
    command = doc.split("Command: ", 1)[1].split("\nData: ", 1)[0].replace("\n    ", " ")
    words = shlex.split(command)
    assert words[words.index("--matting-model") + 1] == model
