"""Model files and folders named by URI, copied into a local cache.

No model is fetched from a hub: a model is one file (an ONNX matting model, a LoRA's weights) or a
folder in ``save_pretrained`` layout (BLIP, a diffusion pipeline) in an object store (``s3://``,
``file://``). A folder is copied once under the cache directory (``<system temp>/skuforge-models``
unless configured) and reused while the store lists the same keys; a file is read from the store at
each use (the object store has no digest to ask for), into a partial file in the cache, and put in
place only when no whole copy of those bytes is there, not even one another process put there while
this one read (and holds: its lock is on that file). Every copy is written under a temporary
name and renamed into place, so a concurrent reader never loads half a model, with the modes the
process's umask gives (mkstemp's 0600 kept a cache shared with another user's process unreadable) but
never writable by everyone, whatever the umask; a copy that is (made before that rule) is copied
again, never reused. A new copy of a folder is swapped with an outdated one in one step, so the name
always holds a whole model, and never replaces a whole copy another process has just put there.
The cache folder is made with mode 0700; one everyone may write to is refused (``UnsafeCache``), and
at the default place, a known name in a shared ``/tmp``, so is one another user owns or its group may
write to, as ssh refuses such a ``~/.ssh``: loading model weights can run code.
A URI inside the caller's own object store is read through that store (its client and
credentials); any other through ``open_store``.

The cache is shared by every stage on the host and each new model version adds a copy, so a fetch
also deletes the copies not used for ``unused_days`` (``SKUFORGE_MODEL_CACHE_UNUSED_DAYS``), and the
partial downloads of killed processes, before it copies anything: the room they took is there for
the new copy. A copy a process fetched stays locked (a shared ``flock``, one open descriptor) until
that process releases it (``release``, by any path naming it: a generator evicting an adapter) or
exits, and a download in progress is locked the same way: neither is deleted, however old.

Every copy is streamed in blocks of at most 1 MiB, hashed as it is written: a model's size never sets
the memory its fetch takes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from shared.errors import ChecksumMismatch
from shared.store import ObjectStore, S3Store, check_key, fsync_dir, open_store

__all__ = [
    "COMPLETE_MARKER",
    "DEFAULT_UNUSED_DAYS",
    "UnsafeCache",
    "cache_dir",
    "check_owner",
    "copied_and_held",
    "fetch_directory",
    "fetch_file",
    "hold",
    "open_cache",
    "prune_unused",
    "release",
    "repair_folder_mode",
    "writable_by_everyone",
    "write_atomically",
    "write_blocks_atomically",
]

# Written last into a copied folder: the keys it holds. A folder without it is incomplete.
COMPLETE_MARKER = ".skuforge-complete.json"
# The longest file name most file systems take (ext4, XFS, APFS): a cache name is kept within it.
NAME_MAX_BYTES = 255
# Copies not used for this many days are deleted at the next fetch (0 keeps every copy).
DEFAULT_UNUSED_DAYS = 30.0
# A copy is written under this prefix, locked (``_partial_file``, ``_download``), and renamed into place.
PARTIAL_PREFIX = ".partial-"
# A pruner renames what it deletes to this prefix first (``_move_aside_if_unused``): nobody uses it then.
STALE_PREFIX = ".stale-"
# A partial copy nobody holds is a killed process's once this old (the grace covers the moment between
# its making and its lock), and a stale one a killed pruner's: deleted at the next fetch, not kept the
# days a copy is, which let a stage killed at each start while copying (a start-up probe, the OOM
# killer) fill the volume with gigabytes of them.
LEFTOVER_GRACE_S = 60.0
# Cache entries this process holds, by their real path (``_held_key``): the descriptor carrying the
# shared flock, and how many holds it stands for (each ``hold`` is undone by one ``release``; the lock
# goes with the last).
_HELD: dict[Path, tuple[int, int]] = {}
_HELD_LOCK = threading.Lock()


class UnsafeCache(PermissionError):
    """The model cache, or a copy in it, is one another user could change: its files are not loaded."""


def cache_dir(configured: Path | str | None = None) -> Path:
    """Where models are copied: ``configured``, else ``<system temp>/skuforge-models``."""
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "skuforge-models"


def open_cache(configured: Path | str | None = None) -> Path:
    """The cache folder (``cache_dir``), made with mode 0700 when missing.

    Raises ``UnsafeCache`` when everyone may write to it, and, at its default place (a known name in a
    shared ``/tmp``), when another user (root excepted) owns it or its group may write to it: another
    user could make it first or plant a copy whose marker and checksums match, and torch/pickle weights
    run code when loaded. A folder configured on purpose may be shared by the users (or the pod's
    ``fsGroup``) the operator chose.
    """
    base = cache_dir(configured)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_owner(base)
    mode = base.stat().st_mode
    if mode & 0o002 or (mode & 0o020 and _is_default(base)):
        writers = "everyone" if mode & 0o002 else "its group"
        raise UnsafeCache(
            f"the model cache {base} is writable by {writers} (mode {mode & 0o7777:04o}): another user could "
            f"plant model files there, and loading weights can run code; run 'chmod go-w {base}', or use a "
            "cache folder of this user's"
        )
    return base


def _is_default(base: Path) -> bool:
    """Whether ``base`` is the cache's default place, ``<system temp>/skuforge-models``."""
    return base == cache_dir(None)


def check_owner(path: Path) -> None:
    """Raise ``UnsafeCache`` when ``path`` (the default cache, or a copy in it) exists and belongs to
    another user than this process's (root excepted, who can change anything anyway). A cache folder
    configured on purpose may be shared with other users: not checked."""
    if not (_is_default(path) or _is_default(path.parent)):
        return
    try:
        owner = path.stat().st_uid
    except FileNotFoundError:
        return
    if owner not in (os.geteuid(), 0):
        raise UnsafeCache(
            f"{path} (the model cache or a copy in it) belongs to uid {owner}, not to this user "
            f"(uid {os.geteuid()}): its owner could plant model files there, and loading weights can run "
            "code; remove it, or use a cache folder of this user's"
        )


def _shortened(name: str, max_bytes: int) -> str:
    """``name`` cut to at most ``max_bytes`` of UTF-8, its suffix (``.onnx``) kept, for a cache name.

    The digest beside it in the cache name tells copies apart; the name is there for people, and an
    object name of a few hundred bytes (S3 allows 1024) failed as ENAMETOOLONG.
    """
    if len(name.encode("utf-8")) <= max_bytes:
        return name
    suffix = Path(name).suffix
    if len(suffix.encode("utf-8")) > max_bytes // 4:
        suffix = ""
    room = max_bytes - len(suffix.encode("utf-8"))
    stem = name[: len(name) - len(suffix)].encode("utf-8")[:room].decode("utf-8", errors="ignore")
    return stem + suffix


def _umask() -> int:
    """The process's umask, read from ``/proc/self/status`` (Linux 4.7); elsewhere by setting it and
    setting it back, which gives a thread creating a file in between 022 instead."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode(mode: int) -> int:
    """``mode`` as the umask leaves it, less the write bit for everyone: under umask 000 (some
    containers, a careless shell) any local user could otherwise change weights that run code."""
    return mode & ~_umask() & ~0o002


def _make_folders(folder: Path) -> None:
    """Make ``folder`` and its missing parents, each with ``_mode(0o777)`` (``mkdir(parents=True)``
    gives the parents the umask's mode, everyone's write bit included), each entry made durable."""
    missing = []
    while not folder.is_dir() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for each in reversed(missing):
        each.mkdir(mode=_mode(0o777), exist_ok=True)
        fsync_dir(each.parent)


def writable_by_everyone(path: Path) -> bool:
    """Whether everyone may write to ``path`` (a copy made before the cache masked that bit, under umask
    000): such a copy is not reused, since any local user could have changed it, marker and all, and a
    chmod alone would leave them a handle opened while they could. False when ``path`` is missing."""
    try:
        return bool(path.stat().st_mode & 0o002)
    except OSError:
        return False


def repair_folder_mode(folder: Path) -> None:
    """Take everyone's write bit off the cache folder ``folder`` when it has it, before the files in it
    are written again; ``UnsafeCache`` when it is another user's, whose mode we may not change."""
    if not writable_by_everyone(folder):
        return
    try:
        os.chmod(folder, folder.stat().st_mode & 0o7775)
    except PermissionError:
        raise UnsafeCache(
            f"the model copy {folder} is writable by everyone and belongs to another user: its files could "
            "have been changed, and loading weights can run code; remove it"
        ) from None


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as ``write_blocks_atomically`` writes blocks."""
    write_blocks_atomically(path, (data,))


def write_blocks_atomically(
    path: Path,
    blocks: Iterable[bytes],
    *,
    check: Callable[[int, str], None] | None = None,
    whole: Callable[[], bool] | None = None,
) -> None:
    """Write ``blocks`` to ``path`` through a temporary file in the same folder, renamed into place;
    the file, and the folders it needs, get the modes ``open`` and ``mkdir`` would give them, never
    writable by everyone. Durable on return: the bytes are synced before the rename, the folder after
    (else a power cut could leave the old file, or none, under the name). ``check``, given the size
    and sha256 of what was written, may refuse it by raising before the rename: nothing is left then.
    ``whole``, for a cache copy, says whether the file at ``path`` is a whole copy: one is kept, not
    replaced (``_put_in_place``). One block at a time is held, so a file of any size takes the memory
    of its largest block."""
    _make_folders(path.parent)
    with _partial_file(path.parent) as partial:
        size, digest = _write_durably(partial, blocks)
        if check is not None:
            check(size, digest)
        _put_in_place(partial, path, whole=whole)


@contextlib.contextmanager
def _partial_file(folder: Path) -> Iterator[Path]:
    """A new file in ``folder`` to write a copy into, locked as being written (``prune_unused`` leaves
    it) until the block ends; its name is deleted then unless it was renamed into place (a copy linked
    into place keeps its other name: ``_put_in_place``)."""
    fd, partial = tempfile.mkstemp(dir=folder, prefix=PARTIAL_PREFIX)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield Path(partial)
    finally:
        with contextlib.suppress(OSError):  # put in place, or gone: the name is not ours to delete
            if os.path.samestat(os.fstat(fd), os.lstat(partial)):
                os.unlink(partial)
        os.close(fd)


def _put_in_place(partial: Path, path: Path, *, whole: Callable[[], bool] | None = None) -> None:
    """Rename the written and synced ``partial`` to ``path``, with the mode ``open`` would give it.

    Given ``whole`` (a cache copy), ``path`` is only made where it is missing (a link to ``partial``,
    whose own name goes when its block ends), and replaced only when what is there is not ``whole``
    (damaged in place, writable by everyone): a whole copy there is another process's, put there since
    this one looked, which it holds (its lock is on that file). Replaced, its lock was on a deleted
    file, the copy under the name was held by nobody, and a prune deleted it under that process once
    ``unused_days`` old. The move happens under the cache's install lock (``_install_lock``), and only
    when what was checked is still there (``_put_in_place_unless_whole``), so no copy another process
    put there after the check is replaced: on a file system without hard links (vfat; some FUSE ones,
    whose ``link`` is ENOSYS) the check before the rename is all there is. Readers never see part of a
    file: ``partial`` is whole and synced, and the rename atomic.
    """
    os.chmod(partial, _mode(0o666))  # not mkstemp's 0600
    if whole is None:
        os.replace(partial, path)
    else:
        _put_in_place_unless_whole(partial, path, whole)
    fsync_dir(path.parent)


def _put_in_place_unless_whole(partial: Path, path: Path, whole: Callable[[], bool]) -> None:
    """``_put_in_place`` for a cache copy: linked into place where nothing is there (so never over a copy
    landing meanwhile where the install lock could not be taken), else renamed over what is not whole."""

    def put(taken: bool) -> bool:
        if taken:
            os.replace(partial, path)
            return True
        try:
            os.link(partial, path)
        except FileExistsError:
            return False  # put there meanwhile, where the lock could not be taken (NFS)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            os.replace(partial, path)  # no hard links: nothing there, and the lock keeps it so
        return True

    _install_unless_whole(path, whole, put)


def _install_unless_whole(path: Path, whole: Callable[[], bool], put: Callable[[bool], bool]) -> None:
    """Run ``put`` under the cache's install lock unless the entry at ``path`` is ``whole``; ``put`` is
    told whether something is there, and returns False where it found the name taken meanwhile.

    ``whole`` (a copy's sha256: a multi-GB read for a model) runs before the lock is taken: under it,
    every other install on the host waited for it. Under the lock ``put`` runs only when the entry
    checked is still the one at ``path`` (held open meanwhile, so its inode is no other's); one another
    process put there meanwhile is looked at again, never replaced unchecked.
    """
    for _attempt in range(5):
        there = _open_entry(path)
        try:
            kept = whole()  # asked even of nothing there: what lands meanwhile is looked at again
            with _install_lock(path.parent):
                if not _still_at(there, path):
                    continue  # another process put its copy there while this one looked
                if kept and there is not None:
                    return
                if put(there is not None):
                    return
        finally:
            if there is not None:
                os.close(there)
    raise OSError(errno.EBUSY, f"could not put the model copy at {path}: other processes keep replacing it")


def _open_entry(path: Path) -> int | None:
    """A descriptor on the entry at ``path`` itself (a file, a folder, a link), or None when nothing is
    there; ``O_PATH``: one another user's copy, unreadable to us, opens too."""
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_PATH", 0) | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None


def _still_at(there: int | None, path: Path) -> bool:
    """Whether the entry at ``path`` is still the one open as ``there`` (None: still nothing there)."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return there is None
    return there is not None and os.path.samestat(os.fstat(there), now)


@contextlib.contextmanager
def _install_lock(folder: Path) -> Iterator[None]:
    """The cache's install lock, an exclusive ``flock`` on the cache folder ``folder``, held for the
    block: every process checks what is at a copy's name and puts its own there under it. NFS emulates
    flock with POSIX locks, which an exclusive one on a read-only descriptor cannot take (EBADF): there
    the block runs unlocked (a file copy is still linked into place, never over another)."""
    lock_fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock_fd)  # releases the lock


def _source(
    uri: str, store: ObjectStore | None, s3_endpoint_url: str | None, s3_region: str, uri_from: str
) -> tuple[ObjectStore, str]:
    """The store that holds ``uri`` (a folder URI) and the key prefix of ``uri`` inside it."""
    if store is not None and uri.startswith(store.base_uri + "/"):
        return store, store.key_for(uri) + "/"
    # Only read: a folder's prefix need not leave room for the keys the flow writes (nor does fetch_file's).
    source = open_store(
        uri, s3_endpoint_url=s3_endpoint_url, s3_region=s3_region, uri_from=uri_from, writes=False
    )
    return source, ""


def fetch_file(
    uri: str,
    cache: Path | str | None = None,
    *,
    uri_from: str,
    store: ObjectStore | None = None,
    s3_endpoint_url: str | None = None,
    s3_region: str = "us-east-1",
    unused_days: float = DEFAULT_UNUSED_DAYS,
) -> Path:
    """Copy the object ``uri`` into the cache as ``<sha256 of its bytes, 16 hex>-<file name>`` (a file
    name over 238 bytes shortened, its suffix kept, so the cache name fits a file system's 255).

    The name carries the content's digest, so a model replaced under the same URI is a new file.
    The copy is held (``hold``) until this process releases it (``release``) or exits, and copies not
    used for ``unused_days`` are deleted (``prune_unused``).
    The object is streamed into a partial file in the cache, hashed as it is written (read whole, a
    model of hundreds of MB took as much memory), and renamed to its name once the digest is known.
    ``uri_from`` is where ``uri`` was set (a model's setting, a tool's option): what an S3 refusal says
    to check. It has no default: one named SKUFORGE_STORE_URI, which a caller that left it out never read.
    Raises ``ValueError`` for a URI that names no file, ``ObjectMissing`` when nothing is stored there,
    ``BadInput('unsafe_key')`` for a URI inside ``store`` whose key would leave it (a '..' segment).
    """
    parent, _, file_name = uri.rpartition("/")
    if not file_name or "://" not in parent:
        raise ValueError(f"{uri!r} names no file")
    if store is not None and uri.startswith(store.base_uri + "/"):
        source, key = store, uri
    else:
        source = open_store(
            parent, s3_endpoint_url=s3_endpoint_url, s3_region=s3_region, uri_from=uri_from, writes=False
        )
        key = file_name
    base = open_cache(cache)
    # Before the copy: pruned after it, a volume the stale copies filled failed every copy (ENOSPC) and
    # so was never pruned. This copy's own, if stale, is deleted too: put back from the bytes read anyway.
    prune_unused(base, unused_days)
    with _partial_file(base) as partial:
        size, digest = _write_durably(partial, source.iter_bytes(key))
        target = base / f"{digest[:16]}-{_shortened(file_name, NAME_MAX_BYTES - 17)}"
        check_owner(target)

        def same_bytes(copied_size: int, copied_digest: str) -> None:
            if copied_digest != digest:
                raise ChecksumMismatch(uri, digest, copied_digest)

        def holds_the_bytes() -> bool:
            # Compare contents, not sizes: a cached copy damaged in place keeps its size and would
            # otherwise be loaded (and fail) at every start until someone empties the cache by hand.
            return (
                target.is_file()
                and not writable_by_everyone(target)
                and target.stat().st_size == size
                and file_sha256(target) == digest
            )

        with _broken_asked_once(target, holds_the_bytes) as whole:
            copied_and_held(
                target,
                whole=whole,
                # Our partial file (linked again when another process pruned the copy it became before
                # we held it), or, when it was renamed over a broken copy and then pruned, the object read
                # again (the same bytes, or it changed meanwhile: refused). Neither replaces a whole copy
                # another process put there meanwhile (``_put_in_place``).
                copy=lambda: (
                    _put_in_place(partial, target, whole=whole)
                    if partial.exists()
                    else write_blocks_atomically(
                        target, source.iter_bytes(key), check=same_bytes, whole=whole
                    )
                ),
            )
    return target


def copied_and_held(target: Path, *, whole: Callable[[], bool], copy: Callable[[], None]) -> None:
    """Copy ``target`` (``copy``) unless it is ``whole``, then hold it (``hold``); copied again when
    another process pruned it between the check and the hold."""
    for _attempt in range(5):
        if not whole():
            copy()
        if hold(target):
            return
    raise OSError(errno.EBUSY, f"could not keep the model copy at {target}: other processes keep pruning it")


@contextlib.contextmanager
def _broken_asked_once(path: Path, whole: Callable[[], bool]) -> Iterator[Callable[[], bool]]:
    """``whole``, not asked again of the entry at ``path`` it found not whole while that entry is still
    there unchanged (``_entry_state``): a copy's check is a read of the whole model (every file of a
    folder), and a broken copy was read whole twice, once found broken and again, under no change, just
    before ours was put over it. What is put there since (another process's copy, linked or renamed in,
    a mode changed) is another entry, and asked of again. Nothing in this cache mends a copy in place, so
    an entry found broken stays so.

    The entry found broken is kept open until the block ends (the last one only), so that its inode
    cannot be freed meanwhile: freed (another process deleted it and put its own copy there), its number
    could be the new file's, and on a file system with coarse times (1 s; 2 s on vfat) its size and times
    the same, and that process's whole copy, which it holds, was taken for the broken one unread and
    replaced."""
    broken: list[tuple[int, tuple[int, ...]]] = []  # (a descriptor on it, its state): one at most

    def forget() -> None:
        while broken:
            os.close(broken.pop()[0])

    def asked() -> bool:
        if broken and _entry_state(path) == broken[0][1]:
            return False
        there = _open_entry(path)
        if there is None:
            return whole()
        try:
            before = _state_of(os.fstat(there))
            verdict = whole()
            if not verdict and _entry_state(path) == before:
                forget()
                broken.append((there, before))
                there = None
        finally:
            if there is not None:
                os.close(there)
        return verdict

    try:
        yield asked
    finally:
        forget()


def _entry_state(path: Path) -> tuple[int, ...] | None:
    """Which entry is at ``path`` (device, inode) and whether it changed (size, times), or None where
    nothing is there."""
    try:
        return _state_of(os.lstat(path))
    except FileNotFoundError:
        return None


def _state_of(found: os.stat_result) -> tuple[int, ...]:
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)


def file_sha256(path: Path) -> str:
    """The sha256 of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_directory(
    uri: str,
    cache: Path | str | None = None,
    *,
    uri_from: str,
    store: ObjectStore | None = None,
    s3_endpoint_url: str | None = None,
    s3_region: str = "us-east-1",
    required_file: str | None = None,
    unused_days: float = DEFAULT_UNUSED_DAYS,
) -> Path:
    """Copy every object under the folder ``uri`` into the cache; returns the local folder.

    The copy is named by where the folder is (``<last part>-<sha256 of its location, 16 hex>``: its
    absolute URI, a relative ``file://`` URI resolved first, and for ``s3://`` the server unless it is
    AWS, since MinIO and AWS may both have the bucket; a long last part shortened as ``fetch_file``
    shortens a file name) and reused while it holds exactly the keys the
    store lists, each file with the sha256 it was copied with: model folders are treated as immutable,
    so publish a changed model under a new URI. Processes sharing the cache may fetch at once: a
    copy another one completed meanwhile is used as it is, never deleted under its readers. The copy
    is held (``hold``) until this process releases it (``release``) or exits, and copies not used for
    ``unused_days`` are deleted (``prune_unused``). ``uri_from`` is where ``uri`` was set, as for
    ``fetch_file``.
    Raises ``ValueError`` when nothing is stored under ``uri``, when ``required_file``
    (e.g. ``config.json``) is not among what is, when a name in the folder is over 255 bytes (S3
    takes it, no file system does; the files keep their names, which their loader reads them by), or
    when a name is one the store cannot read (a backslash, ``a//b``): all before any file is read.
    """
    root = uri.rstrip("/")
    source, prefix = _source(root, store, s3_endpoint_url, s3_region, uri_from)
    keys = sorted(key[len(prefix) :] for key in source.list_keys(prefix) if not key.endswith(COMPLETE_MARKER))
    # Named with the setting it came from: a host runs several stages, each naming a model or two.
    if not keys:  # first: a folder missing (a typo) was "holds no config.json ... (keys: [])"
        raise ValueError(f"nothing is stored under {root}/ (from {uri_from})")
    if required_file is not None and required_file not in keys:
        raise ValueError(
            f"{root}/ (from {uri_from}) holds no {required_file}: not a save_pretrained folder "
            f"(keys: {keys[:10]})"
        )
    for key in keys:
        # The copy keeps the folder's names (its loader reads its files by name, so none can be
        # shortened as a single file's is): refused before any file is read, not after the files
        # sorted before it were downloaded, by the store's key check, naming 40 bytes of it.
        for segment in key.split("/"):
            if len(segment.encode("utf-8")) > NAME_MAX_BYTES:
                raise ValueError(
                    f"{root}/ holds {key}, with a name of {len(segment.encode('utf-8'))} bytes: no file "
                    f"system takes a name over {NAME_MAX_BYTES} bytes, and the model's files are read by "
                    "name; rename it in the store"
                )
        # A name the store cannot address ('a\\b.bin', 'a//b') is refused here too, naming the folder.
        try:
            check_key(prefix + key)
        except ValueError as exc:
            raise ValueError(
                f"{root}/ holds {key!r}, which the store cannot read ({exc}); rename it in the store"
            ) from None
    location = _location(source, prefix)
    base = open_cache(cache)
    label = _shortened(root.rpartition("/")[2] or "root", NAME_MAX_BYTES - 17)
    target = base / f"{label}-{hashlib.sha256(location.encode()).hexdigest()[:16]}"
    check_owner(target)

    with _broken_asked_once(target, lambda: _is_complete(target, keys)) as whole:

        def copy() -> None:
            # Room first: pruned only after a fetch succeeded, a volume the stale copies filled failed
            # every copy (ENOSPC) and so was never pruned. Not before a whole copy is reused: a model a
            # stage ran for weeks, its mtime as old as that start, would be deleted and downloaded again.
            prune_unused(base, unused_days)
            _download(source, prefix, keys, {"uri": root, "location": location}, target, whole)

        copied_and_held(target, whole=whole, copy=copy)
    prune_unused(base, unused_days)
    return target


def _download(
    source: ObjectStore,
    prefix: str,
    keys: list[str],
    marker: dict[str, object],
    target: Path,
    whole: Callable[[], bool],
) -> None:
    """Copy ``keys`` under ``prefix`` into a partial folder beside ``target``, then install it there
    unless what is there is ``whole`` (``_install``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=PARTIAL_PREFIX))
    partial_fd = os.open(partial, os.O_RDONLY)
    try:
        fcntl.flock(partial_fd, fcntl.LOCK_SH)  # being written: prune_unused leaves it
        os.chmod(partial, _mode(0o777))  # as mkdir would have made it, not mkdtemp's 0700
        sizes: dict[str, int] = {}
        digests: dict[str, str] = {}
        for key in keys:
            path = partial.joinpath(*key.split("/"))
            _make_folders(path.parent)
            # In blocks: a diffusion pipeline's UNet is gigabytes, which read whole needed as much memory.
            sizes[key], digests[key] = _write_durably(path, source.iter_bytes(prefix + key))
        complete = {**marker, "keys": keys, "sizes": sizes, "sha256": digests}
        _write_durably(partial / COMPLETE_MARKER, (json.dumps(complete).encode("utf-8"),))
        # The folders' entries too, deepest first: synced files are lost if the names leading to them are.
        for folder, _, _ in sorted(os.walk(partial), key=lambda walked: -len(Path(walked[0]).parts)):
            fsync_dir(Path(folder))
        _install(partial, target, whole)
        fsync_dir(target.parent)
    finally:
        os.close(partial_fd)
        _delete(partial)  # ours when another copy was kept, else the outdated copy ours replaced


def hold(path: Path) -> bool:
    """Mark the cache entry ``path`` (a file or folder) used now and in use until this process releases
    it (``release``, once per ``hold``) or exits: a shared ``flock`` that ``prune_unused`` in any process
    respects. False when the entry is gone (another process pruned it meanwhile): fetch it again."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits while a pruner moves it aside
        if not os.path.samestat(os.fstat(fd), os.stat(path)):
            raise FileNotFoundError(path)  # moved aside while we waited; the name is another's or none
    except FileNotFoundError:
        os.close(fd)
        return False
    except BaseException:
        os.close(fd)
        raise
    # The last use, which prune_unused reads; another user's copy in a shared cache, or a cache on a
    # read-only volume, keeps its time (we may not set it), and the lock protects it all the same.
    with contextlib.suppress(OSError):
        os.utime(path)
    # One descriptor per entry, however often it is held: the newest, on what the name is now.
    key = _held_key(path)
    with _HELD_LOCK:
        previous_fd, holds = _HELD.get(key, (None, 0))
        _HELD[key] = (fd, holds + 1)
    if previous_fd is not None:
        os.close(previous_fd)
    return True


def release(path: Path) -> None:
    """Undo one ``hold`` of the cache entry ``path`` (what a fetch returned, or any path naming the
    same entry: relative, or through a link), for a copy this process no longer reads (an evicted
    adapter, already in memory). With the last one its lock and descriptor go: ``prune_unused`` may
    then delete the copy once it is unused for its days. Nothing when not held.

    A long-running process fetching one copy after another would otherwise keep a descriptor for each,
    and run out of them.
    """
    key = _held_key(path)
    with _HELD_LOCK:
        fd, holds = _HELD.pop(key, (None, 0))
        if fd is not None and holds > 1:
            _HELD[key] = (fd, holds - 1)
            return
    if fd is not None:
        os.close(fd)


def _held_key(path: Path) -> Path:
    """The entry ``path`` names, as ``_HELD`` keys it: absolute, links resolved. Keyed as given, a hold
    was released only by the very path the fetch returned, and a copy released by a relative path or
    through a link stayed held (its descriptor open) for the life of the process. By its name, not its
    inode: a folder copy exchanged for a newer one under the name is still released by that name."""
    return Path(os.path.realpath(path))


def prune_unused(cache: Path | str | None, unused_days: float, *, now: float | None = None) -> list[str]:
    """Delete the copies in the cache not used for ``unused_days`` (0: delete none), and the downloads
    and deletions a killed process left half done, once ``LEFTOVER_GRACE_S`` old; returns their names.
    An entry that a living process holds (``hold``) or is writing is kept, however old, as is one
    another user owns and we cannot remove.
    """
    if unused_days <= 0:
        return []
    base = cache_dir(cache)
    now = time.time() if now is None else now
    cutoff = now - unused_days * 86_400
    try:
        entries = sorted(base.iterdir())
    except FileNotFoundError:
        return []
    pruned = []
    for entry in entries:
        leftover = entry.name.startswith((PARTIAL_PREFIX, STALE_PREFIX))
        aside = _move_aside_if_unused(entry, max(cutoff, now - LEFTOVER_GRACE_S) if leftover else cutoff)
        if aside is None:
            continue
        _delete(aside)
        pruned.append(entry.name)
    return pruned


def _move_aside_if_unused(entry: Path, cutoff: float) -> Path | None:
    """Rename ``entry`` to a ``.stale-`` name when it was last used before ``cutoff`` and nobody holds
    it; the exclusive lock taken first keeps a process from holding it while it moves."""
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None  # gone meanwhile, a link, or unreadable: not ours to delete
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        status = os.fstat(fd)
        if status.st_mtime >= cutoff or not os.path.samestat(status, os.lstat(entry)):
            return None
        aside = entry.with_name(f"{STALE_PREFIX}{os.getpid()}-{time.monotonic_ns()}")
        os.rename(entry, aside)
        return aside
    except OSError:
        return None  # held (BlockingIOError), renamed by another pruner, or not ours to rename
    finally:
        os.close(fd)


def _location(source: ObjectStore, prefix: str) -> str:
    """Where the folder ``prefix`` of ``source`` is: its URI, after the S3 server's URL on its own line
    unless that is AWS (so copies made from AWS keep the names they were made under)."""
    uri = f"{source.base_uri}/{prefix}".rstrip("/")
    server = _s3_server(source.client.meta.endpoint_url) if isinstance(source, S3Store) else None
    return f"{server}\n{uri}" if server else uri


def _s3_server(endpoint_url: str | None) -> str | None:
    """The S3 endpoint written one way (lower-case scheme and host, no default port, no trailing '/');
    ``None`` for AWS, where a bucket name is the same bucket whatever regional endpoint reaches it."""
    if not endpoint_url:
        return None
    parts = urlsplit(endpoint_url.strip())
    host = (parts.hostname or "").lower()
    if host == "amazonaws.com" or host.endswith(".amazonaws.com"):
        return None
    scheme = parts.scheme.lower()
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(scheme):
        netloc += f":{parts.port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def _delete(path: Path) -> None:
    """Delete the cache entry ``path``, a folder or a file, as far as we may."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _write_durably(path: Path, blocks: Iterable[bytes]) -> tuple[int, str]:
    """Write ``blocks`` and fsync; returns the size and sha256 of what was written. Renamed into place
    later, the name must not point at a file of the right size whose bytes never reached the disk
    (zeros on XFS after a power cut). A new file gets the mode ``open`` would give it, never writable
    by everyone."""
    digest, size = hashlib.sha256(), 0
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _mode(0o666)), "wb") as handle:
        for block in blocks:
            handle.write(block)
            digest.update(block)
            size += len(block)
        handle.flush()
        os.fsync(handle.fileno())
    return size, digest.hexdigest()


def _is_complete(target: Path, keys: list[str]) -> bool:
    """Whether ``target`` is a finished copy of exactly ``keys``, every file still holding the bytes
    copied (their sha256, as ``fetch_file`` checks a file's)."""
    try:
        marker = json.loads((target / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("keys") != keys:
        return False
    # Anyone could have rewritten the files and the marker in a copy everyone may write to.
    names = {COMPLETE_MARKER, *keys}
    entries = {
        target.joinpath(*name.split("/")[:end]) for name in names for end in range(1, name.count("/") + 2)
    }
    if any(writable_by_everyone(entry) for entry in (target, *entries)):
        return False
    # Sizes alone passed a file damaged in place (or replaced) at its size: it was loaded, and failed,
    # at every start until someone emptied the cache. A copy made before digests were recorded is
    # copied again, once.
    sizes, digests = marker.get("sizes"), marker.get("sha256")
    if not isinstance(sizes, dict) or not isinstance(digests, dict):
        return False
    for key in keys:
        path = target.joinpath(*key.split("/"))
        try:
            if path.stat().st_size != sizes.get(key) or file_sha256(path) != digests.get(key):
                return False
        except OSError:
            return False
    return True


def _install(partial: Path, target: Path, whole: Callable[[], bool]) -> None:
    """Put the finished copy ``partial`` at ``target`` unless what is there is ``whole`` already;
    what is left at ``partial`` (our copy, or the outdated one ours replaced) is the caller's to delete.

    The swap happens under the cache's install lock, and only when the copy checked is still the one
    there (``_install_unless_whole``), so a whole copy another process has just installed, and may be
    loading, is found and kept, never replaced. A rename cannot replace a non-empty folder, and renaming
    the old copy aside first left no model under the name until ours took it (none at all when the
    process died in between): an outdated or broken copy is exchanged with ours in one step, its open
    files staying readable.
    """

    def put(taken: bool) -> bool:
        try:
            os.rename(partial, target)  # nothing there (or an empty folder)
            return True
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
        if not taken:
            return False  # installed meanwhile, where the lock could not be taken: looked at again
        _exchange(partial, target)  # the outdated or broken copy checked
        return True

    _install_unless_whole(target, whole, put)


# renameat2(2)'s flag that swaps two names atomically (Linux 3.15; ext4, XFS, btrfs, tmpfs, overlayfs).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(new: Path, old: Path) -> None:
    """Swap the entries ``new`` and ``old`` in one step (``renameat2`` with ``RENAME_EXCHANGE``).

    Where the system or the file system cannot (another libc, NFS), ``old`` is renamed aside to
    ``new``'s name and ``new``'s entry into place: a moment with no entry at ``old``.
    """
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        if renameat2(_AT_FDCWD, os.fsencode(new), _AT_FDCWD, os.fsencode(old), _RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, f"could not put the model copy at {old}: {os.strerror(code)}", str(old))
    # No atomic swap without renameat2: os.replace (rename(2)) replaces only an empty folder, never swaps.
    aside = new.with_name(f"{new.name}-aside")
    os.rename(new, aside)
    os.rename(old, new)
    os.rename(aside, old)
