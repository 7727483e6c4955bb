"""Helpers for the console's browser tests: the web app behind a real uvicorn, Debian's headless chromium
driven by Playwright, a reviewer's page logged in and holding an item."""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from devstack.broker import free_port
from services.console.server import web_config
from services.console.tasks import Task
from tests.support.console import ConsoleParts, app_for, build_console, with_flagged
from tests.support.polling import wait_for

CHROMIUM = "/usr/bin/chromium"
# No network of its own (QUIC, component updates, sync): the browser tests reach only 127.0.0.1.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 950}


def require_chromium() -> None:
    """Fail (not skip) the test when the browser is not installed: CI installs it."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver (see .ci/run)")


def fresh_tab(browser: Any, timeout_ms: int = 30_000) -> Any:
    """A page of ``browser`` in a fresh context at the tests' window size (a new session)."""
    return new_tab(browser.new_context(viewport=VIEWPORT), timeout_ms)


def launch_chromium(playwright: Any) -> Any:
    """Headless chromium launched by ``playwright`` (a sync_playwright() context); close it when done."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def new_tab(context: Any, timeout_ms: int = 30_000) -> Any:
    """A page in ``context`` (a Playwright browser context: another tab of the same session) whose waits
    give up after ``timeout_ms``."""
    tab = context.new_page()
    tab.set_default_timeout(timeout_ms)
    return tab


@contextmanager
def serving(parts: ConsoleParts) -> Iterator[int]:
    """``parts``' app behind a real uvicorn on 127.0.0.1, configured as ``serve console`` configures it
    (``HEADERS_TIMEOUT_S`` of ``services.console.server`` read now); yields its port."""
    port = free_port()
    server = uvicorn.Server(web_config(app_for(parts), "127.0.0.1", port))
    thread = threading.Thread(target=server.run, name="console-web", daemon=True)
    thread.start()
    try:
        wait_for("the console to start", lambda: server.started, timeout_s=30)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def answer_to(sock: socket.socket) -> bytes:
    """Everything the console sends on ``sock`` until it closes the connection. The socket's timeout is a
    guard: passed before the end, the connection was held, and the test fails saying so."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        pytest.fail(f"no end after {sock.gettimeout()} s: the connection was held ({received[:200]!r})")
    return received


def open_claimed_item(tab: Any, port: int, task_id: str) -> None:
    """Log alice in on ``tab`` through the form, claim ``task_id`` from the queue and wait for its page."""
    base = f"http://127.0.0.1:{port}"
    tab.goto(base + "/")
    tab.fill("#reviewer", "alice")
    tab.fill("#password", "alice-password")
    tab.click("#login")
    tab.wait_for_url(base + "/")
    tab.click(f'tr[data-task-id="{task_id}"] button.claim')
    tab.wait_for_selector("body[data-ready='1']")


# The item page's request for the next item, which it sends 400 ms after showing a decision saved.
CLAIM_NEXT = re.compile(r"/api/claim-next(\?|$)")


@contextmanager
def held_on_the_page(tab: Any) -> Iterator[None]:
    """Keeps ``tab`` on its item page until the block ends: the page's request for the next item is held,
    and sent on leaving the block. A decision saved in the block stays shown (``body[data-decided]``, the
    status line) however late the test looks: the page moves on 400 ms after showing it, and a test on a
    loaded machine that looked later met the next page and timed out. Only that request is intercepted
    (a regex pattern, matched by Playwright's driver): the decision's own goes through while the test
    waits elsewhere."""
    held: list[Any] = []

    def hold(route: Any) -> None:
        held.append(route)

    tab.route(CLAIM_NEXT, hold)
    yield
    for route in held:
        route.continue_()
    tab.unroute(CLAIM_NEXT, hold)  # and Playwright's driver sends on one not yet handed to the test


def stroke_on_overlay(tab: Any) -> None:
    """A drag across the mask overlay, from its corner to its middle: an edited mask."""
    box = tab.locator("#overlay").bounding_box()
    tab.mouse.move(box["x"] + 5, box["y"] + 5)
    tab.mouse.down()
    tab.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=8)
    tab.mouse.up()


def losing_the_first_answer(tries: list[str]) -> Callable[[Any], None]:
    """A Playwright route handler that lets the server answer the first request but never passes the
    answer to the page (a network error after the decision was recorded); later ones go through.
    Each request's method is appended to ``tries``."""

    def handle(route: Any) -> None:
        tries.append(route.request.method)
        if len(tries) == 1:
            route.fetch()  # the server records the decision ...
            route.abort()  # ... and its answer never reaches the page
        else:
            route.continue_()

    return handle


@contextmanager
def claimed_in_browser(tmp_path: Path) -> Iterator[tuple[ConsoleParts, Task, Any]]:
    """A console in ``tmp_path`` with one flagged task, served, and a chromium tab in which alice has
    claimed it: yields the console's parts, the task and the tab (its ``context`` opens a second tab of
    the same session). The browser is closed on leaving; the parts can be read after."""
    from playwright.sync_api import sync_playwright

    require_chromium()
    parts = with_flagged(build_console(tmp_path), 1)
    [task] = parts.tasks.query()
    with serving(parts) as port, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            tab = fresh_tab(browser)
            open_claimed_item(tab, port, task.task_id)
            yield parts, task, tab
        finally:
            browser.close()
