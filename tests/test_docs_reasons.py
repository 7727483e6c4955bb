"""Every refusal reason the code raises is named in the docs: a dead letter's reason is what an operator
searches the docs for, and ``empty_mask``, ``invalid_n``, ``generation_refused``, ``no_usable_photos``
and ten more were raised with no word on what they mean or whether a replay helps. The reasons are the
string literals ``BadInput`` and ``ImageRejected`` are raised (or returned) with in shared/, services/
and skuforge_cli/, those their subclasses pass up (``ObjectMissing``'s ``object_missing``), and those of
the letters the runtime writes itself (``not_json``); the check is shown to fail on a planted one.
"""

from __future__ import annotations

import ast

from tests.support.docs import DOCS, ROOT

REFUSALS = {"BadInput", "ImageRejected"}
CODE = [
    path for part in ("shared", "services", "skuforge_cli") for path in sorted((ROOT / part).rglob("*.py"))
]


def reasons_in(source: str) -> set[str]:
    """The reasons ``source`` constructs a refusal with, as string literals: the reason given to
    ``BadInput`` or ``ImageRejected`` (first or ``reason=``), to ``BadInput.__init__(self, ...)``, or
    by a class of theirs to ``super().__init__(...)``; the reason of a letter the runtime writes itself
    (``self._dead_letter(record, "not_json", ...)``); each literal a reason chooses among (``"a" if
    x else "b"``, ``found or "b"``)."""
    tree = ast.parse(source)
    reasons: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(_name(base) in REFUSALS for base in node.bases):
            reasons += [_reason(call, 0) for call in ast.walk(node) if _is_super_init(call)]
        if not isinstance(node, ast.Call):
            continue
        if _name(node.func) in REFUSALS:
            reasons.append(_reason(node, 0))
        elif _name(node.func) == "_dead_letter":  # the runtime's own letters: (record, reason, ...)
            reasons.append(_reason(node, 1))
        elif isinstance(node.func, ast.Attribute) and node.func.attr == "__init__":
            # BadInput.__init__(self, reason, ...)
            reasons += [_reason(node, 1)] if _name(node.func.value) in REFUSALS else []
    return {literal for reason in reasons for literal in _literals(reason)}


def _name(node: ast.expr) -> str | None:
    return getattr(node, "id", None) or getattr(node, "attr", None)


def _is_super_init(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "__init__"
        and isinstance(node.func.value, ast.Call)
        and _name(node.func.value.func) == "super"
    )


def _reason(call: ast.AST, position: int) -> ast.expr:
    """The reason argument of ``call``: at ``position``, or ``reason=``."""
    assert isinstance(call, ast.Call)
    keyword = next((keyword.value for keyword in call.keywords if keyword.arg == "reason"), None)
    if keyword is not None:
        return keyword
    return call.args[position] if len(call.args) > position else ast.Constant(None)


def _literals(reason: ast.expr) -> set[str]:
    """The string literals ``reason`` may be: itself, or either side of a choice."""
    if isinstance(reason, ast.Constant):
        return {reason.value} if isinstance(reason.value, str) else set()
    if isinstance(reason, ast.IfExp):
        return _literals(reason.body) | _literals(reason.orelse)
    if isinstance(reason, ast.BoolOp):
        return set().union(*(_literals(value) for value in reason.values))
    return set()


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


def test_a_reason_passed_up_by_a_refusal_class_is_found() -> None:
    """``object_missing``, ``checksum_mismatch`` and ``manifest_unreadable`` are raised as classes of
    their own (``ObjectMissing(uri)``), which pass the reason to ``BadInput`` in ``super().__init__``,
    and ``not_json``, ``schema_invalid``... are written by the runtime without a ``BadInput``; the
    check read only a literal given straight to ``BadInput`` or ``ImageRejected``, so none of them was
    held to the docs."""
    source = (
        "class Gone(BadInput):\n"
        "    def __init__(self, uri):\n"
        "        super().__init__('planted_gone', uri)\n"
        "class Other(ObjectMissing):\n"
        "    def __init__(self, uri):\n"
        "        BadInput.__init__(self, 'planted_other', uri)\n"
        "class NoRefusal(Exception):\n"
        "    def __init__(self):\n"
        "        super().__init__('no_reason')\n"
        "ImageRejected('planted_a' if x else 'planted_b', 'detail')\n"
        "BadInput(found or 'planted_or')\n"
        "BadInput(reason='planted_keyword')\n"
        "self._dead_letter(record, 'planted_letter', detail, None, None)\n"
    )
    assert sorted(reasons_in(source)) == [
        "planted_a",
        "planted_b",
        "planted_gone",
        "planted_keyword",
        "planted_letter",
        "planted_or",
        "planted_other",
    ]
    raised = set().union(*(reasons_in(path.read_text(encoding="utf-8")) for path in CODE))
    passed_up = {"object_missing", "checksum_mismatch", "manifest_unreadable", "not_json", "empty_message"}
    assert passed_up <= raised
