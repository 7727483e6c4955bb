"""Every refusal reason the code raises is named in the docs: a dead letter's reason is what an operator
searches the docs for, and ``empty_mask``, ``invalid_n``, ``generation_refused``, ``no_usable_photos``
and ten more were raised with no word on what they mean or whether a replay helps. The reasons are the
string literals ``BadInput`` and ``ImageRejected`` are raised (or returned) with in shared/, services/
and skuforge_cli/; the check is shown to fail on a planted one.
"""

from __future__ import annotations

import ast

from tests.support.docs import DOCS, ROOT

REFUSALS = {"BadInput", "ImageRejected"}
CODE = [
    path for part in ("shared", "services", "skuforge_cli") for path in sorted((ROOT / part).rglob("*.py"))
]


def reasons_in(source: str) -> set[str]:
    """The reasons ``source`` constructs a refusal with, as string literals."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        first = node.args[0]
        if name in REFUSALS and isinstance(first, ast.Constant) and isinstance(first.value, str):
            found.add(first.value)
    return found


def undocumented(reasons: set[str], docs: str) -> list[str]:
    """The reasons no doc names in backquotes."""
    return sorted(reason for reason in reasons if f"`{reason}`" not in docs)


def test_every_reason_the_code_raises_is_in_the_docs() -> None:
    raised = set().union(*(reasons_in(path.read_text(encoding="utf-8")) for path in CODE))
    docs = "\n".join(doc.read_text(encoding="utf-8") for doc in DOCS)
    assert undocumented(raised, docs) == []


def test_a_planted_reason_is_caught() -> None:
    planted = reasons_in('raise BadInput("never_documented", "detail")\nImageRejected("corrupt")')
    assert undocumented(planted, "a `corrupt` image") == ["never_documented"]


def test_the_code_is_where_the_reasons_are() -> None:
    # A move of the packages would leave the first test nothing to check.
    assert ROOT / "shared" / "generation" / "diffusion.py" in CODE
