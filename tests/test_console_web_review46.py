"""Found in review 46 of the console's web routes and CLI: a form field sent twice was read as its last
copy; an address longer than the login form carries made every login a 422; hash-password read stdin in
the locale's encoding."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from services.console.security import check_password
from skuforge_cli.main import main as cli_main
from tests.support.console import app_for, build_console, decided, login, one_task, use_cli_on, with_flagged


@pytest.mark.parametrize("multipart", [False, True], ids=["urlencoded", "multipart"])
def test_a_decision_field_sent_twice_is_refused_naming_it_and_nothing_is_recorded(
    tmp_path: Path, multipart: bool
) -> None:
    # Before, the framework kept the last copy: a rejection with two reasons was recorded with the second
    # (200), the first dropped without a word, as two mask files had been.
    parts, task, client, token = one_task(tmp_path)
    form = {"decision": "reject", "reject_reason": ["blurry", "wrong_product"]}

    response = client.post(
        f"/api/tasks/{task.task_id}/decision",
        data=form,
        # An empty file part makes the body multipart, as the item page's decision with a mask is.
        files={"unused": ("unused.bin", b"", "application/octet-stream")} if multipart else None,
        headers={"X-CSRF-Token": token},
    )

    assert response.status_code == 422, response.text
    assert response.json()["detail"] == "reject_reason: sent more than once; send it once"
    assert parts.tasks.get(task.task_id).state == "claimed"
    assert parts.tasks.outbox(task.task_id) is None


def test_a_login_field_sent_twice_is_refused_naming_it(tmp_path: Path) -> None:
    # Before, "reviewer=alice&reviewer=bob" logged in (and was throttled) as bob.
    parts = build_console(tmp_path)
    client = TestClient(app_for(parts), base_url="http://console.test")
    page = client.get("/login")
    nonce = re.search(r'name="login_nonce" value="([^"]+)"', page.text)
    assert nonce, page.text

    response = client.post(
        "/login",
        data={"reviewer": ["alice", "bob"], "password": "bob-password", "login_nonce": nonce.group(1)},
        follow_redirects=False,
    )

    assert response.status_code == 422, response.text
    assert response.json()["detail"] == "reviewer: sent more than once; send it once"
    assert "skuforge_console" not in response.cookies
    login(client)  # the form, each field once, still logs in


def test_a_page_address_longer_than_the_login_form_takes_still_lets_the_person_log_in(tmp_path: Path) -> None:
    # Before, the login form carried the address whole as its "next" field, which the form's POST takes
    # up to 500 characters: a link of 600 (a long query) led to a login that always answered a 422.
    parts = build_console(tmp_path)
    client = TestClient(app_for(parts), base_url="http://console.test")
    page = "/?sku=" + "A" * 600

    to_login = client.get(page, headers={"Accept": "text/html"}, follow_redirects=False)
    form = client.get(to_login.headers["location"])
    nonce = re.search(r'name="login_nonce" value="([^"]+)"', form.text)
    target = re.search(r'name="next" value="([^"]*)"', form.text)
    assert nonce and target, form.text
    response = client.post(
        "/login",
        data={
            "reviewer": "alice",
            "password": "alice-password",
            "login_nonce": nonce.group(1),
            "next": target.group(1),
        },
        follow_redirects=False,
    )

    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/"


def test_hash_password_reads_a_piped_password_as_utf8_whatever_the_locale(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, stdin was read in the locale's encoding: under a Latin-1 locale the UTF-8 "café-pass" was
    # hashed as "cafÃ©-pass", and the reviewer, whose browser sends UTF-8, could never log in.
    stdin = io.TextIOWrapper(io.BytesIO("café-pass\n".encode()), encoding="latin-1")
    monkeypatch.setattr("sys.stdin", stdin)

    assert cli_main(["console", "hash-password"]) == 0

    entry = capsys.readouterr().out.strip()
    assert check_password({"alice": entry}, "alice", "café-pass")


def test_resend_of_a_task_named_twice_resends_it_once_and_reports_no_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, the second naming found the decision already given back and said "was not refused: it
    # waits to be sent", and resend exited 1 (a script read it as failed) for a decision it had resent.
    parts = build_console(tmp_path)
    [task_id] = decided(parts, 1)
    [event] = parts.tasks.unsent(limit=10)
    parts.tasks.mark_refused(event.event_id, "the record is larger than max.message.bytes")
    use_cli_on(parts, monkeypatch)

    assert cli_main(["console", "resend", task_id, task_id]) == 0

    captured = capsys.readouterr()
    assert "skuforge console resend:" not in captured.err
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert lines[-1] == {"resent": 1, "not_resent": 0}
    assert [line["task_id"] for line in lines[:-1]] == [task_id]


def test_export_to_a_folder_that_does_not_exist_names_the_file_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, the error named the temporary file written first (".o.json.<pid>.partial"), a file the
    # person never named, so the message read as if something else had failed.
    parts = with_flagged(build_console(tmp_path), 1)
    use_cli_on(parts, monkeypatch)
    out = tmp_path / "no-such-folder" / "tasks.json"

    assert cli_main(["console", "export-labelstudio", "--out", str(out)]) == 2

    err = capsys.readouterr().err
    assert f"cannot write {out}: No such file or directory" in err and ".partial" not in err, err
    assert not out.parent.exists()


@pytest.mark.parametrize(("charset", "text"), [("utf-16", b"ab"), ("utf-32", b"a\0\0\0")])
def test_a_form_in_a_charset_read_without_a_byte_order_mark_is_a_4xx_not_a_500(
    tmp_path: Path, charset: str, text: bytes
) -> None:
    # Before, the form-text check decoded each part with Python's incremental decoder, which, unlike the
    # framework's bytes.decode, raises UnicodeError (not UnicodeDecodeError) for UTF-16 or UTF-32 text
    # without a byte-order mark: the claim form answered a bare 500, the decision a 400 that said nothing.
    parts, task, client, token = one_task(tmp_path, claimed=False)
    # Text of that charset (one character), without the byte-order mark its decoder looks for.
    body = b'--x\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n' + text + b"\r\n--x--\r\n"
    headers = {"Content-Type": f"multipart/form-data; boundary=x; charset={charset}"}

    claim = client.post(f"/tasks/{task.task_id}/claim", content=body, headers=headers, follow_redirects=False)
    decision = client.post(
        f"/api/tasks/{task.task_id}/decision", content=body, headers={**headers, "X-CSRF-Token": token}
    )

    # The framework reads the part's name in that charset too: no csrf_token, no decision was sent.
    assert claim.status_code == 403, claim.text
    assert decision.status_code == 422, decision.text
    assert decision.json()["detail"][0]["loc"] == ["body", "decision"]
    assert parts.tasks.get(task.task_id).state == "pending"


@pytest.mark.parametrize("referer", ["http://[", "http://[::1/tasks"])
def test_a_form_posted_without_a_session_and_a_malformed_referer_goes_to_the_login_form(
    tmp_path: Path, referer: str
) -> None:
    # Before, the login gate read the Referer (to come back to the page after the login) with urlsplit,
    # which raises on an unclosed IPv6 bracket: a bare 500 for any client that sent one.
    parts = build_console(tmp_path)
    client = TestClient(app_for(parts), base_url="http://console.test")

    response = client.post(
        "/claim-next", headers={"Accept": "text/html", "Referer": referer}, follow_redirects=False
    )

    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/login?error=expired&next=%2F"


def test_a_refused_export_option_shows_the_export_commands_usage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, a bad --image-url was refused under the usage of `skuforge console` (its list of
    # subcommands), prefixed "skuforge console: error:", so the person saw none of the export's options.
    parts = build_console(tmp_path)
    use_cli_on(parts, monkeypatch)

    with pytest.raises(SystemExit) as refused:
        cli_main(
            ["console", "export-labelstudio", "--out", str(tmp_path / "t.json"), "--image-url", "x/{nope}"]
        )

    err = capsys.readouterr().err
    assert refused.value.code == 2
    assert err.startswith("usage: skuforge console export-labelstudio"), err
    assert "skuforge console export-labelstudio: error: --image-url: " in err
