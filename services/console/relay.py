"""Publishes recorded decisions (the task table's outbox) to ``correction.resolved``.

The web request records the decision, its audit entry and its event in one SQLite transaction
and nudges the relay; the relay sends each unpublished event (acks=all, deterministic event id
``derive_id(task_id, "console", "decision")``) and marks it published. A broker outage delays
events, never loses them: they wait in the outbox and the relay retries with back-off. A crash
between send and mark re-sends the same event id, which consumers de-duplicate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from schemas.topics import CORRECTION_RESOLVED
from services.console.metrics import ConsoleMetrics
from services.console.tasks import PRODUCER, TaskStore
from shared.bus import Publisher
from shared.config import Settings
from shared.errors import TransientError

log = logging.getLogger("skuforge.console.relay")


class DecisionRelay:
    """A background thread draining the outbox to Kafka."""

    def __init__(
        self,
        tasks: TaskStore,
        settings: Settings,
        metrics: ConsoleMetrics | None = None,
        *,
        idle_poll_s: float = 5.0,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        self._tasks = tasks
        self._settings = settings
        self._metrics = metrics
        self._idle_poll_s = idle_poll_s
        self._heartbeat = heartbeat  # /healthz stays green while this loop turns
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._publisher: Publisher | None = None

    def notify(self) -> None:
        """A decision was recorded: publish now rather than at the next idle poll."""
        self._wake.set()

    def publish_pending(self) -> int:
        """Send every unpublished decision; returns how many the broker acknowledged."""
        events = self._tasks.unpublished()
        if not events:
            return 0
        if self._publisher is None:
            self._publisher = Publisher(self._settings, PRODUCER)  # TransientError if Kafka is away
        sent = 0
        for event in events:
            self._publisher.publish(
                CORRECTION_RESOLVED,
                event.payload,
                sku_id=event.sku_id,
                event_id=event.event_id,
                trace_id=event.trace_id,
            )
            self._tasks.mark_published(event.event_id)
            sent += 1
            if self._metrics:
                self._metrics.published.inc()
            log.info("decision published", extra={"event_id": event.event_id, "task_id": event.task_id})
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
        """Publish what can be published, then stop.

        The relay thread does the last round and closes the producer itself: it is the producer's
        only user, so a thread still waiting for the broker here is never joined by a second sender
        or left holding a closed producer.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            self._drain_and_close()
            return
        self._thread.join(timeout=self._settings.flush_timeout_s + 5)
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
