"""How a command ends on a failure it can name: one line on stderr and an exit status, no traceback.

A bad setting, the object store refusing or away, an object stored that does not read and Ctrl-C (or
SIGTERM, SIGHUP: ``shared.signals``) each say what to do in their message; a traceback around it
buried that line under frames of our code. A reader of stdout that stops early (``| head -1``) ends the
command quietly. ``skuforge`` runs every command through ``run_command``,
and so do the bench and fitting tools that open a model.
"""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Callable

from shared.config import ConfigError
from shared.errors import BadInput, StoreMisconfigured, TransientError
from shared.signals import signal_number, stopped_how

__all__ = ["run_command"]


def run_command(name: str, command: Callable[[], int]) -> int:
    """``command()``'s exit status; a failure it can name is printed after ``name:`` on stderr instead:
    2 for a bad setting (as for a bad option), 1 for the store's or a stored object's, 128 + the
    signal for Ctrl-C, SIGTERM or SIGHUP where the command has nothing of its own to say or undo; 1,
    and nothing said, when stdout's reader has gone."""
    try:
        status = command()
        sys.stdout.flush()  # here, not at exit, where a closed pipe is a message we cannot catch
        return status
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # a pipe to a child the command runs: a failure to show
        # `skuforge flow | head -1`: as Python's docs advise ("Note on SIGPIPE"), stdout to devnull so
        # the interpreter's last flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except BadInput as exc:  # something stored that cannot be read (a manifest part): named, not a traceback
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except StoreMisconfigured as exc:  # it names what to check, the setting or option its URI came from too
        print(f"{name}: {exc}\n(fix that and try again)", file=sys.stderr)
        return 1
    except TransientError as exc:  # the store or the broker away
        # Not SKUFORGE_STORE_URI: the store away may be another one (--scenes, the adapters' or a model's).
        print(
            f"{name}: {exc}\n(the object store or Kafka could not be reached: check that it is up, "
            "SKUFORGE_S3_ENDPOINT_URL or SKUFORGE_KAFKA_BOOTSTRAP, and try again)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt as exc:
        signum = signal_number(exc)
        print(f"{name}: {stopped_how(signum)}", file=sys.stderr)
        return 128 + signum


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll says POLLERR of such a pipe alone)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no file behind it (replaced, closed)
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))
