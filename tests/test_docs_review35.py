"""What the docs say, held to the repository beyond tests/test_docs_truth.py's checks: a folder whose
README describes it file by file (a table whose first column is the file) has each of its files in
that README; and a results-file field cited beside a date is of the run that file holds. Each check is
shown to fail on a planted mistake.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_docs_truth import DOCS, ROOT

DOC_TEXTS = {doc: doc.read_text(encoding="utf-8") for doc in DOCS}
DOC_IDS = [f"{doc.relative_to(ROOT)}" for doc in DOCS]
RESULTS = ROOT / "bench" / "results"


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


def _fields_and_dates(document: object, fields: set[str], dates: set[str]) -> None:
    """The keys of a results file at every depth, and every date its strings carry (measured_at, notes)."""
    if isinstance(document, dict):
        for key, value in document.items():
            fields.add(key)
            _fields_and_dates(value, fields, dates)
    elif isinstance(document, list):
        for value in document:
            _fields_and_dates(value, fields, dates)
    elif isinstance(document, str):
        dates.update(re.findall(r"\d{4}-\d{2}-\d{2}", document))


def _parentheses(text: str) -> Iterator[str]:
    """The text of each innermost-first parenthesis of ``text``, its own nested parentheses cut out."""
    opened: list[int] = []
    for index, char in enumerate(text):
        if char == "(":
            opened.append(index)
        elif char == ")" and opened:
            yield re.sub(r"\([^()]*\)", "", text[opened.pop() + 1 : index])


def dated_citations_of_other_runs(text: str) -> list[str]:
    """Results-file fields (``real.packaging_misses``) cited in a parenthesis beside a date the file does
    not carry: figures of an earlier run attributed to the file, which holds a later run's. A section
    (``#`` heading to heading) cites the files of ``bench/results/`` it names."""
    wrong = []
    for section in re.split(r"\n(?=#+ )", text):
        names = set(re.findall(r"bench/results/([\w.-]+\.json)", section))
        fields: set[str] = set()
        dates: set[str] = set()
        for name in names:
            _fields_and_dates(json.loads((RESULTS / name).read_text(encoding="utf-8")), fields, dates)
        for inner in _parentheses(section):
            cited = [
                token
                for token in re.findall(r"`([a-z][a-z0-9_.-]*)`", inner)
                if ("_" in token or "." in token) and all(part in fields for part in token.split("."))
            ]
            other = [date for date in re.findall(r"\d{4}-\d{2}-\d{2}", inner) if date not in dates]
            if cited and other:
                wrong.append(f"{cited} cited for {other}, a run {sorted(names)} do not hold")
    return wrong


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_a_results_field_a_doc_cites_with_a_date_is_of_that_files_run(doc: Path) -> None:
    wrong = dated_citations_of_other_runs(DOC_TEXTS[doc])
    assert not wrong, f"{doc.relative_to(ROOT)}: {wrong}"


def test_a_results_field_cited_for_an_earlier_run_is_caught() -> None:
    text = "## Real\n\nFigures in `bench/results/captioner.json`. The misses of the run before "
    text += "(2026-11-30, `real.packaging_misses`): two cartons. Now (2026-12-04, `real.colour_misses`).\n"
    assert dated_citations_of_other_runs(text) == [
        "['real.packaging_misses'] cited for ['2026-11-30'], a run ['captioner.json'] do not hold"
    ]
