"""What the docs say of `skuforge dlq replay`'s reasons, held to ``shared.dlq.REPLAYABLE_REASONS``: the
full list in docs/delivery.md is that dict's keys, and a short list anywhere (README's troubleshooting,
docs/ops.md's runbook) names only replayable reasons among those a bare replay sends and only permanent
ones among those it leaves. `skuforge dlq replay --help` is written from the dict; the docs are written
by hand, and docs/delivery.md left out ``output_refused`` when it was added. Each check is shown to
fail on a planted mistake.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.dlq import REPLAYABLE_REASONS
from tests.support.docs import DOCS, ROOT

DELIVERY = (ROOT / "docs" / "delivery.md").read_text(encoding="utf-8")
REASON = re.compile(r"`([a-z]+(?:_[a-z]+)+|[a-z]+)`")
# docs/delivery.md's full list: from this sentence to the name of the dict.
FULL_LIST = re.compile(
    r"Without `--reason`, a replay sends only the letters(.*?)`REPLAYABLE_REASONS`", re.DOTALL
)
# A short list of the reasons a bare replay sends ("a fix outside the event can help (`a`, `b`...)"), and
# of those it leaves ("the permanent ones (`c`, `d`...").
SENT = re.compile(r"a fix outside the event can help \(([^)]*)\)")
LEFT = re.compile(r"the permanent ones(?: it left)?\s+\(([^)]*)\)")


def _reasons(text: str) -> list[str]:
    return REASON.findall(text)


def full_list_misstated(delivery: str) -> str | None:
    """What docs/delivery.md's list of the reasons a replay sends without ``--reason`` gets wrong."""
    found = FULL_LIST.search(delivery)
    if found is None:
        return "no list of the reasons a replay sends without --reason"
    listed = set(_reasons(found.group(1)))
    missing, extra = sorted(set(REPLAYABLE_REASONS) - listed), sorted(listed - set(REPLAYABLE_REASONS))
    if missing or extra:
        return f"leaves out {missing}, names as replayable {extra}"
    return None


def short_lists_misstated(text: str) -> list[str]:
    """Reasons a short list in ``text`` puts on the wrong side: a permanent one among those a bare replay
    sends, a replayable one among those it leaves."""
    wrong = [
        reason for part in SENT.findall(text) for reason in _reasons(part) if reason not in REPLAYABLE_REASONS
    ]
    wrong += [
        reason for part in LEFT.findall(text) for reason in _reasons(part) if reason in REPLAYABLE_REASONS
    ]
    return wrong


def test_delivery_lists_every_reason_a_bare_replay_sends() -> None:
    assert full_list_misstated(DELIVERY) is None, full_list_misstated(DELIVERY)


def test_a_reason_left_out_of_the_full_list_is_caught() -> None:
    planted = DELIVERY.replace("`manifest_unreadable`", "manifests")
    assert full_list_misstated(planted) == "leaves out ['manifest_unreadable'], names as replayable []"
    planted = DELIVERY.replace("`object_missing`\n", "`object_missing`, `corrupt`\n", 1)
    assert full_list_misstated(planted) == "leaves out [], names as replayable ['corrupt']"


@pytest.mark.parametrize("doc", DOCS, ids=[f"{doc.relative_to(ROOT)}" for doc in DOCS])
def test_a_short_list_of_reasons_puts_each_on_its_side(doc: Path) -> None:
    wrong = short_lists_misstated(doc.read_text(encoding="utf-8"))
    assert not wrong, (
        f"{doc.relative_to(ROOT)} puts these reasons on the wrong side of a bare replay: {wrong}"
    )


def test_a_reason_on_the_wrong_side_is_caught() -> None:
    text = (
        "Without `--reason` it replays only the letters a fix outside the event can help (`object_missing`, "
        "`corrupt`...) and counts the permanent ones it left\n(`not_json`, `handler_error`...)"
    )
    assert short_lists_misstated(text) == ["corrupt", "handler_error"]
    assert [len(SENT.findall(doc.read_text(encoding="utf-8"))) for doc in (ROOT / "README.md",)] == [1]
