"""docs/ops.md's runbooks tell a stage that is still opening its models from one that is stuck."""

from __future__ import annotations

import re
from pathlib import Path

OPS_DOC = Path(__file__).resolve().parent.parent / "docs" / "ops.md"


def _runbook(alert: str) -> str:
    """The text of ``### alert`` in docs/ops.md, up to the next heading."""
    match = re.search(rf"^### {alert}\n(.*?)(?=^#)", OPS_DOC.read_text(), re.MULTILINE | re.DOTALL)
    assert match, f"docs/ops.md has no runbook section for {alert}"
    return " ".join(match.group(1).split())


def test_the_stalled_runbook_does_not_send_a_stage_loading_its_models_to_a_restart() -> None:
    """A stage opening its models (a VLM copied from S3) has no partitions and no retries yet, and with
    input waiting it pages as SkuforgeStageStalled (alerts_test.yml shows it). The runbook said only
    that such a stage is out of its group and to restart it, which starts the load over."""
    stalled = _runbook("SkuforgeStageStalled")
    assert "skuforge_stage_loading 1" in stalled
    assert "starts the load over" in stalled
    # The stage-down runbook no longer promises that a long load never pages.
    assert "a long load is neither a page" not in _runbook("SkuforgeStageDown")
