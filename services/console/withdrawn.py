"""Closes the console's waiting tasks whose reference photo its owner withdrew.

``skuforge ingest --withdraw-missing`` withdraws the photos a SKU's folder no longer has, and every
image generated from them (``shared/trainstore/withdrawals.py``): the trainstore keeps such items
``withdrawn`` whatever a reviewer decides. A flagged one still waiting in the console would cost a
reviewer's time (its reference photo is gone, so that image no longer loads) and would age in the
backlog alert. So a thread of ``skuforge serve console`` lists the withdrawal markers every
``SWEEP_INTERVAL_S`` (one listing of the retraining store's ``withdrawals/``, and none while no task
waits) and closes the matching pending and claimed tasks as ``withdrawn`` (``TaskStore.withdraw_photos``:
an audit entry, no decision event). A store that cannot be read is logged and read at the next sweep.
"""

from __future__ import annotations

import logging
import threading

from services.console.metrics import ConsoleMetrics
from services.console.tasks import TaskStore
from shared.trainstore.withdrawals import Withdrawals

log = logging.getLogger("skuforge.console.withdrawn")

# Withdrawals are rare and an owner's, not a reviewer's, action: a task may wait this long after one.
SWEEP_INTERVAL_S = 30.0


class WithdrawalSweep:
    """A background thread closing the tasks of withdrawn photos."""

    def __init__(
        self,
        tasks: TaskStore,
        withdrawals: Withdrawals,
        metrics: ConsoleMetrics | None = None,
        *,
        interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self._tasks = tasks
        self._withdrawals = withdrawals
        self._metrics = metrics
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> list[str]:
        """Close the waiting tasks of withdrawn photos now; returns their ids."""
        counts = self._tasks.counts()
        if counts["pending"] + counts["claimed"] == 0:
            return []
        closed = self._tasks.withdraw_photos(self._withdrawals.by_sku())
        if closed:
            if self._metrics:
                self._metrics.withdrawn.inc(len(closed))
            log.info("closed tasks of withdrawn photos", extra={"tasks": len(closed)})
        return closed

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception as exc:  # the store or the table is away: the next sweep tries again
                log.warning(
                    "could not close the tasks of withdrawn photos; will retry", extra={"error": str(exc)}
                )
            self._stop.wait(self._interval_s)

    def start(self) -> WithdrawalSweep:
        """Start the background thread."""
        self._thread = threading.Thread(target=self._loop, name="console-withdrawn", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (a sweep under way finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
