"""Found in review 48 of the console: a request's headers sent slowly (or not at all) held the connection
for good (and, checked: a mask upload that stops arriving leaves no spooled file open); the item page kept
its hold on an item whose decision was refused because someone else had decided it."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from services.console import app as console_app
from services.console import server as console_server
from tests.support.console import (
    ConsoleParts,
    app_for,
    build_console,
    flagged_item,
    login,
    pending_envelope,
    record_as,
)
from tests.support.console_browser import (
    answer_to,
    fresh_tab,
    launch_chromium,
    new_tab,
    open_claimed_item,
    require_chromium,
    serving,
)
from tests.support.polling import wait_for

# A guard on each wait for the console: it answers after its 2 s; this only fails a test sooner.
GUARD_S = 30.0


@pytest.fixture
def served_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The console's app served as ``serve console`` serves it, a request's headers awaited 2 s at most
    (a whole request is sent at once: 2 s leaves a loaded machine room before it is sent)."""
    monkeypatch.setattr(console_server, "HEADERS_TIMEOUT_S", 2.0)
    with serving(build_console(tmp_path)) as port:
        yield port


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(GUARD_S)
    return sock


def one_answer(sock: socket.socket) -> bytes:
    """One whole answer (its head and its Content-Length of body), the connection left open."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    fields = dict(line.lower().split(b":", 1) for line in head.split(b"\r\n")[1:])
    length = int(fields[b"content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, received
        body += chunk
    return head + b"\r\n\r\n" + body


def assert_answered_408(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in head.lower(), answer
    assert b"the request headers did not all arrive within 2 s" in body, answer


def test_headers_that_stop_arriving_are_answered_408_and_the_connection_closed(served_port: int) -> None:
    # Before, a client that sent part of a request's headers, then nothing, held the connection for good:
    # uvicorn times out only an idle connection after an answer, and the body's limit (slowbody.py) starts
    # once the headers are read.
    with connect(served_port) as sock:
        sock.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: te")

        assert_answered_408(answer_to(sock))


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(served_port: int) -> None:
    # As uvicorn closes an idle connection between requests: a browser's spare connection is no request.
    with connect(served_port) as sock:
        assert answer_to(sock) == b""


def test_headers_sent_a_byte_at_a_time_do_not_keep_the_connection(served_port: int) -> None:
    # Slowloris: each byte came before any idle limit, so only a deadline on the whole headers ends it.
    # The server may close while a byte is on its way, so the end is a 408, a closed or a reset
    # connection, whichever this client meets first; a connection still open after the guard fails.
    request = b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 500
    ended = b""
    with connect(served_port) as sock:
        sock.settimeout(GUARD_S / len(request))  # the bytes' pace; len(request) of them take the guard
        for byte in request:
            try:
                ended = sock.recv(65536) or b"closed"
                break
            except TimeoutError:
                pass  # nothing yet: the next byte
            except ConnectionResetError:
                ended = b"reset"
                break
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                ended = b"reset"
                break

    assert ended, "the headers, sent a byte at a time, held the connection past the guard"
    assert ended in (b"closed", b"reset") or ended.startswith(b"HTTP/1.1 408 "), ended


def test_a_later_request_on_a_kept_connection_has_the_same_deadline(served_port: int) -> None:
    with connect(served_port) as sock:
        sock.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert one_answer(sock).startswith(b"HTTP/1.1 200 ")

        sock.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: te")

        assert_answered_408(answer_to(sock))


def test_a_request_begun_while_the_last_answer_was_sent_has_the_same_deadline(served_port: int) -> None:
    # Its first bytes sent with the first request's (pipelined): they wait while the first is answered,
    # and the idle timeout set after that answer closed the connection without a word.
    with connect(served_port) as sock:
        sock.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /login HTTP/1.1\r\nHost: 12")

        assert one_answer(sock).startswith(b"HTTP/1.1 200 ")
        assert_answered_408(answer_to(sock))


def test_a_whole_request_is_answered_as_before(served_port: int) -> None:
    with connect(served_port) as sock:
        sock.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")

        assert answer_to(sock).startswith(b"HTTP/1.1 200 ")


def held_open_under(folder: Path) -> list[str]:
    """The files under ``folder`` this process holds open, the served console's included (its thread). An
    upload spooled past 1 MiB is an unnamed file there: its link reads "FOLDER/#N (deleted)"."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed since it was listed
        if target.startswith(f"{folder}/"):
            held.append(target)
    return held


def test_a_mask_upload_that_stops_arriving_leaves_no_spooled_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The framework spools a form's file past 1 MiB to disk as it arrives; a 408 in the middle of it must
    # not leave that file open (a descriptor and its disk space, until the process ends).
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    monkeypatch.setattr(console_app, "BODY_IDLE_TIMEOUT_S", 1.0)
    parts = build_console(tmp_path)
    client = TestClient(app_for(parts), base_url="http://console.test")
    token = login(client)  # the served app shares its sessions: the same signer and task table
    cookies = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
    mask = b"\0" * (2 * 2**20)
    body = (
        b'--b0undary\r\nContent-Disposition: form-data; name="decision"\r\n\r\napprove_edited\r\n'
        b'--b0undary\r\nContent-Disposition: form-data; name="mask"; filename="mask.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + mask + b"\r\n--b0undary--\r\n"
    )
    head = (
        f"POST /api/tasks/{'0' * 32}/decision HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookies}\r\n"
        f"X-CSRF-Token: {token}\r\nContent-Type: multipart/form-data; boundary=b0undary\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )

    with serving(parts) as port, connect(port) as sock:
        sock.sendall(head.encode() + body[:-1000])  # the end of the mask never comes
        answer = answer_to(sock)

    assert answer.startswith(b"HTTP/1.1 408 "), answer[:500]
    assert b"the request body stopped arriving" in answer, answer[:500]
    assert held_open_under(spool) == []
    assert list(spool.iterdir()) == []


# No renewal comes during a browser test (the page renews every third of the lease): what a 409 to a
# decision does is the page's doing alone.
LONG_LEASE_S = 3600.0


@contextmanager
def held_in_browser(tmp_path: Path) -> Iterator[tuple[ConsoleParts, str, Any, str]]:
    """A console with one flagged task and a long lease, served, and a chromium tab in which alice holds
    the task: yields the parts, the task's id, the tab and the console's address."""
    from playwright.sync_api import sync_playwright

    require_chromium()
    parts = build_console(tmp_path, lease_s=LONG_LEASE_S)
    envelope = pending_envelope(flagged_item(parts.store, 0))
    parts.tasks.add_pending(envelope)
    with serving(parts) as port, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            tab = fresh_tab(browser)
            open_claimed_item(tab, port, envelope.event_id)
            yield parts, envelope.event_id, tab, f"http://127.0.0.1:{port}"
        finally:
            browser.close()


@pytest.mark.slow
def test_a_decision_refused_as_someone_elses_lets_go_of_the_item_so_next_works(tmp_path: Path) -> None:
    # Before, the page kept holding the item after "not saved: task ... is already approved": "n" said
    # "decide or release this item first", and Esc "could not release", until the next renewal (a third of
    # the lease later) found the lease lost.
    with held_in_browser(tmp_path) as (parts, task_id, tab, base_url):
        # alice's lease runs out (a laptop asleep); bob claims the item and approves it.
        parts.clock.advance(LONG_LEASE_S + 1)
        parts.tasks.claim(task_id, "bob", 60.0)
        record_as(parts, "bob", task_id, "approve_predicted")

        tab.keyboard.press("e")
        tab.wait_for_selector("#status:has-text('no longer holds the item')")
        status = tab.text_content("#status") or ""
        assert status.startswith("not saved: ") and "approved" in status, status
        tab.keyboard.press("n")

        tab.wait_for_url(base_url + "/?empty=1")  # no other item waits
    assert parts.tasks.get(task_id).decided_by == "bob"


@pytest.mark.slow
def test_a_rejection_refused_as_decided_in_another_tab_lets_go_of_the_item(tmp_path: Path) -> None:
    # The same, where the 409 answers one's own decision from another tab with another reason: the page
    # said "this page's reason was not saved" and still held the item.
    with held_in_browser(tmp_path) as (parts, task_id, first, base_url):
        second = new_tab(first.context)  # the same reviewer, the same session, the same held item
        second.goto(first.url)
        second.wait_for_selector("body[data-ready='1']")
        for tab, index in ((first, 0), (second, 1)):  # two different reasons from the list
            tab.keyboard.press("r")
            tab.select_option("#reject-reason", index=index)
            tab.click("#reject-confirm")
            if tab is first:
                wait_for("the first tab's rejection", lambda: parts.tasks.get(task_id).state == "rejected")

        second.wait_for_selector("#status:has-text('was not saved')")
        second.keyboard.press("n")

        second.wait_for_url(base_url + "/?empty=1")
