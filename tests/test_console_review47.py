"""Found in review 47 of the console: a queue filter given twice was read as its last copy; a temporary
name beside a long --out did not fit the folder's name limit; a stalled body held its connection for
good; GET /logout answered a browser with JSON; a failing withdrawal record was logged once per photo;
the docs did not say how the reject dialog's number keys work; a decision sent again after its saved
first try's answer was lost read "not saved"; one from a second tab with another mask or reason read
"saved"."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from services.console import app as console_app
from services.console.decisions import REJECT_REASONS
from services.console.withdrawn import WithdrawalSweep
from shared.errors import TransientError
from shared.trainstore.manifest import ManifestStore
from shared.trainstore.withdrawals import Withdrawals
from skuforge_cli.main import main as cli_main
from tests.support.console import (
    ConsoleParts,
    app_for,
    build_console,
    flag_made_from,
    login,
    use_cli_on,
    with_flagged,
)
from tests.support.console_browser import (
    answer_to,
    claimed_in_browser,
    held_on_the_page,
    losing_the_first_answer,
    new_tab,
    serving,
    stroke_on_overlay,
)
from tests.support.polling import wait_for


@pytest.mark.parametrize("name", ["sku", "reason", "iou_min", "iou_max", "state"])
@pytest.mark.parametrize("route", ["/", "/api/tasks"])
def test_a_queue_filter_given_twice_is_refused_naming_it(tmp_path: Path, name: str, route: str) -> None:
    # Before, "?sku=SKU-A&sku=SKU-B" listed SKU-B's items alone: the first copy was dropped without a word.
    parts = with_flagged(build_console(tmp_path), 1)
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)
    value = {"sku": "SKU-A", "reason": "iou_below_threshold", "iou_min": "0.1", "iou_max": "0.9"}
    first = value.get(name, "pending")

    response = client.get(route, params=[(name, first), (name, first)])

    assert response.status_code == 422, response.text
    assert response.json()["detail"] == f"{name}: sent more than once; send it once"
    assert client.get(route, params=[(name, first)]).status_code == 200  # once is fine


def test_a_filter_given_twice_to_a_form_post_is_refused_and_nothing_is_claimed(tmp_path: Path) -> None:
    parts = with_flagged(build_console(tmp_path), 1)
    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client)

    response = client.post(
        "/api/claim-next?sku=SKU-X&sku=SKU-Y", headers={"X-CSRF-Token": token}, follow_redirects=False
    )

    assert response.status_code == 422, response.text
    assert response.json()["detail"] == "sku: sent more than once; send it once"
    assert parts.tasks.counts()["claimed"] == 0


@pytest.mark.parametrize("config", [False, True], ids=["out", "config-out"])
def test_export_to_a_name_near_the_folders_limit_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], config: bool
) -> None:
    # Before, the temporary beside it (".<name>.<pid>.partial") was past the 255 bytes a name may take:
    # a valid --out of 250 bytes failed with "File name too long", nothing written.
    parts = with_flagged(build_console(tmp_path), 1)
    use_cli_on(parts, monkeypatch)
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    out = tmp_path / ("t" * (limit - 10) + ".json")
    config_out = tmp_path / ("c" * (limit - 10) + ".xml")
    args = ["console", "export-labelstudio", "--out", str(out)]

    status = cli_main(args + (["--config-out", str(config_out)] if config else []))

    assert status == 0, capsys.readouterr().err
    assert len(json.loads(out.read_text())) == 1
    assert config_out.exists() == config
    expected = sorted([out.name, config_out.name] if config else [out.name])
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == expected  # no temporary left


def test_the_docs_name_the_reject_dialogs_number_keys_as_the_page_numbers_its_reasons() -> None:
    # The item page numbers its reasons 1 to len(REJECT_REASONS) and its script picks one by that digit
    # (1-9 where the focus is off the note); the key table said only "reason list".
    script = (Path(__file__).parents[1] / "services/console/static/item.js").read_text()
    docs = (Path(__file__).parents[1] / "docs/console.md").read_text()

    assert re.search(r"event\.target\.id !== \"reject-note\" && /\^\[1-9\]\$/", script)
    assert len(REJECT_REASONS) <= 9
    keys = f"`1`\N{EN DASH}`{len(REJECT_REASONS)}` (the list's numbers)"
    assert f"{keys} pick a reason while the focus is off the note" in docs


def photos_put_back(parts: ConsoleParts, photo_ids: list[str]) -> Withdrawals:
    """Tasks of SKU-A's ``photo_ids`` waiting, each photo withdrawn and put back since (no sweep saw it)."""
    for index, photo_id in enumerate(photo_ids):
        flag_made_from(parts, index, photo_id)
    withdrawals = Withdrawals(ManifestStore(parts.store, "trainstore"))
    withdrawals.withdraw("SKU-A", "soda can", photo_ids, by="owner")
    withdrawals.reinstate("SKU-A", photo_ids)
    return withdrawals


def failing_lifted_records(parts: ConsoleParts, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """Reads of the ``.lifted`` records raise ``error`` (the rest of the store reads)."""
    get_bytes = parts.store.get_bytes

    def reading(key: str) -> bytes:
        if key.endswith(".lifted"):
            raise error
        return get_bytes(key)

    monkeypatch.setattr(parts.store, "get_bytes", reading)


def test_a_store_away_during_a_sweep_is_logged_once_with_the_count_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Before, one warning for each photo put back, at every sweep (30 s) while the store was away.
    parts = build_console(tmp_path)
    photos = [f"p{index}" for index in range(5)]
    sweep = WithdrawalSweep(parts.tasks, photos_put_back(parts, photos))
    failing_lifted_records(parts, monkeypatch, TransientError("the store is unreachable"))

    with caplog.at_level(logging.WARNING, logger="skuforge.console.withdrawn"):
        assert sweep.sweep() == []

    warnings = [record for record in caplog.records if record.name == "skuforge.console.withdrawn"]
    assert len(warnings) == 1, [record.getMessage() for record in warnings]
    assert getattr(warnings[0], "photos", None) == len(photos)
    assert "the store is unreachable" in str(getattr(warnings[0], "error", ""))
    monkeypatch.undo()  # the store is back: the next sweep closes them
    assert len(sweep.sweep()) == len(photos)


def test_a_bug_reading_a_record_is_not_taken_for_the_store_being_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, any exception (a bug: a TypeError, an AttributeError) was logged as "will retry", for good.
    parts = build_console(tmp_path)
    sweep = WithdrawalSweep(parts.tasks, photos_put_back(parts, ["p1"]))
    failing_lifted_records(parts, monkeypatch, RuntimeError("a bug"))

    with pytest.raises(RuntimeError, match="a bug"):
        sweep.sweep()


def test_get_logout_in_a_browser_shows_a_page_whose_form_logs_out(tmp_path: Path) -> None:
    # Before, a person who typed /logout in the address bar got {"detail":"Method Not Allowed"}.
    parts = build_console(tmp_path)
    client = TestClient(app_for(parts), base_url="http://console.test")
    login(client)

    page = client.get("/logout", headers={"Accept": "text/html"})

    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    form = re.search(r'<form method="post" action="/logout" id="logout-form">(.*?)</form>', page.text, re.S)
    assert form, page.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.group(1))
    assert token, form.group(1)
    logged_out = client.post("/logout", data={"csrf_token": token.group(1)}, follow_redirects=False)
    assert (logged_out.status_code, logged_out.headers["location"]) == (303, "/login")
    assert client.get("/api/tasks").status_code == 401


def test_get_logout_without_a_session_goes_to_the_login_form_not_back_to_logout(tmp_path: Path) -> None:
    # Before, it led to the login form with next=/logout: logging in landed on a 405.
    parts = build_console(tmp_path)
    client = TestClient(app_for(parts), base_url="http://console.test")

    response = client.get("/logout", headers={"Accept": "text/html"}, follow_redirects=False)

    assert (response.status_code, response.headers["location"]) == (303, "/login")


@pytest.fixture
def served_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The console's app behind a real uvicorn, a body's bytes awaited 1 s at most."""
    monkeypatch.setattr(console_app, "BODY_IDLE_TIMEOUT_S", 1.0)
    with serving(build_console(tmp_path)) as port:
        yield port


def test_a_body_that_stops_arriving_is_answered_408_and_its_connection_closed(served_port: int) -> None:
    # Before, a client that sent its headers and part of the body it declared, then nothing, held its
    # connection (and the request's task) for good: no timeout covered a body's bytes.
    with socket.create_connection(("127.0.0.1", served_port)) as sock:
        sock.settimeout(30)  # a guard: the console answers after its 1 s, this only fails the test sooner
        sock.sendall(
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nreviewer=al"
        )
        answer = answer_to(sock)

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in head.lower(), answer
    assert b"the request body stopped arriving" in body, answer


def test_a_whole_body_is_read_as_before(served_port: int) -> None:
    with socket.create_connection(("127.0.0.1", served_port)) as sock:
        sock.settimeout(30)
        sock.sendall(
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 11\r\n\r\nreviewer=al"
        )
        answer = answer_to(sock)

    assert answer.startswith(b"HTTP/1.1 422 "), answer  # the form's password missing: read and answered


@pytest.mark.slow
def test_a_decision_sent_again_after_its_answer_was_lost_is_shown_as_saved(tmp_path: Path) -> None:
    # Before, the second press read "not saved: task ... is already approved", though the first try's
    # decision was recorded (its answer lost to a network error): the reviewer could not tell.
    tries: list[str] = []

    with claimed_in_browser(tmp_path) as (parts, task, tab):
        tab.route("**/api/tasks/*/decision", losing_the_first_answer(tries))

        tab.keyboard.press("p")
        tab.wait_for_selector("#status.error:has-text('not saved')")
        assert parts.tasks.get(task.task_id).state == "approved"  # saved all the same
        with held_on_the_page(tab):  # the page moves on 400 ms after saying so: the test may look later
            tab.keyboard.press("p")  # the reviewer tries again

            tab.wait_for_selector("#status:has-text('saved by an earlier try')")
            assert "error" not in (tab.get_attribute("#status", "class") or "")
            assert tab.get_attribute("body", "data-decided") == "approve_predicted"
    assert len(tries) == 2
    assert [entry.action for entry in parts.tasks.audit(task.task_id)].count("approve_predicted") == 1


@pytest.mark.slow
@pytest.mark.parametrize("decision", ["approve_edited", "reject"])
def test_a_conflicting_decision_from_a_second_tab_is_not_shown_as_saved(
    tmp_path: Path, decision: str
) -> None:
    # Before, one reviewer with the item open in two tabs saved a decision in the first, then the same
    # decision with another mask (or reason) in the second: its 409 read "saved by an earlier try", though
    # the second tab's edit was discarded and the first's was what the task kept.
    with claimed_in_browser(tmp_path) as (parts, task, first):
        # the same reviewer, the same session, the same held item
        second = new_tab(first.context)
        second.goto(first.url)
        second.wait_for_selector("body[data-ready='1']")

        if decision == "approve_edited":
            first.keyboard.press("E")  # the expected mask, as edited
            first.keyboard.press("a")
            stroke_on_overlay(second)  # on the predicted mask: other pixels than the first tab's
            wait_for("the first tab's decision", lambda: parts.tasks.get(task.task_id).decision == decision)
            second.keyboard.press("a")
        else:
            for tab, index in ((first, 0), (second, 1)):  # two different reasons from the list
                tab.keyboard.press("r")
                tab.select_option("#reject-reason", index=index)
                tab.click("#reject-confirm")
                if tab is first:
                    wait_for(
                        "the first tab's decision",
                        lambda: parts.tasks.get(task.task_id).decision == decision,
                    )

        second.wait_for_selector("#status:has-text('saved')")  # either answer
        status = second.text_content("#status")
        assert "already decided by alice" in status and "was not saved" in status, status
        assert "error" in (second.get_attribute("#status", "class") or "")
        assert second.get_attribute("body", "data-decided") is None
    assert [entry.action for entry in parts.tasks.audit(task.task_id)].count(decision) == 1


@pytest.mark.slow
@pytest.mark.parametrize("decision", ["approve_edited", "reject"])
def test_an_edit_or_rejection_sent_again_after_its_answer_was_lost_is_shown_as_saved(
    tmp_path: Path, decision: str
) -> None:
    # The task keeps what the lost try sent (its mask's pixels, its reason): the same sent again is saved.
    tries: list[str] = []

    def send(tab: Any) -> None:
        if decision == "approve_edited":
            tab.keyboard.press("a")
        else:
            tab.keyboard.press("r")
            tab.select_option("#reject-reason", index=1)
            tab.click("#reject-confirm")

    with claimed_in_browser(tmp_path) as (_, _, tab):
        stroke_on_overlay(tab)  # an edited mask (used by approve_edited; a rejection keeps no mask)
        tab.route("**/api/tasks/*/decision", losing_the_first_answer(tries))

        send(tab)
        tab.wait_for_selector("#status.error:has-text('not saved')")
        with held_on_the_page(tab):
            send(tab)

            tab.wait_for_selector("#status:has-text('saved by an earlier try')")
            assert "error" not in (tab.get_attribute("#status", "class") or "")
            assert tab.get_attribute("body", "data-decided") == decision
    assert len(tries) == 2
