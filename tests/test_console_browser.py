"""The console in a real browser (Debian's headless chromium, driven by Playwright) on the real broker.

A reviewer logs in, opens a flagged item, paints on the mask and approves it: the
``correction.resolved`` event on the broker must reference a stored mask that differs from the
predicted one exactly where the stroke went. A second reviewer rejects an item with the keyboard.

``SKUFORGE_UPDATE_SCREENSHOTS=1`` also writes the item page's screenshot to docs/console-item.png.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer

from devstack.broker import free_port
from schemas.envelope import Envelope
from schemas.events import CorrectionResolved
from schemas.topics import CORRECTION_PENDING, CORRECTION_RESOLVED, GATE_ACCEPTED
from services.console.config import ConsoleSettings
from services.console.decisions import mask_from_ref
from services.console.server import ConsoleService
from shared.images import decode_mask
from shared.store import FileStore
from tests.support.bus import create_topics, isolated_settings, read_topic
from tests.support.console import USERS, accepted_envelope, flagged_item, pending_envelope
from tests.support.console_browser import fresh_tab, held_on_the_page, launch_chromium, require_chromium

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

SIZE_PX = 256
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "console-item.png"


@dataclass
class Running:
    service: ConsoleService
    base_url: str
    bootstrap: str
    envelopes: list[Envelope[Any]]


@pytest.fixture
def console(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Running]:
    """The whole console (intake, relay, web server) on a free port, fed two flagged items via Kafka."""
    require_chromium()
    settings = isolated_settings(kafka_bootstrap, f"file://{tmp_path / 'store'}")
    create_topics(settings, CORRECTION_PENDING, CORRECTION_RESOLVED, GATE_ACCEPTED)  # what the intake reads
    store = FileStore(tmp_path / "store")
    service = ConsoleService(
        settings,
        ConsoleSettings(
            console_users=USERS,
            console_db_path=str(tmp_path / "console.sqlite3"),
            console_metrics_port=0,
        ),
        store=store,
    )
    envelopes = [pending_envelope(flagged_item(store, index, size_px=SIZE_PX)) for index in range(2)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for envelope in envelopes:
        producer.send(
            settings.topic_name(CORRECTION_PENDING),
            key=envelope.sku_id.encode(),
            value=envelope.model_dump_json().encode(),
        )
    producer.flush()
    producer.close()

    port = free_port()
    server = service.uvicorn_server("127.0.0.1", port)
    thread = threading.Thread(target=server.run, name="console-web", daemon=True)
    service.start_background()
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not (server.started and service.tasks.counts()["pending"] == len(envelopes)):
            assert time.monotonic() < deadline, "console did not start or did not consume the items"
            time.sleep(0.2)
        yield Running(service, f"http://127.0.0.1:{port}", kafka_bootstrap, envelopes)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        service.stop_background()


@pytest.fixture
def page(console: Running) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield fresh_tab(browser)
        finally:
            browser.close()


def log_in(page: Any, console: Running, reviewer: str) -> None:
    page.goto(console.base_url + "/")
    assert "/login" in page.url  # nothing is shown before logging in
    page.fill("#reviewer", reviewer)
    page.fill("#password", f"{reviewer}-password")
    page.click("#login")
    page.wait_for_url(console.base_url + "/")
    assert page.inner_text('[data-state="pending"]') == "2"


def resolved_events(console: Running, expect: int) -> list[Envelope[CorrectionResolved]]:
    settings = console.service.settings
    records = read_topic(console.bootstrap, settings.topic_name(CORRECTION_RESOLVED), expect=expect)
    return [Envelope[CorrectionResolved].model_validate_json(record.value) for record in records]


def test_paint_on_the_mask_and_approve(console: Running, page: Any, tmp_path: Path) -> None:
    log_in(page, console, "alice")
    first = console.envelopes[0]
    page.click(f'tr[data-task-id="{first.event_id}"] button.claim')
    page.wait_for_url(f"{console.base_url}/tasks/{first.event_id}")
    page.wait_for_selector("body[data-ready='1']")

    predicted = mask_from_ref(console.service.store, first.payload.matted.predicted_mask)
    # A stroke across the top-left background, where the predicted mask is empty.
    row = 24
    start_x, end_x = 20, 80
    assert not predicted[row - 8 : row + 8, start_x - 8 : end_x + 8].any()
    box = page.locator("#overlay").bounding_box()
    scale = box["width"] / SIZE_PX

    def at(x: float, y: float) -> tuple[float, float]:
        return box["x"] + (x + 0.5) * scale, box["y"] + (y + 0.5) * scale

    page.mouse.move(*at(start_x, row))
    page.mouse.down()
    for x in range(start_x, end_x + 1, 5):
        page.mouse.move(*at(x, row))
    page.mouse.up()
    # The eraser and undo/redo at work too: erase a dot, undo it, redo it, undo it again.
    page.keyboard.press("x")
    page.mouse.click(*at(50, row))
    page.keyboard.press("Control+z")
    page.keyboard.press("Control+y")
    page.keyboard.press("Control+z")
    page.keyboard.press("b")

    shot = tmp_path / "console-item.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
    if os.environ.get("SKUFORGE_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)

    with held_on_the_page(page):  # the page moves on 400 ms after saying so: the test may look later
        page.click("#approve-edited")
        page.wait_for_selector("body[data-decided='approve_edited']")

    [event] = resolved_events(console, expect=1)
    assert event.payload.decision == "approve_edited" and event.payload.reviewer == "alice"
    assert event.payload.pending.matted.generated.item_id == first.payload.matted.generated.item_id
    final = event.payload.final_mask
    assert final is not None and "/masks/corrected/" in final.uri
    stored = decode_mask(console.service.store.read_verified(final))
    assert stored.shape == predicted.shape
    changed = np.argwhere(stored != predicted)
    assert len(changed) > 100  # a stroke 60 px long and 8 px wide
    # ...and only where the stroke went (brush radius 4 around the line), all painted, none erased.
    assert changed[:, 0].min() >= row - 5 and changed[:, 0].max() <= row + 5
    assert changed[:, 1].min() >= start_x - 5 and changed[:, 1].max() <= end_x + 5
    assert (stored[changed[:, 0], changed[:, 1]] == 255).all()
    assert stored[row, start_x:end_x].all()  # the undone eraser dot stays painted
    assert console.service.tasks.get(first.event_id).state == "approved"

    # Opened again to check it, the decided item's "edited" overlay is the mask that was saved (it
    # was the predicted mask again): with only that layer shown, the stroke is drawn. Once the page has
    # moved on by itself: its move, let go above, interrupted a goto sent before it.
    page.wait_for_url(f"{console.base_url}/tasks/{console.envelopes[1].event_id}")
    page.goto(f"{console.base_url}/tasks/{first.event_id}")
    page.wait_for_selector("body[data-ready='1']")
    page.evaluate(
        """() => { for (const [id, on] of [["show-predicted", false], ["show-expected", false],
                                           ["show-edited", true]]) {
             const box = document.getElementById(id);
             if (box.checked !== on) box.click(); } }"""
    )
    alpha = page.evaluate(
        """([x, y]) => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() =>
             done(document.getElementById("overlay").getContext("2d").getImageData(x, y, 1, 1).data[3]))))""",
        [(start_x + end_x) // 2, row],
    )
    assert alpha > 0


def test_reject_with_the_keyboard(console: Running, page: Any) -> None:
    log_in(page, console, "bob")
    page.keyboard.press("n")  # claim the next (oldest) item
    oldest = console.envelopes[0]
    page.wait_for_url(f"{console.base_url}/tasks/{oldest.event_id}")
    page.wait_for_selector("body[data-ready='1']")
    page.keyboard.press("r")
    page.wait_for_selector("#reject-dialog[open]")
    page.keyboard.type("label cut off")  # the note has the focus; the first reason is preselected
    with held_on_the_page(page):
        page.keyboard.press("Enter")
        page.wait_for_selector("body[data-decided='reject']")

    [event] = resolved_events(console, expect=1)
    assert event.payload.decision == "reject" and event.payload.final_mask is None
    assert event.payload.reject_reason == "wrong_product: label cut off"
    assert event.payload.reviewer == "bob"
    assert console.service.tasks.get(oldest.event_id).state == "rejected"
    # After a decision the page moves on to the next item by itself.
    page.wait_for_url(f"{console.base_url}/tasks/{console.envelopes[1].event_id}")


def test_reject_an_item_the_gate_accepted_from_its_page(console: Running, page: Any) -> None:
    """An item the gate accepted on a replay had no reject button on its page (the API took the
    rejection): a reviewer who saw it was wrong could not take it out of the store from the console."""
    log_in(page, console, "bob")
    flagged = console.envelopes[0]
    acceptance = accepted_envelope(flagged, produced_at=flagged.produced_at + timedelta(seconds=60))
    producer = KafkaProducer(bootstrap_servers=console.bootstrap, acks="all")
    producer.send(
        console.service.settings.topic_name(GATE_ACCEPTED),
        key=acceptance.sku_id.encode(),
        value=acceptance.model_dump_json().encode(),
    )
    producer.flush()
    producer.close()
    deadline = time.monotonic() + 60
    while console.service.tasks.get(flagged.event_id).state != "accepted":
        assert time.monotonic() < deadline, "the intake did not close the task of the accepted item"
        time.sleep(0.2)

    page.goto(f"{console.base_url}/tasks/{flagged.event_id}")
    page.wait_for_selector("body[data-ready='1']")
    page.click("#reject")
    page.wait_for_selector("#reject-dialog[open]")
    page.keyboard.type("label cut off")
    with held_on_the_page(page):
        page.keyboard.press("Enter")
        page.wait_for_selector("body[data-decided='reject']")

    [event] = resolved_events(console, expect=1)
    assert event.payload.decision == "reject" and event.payload.reviewer == "bob"
    assert event.payload.reject_reason == "wrong_product: label cut off"
    assert console.service.tasks.get(flagged.event_id).state == "rejected"
    page.wait_for_url(f"{console.base_url}/tasks/{console.envelopes[1].event_id}")  # then the next item


def test_the_queues_filters_follow_the_reviewer_from_item_to_item(console: Running, page: Any) -> None:
    """ "next" claimed the oldest item of any SKU, whatever the queue was filtered by; on a held item it
    reloaded that very item (the server gives back one's own claim first) and lost the painted mask."""
    log_in(page, console, "alice")
    base, sku = console.base_url, console.envelopes[0].sku_id
    page.goto(f"{base}/?sku={sku}")
    page.keyboard.press("n")
    page.wait_for_url(f"{base}/tasks/{console.envelopes[0].event_id}?sku={sku}")
    page.wait_for_selector("body[data-ready='1']")
    page.keyboard.press("n")  # held: decide or release first
    page.wait_for_selector("#status:has-text('decide or release')")
    assert page.url == f"{base}/tasks/{console.envelopes[0].event_id}?sku={sku}"
    for _decided, following in zip(console.envelopes, [*console.envelopes[1:], None], strict=True):
        page.keyboard.press("r")
        page.wait_for_selector("#reject-dialog[open]")
        with held_on_the_page(page):
            page.keyboard.press("Enter")
            page.wait_for_selector("body[data-decided='reject']")
        if following is not None:
            page.wait_for_url(f"{base}/tasks/{following.event_id}?sku={sku}")
            page.wait_for_selector("body[data-ready='1']")
    page.wait_for_url(f"{base}/?sku={sku}&empty=1")
    assert "nothing left to claim" in page.inner_text("#nothing-to-claim")
    assert [event.payload.decision for event in resolved_events(console, expect=2)] == ["reject", "reject"]


def test_an_open_item_decides_after_a_new_login_elsewhere(console: Running, page: Any) -> None:
    """The page kept the CSRF token it was rendered with: after a logout and login in another tab
    (or an expired session) every save answered 403 "reload the page", and a reload lost the edit."""
    log_in(page, console, "alice")
    page.keyboard.press("n")
    oldest = console.envelopes[0]
    page.wait_for_url(f"{console.base_url}/tasks/{oldest.event_id}")
    page.wait_for_selector("body[data-ready='1']")

    other = page.context.new_page()
    other.goto(console.base_url + "/")
    other.click("form[action='/logout'] button")
    other.wait_for_url("**/login**")
    other.fill("#reviewer", "alice")
    other.fill("#password", "alice-password")
    other.click("#login")
    other.wait_for_url(console.base_url + "/")
    other.close()

    page.keyboard.press("r")
    page.wait_for_selector("#reject-dialog[open]")
    with held_on_the_page(page):
        page.keyboard.press("Enter")
        page.wait_for_selector("body[data-decided='reject']")
    [event] = resolved_events(console, expect=1)
    assert event.payload.decision == "reject" and event.payload.reviewer == "alice"
