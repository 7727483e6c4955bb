"""A small process supervisor: start services in order, watch them, restart the dead, stop them all.

``skuforge up`` (``devstack/up.py``) is one list of :class:`ServiceSpec`; this module knows nothing of
Kafka or Triton. Each service runs as a child process

* in its own process group (``start_new_session``), so Ctrl-C in the terminal reaches the supervisor
  only and the supervisor decides the order things stop in;
* with its stdout and stderr appended to its own log file, which is moved aside to ``<name>.1`` when it
  has grown past ``log_max_bytes`` (a crash-looping service writes a traceback every back-off);
* with a parent-death signal (Linux): the kernel sends it SIGTERM when the supervisor dies, however it
  dies (SIGKILL, the OOM killer), so no service outlives its supervisor and keeps its ports;
* with ``SKUFORGE_SUPERVISOR_ID`` in its environment, which every process it starts inherits, so the
  final sweep finds grandchildren that left the process group (a JVM or a server started in a new
  session) by reading ``/proc/<pid>/environ``.

Start: services start one after the other; each must pass its ready check (or, for a ``oneshot``,
exit 0) before the next starts; a ready check that raises counts as "not ready" (its reason said once).
Watch: a service that exits is reported, with the last lines its log got from the run that died (a
crash loop that ends the same way says so once more, not the lines), and started again after an
exponential back-off (reset once it has stayed up for ``stable_after_s``). Stop: in reverse order,
SIGTERM to the process group, SIGKILL after ``grace_s``; then every process still carrying the
supervisor's id gets the same treatment. SIGINT, SIGTERM and SIGHUP (the terminal or the ssh session
closed; unless ignored, as under ``nohup``) all stop the stack that way; a second one while it stops
kills what is left at once. On Linux
the supervisor is a child subreaper, so orphaned grandchildren are re-parented to it (and reaped by it)
rather than to init.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from shared.observability import escape_control_characters
from shared.signals import SignalSafeEvent, heard

SUPERVISOR_ID_ENV = "SKUFORGE_SUPERVISOR_ID"
# A log over this size is moved to <name>.1 (replacing the previous one) before it is written again.
LOG_MAX_BYTES = 50 * 1024 * 1024
# How many of a dead service's last log lines (of its last run) are said on the terminal, and how much of
# the log's end is read for them.
DEATH_TAIL_LINES = 10
DEATH_TAIL_BYTES = 64 * 1024
# How many of a logged traceback's last lines (where its error is) are said under its record.
TRACEBACK_TAIL_LINES = 8
# The fields of a stage's JSON log record (shared.observability.JsonFormatter) said in its line's head.
_RECORD_HEAD = ("time", "level", "logger", "message", "exc_info")
# What _log_line writes before each start: where a service's run begins in its log.
START_MARK = " skuforge up: starting "
# The signals that stop the supervisor (and so the stack): Ctrl-C, kill, and a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1
# How a service that stopped well ends on SIGTERM: 0, the signal's own death, or 143 (a JVM's, Kafka's);
# SIGKILL's after the grace is said as the kill. Any other code is a shutdown that failed, and said.
CLEAN_STOP_CODES = frozenset({0, -signal.SIGTERM, 128 + signal.SIGTERM, -signal.SIGKILL})

ServiceStatus = Literal["waiting", "starting", "ready", "exited", "backing-off", "stopped", "done"]


class SupervisorError(RuntimeError):
    """A service could not be started (it exited early or was not ready in time)."""


class StartRefused(SupervisorError):
    """A service's ``argv_at_start`` or ``env_at_start`` found it cannot start now (a port it needs is
    taken); the message says what and what to do. During start-up it stops the start; once the stack
    runs, the service is tried again after its back-off."""


class _NotReadyInTime(SupervisorError):
    """One start attempt of a service timed out waiting for readiness."""


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one service.

    ``ready`` is polled until it returns True (None: ready as soon as it runs). A service not ready
    within ``ready_timeout_s`` is killed and started again, ``start_attempts`` times in all during
    start-up (and without limit, with back-off, once the stack runs). A ``oneshot`` is a set-up step
    that must exit 0 before the next service starts, and is never restarted.
    """

    name: str
    argv: list[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    ready: Callable[[], bool] | None = None
    ready_timeout_s: float = 180.0
    start_attempts: int = 1
    oneshot: bool = False
    restart: bool = True
    cwd: Path | None = None
    # Called at each start for the command line to run then, in place of ``argv``: a port checked as the
    # service starts, not when the stack's start-up began, minutes before the last service starts.
    argv_at_start: Callable[[], list[str]] | None = None
    # Likewise, variables set at each start on top of ``env`` (a port passed in the environment).
    # Either may raise StartRefused: the service is not started then (see StartRefused).
    env_at_start: Callable[[], Mapping[str, str]] | None = None


@dataclass
class ServiceState:
    """What the supervisor knows of one service right now."""

    spec: ServiceSpec
    process: subprocess.Popen[bytes] | None = None
    status: ServiceStatus = "waiting"
    restarts: int = 0
    started_at: float = 0.0
    next_start_at: float = 0.0
    backoff_s: float = 0.0
    last_exit_code: int | None = None
    log: IO[bytes] | None = None
    ready_error: str | None = None  # why its ready check last raised, said once until it is ready
    said_tail: list[str] | None = None  # the last lines of its log said when it last died

    @property
    def pid(self) -> int | None:
        """Pid of the running process, None when none runs."""
        return self.process.pid if self.process is not None and self.process.poll() is None else None


# --------------------------------------------------------------------------------------------------
# ready checks
# --------------------------------------------------------------------------------------------------


def http_ok(url: str, timeout_s: float = 2.0) -> Callable[[], bool]:
    """A ready check: GET ``url`` answers 2xx."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                return 200 <= int(response.status) < 300
        # HTTPException: the port speaks another protocol (a broker took it), or the answer was cut
        # short; it went out of the watch loop and stopped the whole stack.
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException):
            return False

    return check


# --------------------------------------------------------------------------------------------------
# /proc helpers (Linux; elsewhere they find nothing and the process groups do the work)
# --------------------------------------------------------------------------------------------------


def _become_subreaper() -> None:
    """Orphaned descendants are re-parented to us, not to init (Linux PR_SET_CHILD_SUBREAPER)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def parent_death_signal(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send ``sig`` to the child when its parent dies (Linux
    PR_SET_PDEATHSIG); None elsewhere, or when libc's ``prctl`` cannot be found.

    Caveats, both of which the supervisor meets: the "parent" is the *thread* that started the child,
    so children must be started from a thread that lives as long as the supervisor (``run()`` starts
    and restarts everything from the main thread); and a ``preexec_fn`` runs between fork and exec, so
    it does nothing that could wait on a lock another thread held at the fork: ``prctl`` is looked up
    here, in the parent, and the child only calls it.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent_pid = os.getpid()

    def set_parent_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        # The parent may have died between fork and prctl: then no signal will ever come, so go now.
        if os.getppid() != parent_pid:
            os._exit(128 + int(sig))

    return set_parent_death_signal


def open_log(path: Path, max_bytes: int = LOG_MAX_BYTES) -> IO[bytes]:
    """Open ``path`` to append to, first moving it to ``<name>.1`` (replacing an older one) when it is
    over ``max_bytes``; so a log reused run after run (``var/up/logs``) keeps at most about twice that."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > max_bytes:
            os.replace(path, path.with_name(path.name + ".1"))
    return path.open("ab")


def _proc_pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) S ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes (not zombies) whose environment holds ``name=value``."""
    needle = f"{name}={value}".encode()
    found = []
    for pid in _proc_pids():
        if pid == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and not _is_zombie(pid):
            found.append(pid)
    return found


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group of service ``pid``, which leads it (``start_new_session``).

    By group id, not through ``os.getpgid(pid)``: once the leader has exited and been reaped that
    raised ProcessLookupError, and the members still running (workers, a child that ignored SIGTERM)
    were never signalled.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


# --------------------------------------------------------------------------------------------------
# the supervisor
# --------------------------------------------------------------------------------------------------


class Supervisor:
    """Starts ``specs`` in order, restarts those that die, stops all of them (and theirs) on request.

    ``report`` receives one human-readable line per event (started, ready, exited, restarting...);
    a report that fails with OSError (the terminal it prints to was closed) is dropped, so stopping
    goes on. ``on_change`` is called after every status change (``skuforge up`` rewrites its state
    file). A service's log is moved to ``<name>.1`` when it is over ``log_max_bytes`` as the service
    (re)starts.
    """

    def __init__(
        self,
        specs: Iterable[ServiceSpec],
        *,
        grace_s: float = 20.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 60.0,
        report: Callable[[str], None] = print,
        on_change: Callable[[Supervisor], None] | None = None,
        log_max_bytes: int = LOG_MAX_BYTES,
    ) -> None:
        self.services = [ServiceState(spec) for spec in specs]
        names = [state.spec.name for state in self.services]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique, got {names}")
        self.grace_s = grace_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self._report_to = report
        self.on_change = on_change
        self.log_max_bytes = log_max_bytes
        self.supervisor_id = uuid.uuid4().hex
        # Both are set from a signal handler, so neither may take a lock (threading.Event does: a second
        # Ctrl-C landing while the main thread was inside hurrying.wait() hung the stop for good).
        self.stopping = SignalSafeEvent()
        # Set by a second stop signal: what is still running is killed now, its grace cut short.
        self.hurrying = SignalSafeEvent()
        self._stop_signals: list[int] = []  # the stop signals run() has heard, in order
        self._unsaid: list[str] = []  # what _request_stop could not report (see _report_from_handler)
        self._stopped = False
        self._change_failed = False

    def report(self, line: str) -> None:
        """Pass ``line`` on to the ``report`` callback, after any a signal handler could not pass on; an
        OSError there (EIO from a terminal that was hung up, a closed pipe) must not cut a stop short, so
        it is dropped."""
        while self._unsaid:
            with contextlib.suppress(OSError):
                self._report_to(self._unsaid.pop(0))
        with contextlib.suppress(OSError):
            self._report_to(line)

    def _report_from_handler(self, line: str) -> None:
        # A signal that lands while the main thread is inside print() runs the handler there, and a
        # print from it raises "reentrant call" (stdout's buffer is busy): kept for the next report.
        try:
            self._report_to(line)
        except RuntimeError:
            self._unsaid.append(line)
        except OSError:
            pass

    def __getitem__(self, name: str) -> ServiceState:
        for state in self.services:
            if state.spec.name == name:
                return state
        raise KeyError(name)

    # -- start --------------------------------------------------------------------------------

    def start(self) -> bool:
        """Start every service in order, each ready before the next; False if stopping cut it short.

        Raises:
            SupervisorError: a service exited during start-up or was not ready in time (the log
                tail is in the message). Services already started keep running: call ``stop()``.
        """
        _become_subreaper()
        for state in self.services:
            for attempt in range(1, state.spec.start_attempts + 1):
                if self.stopping.is_set():
                    return False
                try:
                    self._spawn(state)
                except OSError as exc:  # Popen's: a program missing or not executable, a log not writable
                    raise SupervisorError(
                        f"{state.spec.name}: cannot run {state.spec.argv[0]}: {exc}"
                    ) from exc
                try:
                    if not self._await_ready(state):
                        return False
                    break
                except _NotReadyInTime:
                    spec = state.spec
                    if attempt == spec.start_attempts:
                        self._log_line(
                            state, f"not ready within {spec.ready_timeout_s:.0f}s; start-up failed"
                        )
                        raise
                    # In its log too, where the SIGKILL's exit would otherwise read as a death of its own.
                    again = (
                        f"not ready within {spec.ready_timeout_s:.0f}s; killing it and starting it again "
                        f"(attempt {attempt + 1} of {spec.start_attempts})"
                    )
                    self._log_line(state, again)
                    self.report(f"{spec.name}: {again}; see {spec.log_path}")
                    self._kill(state)
                    state.restarts += 1
        return True

    def _spawn(self, state: ServiceState) -> None:
        spec = state.spec
        if state.log is not None and os.fstat(state.log.fileno()).st_size > self.log_max_bytes:
            # A service restarting over and over in one run: its log is rotated between runs too.
            state.log.close()
            state.log = None
        if state.log is None:
            state.log = open_log(spec.log_path, self.log_max_bytes)
        try:
            argv = spec.argv_at_start() if spec.argv_at_start is not None else spec.argv
            env_now = spec.env_at_start() if spec.env_at_start is not None else {}
        except StartRefused as exc:
            # In its log too, where a "starting" line with nothing under it read as a silent death.
            self._log_line(state, f"not started: {exc}")
            raise
        self._log_line(state, f"starting {' '.join(argv)}")  # START_MARK
        env = {**os.environ, **spec.env, **env_now, SUPERVISOR_ID_ENV: self.supervisor_id}
        state.process = subprocess.Popen(
            argv,
            env=env,
            cwd=spec.cwd,
            stdin=subprocess.DEVNULL,
            stdout=state.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # SIGTERM when the supervisor dies, even by SIGKILL: no service outlives it holding its ports.
            preexec_fn=parent_death_signal(),
        )
        state.started_at = time.monotonic()
        self._set(state, "starting")
        self.report(f"{spec.name}: started (pid {state.process.pid}), log {spec.log_path}")

    def _log_line(self, state: ServiceState, text: str) -> None:
        """Append ``--- <time> skuforge up: <text>`` to the service's log (a full disk drops it)."""
        if state.log is None:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with contextlib.suppress(OSError, ValueError):  # ValueError: the log was closed
            state.log.write(f"--- {stamp} skuforge up: {text}\n".encode())
            state.log.flush()

    def _await_ready(self, state: ServiceState) -> bool:
        spec = state.spec
        assert state.process is not None
        deadline = time.monotonic() + spec.ready_timeout_s
        while not self.stopping.is_set():
            code = state.process.poll()
            if spec.oneshot and code == 0:
                self._set(state, "done")
                self.report(f"{spec.name}: done")
                return True
            if code is not None:
                state.last_exit_code = code
                self._set(state, "exited")
                self._log_line(state, f"{spec.name} {exit_reason(code)} while starting")
                raise SupervisorError(
                    f"{spec.name} {exit_reason(code)} while starting; "
                    f"last lines of {spec.log_path}:\n{run_tail_text(spec.log_path)}"
                )
            if not spec.oneshot and self._is_ready(state):
                self._set(state, "ready")
                self.report(f"{spec.name}: ready ({time.monotonic() - state.started_at:.1f}s)")
                return True
            if time.monotonic() > deadline:
                raise _NotReadyInTime(
                    f"{spec.name} was not ready within {spec.ready_timeout_s:.0f}s; "
                    f"last lines of {spec.log_path}:\n{run_tail_text(spec.log_path)}"
                )
            self.stopping.wait(0.25)
        return False

    def _is_ready(self, state: ServiceState) -> bool:
        """The service's ready check; one that raises counts as "not ready", its reason said once, and
        the usual not-ready timeout applies (it went out of start-up or the watch loop and stopped the
        whole stack)."""
        spec = state.spec
        if spec.ready is None:
            return True
        try:
            ready = spec.ready()
        except Exception as exc:
            reason = f"its ready check failed ({type(exc).__name__}: {exc}); not ready yet"
            if reason != state.ready_error:
                state.ready_error = reason
                self.report(f"{spec.name}: {reason}")
                self._log_line(state, reason)
            return False
        if ready:
            state.ready_error = None
        return ready

    # -- watch --------------------------------------------------------------------------------

    def watch(self, poll_s: float = 0.5) -> None:
        """Until ``stopping`` is set: restart services that exited (with back-off), report readiness."""
        while not self.stopping.wait(poll_s):
            self.check_once()

    def check_once(self) -> None:
        """One turn of the watch loop (public so tests can drive it)."""
        now = time.monotonic()
        for state in self.services:
            spec = state.spec
            if spec.oneshot or state.process is None or state.status == "exited":
                continue  # exited and not restarted: its pid may name another process by now
            if state.status == "backing-off":
                if now >= state.next_start_at:
                    state.restarts += 1
                    try:
                        self._spawn(state)
                    except (OSError, StartRefused) as exc:
                        # Before, this went out of the watch loop and the whole stack stopped.
                        state.backoff_s = min(
                            self.backoff_max_s, max(state.backoff_s, self.backoff_initial_s) * 2
                        )
                        state.next_start_at = now + state.backoff_s
                        # A refusal names its service itself, as it does when it stops the start-up.
                        why = (
                            str(exc)
                            if isinstance(exc, StartRefused)
                            else f"{spec.name}: cannot run {spec.argv[0]}: {exc}"
                        )
                        self.report(f"{why}; trying again in {state.backoff_s:.1f}s")
                continue
            code = state.process.poll()
            if code is not None:
                state.last_exit_code = code
                # What the service left running in its group (its workers) goes with it, before a new
                # instance starts beside them holding its ports.
                _signal_group(state.process.pid, signal.SIGKILL)
                up_s = now - state.started_at
                if up_s >= self.stable_after_s or state.backoff_s == 0:
                    state.backoff_s = self.backoff_initial_s
                else:
                    state.backoff_s = min(self.backoff_max_s, state.backoff_s * 2)
                # In its log too, which the report points to: a service the OOM killer took leaves no
                # line of its own there, and the next start's line followed its last as if nothing happened.
                tail = run_tail(spec.log_path)  # before the line below joins it
                self._log_line(state, f"{spec.name} {exit_reason(code)} after {up_s:.0f}s")
                if not spec.restart:
                    self._set(state, "exited")
                    self.report(f"{spec.name}: {exit_reason(code)} after {up_s:.0f}s (not restarted)")
                    self._say_tail(state, tail)
                    continue
                state.next_start_at = now + state.backoff_s
                self._set(state, "backing-off")
                self.report(
                    f"{spec.name}: {exit_reason(code)} after {up_s:.0f}s; restarting in "
                    f"{state.backoff_s:.1f}s (restart {state.restarts + 1}); see {spec.log_path}"
                )
                self._say_tail(state, tail)
            elif state.status == "starting" and self._is_ready(state):
                self._set(state, "ready")
                self.report(f"{spec.name}: ready again (restart {state.restarts})")
            elif state.status == "starting" and now - state.started_at > spec.ready_timeout_s:
                # Alive but never ready (stuck without partitions, say): treat it as dead.
                self.report(f"{spec.name}: not ready within {spec.ready_timeout_s:.0f}s; killing it")
                self._log_line(state, f"not ready within {spec.ready_timeout_s:.0f}s; killing it")
                self._kill(state)
        self._reap_orphans()

    def _say_tail(self, state: ServiceState, tail: list[str]) -> None:
        """Say why a service died as far as its log tells: its last lines of the run that died, each
        under its name; or, in a crash loop that ends the same way each time, that it did (once said,
        the same traceback every back-off only hid what else the stack said)."""
        name = state.spec.name
        if not tail:
            self.report(f"{name}: its log says nothing of this run")
        elif _without_times(tail) == _without_times(state.said_tail or []):
            self.report(f"{name}: its log ends as the last time's")
        else:
            self.report(f"{name}: its last lines:")
            for line in tail:
                for readable in readable_log_line(line):
                    self.report(f"{name}|   {readable}")
        state.said_tail = tail

    def _kill(self, state: ServiceState) -> None:
        """SIGKILL the service's process group and wait for it (the watch loop then restarts it)."""
        if state.process is not None:
            _signal_group(state.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                state.process.wait(timeout=10)

    # -- stop ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything, last started first: SIGTERM the group, SIGKILL after ``grace_s``; then sweep."""
        self.stopping.set()
        if self._stopped:
            return
        self._stopped = True
        for state in reversed(self.services):
            process = state.process
            if process is None or process.poll() is not None:
                if process is not None and state.status in ("starting", "ready"):
                    self._said_exit(
                        state, process.returncode, f"after {time.monotonic() - state.started_at:.0f}s"
                    )
                if state.status not in ("done", "waiting"):
                    self._set(state, "stopped")
                continue
            self.report(f"{state.spec.name}: stopping (pid {process.pid})")
            _signal_group(process.pid, signal.SIGTERM)
            if not self._exits_in_grace(process):
                if not self.hurrying.is_set():
                    self.report(f"{state.spec.name}: still running after {self.grace_s:.0f}s; killing it")
                _signal_group(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
            # Whatever else is left in its group (a worker that ignored SIGTERM) goes too.
            _signal_group(process.pid, signal.SIGKILL)
            code = process.poll()
            if code is not None:
                state.last_exit_code = code
                if code not in CLEAN_STOP_CODES:
                    self._said_exit(state, code, "as it stopped")
            self._set(state, "stopped")
        self._sweep()
        for state in self.services:
            if state.log is not None:
                state.log.close()
                state.log = None

    def _said_exit(self, state: ServiceState, code: int, when: str) -> None:
        """Keep and say an exit the watch loop never saw: one since its last turn (a crash just before the
        stop was marked "stopped", its code lost), or a shutdown that failed (a last commit or flush)."""
        state.last_exit_code = code
        said = f"{exit_reason(code)} {when}"
        self._log_line(state, f"{state.spec.name} {said}")
        self.report(f"{state.spec.name}: {said}; see {state.spec.log_path}")

    def _exits_in_grace(self, process: subprocess.Popen[bytes]) -> bool:
        """Whether ``process`` exits within ``grace_s`` (given up on at once once ``hurrying``)."""
        deadline = time.monotonic() + self.grace_s
        while process.poll() is None:
            if self.hurrying.is_set() or time.monotonic() >= deadline:
                return False
            self.hurrying.wait(0.1)
        return True

    def _sweep(self) -> None:
        """Terminate every process still carrying our id (grandchildren in sessions of their own)."""
        leftovers = processes_with_env(SUPERVISOR_ID_ENV, self.supervisor_id)
        if leftovers:
            self.report(f"stopping {len(leftovers)} leftover process(es): {leftovers}")
            _signal_all(leftovers, signal.SIGTERM)
            deadline = time.monotonic() + self.grace_s
            while time.monotonic() < deadline and leftovers and not self.hurrying.is_set():
                time.sleep(0.2)
                self._reap_orphans()
                leftovers = processes_with_env(SUPERVISOR_ID_ENV, self.supervisor_id)
            _signal_all(leftovers, signal.SIGKILL)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            self._reap_orphans()
            if not processes_with_env(SUPERVISOR_ID_ENV, self.supervisor_id):
                break
            time.sleep(0.1)

    def _reap_orphans(self) -> None:
        """Collect the exit status of adopted orphans (never of our own services: Popen does that)."""
        ours = {state.process.pid for state in self.services if state.process is not None}
        me = os.getpid()
        for pid in _proc_pids():
            if pid not in ours and _parent_of(pid) == me:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)

    # -- run ----------------------------------------------------------------------------------

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        """Start, watch until SIGINT/SIGTERM/SIGHUP, stop; returns 0, or 1 if start-up failed.

        Must be called from the main thread (it installs the signal handlers).
        """

        # SIGHUP too: a closed terminal or ssh session would otherwise kill us without a stop; but not
        # where it is ignored (`nohup skuforge up &`), which asks the stack to outlive the terminal.
        # SIGINT is taken even then: it is how `skuforge demo` stops the stack it started.
        previous = {sig: signal.signal(sig, self._request_stop) for sig in STOP_SIGNALS if heard(sig)}
        try:
            try:
                started = self.start()
            except SupervisorError as exc:
                self.report(f"start-up failed: {exc}")
                return 1
            if started and on_ready is not None:
                on_ready()
            self.watch()
            return 0
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _request_stop(self, signum: int, _frame: object) -> None:
        """``run``'s handler for SIGINT, SIGTERM and SIGHUP: the first stops everything, the second hurries
        it. It runs on the main thread between any two instructions, even inside a print, so it takes no
        lock (see ``SignalSafeEvent``) and reports through ``_report_from_handler``."""
        name = signal.Signals(signum).name
        if not self._stop_signals:
            self._report_from_handler(f"received {name}; stopping everything")
        elif not self.hurrying.is_set():
            # Ctrl-C again: the user will not wait out each service's grace (nor kill us outright,
            # which would leave a service deaf to SIGTERM running, holding its port).
            self._report_from_handler(f"received {name} again; killing what is left now")
            self.hurrying.set()
        self._stop_signals.append(signum)
        self.stopping.set()

    def _set(self, state: ServiceState, status: ServiceStatus) -> None:
        state.status = status
        if self.on_change is not None:
            # A state file that cannot be written (the disk full, the workdir removed) must not cut a
            # stop short: the first failure stopped one service and left the rest running.
            try:
                self.on_change(self)
            except OSError as exc:
                if not self._change_failed:
                    self.report(f"cannot record the stack's state: {exc}")
                self._change_failed = True


def exit_reason(code: int) -> str:
    """``exited with code 3``, or for a death by signal (Popen's negative code) which one:
    ``exited with code -9 (killed by SIGKILL)``."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"exited with code {code} (killed by {name})"


def run_tail(path: Path, lines: int = DEATH_TAIL_LINES, max_bytes: int = DEATH_TAIL_BYTES) -> list[str]:
    """The last ``lines`` lines of ``path`` that the service's last run wrote (those after the last
    ``starting`` line the supervisor wrote there; none when the log cannot be read). Only the file's
    last ``max_bytes`` are read: a crash-looping service's log is up to ``LOG_MAX_BYTES``."""
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - max_bytes))
            text = log.read().decode(errors="replace")
    except OSError:
        return []
    ended = text.splitlines()
    starts = [index for index, line in enumerate(ended) if line.startswith("--- ") and START_MARK in line]
    this_run = ended[starts[-1] + 1 :] if starts else ended
    return [shown_line(line) for line in this_run if line.strip()][-lines:]


def shown_line(line: str) -> str:
    """A line of a service's log as said on the terminal: its tabs as spaces (a JVM's stack trace) and
    its control characters and bidirectional controls escaped. The log holds what the service printed
    as it was (a traceback quotes its input: a file name, a record's key), and said as it was, an escape
    sequence in it retitled or cleared the user's terminal, or a bidirectional control reordered it."""
    return escape_control_characters(line.expandtabs())


def readable_log_line(line: str, traceback_lines: int = TRACEBACK_TAIL_LINES) -> list[str]:
    """A log line as a person reads it: a stage's JSON record (``shared.observability.JsonFormatter``)
    as ``time level logger: message key=value...``, then the last ``traceback_lines`` lines of its
    logged traceback, indented, each escaped as a log's text is; any other line as it is.

    A record said as it stood was 300 characters and more of keys and quotes, and a traceback one line
    of ``\\n`` escapes; and its decoded text must not reach the terminal as escape sequences either."""
    try:
        record = json.loads(line)
    except ValueError:
        return [line]
    if not isinstance(record, dict) or not isinstance(record.get("message"), str):
        return [line]
    head = " ".join(str(record[key]) for key in ("time", "level") if key in record)
    logger = f" {record['logger']}" if "logger" in record else ""
    fields = "".join(f" {key}={value}" for key, value in record.items() if key not in _RECORD_HEAD)
    said = [escape_control_characters(f"{head}{logger}: {record['message']}{fields}".lstrip())]
    trace = record.get("exc_info")
    if isinstance(trace, str) and trace.strip():
        trace_lines = [escape_control_characters(text) for text in trace.splitlines() if text.strip()]
        left_out = len(trace_lines) - traceback_lines
        if left_out > 0:
            said.append(f"    ({left_out} earlier lines of its traceback are in the log)")
        said.extend(f"    {text}" for text in trace_lines[-traceback_lines:])
    return said


def _without_times(tail: list[str]) -> list[object]:
    """``tail`` as compared with the last death's: a JSON record without its time (every run's records
    have times of their own, so no crash loop of a stage ever ended "as the last time's")."""
    compared: list[object] = []
    for line in tail:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            compared.append({key: value for key, value in record.items() if key != "time"})
        else:
            compared.append(line)
    return compared


def run_tail_text(path: Path, lines: int = 20) -> str:
    """:func:`run_tail` as text: the last run's lines, without an earlier run's above them (a short run
    showed the last run's traceback, read as its own reason), each JSON record said as
    :func:`readable_log_line` says it; or a note that it wrote none."""
    said = [readable for line in run_tail(path, lines) for readable in readable_log_line(line)]
    return "\n".join(said) or f"(no lines in {path} from this run)"
