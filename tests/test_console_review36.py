"""Console, review 36: approving the model's or the generator's mask when it marks no product.

The gate sends an item whose predicted mask is empty to review (``mask_empty``). Approved as predicted,
the decision was recorded and published with that empty mask: the task closed, and the trainstore
stored an image of the SKU with no product in it (now it dead-letters it, the task still closed). An
edited mask of nothing was refused already, on the web page and in the Label Studio import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from schemas.events import CorrectionPending
from services.console.labelstudio import import_annotations
from tests.support.console import ConsoleParts, app_for, build_console, flagged_item, login, pending_envelope


def _with_empty(parts: ConsoleParts, pending: CorrectionPending, which: str) -> CorrectionPending:
    """``pending`` with its predicted or expected mask replaced by a stored mask of no product."""
    matted = pending.matted
    key = f"masks/{which}-empty/{matted.generated.item_id}.png"
    empty = parts.store.put_image(
        key, np.zeros((matted.generated.image.height, matted.generated.image.width), np.uint8)
    )
    if which == "predicted":
        matted = matted.model_copy(update={"predicted_mask": empty})
    else:
        matted = matted.model_copy(
            update={"generated": matted.generated.model_copy(update={"expected_mask": empty})}
        )
    return pending.model_copy(update={"matted": matted})


@pytest.fixture
def parts(tmp_path: Path) -> ConsoleParts:
    parts = build_console(tmp_path)
    parts.tasks.add_pending(pending_envelope(_with_empty(parts, flagged_item(parts.store, 0), "predicted")))
    parts.clock.advance(1.0)
    parts.tasks.add_pending(pending_envelope(_with_empty(parts, flagged_item(parts.store, 1), "expected")))
    return parts


def _decide(client: TestClient, token: str, task_id: str, decision: str) -> Any:
    headers = {"X-CSRF-Token": token}
    assert client.post(f"/api/tasks/{task_id}/claim", headers=headers).status_code == 200
    return client.post(f"/api/tasks/{task_id}/decision", data={"decision": decision}, headers=headers)


def test_approving_a_mask_that_marks_no_product_is_refused_and_the_other_approval_is_recorded(
    parts: ConsoleParts,
) -> None:
    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client)
    empty_predicted, empty_expected = (task.task_id for task in parts.tasks.query())
    for task_id, refused, allowed in (
        (empty_predicted, "approve_predicted", "approve_expected"),
        (empty_expected, "approve_expected", "approve_predicted"),
    ):
        response = _decide(client, token, task_id, refused)
        assert response.status_code == 422, response.text
        name = refused.removeprefix("approve_")
        assert f"the {name} mask marks no product pixels" in response.json()["detail"]
        assert "reject" in response.json()["detail"]  # what to do instead
        assert parts.tasks.get(task_id).state == "claimed"  # still the reviewer's to decide
        assert parts.tasks.outbox(task_id) is None  # nothing published
        response = _decide(client, token, task_id, allowed)
        assert response.status_code == 200 and response.json()["state"] == "approved", response.text


def test_a_label_studio_approval_of_an_empty_predicted_mask_is_skipped_with_the_reason(
    parts: ConsoleParts,
) -> None:
    empty_predicted = parts.tasks.query()[0].task_id
    choice = {"type": "choices", "from_name": "decision", "value": {"choices": ["approve"]}}
    approved = {
        "data": {"skuforge_task_id": empty_predicted},
        "annotations": [{"completed_by": 7, "result": [choice]}],
    }
    [outcome] = import_annotations(parts.tasks, parts.store, [approved])
    assert outcome.outcome == "skipped" and outcome.annotation_lost
    assert "the predicted mask marks no product pixels" in outcome.detail
    assert parts.tasks.get(empty_predicted).state == "pending" and parts.tasks.outbox(empty_predicted) is None
