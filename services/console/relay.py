"""Publishes recorded decisions (the task table's outbox) to ``correction.resolved``.

The web request records the decision, its audit entry and its event in one SQLite transaction
and nudges the relay; the relay sends each unpublished event (acks=all, deterministic event id
``derive_id(task_id, "console", "decision")``, ``produced_at`` the time the decision was recorded)
and marks it published. A broker outage delays events, never loses them: they wait in the outbox
and the relay retries with back-off. Once the broker is back, one round sends the whole backlog, a
page at a time. A decision the broker refuses for good (over the topic's max.message.bytes) is set
aside with the broker's reason, counted by ``skuforge_console_refused_decisions``, and the relay goes
on with the next: retried, it held back every decision behind it. One this version cannot read (stored
under a schema it refuses) is set aside likewise, with why. A crash between send and mark
re-sends the same message, byte for byte, which consumers de-duplicate (a new ``produced_at`` let a
late resend outrank the item's newer events in the trainstore).

At shutdown the relay keeps sending for ``SHUTDOWN_DRAIN_S``, then lets the send in hand finish
(up to ``flush_timeout_s``): ``stop_timeout_s`` is what a deployment's grace period must allow.
What is not sent by then waits in the outbox for the next start.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from schemas.topics import CORRECTION_RESOLVED
from services.console.metrics import ConsoleMetrics
from services.console.tasks import PRODUCER, TaskStore, UnreadableDecision
from shared.bus import Publisher, RecordRefused
from shared.config import Settings
from shared.errors import TransientError

log = logging.getLogger("skuforge.console.relay")

# New sends start for this long after stop(); the next console start publishes the rest (the outbox
# is on the same volume), so a longer drain would only hold up the pod that replaces this one.
SHUTDOWN_DRAIN_S = 5.0


def stop_timeout_s(settings: Settings) -> float:
    """The longest ``DecisionRelay.stop`` takes: the drain, then the last send's acknowledgement."""
    return SHUTDOWN_DRAIN_S + settings.flush_timeout_s


class DecisionRelay:
    """A background thread draining the outbox to Kafka."""

    def __init__(
        self,
        tasks: TaskStore,
        settings: Settings,
        metrics: ConsoleMetrics | None = None,
        *,
        idle_poll_s: float = 5.0,
        page_size: int = 100,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self._tasks = tasks
        self._settings = settings
        self._metrics = metrics
        self._idle_poll_s = idle_poll_s
        self._page_size = page_size  # outbox rows read per query; a round reads pages until none is left
        self._heartbeat = heartbeat  # /healthz stays green while this loop turns
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._publisher: Publisher | None = None
        self._send_until = math.inf  # time.monotonic() after which no new send starts; set by stop()

    def notify(self) -> None:
        """A decision was recorded: publish now rather than at the next idle poll."""
        self._wake.set()

    def publish_pending(self) -> int:
        """Send every unpublished decision, a page at a time, until the outbox is empty (or the
        shutdown drain's time is up); returns how many the broker acknowledged.

        A failed send raises (TransientError when the broker is away); what was acknowledged
        before it is marked published, the rest waits in the outbox. A decision the broker refuses
        for good (RecordRefused) is set aside with the reason (``TaskStore.mark_refused``) and the
        round goes on with the next; so is one this version cannot read, with why.
        """
        sent = 0
        while time.monotonic() < self._send_until:
            events = self._tasks.unsent(limit=self._page_size)
            if not events:
                break
            if self._publisher is None:
                self._publisher = Publisher(self._settings, PRODUCER)  # TransientError if Kafka is away
            for event in events:
                if time.monotonic() >= self._send_until:
                    break
                if isinstance(event, UnreadableDecision):
                    # Passed over, it stayed in the backlog gauge for ever (SkuforgeDecisionsUnpublished
                    # fired at every quiet spell) and logged an error every round; ``refused`` lists it.
                    self._tasks.mark_refused(event.event_id, event.error)
                    log.error(
                        "a decision this version cannot read; set aside in the outbox",
                        extra={"event_id": event.event_id, "task_id": event.task_id, "error": event.error},
                    )
                    continue
                try:
                    self._publisher.publish(
                        CORRECTION_RESOLVED,
                        event.payload,
                        sku_id=event.sku_id,
                        event_id=event.event_id,
                        trace_id=event.trace_id,
                        produced_at=event.produced_at,  # every send of a decision is the same message
                    )
                except RecordRefused as exc:
                    self._tasks.mark_refused(event.event_id, str(exc))
                    log.error(
                        "the broker refused a decision for good; set aside in the outbox",
                        extra={"event_id": event.event_id, "task_id": event.task_id, "error": str(exc)},
                    )
                    continue
                self._tasks.mark_published(event.event_id)
                sent += 1
                if self._metrics:
                    self._metrics.published.inc()
                log.info("decision published", extra={"event_id": event.event_id, "task_id": event.task_id})
            self._heartbeat()  # a long backlog is the loop turning, not stalled
            if len(events) < self._page_size:
                break
        return sent

    def _loop(self) -> None:
        backoff_s = self._settings.retry_backoff_initial_s
        while not self._stop.is_set():
            self._heartbeat()
            try:
                self.publish_pending()
                backoff_s = self._settings.retry_backoff_initial_s
                wait_s = self._idle_poll_s
            except TransientError as exc:
                log.warning("could not publish decisions; will retry", extra={"error": str(exc)})
                wait_s = backoff_s
                backoff_s = min(self._settings.retry_backoff_max_s, backoff_s * 2)
            except Exception:
                # Keep the relay alive: the outbox keeps the events until a later attempt works.
                log.exception("decision relay failed; will retry")
                wait_s = backoff_s
                backoff_s = min(self._settings.retry_backoff_max_s, backoff_s * 2)
            self._wake.wait(wait_s)
            self._wake.clear()
        self._drain_and_close()

    def start(self) -> DecisionRelay:
        """Start the background thread."""
        self._thread = threading.Thread(target=self._loop, name="console-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Publish what can be published in ``SHUTDOWN_DRAIN_S``, then stop (within ``stop_timeout_s``).

        The relay thread does the last round and closes the producer itself: it is the producer's
        only user, so a thread still waiting for the broker here is never joined by a second sender
        or left holding a closed producer.
        """
        self._send_until = time.monotonic() + SHUTDOWN_DRAIN_S
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            self._drain_and_close()
            return
        self._thread.join(timeout=stop_timeout_s(self._settings))
        if self._thread.is_alive():
            log.warning("decision relay still sending at shutdown; what it has not sent stays in the outbox")

    def _drain_and_close(self) -> None:
        try:
            self.publish_pending()
        except Exception as exc:  # what is left stays in the outbox for the next start
            log.warning("decisions left in the outbox at shutdown", extra={"error": str(exc)})
        self.close()

    def close(self) -> None:
        """Flush and close the producer (if one was opened)."""
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
