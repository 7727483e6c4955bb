"""Bad input to the console's web routes answers with a 4xx that says what was wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.support.console import app_for, build_console, claim, decide, login, with_flagged


@pytest.mark.parametrize("shown", ["not-a-digest", "F" * 16, "0" * 64])
def test_a_decision_whose_shown_is_no_digest_is_refused_as_invalid_not_as_a_replay(
    shown: str, tmp_path: Path
) -> None:
    # Before, any ``shown`` other than the task's digest was a 409 saying a replay of the gate changed
    # the item since the page showed it, and to reload: a script sending a malformed one was told to
    # reload a page it never had.
    parts = with_flagged(build_console(tmp_path), 1)
    [task] = parts.tasks.query()
    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client)
    claim(client, token, task.task_id)
    response = decide(client, token, task.task_id, decision="approve_expected", shown=shown)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "shown"]
    assert parts.tasks.get(task.task_id).state == "claimed"
