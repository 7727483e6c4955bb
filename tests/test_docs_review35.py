"""What the docs say, held to the repository beyond tests/test_docs_truth.py's checks: a folder whose
README describes it file by file (a table whose first column is the file) has each of its files in
that README. Each check is shown to fail on a planted mistake.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_docs_truth import DOCS, ROOT

DOC_TEXTS = {doc: doc.read_text(encoding="utf-8") for doc in DOCS}


# A README that describes its folder file by file: a table whose first column is the file.
FILE_TABLE = re.compile(r"^\| file[^|]* \|", flags=re.MULTILINE)
NOT_DESCRIBED = {"README.md", "LICENSE", "__pycache__"}


def files_left_out_of(readme: Path, text: str) -> list[str]:
    """Entries of ``readme``'s folder (files and folders, not recursively) its text never names in
    backticks, alone or as the start of a path (``masks/<id>.png`` names ``masks``)."""
    named = {token.split("/")[0] for token in re.findall(r"`([^`\s]+)`", text)}
    return sorted(
        entry.name
        for entry in readme.parent.iterdir()
        if entry.name not in NOT_DESCRIBED and not entry.name.startswith(".") and entry.name not in named
    )


FILE_TABLE_READMES = [doc for doc in DOCS if doc.name == "README.md" and FILE_TABLE.search(DOC_TEXTS[doc])]


@pytest.mark.parametrize(
    "readme", FILE_TABLE_READMES, ids=[f"{doc.relative_to(ROOT)}" for doc in FILE_TABLE_READMES]
)
def test_a_readme_with_a_file_table_names_every_file_beside_it(readme: Path) -> None:
    left_out = files_left_out_of(readme, DOC_TEXTS[readme])
    assert not left_out, f"{readme.relative_to(ROOT)} describes its folder but not {left_out}"


def test_a_file_a_readme_table_leaves_out_is_caught() -> None:
    readme = ROOT / "deploy" / "schemas" / "README.md"
    text = DOC_TEXTS[readme].replace("`compose-spec.json`", "the Compose schema")
    assert files_left_out_of(readme, text) == ["compose-spec.json"]
