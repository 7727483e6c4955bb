"""``skuforge dataset export`` stopped (Ctrl-C, SIGTERM, SIGHUP) just as it fails: the clean-up of its
staging folder, and of the classes it moved into OUT, is never skipped, and the failure is reported with
the stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from shared.store import FileStore
from shared.trainstore.manifest import ManifestStore
from tests.support.signals import as_from_a_shell
from tests.support.trainstore import PREFIX, add_item

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ["dataset", "export", "--format", "imagefolder", "--max-synthetic-per-real", "1"]
_SIGNALS = [signal.SIGTERM, signal.SIGHUP, signal.SIGINT]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ManifestStore:
    """SKU-A and SKU-B, one real photo each; the CLI's store is this one."""
    manifests = ManifestStore(FileStore(tmp_path / "store"), PREFIX)
    add_item(manifests, "SKU-A", "real-0", "real", "reference")
    add_item(manifests, "SKU-B", "real-0", "real", "reference")
    monkeypatch.setenv("SKUFORGE_STORE_URI", f"file://{tmp_path / 'store'}")
    return manifests


# Runs `skuforge ARGS...` after `SIGNAL OUT HOW FUNCTION`: the export fails (HOW "reading": on its own, the
# test having tampered with SKU-B's photo; "moving": OUT behaves as a mount point, as as_mount_point makes
# it, and the move of its second entry into OUT fails with EIO; "stopped": a SIGTERM comes as SKU-B's photo
# is read), and SIGNAL comes at the first call after the failure reaches FUNCTION of the export, which cleans
# up after it: a Python signal handler runs at a call (or a function's start, or a loop's jump back), so
# this is where a signal that lands in the instructions before the clean-up meets the export.
_SIGNALLED_AS_IT_FAILS = """
import errno, os, signal, sys
from pathlib import Path

from shared.store import FileStore

signum, out = signal.Signals[sys.argv[1]], Path(sys.argv[2]).resolve()
how, function = sys.argv[3], sys.argv[4]
real_rename, real_open = os.rename, FileStore._open_object
moved_into_out, failed = [], []


def inside(path):
    return Path(os.path.abspath(path)).is_relative_to(out)


def rename(src, dst, *args, **kwargs):
    if how == "moving" and inside(src) != inside(dst):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))
    if how == "moving" and Path(os.path.abspath(dst)).parent == out:
        if moved_into_out:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(src), None, str(dst))
        moved_into_out.append(dst)
    real_rename(src, dst, *args, **kwargs)


def open_object(self, key):
    if how == "stopped" and key.endswith("images/SKU-B/real/real-0.png"):
        os.kill(os.getpid(), signal.SIGTERM)
    return real_open(self, key)


def in_the_export(frame, event, arg):
    if event == "exception":
        failed.append(frame.f_code.co_name)
    return in_the_export


def signalled_after_the_failure(frame, event, arg):
    if failed:
        sys.settrace(None)
        os.kill(os.getpid(), signum)  # its handler runs here, as at any call
    is_the_export = frame.f_code.co_name == function and frame.f_code.co_filename.endswith("dataset.py")
    return in_the_export if is_the_export else None


os.rename, FileStore._open_object = rename, open_object
from skuforge_cli.main import main

sys.settrace(signalled_after_the_failure)
sys.exit(main(sys.argv[5:]))
"""


def _export_signalled_as_it_fails(
    signum: signal.Signals, out: Path, how: str, function: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            _SIGNALLED_AS_IT_FAILS,
            signum.name,
            str(out),
            how,
            function,
            *EXPORT[:2],
            str(out),
            *EXPORT[2:],
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ,
        timeout=120,
        preexec_fn=as_from_a_shell,  # a CI runner under nohup, or in the background, ignores SIGHUP, SIGINT
    )


def _tamper_with_sku_b(store: ManifestStore) -> None:
    key = store.key("images/SKU-B/real/real-0.png")
    store.store.put_bytes(key, store.store.get_bytes(key) + b"x")


@pytest.mark.parametrize("signum", _SIGNALS, ids=[signum.name for signum in _SIGNALS])
def test_an_export_signalled_as_it_fails_removes_its_staging_folder(
    store: ManifestStore, tmp_path: Path, signum: signal.Signals
) -> None:
    """A signal that landed in the few instructions between the failure (a tampered object) and the
    clean-up stopped the export there: its staging folder (gigabytes, perhaps) and the folders it made
    for OUT stayed until the next export into the same OUT. It stops once the clean-up is done."""
    _tamper_with_sku_b(store)
    result = _export_signalled_as_it_fails(signum, tmp_path / "new" / "out", "reading", "export_dataset")
    assert result.returncode == 128 + signum, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["store"]


@pytest.mark.parametrize("signum", _SIGNALS, ids=[signum.name for signum in _SIGNALS])
def test_an_export_signalled_as_its_move_into_out_fails_leaves_out_empty(
    store: ManifestStore, tmp_path: Path, signum: signal.Signals
) -> None:
    """Into a mount point the classes are moved one by one; a move that failed takes those moved back
    out. A signal just after the failure left them in OUT: a training set without some classes and
    without export.json, and every later export into OUT refused as "not empty"."""
    out = tmp_path / "out"
    out.mkdir()
    result = _export_signalled_as_it_fails(signum, out, "moving", "_export_into")
    assert result.returncode == 128 + signum, result.stderr
    assert list(out.iterdir()) == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "store"]


@pytest.mark.parametrize("signum", _SIGNALS, ids=[signum.name for signum in _SIGNALS])
def test_an_export_stopped_twice_removes_its_staging_folder(
    store: ManifestStore, tmp_path: Path, signum: signal.Signals
) -> None:
    """A second stop (Ctrl-C pressed twice, `docker stop` after a `kill`) that came just after the first
    reached the clean-up skipped it. The first stop is the one reported."""
    result = _export_signalled_as_it_fails(signum, tmp_path / "new" / "out", "stopped", "export_dataset")
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "skuforge dataset: stopped by SIGTERM"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["store"]


@pytest.mark.parametrize("signum", _SIGNALS, ids=[signum.name for signum in _SIGNALS])
def test_an_export_stopped_as_it_fails_reports_the_failure_then_the_stop(
    store: ManifestStore, tmp_path: Path, signum: signal.Signals
) -> None:
    """A stop that waited for a failed export's clean-up was all it reported: the reviewer saw "stopped by
    SIGTERM" and not that SKU-B's photo was tampered with (or that OUT's disk failed), and the next run
    failed the same way, hours later."""
    stopped = "interrupted" if signum == signal.SIGINT else f"stopped by {signum.name}"
    out = tmp_path / "out"
    out.mkdir()
    result = _export_signalled_as_it_fails(signum, out, "moving", "_export_into")
    assert result.returncode == 128 + signum, result.stderr
    assert result.stderr.strip().splitlines()[-2:] == [
        f"skuforge dataset export: {out}: Input/output error",
        f"skuforge dataset: {stopped}",
    ]

    _tamper_with_sku_b(store)
    out = tmp_path / "new" / "out"
    result = _export_signalled_as_it_fails(signum, out, "reading", "export_dataset")
    assert result.returncode == 128 + signum, result.stderr
    failure, stop = result.stderr.strip().splitlines()[-2:]
    assert stop == f"skuforge dataset: {stopped}"
    assert failure.startswith("skuforge dataset export: ") and "SKU-B" in failure
    assert failure.endswith(f"; nothing was written to {out}")


# Runs `skuforge ARGS...` after `SIGNAL`: SIGNAL comes at the first line `_staging_for` runs after its
# staging folder is made and locked (``_hold`` returned), where it goes on to move it beside OUT and
# return it.
_SIGNALLED_AS_IT_STAGES = """
import os, signal, sys

signum, held = signal.Signals[sys.argv[1]], []


def in_staging_for(frame, event, arg):
    if event == "line" and held:
        sys.settrace(None)
        os.kill(os.getpid(), signum)  # its handler runs here, as at any call
        return None
    return in_staging_for


def in_hold(frame, event, arg):
    if event == "return":
        held.append(arg)
    return in_hold


def signalled_once_held(frame, event, arg):
    if frame.f_code.co_filename.endswith("dataset.py") and frame.f_code.co_name == "_hold":
        return in_hold
    if frame.f_code.co_filename.endswith("dataset.py") and frame.f_code.co_name == "_staging_for":
        return in_staging_for
    return None


from skuforge_cli.main import main

sys.settrace(signalled_once_held)
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("signum", _SIGNALS, ids=[signum.name for signum in _SIGNALS])
@pytest.mark.parametrize("out_exists", [False, True], ids=["new_out", "empty_out"])
def test_an_export_stopped_as_it_makes_its_staging_folder_leaves_none(
    store: ManifestStore, tmp_path: Path, signum: signal.Signals, out_exists: bool
) -> None:
    """The staging folder was made before the clean-up's try: a stop between its mkdir and its return
    left it (`.out.partial-<uuid>` beside OUT, or in OUT), and the folders made for OUT, until an export
    into the same OUT removed it; one into another OUT never did."""
    out = tmp_path / "new" / "out"
    if out_exists:
        out.mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "-c", _SIGNALLED_AS_IT_STAGES, signum.name, *EXPORT[:2], str(out), *EXPORT[2:]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ,
        timeout=120,
        preexec_fn=as_from_a_shell,
    )
    assert result.returncode == 128 + signum, result.stderr
    left = [path.relative_to(tmp_path) for path in tmp_path.rglob("*") if "store" not in path.parts]
    assert sorted(map(str, left)) == (["new", "new/out"] if out_exists else [])


def _open_fds() -> list[str]:
    """The descriptors this process has open."""
    return sorted(os.listdir("/proc/self/fd"))


# Calls ``_hold`` on the staging folder argv[1] with no byte of a regular file writable (RLIMIT_FSIZE 0, as a
# full disk or quota refuses them), then prints the JSON of what it raised, whether the descriptors this
# process has open changed, and whether the owner file is still locked.
_HOLDS_ON_A_FULL_DISK = """
import errno, fcntl, json, os, resource, signal, sys
from pathlib import Path

from shared.trainstore.dataset import STAGING_OWNER, _hold

staging = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of ending the process
before = sorted(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
try:
    _hold(staging)
    raised = None
except OSError as exc:
    raised = errno.errorcode[exc.errno]
fd = os.open(staging / STAGING_OWNER, os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    locked = False
except BlockingIOError:
    locked = True
os.close(fd)
fds_kept = sorted(os.listdir("/proc/self/fd")) != before
print(json.dumps({"raised": raised, "fds_kept": fds_kept, "locked": locked}))
"""


def test_a_staging_lock_whose_owner_file_cannot_be_written_closes_it(tmp_path: Path) -> None:
    """``_hold`` opened the staging folder's owner file, locked it and wrote who holds it: when the write
    failed (a full disk, a quota) its descriptor stayed open, and so did its lock. The CLI exits; a
    process that exports as a library (bench/augment.py) kept one descriptor per failed export, and its
    next ``_hold`` of that folder would wait on its own lock for ever."""
    staging = tmp_path / ".partial-0"
    staging.mkdir()
    child = subprocess.run(
        [sys.executable, "-c", _HOLDS_ON_A_FULL_DISK, str(staging)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    assert json.loads(child.stdout) == {"raised": "EFBIG", "fds_kept": False, "locked": False}


def test_a_stop_while_a_staging_lock_waits_closes_its_owner_file(tmp_path: Path) -> None:
    """A stop (Ctrl-C, or a SIGTERM as the CLI turns it into one) while ``_hold`` waits for the owner
    file's lock, which another process holds (an export checking whether the folder was abandoned), left
    the owner file open in a process that goes on."""
    from shared.trainstore.dataset import STAGING_OWNER, _hold

    staging = tmp_path / ".partial-0"
    staging.mkdir()
    owner = staging / STAGING_OWNER
    owner.touch()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDS_THE_LOCK, str(owner)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    def stop_once_waiting(main: int) -> None:
        waiting = f":{owner.stat().st_ino} "
        for _ in range(6000):  # until the lock has a waiter (this process's _hold), at most a minute
            if any("->" in line and waiting in line for line in Path("/proc/locks").read_text().splitlines()):
                break
            threading.Event().wait(0.01)
        signal.pthread_kill(main, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, stop)
    before = _open_fds()
    stopper = threading.Thread(target=stop_once_waiting, args=(threading.get_ident(),))
    try:
        stopper.start()
        with pytest.raises(KeyboardInterrupt):
            _hold(staging)
        stopper.join()
        assert _open_fds() == before
    finally:
        signal.signal(signal.SIGUSR1, previous)
        holder.communicate("")


# Holds an exclusive flock on argv[1], says so, and keeps it until its stdin closes.
_HOLDS_THE_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("held", flush=True)
sys.stdin.read()
"""
