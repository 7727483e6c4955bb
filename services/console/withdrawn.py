"""Closes the console's waiting tasks whose reference photo its owner withdrew.

``skuforge ingest --withdraw-missing`` withdraws the photos a SKU's folder no longer has, and every
image generated from them (``shared/trainstore/withdrawals.py``): the trainstore keeps such items
``withdrawn`` whatever a reviewer decides. A flagged one still waiting in the console would cost a
reviewer's time (its reference photo is gone, so that image no longer loads) and would age in the
backlog alert. So a thread of ``skuforge serve console`` lists the withdrawal markers every
``SWEEP_INTERVAL_S`` (one listing of the retraining store's ``withdrawals/``, and none while no task
waits) and closes the matching pending and claimed tasks as ``withdrawn`` (``TaskStore.withdraw_photos``:
an audit entry, no decision event). A store that cannot be read is logged (once a sweep, with how
many photos it left unread) and read at the next sweep; once the store answers a read as away, the sweep
reads nothing more from it (each read would wait out the store's retries) and leaves the rest, counted in
that line, to the next sweep.

An owner may put a photo back (its marker lifted, a ``.lifted`` record kept) before a sweep saw the
marker: between two sweeps, or while the console was down. The images made from it before stay
withdrawn in the trainstore for good, so the same listing's ``.lifted`` records name the photos whose
waiting tasks are looked up in the trainstore's rows (their SKU's manifest, read once): a task whose
item's row is ``withdrawn`` is closed the same way. A task looked at for a lifted withdrawal is
remembered with that withdrawal's time (the record's ``withdrawn_at``), so the next sweeps read no
manifest for it until the photo is withdrawn and put back again.
"""

from __future__ import annotations

import logging
import threading

from services.console.metrics import ConsoleMetrics
from services.console.tasks import PhotoTask, TaskStore
from shared.errors import BadInput, TransientError
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
        # (task id, withdrawn_at of the lifted withdrawal) looked up in the trainstore already, of tasks
        # still waiting at the last sweep: bounded by the queue.
        self._looked_at: set[tuple[str, str]] = set()

    def sweep(self) -> list[str]:
        """Close the waiting tasks of withdrawn photos now; returns their ids."""
        counts = self._tasks.counts()
        if counts["pending"] + counts["claimed"] == 0:
            return []
        withdrawn, lifted = self._withdrawals.records()
        closed = self._tasks.withdraw_photos(withdrawn)
        put_back = {
            sku_id: photo_ids - withdrawn.get(sku_id, set())  # withdrawn again: closed above
            for sku_id, photo_ids in lifted.items()
        }
        try:
            self._close_put_back({sku_id: ids for sku_id, ids in put_back.items() if ids}, closed)
        finally:
            # Closed already, whatever the rest met: raised past, they were never counted nor logged.
            if closed:
                if self._metrics:
                    self._metrics.withdrawn.inc(len(closed))
                log.info("closed tasks of withdrawn photos", extra={"tasks": len(closed)})
        return closed

    def _close_put_back(self, put_back: dict[str, set[str]], closed: list[str]) -> None:
        """Close the waiting tasks of photos put back (SKU id → photo ids) whose items the trainstore
        withdrew with them, adding their ids to ``closed`` as they close."""
        waiting = self._tasks.waiting_of_photos(put_back) if put_back else []
        withdrawn_at: dict[tuple[str, str], str | None] = {}
        to_look_at: dict[str, list[tuple[PhotoTask, str]]] = {}
        unread: list[tuple[tuple[str, str], Exception]] = []
        # The store's first "away": every read after it would wait out the store's retries in turn (a
        # minute a photo on S3), so the rest is left unread, counted, for the next sweep.
        away: TransientError | None = None
        for task in waiting:
            photo = (task.sku_id, task.photo_id)
            if photo not in withdrawn_at:
                withdrawn_at[photo] = None
                if away is not None:
                    unread.append((photo, away))
                    continue
                try:
                    withdrawn_at[photo] = self._withdrawals.lifted_at(*photo)
                except TransientError as exc:  # the store away: looked at at the next sweep
                    away = exc
                    unread.append((photo, exc))
                except BadInput as exc:  # this record unusable: the others are read
                    unread.append((photo, exc))
            at = withdrawn_at[photo]
            if at is not None and (task.task_id, at) not in self._looked_at:
                to_look_at.setdefault(task.sku_id, []).append((task, at))
        if unread:
            # Once a sweep, not once a photo: a store away for an hour logged each photo put back every 30 s.
            (first_sku, first_photo), error = unread[0]
            log.warning(
                "could not read the records of %d photo(s) put back; will retry",
                len(unread),
                extra={
                    "photos": len(unread),
                    "sku_id": first_sku,
                    "photo_id": first_photo,
                    "error": str(error),
                },
            )
        # Forget the tasks that no longer wait (closed, decided) or whose photo was withdrawn again.
        still_waiting = {task.task_id for task in waiting}
        self._looked_at = {seen for seen in self._looked_at if seen[0] in still_waiting}
        unread_skus: list[tuple[str, Exception]] = []
        for sku_id, tasks in sorted(to_look_at.items()):
            if away is not None:  # not asked again, each to wait out the retries: at the next sweep
                unread_skus.append((sku_id, away))
                continue
            try:
                rows = self._withdrawals.manifests.read_sku(sku_id)
            except TransientError as exc:  # away: this SKU and the rest at the next sweep
                away = exc
                unread_skus.append((sku_id, exc))
                continue
            except BadInput as exc:  # a part unreadable: at the next sweep, the other SKUs read now
                unread_skus.append((sku_id, exc))
                continue
            # An item with no row yet is taken by the trainstore when it comes (no withdrawal now).
            withdrawn = [
                task
                for task, _ in tasks
                if (row := rows.get(task.item_id)) is not None and row.status == "withdrawn"
            ]
            closed.extend(self._tasks.withdraw_put_back(withdrawn))
            self._looked_at.update((task.task_id, at) for task, at in tasks)
        if unread_skus:
            first_sku, error = unread_skus[0]
            log.warning(
                "could not read the trainstore rows of %d SKU(s) with a photo put back; will retry",
                len(unread_skus),
                extra={"skus": len(unread_skus), "sku_id": first_sku, "error": str(error)},
            )

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except (TransientError, BadInput) as exc:  # the store or the table is away: the next sweep
                log.warning(
                    "could not close the tasks of withdrawn photos; will retry", extra={"error": str(exc)}
                )
            except Exception:  # a bug: with its traceback, and the thread goes on sweeping
                log.exception("the sweep of withdrawn photos failed; will retry")
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
