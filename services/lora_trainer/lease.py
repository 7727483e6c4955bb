"""The LoRA trainer's job leases: two trainers on one store never train one series (or the general
adapter) at once.

A lease is an object under ``lora-trainer/leases/`` named as the series' ``current/`` pointer
(``general.json``, ``series-<slug>-<digest>.json``), created only if none is there (``put_new``) with who
holds it, and removed (``delete_if`` on its own version) once the job is published, failed or stopped.
While the job runs, a thread rewrites it every ``LEASE_BEAT_S`` by a compare-and-swap on the version it
read as its own (``replace_if``). A trainer that finds another's lease skips the job for that poll; it
takes the lease over (``replace_if`` on the version it saw) once that version has stood unchanged for
``LEASE_STALE_S`` on its own monotonic clock, remembered across polls: no other machine's clock is read,
so none skewed makes a lease look stale early. That is also how a trainer restarted after a crash gets
back the lease its last run left. A holder whose lease another took over (it paused past
``LEASE_STALE_S``, or the store refused its heartbeats that long) raises ``LeaseLost`` before its next
checkpoint, result, registration, event or pointer, and leaves the job to the other.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shared.errors import ObjectMissing, TransientError
from shared.store import ObjectStore

log = logging.getLogger(__name__)

LEASES = "lora-trainer/leases"
LEASE_BEAT_S = 10.0
LEASE_STALE_S = 60.0


class LeaseLost(Exception):
    """Another trainer took this job's lease over: this one writes nothing more of the job. Not a
    ``TrainingInterrupted`` (which ends the worker): the other jobs go on."""


class JobLease:
    """A lease this trainer holds (``JobLeases.take``): ``body`` at ``key``, beaten by a thread."""

    def __init__(self, store: ObjectStore, key: str, holder: dict[str, Any]) -> None:
        self.store, self.key = store, key
        self.holder = holder
        self.body = json.dumps(holder, sort_keys=True).encode()
        # Set by the heartbeat once it found the lease another's: read at each step (no store read).
        self.lost = False
        self._lock = threading.Lock()  # the heartbeat's rewrite against the checks and the release
        self._stopped = threading.Event()
        self._beats = 0
        self._thread = threading.Thread(target=self._beat_until_released, name="lora-lease", daemon=True)

    def _start(self) -> JobLease:
        self._thread.start()
        return self

    def _beat_until_released(self) -> None:
        while not self._stopped.wait(LEASE_BEAT_S):
            try:
                self._beat()
            except TransientError as exc:
                # Not lost yet: another trainer takes it over only once it stood LEASE_STALE_S unchanged,
                # and the check before the next write finds that out.
                log.warning(
                    "could not renew the job's lease; tried again at the next beat",
                    extra={"key": self.key, "reason": str(exc)},
                )
            except Exception:
                log.exception("renewing the job's lease failed; tried again at the next beat")
            if self.lost:
                return

    def _beat(self) -> None:
        with self._lock:
            if self.lost or self._stopped.is_set():
                return
            try:
                data, version = self.store.get_versioned(self.key)
            except ObjectMissing:
                self.lost = True
                return
            if not self._ours(data):
                self.lost = True
                return
            self._beats += 1
            body = json.dumps({**self.holder, "beats": self._beats}, sort_keys=True).encode()
            # False (or a TransientError) may be this very write landed unanswered: S3's own retry of the
            # conditional write meets it (412). Whose the lease is, the next read tells (its run).
            if not self.store.replace_if(self.key, body, version):
                try:
                    self.lost = not self._ours(self.store.get_bytes(self.key))
                except ObjectMissing:
                    self.lost = True

    def _ours(self, data: bytes) -> bool:
        """Whether the lease ``data`` is this one's: its run, not its bytes (a renewal that landed
        unanswered left bytes this one never took for its own). A takeover always writes another run."""
        return _run_of(data) == self.holder["run"]

    def raise_if_lost(self) -> None:
        """``LeaseLost`` once the heartbeat found the lease another's (no store read: asked at each step)."""
        if self.lost:
            raise self._lost()

    def check(self) -> None:
        """``LeaseLost`` unless the lease stored is still this one's: read before each write of the job."""
        with self._lock:
            if not self.lost:
                try:
                    self.lost = not self._ours(self.store.get_bytes(self.key))
                except ObjectMissing:
                    self.lost = True
        self.raise_if_lost()

    def _lost(self) -> LeaseLost:
        return LeaseLost(
            f"another trainer took the job's lease {self.store.uri_for(self.key)} over (it saw it unchanged "
            f"for {LEASE_STALE_S:.0f}s: this trainer paused, or the store refused its heartbeats), so this "
            "one writes nothing more of the job and leaves it to that one"
        )

    def release(self) -> None:
        """Stop the heartbeat and remove the lease, unless another took it over. A store failing here
        fails nothing: the lease left behind is taken over once stale."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self.lost:
                return
            try:
                data, version = self.store.get_versioned(self.key)
                if self._ours(data):
                    self.store.delete_if(self.key, version)
            except ObjectMissing:
                pass
            except TransientError as exc:
                log.warning(
                    "could not release the job's lease: another trainer takes it over once unchanged for "
                    f"{LEASE_STALE_S:.0f}s",
                    extra={"key": self.key, "reason": str(exc)},
                )


class JobLeases:
    """This trainer's side of the leases: takes them, and remembers since when (``clock``) it has seen
    each of another's leases unchanged, across polls."""

    def __init__(self, store: ObjectStore, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self._seen: dict[str, tuple[str, float]] = {}  # another's lease: its version, and since when
        # A lease whose write raised (TransientError): its run, as it may have landed unanswered.
        self._unanswered: dict[str, str] = {}

    def take(self, name: str) -> JobLease | None:
        """The lease ``name`` (a ``current/`` pointer's file name), or None while another trainer holds
        it (logged at INFO: the job is skipped this poll, neither a failure nor a retry)."""
        key = f"{LEASES}/{name}"
        holder = {
            "run": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": datetime.now(UTC).isoformat(),
        }
        lease = JobLease(self.store, key, holder)
        if self._written(key, lease, lambda: self.store.put_new(key, lease.body)):
            self._seen.pop(key, None)
            return lease._start()
        try:
            held, version = self.store.get_versioned(key)
        except ObjectMissing:  # released between the two: taken at the next poll
            return None
        # put_new's write landed unanswered (S3's retry met it: 412), or one of an earlier poll did (a
        # TransientError): this trainer's own lease, taken back now rather than once stale.
        if lease._ours(held) or (
            (unanswered := self._unanswered.pop(key, None)) is not None
            and unanswered == _run_of(held)
            and self._written(key, lease, lambda: self.store.replace_if(key, lease.body, version))
        ):
            self._seen.pop(key, None)
            return lease._start()
        now = self.clock()
        seen = self._seen.get(key)
        if seen is None or seen[0] != version:
            self._seen[key] = (version, now)
            if seen is not None:  # beaten since: its trainer is alive, said once
                return None
            log.info(
                f"another trainer holds the job's lease, so this poll skips the job; a lease unchanged for "
                f"{LEASE_STALE_S:.0f}s is taken over",
                extra={"key": key, "holder": _who(held)},
            )
            return None
        if now - seen[1] < LEASE_STALE_S:
            return None
        if not self._written(key, lease, lambda: self.store.replace_if(key, lease.body, version)):
            try:  # lost to another, or this very write landed unanswered (as put_new's)
                if not lease._ours(self.store.get_bytes(key)):
                    return None
            except ObjectMissing:
                return None
        del self._seen[key]
        log.warning(
            f"took over the job's lease, unchanged for {LEASE_STALE_S:.0f}s (its trainer stopped or paused)",
            extra={"key": key, "holder": _who(held)},
        )
        return lease._start()

    def _written(self, key: str, lease: JobLease, write: Callable[[], bool]) -> bool:
        """``write`` of ``lease``; its run remembered when the store did not answer (it may have landed)."""
        try:
            return write()
        except TransientError:
            self._unanswered[key] = lease.holder["run"]
            raise


def _run_of(data: bytes) -> str | None:
    """The run a lease's bytes name; None for bytes that are no lease."""
    try:
        held = json.loads(data)
    except ValueError:
        return None
    run = held.get("run") if isinstance(held, dict) else None
    return run if isinstance(run, str) else None


def _who(held: bytes) -> str:
    """The holder a lease names, on one line, for the log."""
    try:
        holder = json.loads(held)
    except ValueError:
        return "unreadable"
    if not isinstance(holder, dict):
        return "unreadable"
    who = f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started_at')}"
    return " ".join(who.split())[:200]
