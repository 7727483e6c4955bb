"""The item page keeps its lease through a failed renewal, in a real browser (Debian's headless
chromium, driven by Playwright), without Kafka: the web app alone, over a test clock that the test
moves to expire the lease.

Before, any failed renewal ended the hold for good: the painted mask could no longer be saved, and
claiming again reloaded the page and lost it.

The queue's filter form is checked here too, as only a browser applies the form's own constraints.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from services.console.decisions import mask_from_ref
from shared.errors import TransientError
from shared.images import decode_mask
from tests.support.console import (
    ConsoleParts,
    accepted_envelope,
    build_console,
    flagged_item,
    pending_envelope,
    record_as,
)
from tests.support.console_browser import (
    fresh_tab,
    held_on_the_page,
    launch_chromium,
    require_chromium,
    serving,
)
from tests.support.polling import wait_for

pytestmark = pytest.mark.slow

LEASE_S = 6.0  # the page renews every 2 s, so a test sees a renewal within seconds
IDLE_S = 8.0  # without a key press or click for this long, the page stops renewing


@dataclass
class Served:
    parts: ConsoleParts
    base_url: str
    task_id: str


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    require_chromium()
    parts = build_console(tmp_path, lease_s=LEASE_S, idle_s=IDLE_S)
    envelope = pending_envelope(flagged_item(parts.store, 0))
    parts.tasks.add_pending(envelope)
    with serving(parts) as port:
        yield Served(parts, f"http://127.0.0.1:{port}", envelope.event_id)


@pytest.fixture
def page(served: Served) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield fresh_tab(browser)  # waits of 30 s: a loaded CI machine is slow, not wrong
        finally:
            browser.close()


def open_held_item(page: Any, served: Served) -> None:
    """Log alice in, claim the item from the queue, and mark the page so a reload would show."""
    page.goto(served.base_url + "/")
    page.fill("#reviewer", "alice")
    page.fill("#password", "alice-password")
    page.click("#login")
    page.wait_for_url(served.base_url + "/")
    page.click(f'tr[data-task-id="{served.task_id}"] button.claim')
    page.wait_for_url(f"{served.base_url}/tasks/{served.task_id}")
    page.wait_for_selector("body[data-ready='1']")
    page.evaluate("window.notReloaded = true")


def in_use(page: Any) -> None:
    """A key that does nothing on the item page but count as use, pressed after the test changed the lease
    under the page: the page stops renewing IDLE_S (real time) after the last use, and a test on a loaded
    machine could reach its change later than that, so no renewal ever saw it. Pressed on an idle page,
    it renews at once; on one in use, the next tick does."""
    page.keyboard.press("Shift")


def test_an_expired_lease_is_claimed_again_in_place_and_the_painted_mask_is_saved(
    served: Served, page: Any
) -> None:
    tasks = served.parts.tasks
    open_held_item(page, served)
    paint_a_stroke(page, served)

    # The lease runs out (a laptop asleep, a stalled network): the next renewal is refused with a 409.
    served.parts.clock.advance(LEASE_S + 10)
    in_use(page)
    wait_for(
        "the page to claim the item again",
        lambda: (
            (task := tasks.get(served.task_id)).claimed_by == "alice"
            and task.lease_expires_at is not None
            and task.lease_expires_at > served.parts.clock()
        ),
    )
    assert page.evaluate("window.notReloaded === true")
    with held_on_the_page(page):
        approve_edited_saves_the_stroke(page, served)


def test_an_unavailable_table_keeps_the_hold_and_the_page_saves_once_it_is_back(
    served: Served, page: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_held_item(page, served)
    refused: list[str] = []

    def locked(*args: object, **kwargs: object) -> Any:
        refused.append("refused")
        raise TransientError(f"task table {served.parts.tasks.path}: database is locked")

    with monkeypatch.context() as patched:
        patched.setattr(served.parts.tasks, "check_held", locked)
        patched.setattr(served.parts.tasks, "claim", locked)
        in_use(page)
        wait_for("the page to try to renew its lease", lambda: len(refused) >= 2)
        page.wait_for_selector("#status:has-text('could not renew the lease')")
    with held_on_the_page(page):  # the page moves on 400 ms after saying so: the test may look later
        page.keyboard.press("p")
        page.wait_for_selector("body[data-decided='approve_predicted']")
    assert served.parts.tasks.get(served.task_id).state == "approved"


def test_someone_else_holding_the_item_ends_the_hold_and_says_so(served: Served, page: Any) -> None:
    open_held_item(page, served)
    served.parts.clock.advance(LEASE_S + 10)
    served.parts.tasks.claim(served.task_id, "bob", 60.0)
    in_use(page)
    page.wait_for_selector("#status:has-text('lease lost')")
    assert "claimed by bob" in page.inner_text("#status")
    page.keyboard.press("p")
    assert "claim the item first" in page.inner_text("#status")
    assert served.parts.tasks.get(served.task_id).claimed_by == "bob"


def test_a_held_item_the_gate_accepts_can_still_be_rejected_from_its_page(served: Served, page: Any) -> None:
    """The gate, replayed, accepted the item while alice held it: the next renewal ended the hold with
    "lease lost ... can no longer be saved from this page", and her rejection, which the console still
    records (a person's rejection stands against the gate's acceptance), was refused by the page."""
    open_held_item(page, served)
    flagged = pending_envelope(served.parts.tasks.get(served.task_id).pending)
    acceptance = accepted_envelope(flagged, produced_at=flagged.produced_at + timedelta(seconds=60))
    assert served.parts.tasks.close_accepted(acceptance) == [served.task_id]
    in_use(page)
    page.wait_for_selector("#status:has-text('the gate accepted this item')")
    assert "reject it (r)" in page.inner_text("#status")
    page.keyboard.press("p")  # an approval is not offered: the item is stored already
    assert "only a rejection" in page.inner_text("#status")
    page.keyboard.press("r")
    page.wait_for_selector("#reject-dialog[open]")
    with held_on_the_page(page):
        page.keyboard.press("Enter")
        page.wait_for_selector("body[data-decided='reject']")
    task = served.parts.tasks.get(served.task_id)
    assert (task.state, task.decided_by) == ("rejected", "alice")


def test_an_idle_page_lets_its_lease_run_out_and_a_key_press_takes_the_item_back(
    served: Served, page: Any
) -> None:
    """A tab left open renewed its lease for good: the item never went back to the queue."""
    tasks = served.parts.tasks
    open_held_item(page, served)

    def expiry() -> float:
        return tasks.get(served.task_id).lease_expires_at or 0.0

    # The page's renewals (and re-claims) not yet answered: a renewal sent before the page went idle may
    # reach a loaded server after the idle status shows, and was read as an idle page's renewal.
    unanswered: set[Any] = set()
    page.on("request", lambda request: unanswered.add(request) if _a_lease_request(request) else None)
    page.on("requestfinished", lambda request: unanswered.discard(request))
    page.on("requestfailed", lambda request: unanswered.discard(request))

    served.parts.clock.advance(1.0)
    first = expiry()
    in_use(page)
    wait_for("the page to renew while in use", lambda: expiry() > first)
    # No input for IDLE_S (real time in the browser): the page says so and renews no more.
    page.wait_for_selector("#status:has-text('idle')", timeout=(IDLE_S + 30) * 1000)
    # Every renewal sent before it is answered before the expiry is read, however late a loaded server
    # answers (a fixed wait of one tick, review 48's, was too short for one answered after it). Playwright
    # delivers the requests' events while it waits.
    wait_for(
        "the renewals sent before the page went idle to be answered",
        lambda: page.wait_for_timeout(50) or not unanswered,
        timeout_s=60.0,
    )
    served.parts.clock.advance(1.0)
    stopped = expiry()
    time.sleep(LEASE_S / 3 * 2 + 1)  # two renewal ticks
    assert expiry() == stopped, "an idle page renewed its lease"
    served.parts.clock.advance(LEASE_S + 1)
    assert tasks.get(served.task_id).state == "pending"  # back in the queue, as for a closed tab

    page.keyboard.press("1")  # any key: the page claims the item again in place
    wait_for(
        "a key press to take the item back",
        lambda: tasks.get(served.task_id).state == "claimed",
    )
    assert tasks.get(served.task_id).claimed_by == "alice"
    assert page.evaluate("window.notReloaded === true")

    # Idle again, and this time the key is Esc: the re-claim that key starts raced the release, and a
    # release answered first was undone by it (the item stayed claimed, and "next" reopened it).
    page.wait_for_selector("#status:has-text('idle')", timeout=(IDLE_S + 30) * 1000)
    served.parts.clock.advance(LEASE_S + 1)
    page.keyboard.press("Escape")
    page.wait_for_url(served.base_url + "/")
    time.sleep(1.0)
    assert tasks.get(served.task_id).state == "pending"


def _a_lease_request(request: Any) -> bool:
    """Whether ``request`` is the item page's renewal or its re-claim after a failed one."""
    return request.method == "POST" and urlsplit(request.url).path.endswith(("/renew", "/claim"))


def paint_a_stroke(page: Any, served: Served, *, row: int = 20) -> None:
    """Paint a stroke along image row ``row``, from x = 10 to x = 60 (the brush is 8 px wide)."""
    box = page.locator("#overlay").bounding_box()
    scale = box["width"] / served.parts.tasks.get(served.task_id).pending.matted.generated.image.width
    page.mouse.move(box["x"] + 10 * scale, box["y"] + row * scale)
    page.mouse.down()
    for x in range(10, 61, 5):
        page.mouse.move(box["x"] + x * scale, box["y"] + row * scale)
    page.mouse.up()


def approve_edited_saves_the_stroke(page: Any, served: Served) -> None:
    """Press `a` (approve as edited) and check the decision's stored mask holds a painted stroke. Called
    ``held_on_the_page``: the page shows the decision saved, and moves on 400 ms later."""
    tasks = served.parts.tasks
    page.keyboard.press("a")
    page.wait_for_selector("body[data-decided='approve_edited']")
    outbox = tasks.outbox(served.task_id)
    assert outbox is not None and outbox.payload.final_mask is not None
    predicted = mask_from_ref(served.parts.store, tasks.get(served.task_id).pending.matted.predicted_mask)
    stored = decode_mask(served.parts.store.read_verified(outbox.payload.final_mask))
    assert np.count_nonzero(stored > predicted) > 100  # the stroke, 50 px long and 8 px wide


def test_a_renewal_while_the_release_is_answered_does_not_take_the_item_back(
    served: Served, page: Any
) -> None:
    """A renewal tick between the server's release and the page leaving found the item released and
    claimed it again: the item stayed held by a page that had left it, out of everyone's queue."""
    tasks = served.parts.tasks
    open_held_item(page, served)

    def slow_answer(route: Any) -> None:
        answer = route.fetch()  # released on the server now
        time.sleep(LEASE_S / 3 + 1.5)  # at least one renewal tick before the page reads the answer
        route.fulfill(response=answer)

    page.route("**/release", slow_answer)
    page.keyboard.press("Escape")
    page.wait_for_url(served.base_url + "/")
    time.sleep(1.0)
    assert tasks.get(served.task_id).state == "pending"


@pytest.mark.parametrize(
    ("button", "not_done"),
    [
        ("#approve-expected", "the decision (approve_expected) was not saved"),
        ("#release", "was not released"),
    ],
)
def test_a_press_after_the_session_ran_out_says_nothing_was_done_and_leads_to_the_login(
    served: Served, page: Any, button: str, not_done: str
) -> None:
    """The item page's script answered a 401 (the session ran out, or was logged out in another tab) with
    'not saved: "login required"' in the status line, and no way on."""
    tasks = served.parts.tasks
    open_held_item(page, served)
    page.context.clear_cookies()

    page.click(button)

    page.wait_for_selector(f"#status:has-text('{not_done}')")
    assert "your session ran out" in page.inner_text("#status")
    assert (tasks.get(served.task_id).state, tasks.outbox(served.task_id)) == ("claimed", None)
    login = urlsplit(page.get_attribute("#status a", "href") or "")
    assert login.path == "/login"
    assert parse_qs(login.query) == {"error": ["expired"], "next": [f"/tasks/{served.task_id}"]}
    # The link leads to the login page, which says so, and back to the item, still held.
    log_in_from_the_status_link(page, served)
    page.click(button)
    wait_for(
        f"{button} to decide the item after the login",
        lambda: tasks.get(served.task_id).state != "claimed",
    )


def log_in_from_the_status_link(page: Any, served: Served) -> None:
    """Follow the status line's "log in" link as alice, back to the item page."""
    page.click("#status a.login")
    page.wait_for_selector("text=your session ran out")
    page.fill("#reviewer", "alice")
    page.fill("#password", "alice-password")
    page.click("#login")
    page.wait_for_url(f"{served.base_url}/tasks/{served.task_id}")
    page.wait_for_selector("body[data-ready='1']")


def edited_overlay_at(page: Any, x: int, y: int) -> bool:
    """Whether the overlay shows the edited (blue) layer at image pixel (x, y), once drawn."""
    return bool(
        page.evaluate(
            "([x, y]) => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() => {"
            " const [r, , b, a] = document.getElementById('overlay').getContext('2d')"
            ".getImageData(x, y, 1, 1).data; done(a > 0 && b > r); })))",
            [x, y],
        )
    )


def test_a_mask_painted_before_the_session_ran_out_is_restored_after_the_login(
    served: Served, page: Any
) -> None:
    """A decision met a 401 and the reviewer followed the "log in" link: the page was left, and the mask
    painted on it was gone when the login came back to the item."""
    tasks = served.parts.tasks
    open_held_item(page, served)
    paint_a_stroke(page, served)
    page.context.clear_cookies()
    page.keyboard.press("a")
    page.wait_for_selector("#status:has-text('the decision (approve_edited) was not saved')")
    # A stroke painted after the 401, before following the link, is kept too.
    paint_a_stroke(page, served, row=40)

    log_in_from_the_status_link(page, served)

    page.wait_for_selector("#status:has-text('restored')")
    said = page.inner_text("#status")
    assert "not saved" in said and "approve_edited" in said
    assert edited_overlay_at(page, 35, 20) and edited_overlay_at(page, 35, 40)
    assert tasks.get(served.task_id).state == "claimed"  # restored, never sent on its own
    with held_on_the_page(page):  # still this page's storage when it is read
        approve_edited_saves_the_stroke(page, served)
        assert page.evaluate("window.sessionStorage.length") == 0  # saved: kept no longer


def test_a_kept_mask_for_other_pixels_or_discarded_is_not_restored(served: Served, page: Any) -> None:
    """What was kept at a 401 is for the pixels the page showed then: a replay since (another digest) drops
    it unapplied; and a reviewer who discards it gets the page as the server has it."""
    open_held_item(page, served)
    paint_a_stroke(page, served)
    page.context.clear_cookies()
    page.keyboard.press("a")
    page.wait_for_selector("#status:has-text('was not saved')")
    log_in_from_the_status_link(page, served)
    page.wait_for_selector("#status:has-text('restored')")

    page.click("#status button.discard")
    page.wait_for_selector("#status:has-text('discarded')")
    assert not edited_overlay_at(page, 35, 20)
    assert page.evaluate("window.sessionStorage.length") == 0
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert "restored" not in page.inner_text("#status")

    # Kept for pixels a replay has replaced since: said, and not applied.
    kept = page.evaluate(
        "() => { window.sessionStorage.setItem('skuforge.unsaved.' + JSON.parse("
        "document.getElementById('task-data').textContent).taskId, JSON.stringify({shown: 'older', "
        "decision: 'approve_edited', width: 1, height: 1, mask: 'gA=='}));"
        " return window.sessionStorage.length; }"
    )
    assert kept == 1
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_selector("#status:has-text('changed since')")
    assert not edited_overlay_at(page, 35, 20)
    assert page.evaluate("window.sessionStorage.length") == 0


def reject_after_the_session_ran_out(page: Any, reason: str, note: str) -> None:
    """Clear the session's cookie, then reject with ``reason`` and ``note``: the page meets a 401."""
    page.context.clear_cookies()
    page.keyboard.press("r")
    page.wait_for_selector("#reject-dialog[open]")
    page.select_option("#reject-reason", reason)
    page.fill("#reject-note", note)
    page.keyboard.press("Enter")
    page.wait_for_selector("#status:has-text('the decision (reject) was not saved')")


def confirm_the_rejection(page: Any, served: Served) -> str | None:
    """Press `r` and confirm the dialog as it opens; returns the recorded reason. Called
    ``held_on_the_page``: the page shows the decision saved, and moves on 400 ms later."""
    page.keyboard.press("r")
    page.wait_for_selector("#reject-dialog[open]")
    page.keyboard.press("Enter")
    page.wait_for_selector("body[data-decided='reject']")
    outbox = served.parts.tasks.outbox(served.task_id)
    assert outbox is not None
    return outbox.payload.reject_reason


def test_a_reject_reason_typed_before_the_session_ran_out_is_restored_after_the_login(
    served: Served, page: Any
) -> None:
    """A rejection met a 401: the page kept the decision pressed but not the reason picked and the note
    typed, so after the login `r` opened the dialog empty, and Enter rejected for the first reason with
    no note."""
    open_held_item(page, served)
    reject_after_the_session_ran_out(page, "product_cut_off", "the label is cut at the top")

    log_in_from_the_status_link(page, served)

    page.wait_for_selector("#status:has-text('restored')")
    assert served.parts.tasks.get(served.task_id).state == "claimed"  # restored, never sent on its own
    with held_on_the_page(page):
        assert confirm_the_rejection(page, served) == "product_cut_off: the label is cut at the top"
        assert page.evaluate("window.sessionStorage.length") == 0  # saved: kept no longer


@pytest.mark.parametrize("accepted", ["while the session was out", "before the rejection"])
def test_a_rejection_kept_for_an_item_the_gate_accepted_is_restored(
    served: Served, page: Any, accepted: str
) -> None:
    """A rejection is still recorded on an item the gate accepted, unheld: the reason kept at the 401 is
    put back on its page as on a held one. The page kept nothing when it met the 401 on such an item
    (it did not hold it), and restored nothing on it."""
    open_held_item(page, served)
    flagged = pending_envelope(served.parts.tasks.get(served.task_id).pending)
    acceptance = accepted_envelope(flagged, produced_at=flagged.produced_at + timedelta(seconds=60))
    if accepted == "before the rejection":
        assert served.parts.tasks.close_accepted(acceptance) == [served.task_id]
        in_use(page)
        page.wait_for_selector("#status:has-text('the gate accepted this item')")
    reject_after_the_session_ran_out(page, "wrong_product", "a blue mug, not a red one")
    if accepted == "while the session was out":
        assert served.parts.tasks.close_accepted(acceptance) == [served.task_id]

    log_in_from_the_status_link(page, served)

    page.wait_for_selector("#status:has-text('restored')")
    assert "gate accepted" in page.inner_text("#status")
    with held_on_the_page(page):
        assert confirm_the_rejection(page, served) == "wrong_product: a blue mug, not a red one"
        assert page.evaluate("window.sessionStorage.length") == 0


def test_what_was_kept_for_an_item_decided_meanwhile_is_dropped_and_said(served: Served, page: Any) -> None:
    """alice's session ran out with a painted mask kept; her lease ran out too, and bob claimed and approved
    the item. Back after the login, the page (not held) said nothing of her mask, and kept it in the
    tab's storage for good: nothing could restore it, and nothing removed it."""
    tasks = served.parts.tasks
    open_held_item(page, served)
    paint_a_stroke(page, served)
    page.context.clear_cookies()
    page.keyboard.press("a")
    page.wait_for_selector("#status:has-text('was not saved')")
    served.parts.clock.advance(LEASE_S + 10)
    tasks.claim(served.task_id, "bob", 60.0)
    record_as(served.parts, "bob", served.task_id, "approve_predicted")

    log_in_from_the_status_link(page, served)

    page.wait_for_selector("#status:has-text('dropped')")
    assert "approved" in page.inner_text("#status")
    assert page.evaluate("window.sessionStorage.length") == 0


def test_c_on_a_held_item_keeps_the_painted_mask(served: Served, page: Any) -> None:
    """`c` claimed the item again and reloaded the page: the painted mask was lost."""
    open_held_item(page, served)
    paint_a_stroke(page, served)
    page.keyboard.press("c")
    page.wait_for_selector("#status:has-text('holds the item already')")
    assert page.evaluate("window.notReloaded === true")


def test_a_mask_the_browser_cannot_encode_is_said_and_the_next_try_saves(served: Served, page: Any) -> None:
    """A failed PNG encoding threw before the save, and the page then ignored every decision key."""
    tasks = served.parts.tasks
    open_held_item(page, served)
    paint_a_stroke(page, served)
    page.evaluate(
        "() => { window.realToBlob = HTMLCanvasElement.prototype.toBlob;"
        " HTMLCanvasElement.prototype.toBlob = function (done) { done(null); }; }"
    )
    page.keyboard.press("a")
    page.wait_for_selector("#status:has-text('could not encode the mask')")
    assert tasks.get(served.task_id).state == "claimed"
    page.evaluate("() => { HTMLCanvasElement.prototype.toBlob = window.realToBlob; }")
    with held_on_the_page(page):
        page.keyboard.press("a")
        page.wait_for_selector("body[data-decided='approve_edited']")
    assert tasks.get(served.task_id).state == "approved"


def test_the_queue_filters_by_an_iou_with_more_than_two_decimals(served: Served, page: Any) -> None:
    """The queue's IoU inputs took steps of 0.01, so the browser refused the filter form with a bound the
    queue shows (0.455, or 0.8996 just under a threshold of 0.9), and a queue opened with one (a link,
    a bookmark) could not be filtered on anything else until the bound was cleared."""
    page.goto(served.base_url + "/?iou_min=0.455")
    page.fill("#reviewer", "alice")
    page.fill("#password", "alice-password")
    page.click("#login")
    page.wait_for_url(served.base_url + "/?iou_min=0.455")
    assert page.evaluate("document.getElementById('filters').checkValidity()")

    page.fill("#filters input[name=iou_max]", "0.8996")
    assert page.evaluate("document.getElementById('filters').checkValidity()")
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r".*[?&]iou_max=0\.8996(&|$)"))


# Fills this tab's sessionStorage with masks kept (at a 401) for other items, oldest first: COUNT of them,
# or until the storage is full where COUNT is 0; returns how many it holds.
_KEPT_ELSEWHERE = """(count) => {
  const mask = "A".repeat(175000);  // a 1000 x 1400 mask, packed
  let n = 0;
  for (; count === 0 || n < count; n++) {
    try {
      const kept = JSON.stringify({shown: "x", at: n + 1, mask});
      window.sessionStorage.setItem("skuforge.unsaved.other-" + n, kept);
    } catch (_) { break; }
  }
  for (let size = 87500; count === 0 && size >= 1; size = Math.floor(size / 2)) {  // full to the last byte
    try {
      window.sessionStorage.setItem("filler-" + size, "A".repeat(size));
    } catch (_) { /* a smaller one next */ }
  }
  return n;
}"""


def kept_keys(page: Any) -> list[str]:
    return sorted(
        page.evaluate(
            "() => Array.from({length: window.sessionStorage.length}, (_, i) => window.sessionStorage.key(i))"
        )
    )


def test_masks_kept_for_items_never_come_back_to_are_bounded(served: Served, page: Any) -> None:
    """A mask kept at a 401 (about 175 kB) stayed in the tab for as long as its item was not opened again
    (a login elsewhere, another item next, the item decided by someone else): after about 25 of them the
    tab's storage (about 5 MB) was full, and the next 401's mask was not kept, silently."""
    open_held_item(page, served)
    assert page.evaluate(_KEPT_ELSEWHERE, 20) == 20
    paint_a_stroke(page, served)
    page.context.clear_cookies()
    page.keyboard.press("a")
    page.wait_for_selector("#status:has-text('was not saved')")
    assert "could not be kept" not in page.inner_text("#status")
    kept = kept_keys(page)
    assert f"skuforge.unsaved.{served.task_id}" in kept
    assert len(kept) <= 5  # the newest others, besides this item's
    assert "skuforge.unsaved.other-19" in kept and "skuforge.unsaved.other-0" not in kept


def test_a_full_tab_storage_drops_the_oldest_kept_mask_or_says_this_one_is_lost(
    served: Served, page: Any
) -> None:
    """A storage already full (QuotaExceededError) lost the 401's mask without a word: the status line
    said to log in and come back, and nothing was restored then."""
    open_held_item(page, served)
    assert page.evaluate(_KEPT_ELSEWHERE, 0) > 5
    paint_a_stroke(page, served)
    page.context.clear_cookies()
    page.keyboard.press("a")
    page.wait_for_selector("#status:has-text('was not saved')")
    assert "could not be kept" not in page.inner_text("#status")
    assert f"skuforge.unsaved.{served.task_id}" in kept_keys(page)

    # Storage that takes nothing (full of another page's, or off): said, with what it means.
    page.evaluate(
        "() => { window.sessionStorage.clear(); Storage.prototype.setItem = function () {"
        " throw new DOMException('full', 'QuotaExceededError'); }; }"
    )
    paint_a_stroke(page, served, row=40)
    page.keyboard.press("a")
    page.wait_for_selector("#status:has-text('could not be kept')")
    assert "lost" in page.inner_text("#status")
