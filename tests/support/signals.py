"""Child processes that meet SIGINT, SIGTERM and SIGHUP as a login shell's would."""

from __future__ import annotations

import signal


def as_from_a_shell() -> None:
    """A ``preexec_fn``: the child's SIGINT, SIGTERM and SIGHUP default and not blocked. A runner under
    `nohup` (SIGHUP ignored) or started in the background (SIGINT ignored), or a thread of the test
    process that blocks signals, passes its own on through fork and exec, and the commands rightly
    leave an ignored signal ignored (``shared.signals.stopped_as_interrupt``)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
