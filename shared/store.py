"""The object store behind every event: images travel as URIs with sha256, size and dimensions.

One interface, two backends: ``FileStore`` (``file:///abs/dir``) for a shared volume or a
laptop, and ``S3Store`` (``s3://bucket/prefix``) for AWS S3 or any S3-compatible server.
Errors follow ``shared.errors``: an object that is not there is ``ObjectMissing`` and bytes
that do not match their reference are ``ChecksumMismatch`` (both the input's fault), while
an unreachable, slow, throttling or full store is ``TransientError`` (retry later).

Keys are '/'-separated relative paths. They are checked on every call, even though the
store builds them itself, because keys also come back from events as URIs: empty keys,
absolute keys, empty / ``.`` / ``..`` segments, backslashes and control characters are
refused, and so is a segment longer than 255 bytes (no common filesystem can name it). An object a store
wrote before review 48 under a key holding a C1 control, a line separator or a bidi control (refused
since) is still read and deleted, never written; messages name its URI escaped. A key
longer than the store leaves room for (S3's 1024 bytes, an S3Store's prefix included) is the input's
fault, ``BadInput('key_too_long')``, told before anything is sent (``check_room``). URIs are the
store's base URI, a '/', and the key, with no percent-encoding.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import boto3
import numpy as np
import numpy.typing as npt
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    TokenRetrievalError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from PIL import Image
from pydantic import BaseModel

from schemas.common import BIDI_CONTROLS, ImageRef, ObjectRef, check_one_line
from shared.errors import BadInput, ChecksumMismatch, ObjectMissing, StoreMisconfigured, TransientError
from shared.images import encode_png, too_large_bytes
from shared.observability import escape_control_characters

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from shared.config import Settings

__all__ = [
    "FileStore",
    "ObjectStore",
    "S3Store",
    "check_key",
    "digest_key",
    "fsync_dir",
    "open_settings_store",
    "open_store",
    "sha256_hex",
]

MAX_KEY_BYTES = 1024  # S3's limit, applied to both backends so keys stay portable.
# What an S3 store's prefix must leave its keys of the 1024 (S3 counts the prefix in them). The flow's
# longest take about 320: a dead letter's original or replay marker under a 249-character Kafka topic
# (``dlq-originals/<topic>/<partition>-<offset>-<sha256[:16]>.value``); keys.py's, at most 169, are not
# the longest. A prefix of up to 1024 bytes was taken, which left those keys no room.
MIN_KEY_ROOM_BYTES = 512
# NAME_MAX of ext4, XFS, btrfs and APFS. A longer segment cannot exist in a FileStore: the OS answers
# ENAMETOOLONG, which looks like a machine fault (TransientError) and would be retried forever.
MAX_SEGMENT_BYTES = 255
# Temporary files of in-flight FileStore writes; hidden from listings and refused as keys.
_TMP_PREFIX = ".skuforge-tmp-"
_BUCKET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,254}")
_S3_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
# A conditional write to a key that exists (If-None-Match: *) or has changed (If-Match: its ETag); 409
# when another such write is under way.
_S3_EXISTS_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_S3_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestLimitExceeded",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        # A conflicting operation on the bucket in progress (409), and a body cut short or damaged on
        # the way (400): sending again succeeds.
        "OperationAborted",
        "IncompleteBody",
        "XAmzContentSHA256Mismatch",
        "BadDigest",
    }
)
_S3_TRANSIENT_STATUS = frozenset({408, 429})
# The bucket or the credentials, not the object: a deployment fault that a credential refresh or a
# fixed setting clears, so retried; dead-lettering would lose good input across the pipeline.
_S3_REFUSED_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "RequestTimeTooSkewed",
        "NoSuchBucket",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
    }
)
_S3_REFUSED_STATUS = frozenset({401, 403})
# Raised by botocore before any request is sent: the credential chain found nothing usable.
_CREDENTIAL_ERRORS = (
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
    TokenRetrievalError,
)
# What an S3Store's refusal tells to check; {uri_from} is where its URI was set (``open_store``'s
# ``uri_from``): a scene library's or a model's bucket was blamed on SKUFORGE_STORE_URI.
_CHECK_DEPLOYMENT = (
    "check the credentials (the boto3 chain: AWS_* variables, profile or role), "
    "the bucket name in {uri_from} and SKUFORGE_S3_ENDPOINT_URL"
)
# These errno values mean the key layout clashes with what is on disk (a file where a
# directory is needed or the reverse): retrying cannot fix it.
_KEY_CONFLICT_ERRNOS = frozenset({errno.EISDIR, errno.ENOTDIR, errno.EEXIST})
# What a key refuses since review 48 (a C1 control, a line or paragraph separator, a bidirectional control)
# and a store wrote before: an object under such a key is still read and deleted (``_check_readable``),
# never written.
# C0 and DEL were refused always, on read too: no object was written under one.
_STORED_BEFORE = re.compile(f"[\x80-\x9f\u2028\u2029{BIDI_CONTROLS}]")
# Reads past an object's stated size go on in chunks of this size, never in one allocation of a size
# an event chose.
_READ_CHUNK_BYTES = 1 << 20


log = logging.getLogger("skuforge.store")


class _ObjectTooLarge(Exception):
    """An object holds more bytes than its reader takes; ``found`` says how many, as far as known."""

    def __init__(self, found: str) -> None:
        super().__init__(found)
        self.found = found


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def _read_within(stream: _Readable, size: int, max_bytes: int) -> bytes:
    """The rest of ``stream``, which the store says holds ``size`` bytes (already ``<= max_bytes``).

    Asks for one byte more than ``size``, so an object that grew since its size was taken is seen; then
    reads on, at most ``max_bytes + 1`` bytes in all, and raises ``_ObjectTooLarge`` past ``max_bytes``.
    """
    data = stream.read(size + 1)
    if len(data) <= size:
        return data
    parts, total = [data], len(data)
    while total <= max_bytes:
        chunk = stream.read(min(_READ_CHUNK_BYTES, max_bytes + 1 - total))
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        total += len(chunk)
    raise _ObjectTooLarge(f"more than {max_bytes} bytes")


def sha256_hex(data: bytes) -> str:
    """Return the lowercase hex sha256 of ``data``, as carried in ``ObjectRef.sha256``."""
    return hashlib.sha256(data).hexdigest()


def digest_key(key: str, sha256: str) -> str:
    """``key`` with the bytes' sha256 in it: ``<key without .png>-<sha256[:16]>.png``. The same bytes
    get the same key, and other bytes never replace bytes a reference (an event, a manifest row)
    already names."""
    return f"{key.removesuffix('.png')}-{sha256[:16]}.png"


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (a file renamed into it) durable; not every platform/filesystem
    can fsync a directory."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise ``ValueError`` with the reason."""
    return _checked_key(key, reading=False)


def _checked_key(key: str, *, reading: bool) -> str:
    """``check_key``; ``reading``: a key a store wrote before review 48 passes (``_STORED_BEFORE``)."""
    _check_path_chars(key, what="key", reading=reading)
    if not key:
        raise ValueError("key is empty")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValueError(f"key is longer than {MAX_KEY_BYTES} bytes")
    segments = key.split("/")
    if any(segment == "" for segment in segments):
        raise ValueError(f"key {key!r} has an empty segment (leading, trailing or doubled '/')")
    if any(segment in (".", "..") for segment in segments):
        raise ValueError(f"key {key!r} has a '.' or '..' segment")
    _check_segment_lengths(segments, what="key")
    if segments[-1].startswith(_TMP_PREFIX):
        raise ValueError(f"key {key!r} uses the reserved prefix {_TMP_PREFIX!r}")
    return key


def _check_prefix(prefix: str) -> str:
    """Listing prefixes are partial keys: empty or ending in '/' is fine, escaping is not."""
    _check_path_chars(prefix, what="prefix")
    *complete, partial = prefix.split("/")
    if "." in complete or ".." in complete or partial == "..":
        raise ValueError(f"prefix {prefix!r} has a '.' or '..' segment")
    if "" in complete:
        raise ValueError(f"prefix {prefix!r} has an empty segment")
    _check_segment_lengths(complete, what="prefix")
    return prefix


def _check_segment_lengths(segments: list[str], *, what: str) -> None:
    for segment in segments:
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise ValueError(
                f"{what} has a segment longer than {MAX_SEGMENT_BYTES} bytes: {segment[:40]!r}..."
            )


def _check_path_chars(value: str, *, what: str, reading: bool = False) -> None:
    if value.startswith("/"):
        raise ValueError(f"{what} {value!r} is absolute")
    if "\\" in value:
        raise ValueError(f"{what} {value!r} contains a backslash")
    # A key is the end of an object's URI in an event, and the contract refuses a control character (C1
    # too), a line separator or a bidi control there: a key holding one was written, and then no event
    # could carry its URI. The contract's own rule; the key is shown as its repr, which escapes them.
    # Read, a key written before that rule is taken: each such character is one character, as a letter
    # is, so a control character after one is still named at its place.
    try:
        check_one_line(_STORED_BEFORE.sub("x", value) if reading else value)
    except ValueError as exc:
        raise ValueError(f"{what} {value!r} {exc}") from None


class ObjectStore(ABC):
    """Put and get objects by key; hand out and accept back ``ObjectRef`` claim checks."""

    #: URI of the store's root, without a trailing '/': ``file:///abs/dir`` or ``s3://bucket/prefix``.
    base_uri: str
    #: Called after every write with its seconds and whether it succeeded (the runtime's metrics).
    on_write: Callable[[float, bool], None] | None = None
    #: The bytes a key may take (``check_room``): S3 counts an S3Store's prefix in its 1024.
    _key_room = MAX_KEY_BYTES

    def note_relative_root(self) -> None:
        """Log, once, where a root given as a relative path resolved to (a ``FileStore``'s); a service
        calls it at start, once its logging is set up. Other stores have no such root: nothing."""
        return

    # Backend hooks; ``key`` is always already checked.
    @abstractmethod
    def _write(self, key: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    def _read(self, key: str) -> bytes: ...

    def _read_at_most(self, key: str, max_bytes: int) -> bytes:
        """The object's bytes, or ``_ObjectTooLarge`` when it holds more than ``max_bytes``.

        Backends override this to refuse by the stored size before reading any of the body; this
        fallback (for stores that only implement ``_read``) reads it whole first.
        """
        data = self._read(key)
        if len(data) > max_bytes:
            raise _ObjectTooLarge(f"{len(data)} bytes")
        return data

    def _read_blocks(self, key: str) -> Iterator[bytes]:
        """The object's bytes in blocks of at most ``_READ_CHUNK_BYTES``, for copying a file of any size.

        Backends override this to read the body as it comes; this fallback (for stores that only
        implement ``_read``) reads it whole first.
        """
        data = self._read(key)
        for start in range(0, len(data), _READ_CHUNK_BYTES):
            yield data[start : start + _READ_CHUNK_BYTES]

    @abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[str]: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    def _modified_at(self, key: str) -> datetime:
        """When the object was last written; backends override it (this fallback knows no time)."""
        raise NotImplementedError(f"{type(self).__name__} does not record when an object was written")

    def _write_new(self, key: str, data: bytes, content_type: str) -> bool:
        """Write only when no object is at ``key``, atomically; backends override it."""
        raise NotImplementedError(f"{type(self).__name__} cannot write an object only if none is there")

    def _read_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and version; backends whose version is not the sha256 override it."""
        data = self._read(key)
        return data, sha256_hex(data)

    def _replace_if(self, key: str, data: bytes, version: str, content_type: str) -> bool:
        """Replace the object only while it is ``version``, atomically; backends override it."""
        raise NotImplementedError(f"{type(self).__name__} cannot replace an object only if it is unchanged")

    def _delete_if(self, key: str, version: str) -> bool:
        """Delete the object only while it is ``version``, atomically; backends override it."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete an object only if it is unchanged")

    def _holds(self, key: str, data: bytes) -> bool:
        """Whether the object is ``data``, told without fetching it; backends override it (this
        fallback cannot tell, so the caller writes)."""
        return False

    def check_room(self, key: str) -> str:
        """``check_key(key)``, and ``BadInput('key_too_long')`` for a key longer than this store takes
        (an S3Store's prefix counts in S3's 1024 bytes), told before anything is sent.

        A key a stage builds from an event's ids: sent, S3 answered KeyTooLongError, taken for the
        deployment's fault and retried for ever. Refused as the event's, it is dead-lettered with this
        reason, to replay (``--reason key_too_long``) once a shorter prefix leaves it room. A stage that
        writes several objects checks every key first, so that none is written for a refused event.
        """
        self._check_key_size(key)
        return check_key(key)

    def _check_readable(self, key: str) -> str:
        """``check_room`` of a key to read or delete: one a store wrote before review 48 refused a character
        (``_STORED_BEFORE``) is taken. Refused on read too, a record stored before (a console task, a
        series request) named an object no reader could show or train on, though its bytes are there.
        Safe to read: every message of this store names the key's URI escaped (``_uri_shown``), its
        repr in a refusal; deleting one writes nothing under it. What it lists (``list_addressable``) and
        writes still refuses it."""
        self._check_key_size(key)
        return _checked_key(key, reading=True)

    def _check_key_size(self, key: str) -> None:
        """``BadInput('key_too_long')`` for a key longer than this store takes (``check_room``)."""
        if (size := len(key.encode("utf-8"))) > self._key_room:
            # Its end names the object (the prefixes are its start), and a letter's detail is bounded.
            # Escaped: told before the key's characters are checked, a U+202E or an ESC in it reached a
            # dead letter, a log line or a terminal as itself.
            with_prefix = f" ({MAX_KEY_BYTES} with its prefix)" if self._key_room < MAX_KEY_BYTES else ""
            shown = escape_control_characters(f"{key[:40]}...{key[-100:]}")
            raise BadInput(
                "key_too_long",
                f"key {shown} is {size} bytes; {self.base_uri}/ leaves keys "
                f"{self._key_room}{with_prefix}: shorten the prefix or the ids",
            )

    def _uri_shown(self, key: str) -> str:
        """The URI of ``key`` (checked) as a message names it: escaped (``\\u202e``), as a key read
        though written before review 48 may hold a character that reorders or ends a line."""
        return escape_control_characters(f"{self.base_uri}/{key}")

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectRef:
        """Store ``data`` under ``key`` (replacing any previous object) and return its reference."""
        self.check_room(key)
        started = time.perf_counter()
        try:
            self._write(key, data, content_type)
        except BaseException:
            if self.on_write is not None:
                self.on_write(time.perf_counter() - started, False)
            raise
        if self.on_write is not None:
            self.on_write(time.perf_counter() - started, True)
        return ObjectRef(uri=self.uri_for(key), sha256=sha256_hex(data), bytes=len(data))

    def put_new(self, key: str, data: bytes, content_type: str = "application/json") -> bool:
        """Store ``data`` under ``key`` only when no object is there; False when one is. Of writers
        racing for one key, exactly one gets True (a lock: ``shared/dlq.py``)."""
        return self._write_new(self.check_room(key), data, content_type)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The bytes under ``key`` and their version (S3's ETag; a FileStore's sha256): what
        ``replace_if`` and ``delete_if`` compare with. ``ObjectMissing`` when there is none."""
        return self._read_versioned(self._check_readable(key))

    def replace_if(self, key: str, data: bytes, version: str, content_type: str = "application/json") -> bool:
        """Store ``data`` under ``key`` only while the object there is still ``version`` (as
        ``get_versioned`` read it); False when it was replaced or removed since. A compare-and-swap: of
        writers racing to replace one version, at most one gets True (the replay lock's takeover)."""
        return self._replace_if(self.check_room(key), data, version, content_type)

    def delete_if(self, key: str, version: str) -> bool:
        """Remove the object under ``key`` only while it is still ``version``; False when it was
        replaced or removed since (a lock released by its holder, never the one that took it over). A key
        written before review 48 is taken, as by ``delete``."""
        return self._delete_if(self._check_readable(key), version)

    def put_image(
        self, key: str, image: Image.Image | npt.NDArray[Any], *, digest_in_key: bool = False
    ) -> ImageRef:
        """Encode ``image`` as deterministic PNG, store it under ``key`` and return its ``ImageRef``.

        ``digest_in_key``: store it under ``digest_key(key, ...)`` instead, so the same pixels get the
        same key and other pixels never replace bytes an event already names.
        """
        if isinstance(image, np.ndarray):
            height, width = int(image.shape[0]), int(image.shape[1])
        else:
            width, height = image.size
        return self.put_png(key, encode_png(image), width, height, digest_in_key=digest_in_key)

    def put_png(
        self, key: str, data: bytes, width: int, height: int, *, digest_in_key: bool = False
    ) -> ImageRef:
        """``put_image`` of a PNG already encoded (``encode_png``) of ``width`` x ``height``: a caller
        that checks the PNG's size before storing it encodes it once."""
        if digest_in_key:
            key = digest_key(key, sha256_hex(data))
        ref = self.put_bytes(key, data, "image/png")
        return ImageRef(
            uri=ref.uri,
            sha256=ref.sha256,
            bytes=ref.bytes,
            width=width,
            height=height,
            media_type="image/png",
        )

    def put_json(self, key: str, obj: Any) -> ObjectRef:
        """Store ``obj`` (JSON-able data or a pydantic model) as canonical UTF-8 JSON under ``key``.

        Keys are sorted and separators compact so the same value always gives the same sha256.
        """
        if isinstance(obj, BaseModel):
            obj = obj.model_dump(mode="json")
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return self.put_bytes(key, text.encode("utf-8"), "application/json")

    def get_bytes(self, uri_or_key: str) -> bytes:
        """Return the bytes stored at a URI of this store or at a key (no verification)."""
        return self._read(self._to_key(uri_or_key))

    def get_bytes_at_most(self, uri_or_key: str, max_bytes: int) -> bytes:
        """``get_bytes``, or ``refuse_oversized``'s refusal (``ImageRejected('too_large_bytes')``) of
        an object of more than ``max_bytes``: refused by its stored size before its body is read (a
        file's size, S3's ContentLength), so a huge object costs no memory."""
        try:
            return self._read_at_most(self._to_key(uri_or_key), max_bytes)
        except _ObjectTooLarge as exc:
            raise too_large_bytes(exc.found, max_bytes) from None

    def iter_bytes(self, uri_or_key: str) -> Iterator[bytes]:
        """The bytes stored at a URI of this store or at a key, in blocks of at most 1 MiB (no
        verification): a model file of gigabytes is copied without holding it in memory."""
        return self._read_blocks(self._to_key(uri_or_key))

    def read_verified(self, ref: ObjectRef) -> bytes:
        """Fetch the object ``ref`` points at and check its size and sha256.

        Raises ``BadInput('foreign_uri')`` for a URI outside this store, ``ObjectMissing``
        when nothing is there and ``ChecksumMismatch`` when the bytes differ from the reference.
        An object larger than ``ref.bytes`` is refused by its size, before its bytes are read.
        """
        key = self._key_of(ref.uri, reading=True)
        try:
            data = self._read_at_most(key, ref.bytes)
        except _ObjectTooLarge as exc:
            raise ChecksumMismatch(
                self._uri_shown(key), f"{ref.sha256} ({ref.bytes} bytes)", exc.found
            ) from None
        actual = sha256_hex(data)
        if actual != ref.sha256 or len(data) != ref.bytes:
            raise ChecksumMismatch(
                self._uri_shown(key), f"{ref.sha256} ({ref.bytes} bytes)", f"{actual} ({len(data)} bytes)"
            )
        return data

    def read_checked(self, uri_or_key: str, sha256: str) -> bytes:
        """The object at a URI of this store or at a key, ``ChecksumMismatch`` unless its sha256 is
        ``sha256`` (for references that record a hash but not a size; else ``read_verified``)."""
        key = self._to_key(uri_or_key)
        data = self._read(key)
        actual = sha256_hex(data)
        if actual != sha256:
            raise ChecksumMismatch(self._uri_shown(key), sha256, actual)
        return data

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        return self._exists(self._check_readable(key))

    def holds(self, key: str, data: bytes) -> bool:
        """Whether the object under ``key`` is known to be ``data``, checked by its size and a checksum
        without downloading it (a FileStore hashes its file; an S3Store compares the HEAD's size and
        ETag); False when there is none, or when the store cannot tell. A writer of large content-named
        objects skips writing what is there whole (``AdapterRegistry.register``)."""
        return self._holds(self.check_room(key), data)  # asked before a write: a key to write

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Yield, in lexicographic order, every key that starts with ``prefix`` (a plain string prefix)."""
        return self._list(_check_prefix(prefix))

    def list_addressable(self, prefix: str = "") -> Iterator[str]:
        """``list_keys`` less the keys this store cannot read or delete, each logged as a warning.

        A shared bucket may hold foreign objects ``check_key`` refuses (``a//b``, ``./x``, a backslash,
        a control character or a bidi control; a folder's file may be named so too): listed, reading one
        raised a ValueError that stopped every caller that reads what it lists. A caller that names such
        keys itself (the scene library) lists them with ``list_keys``.
        """
        for key in self.list_keys(prefix):
            try:
                yield check_key(key)
            except ValueError as exc:
                log.warning("%s/%r left out: the store cannot address it (%s)", self.base_uri, key, exc)

    def delete(self, key: str) -> None:
        """Remove the object under ``key``; deleting a missing object is not an error. A key a store wrote
        before review 48 (``_check_readable``) is taken: deleting writes nothing under it and removes the
        name, and a stage deleting what no row names (a replaced render) no longer fails on one."""
        self._delete(self._check_readable(key))

    def modified_at(self, key: str) -> datetime:
        """When the object under ``key`` was last written, by the store's own clock (S3's
        LastModified, a file's modification time), in UTC; ``ObjectMissing`` when there is none.
        Two objects' times compare on one clock, which the clock of the process asking may not be."""
        return self._modified_at(self._check_readable(key))

    def uri_for(self, key: str) -> str:
        """The URI events carry for ``key``."""
        return f"{self.base_uri}/{check_key(key)}"

    def key_for(self, uri: str) -> str:
        """The key behind a URI of this store.

        URIs arrive in events, so problems are the input's fault: ``BadInput('foreign_uri')``
        for a URI outside this store, ``BadInput('unsafe_key')`` for one that tries to escape or whose
        key is too long for the store (an S3Store's prefix counts in S3's 1024 bytes).
        """
        return self._key_of(uri, reading=False)

    def _key_of(self, uri: str, *, reading: bool) -> str:
        """``key_for``; ``reading``: a key written before review 48 is taken (``_check_readable``)."""
        root = self.base_uri + "/"
        if not uri.startswith(root):
            raise BadInput("foreign_uri", f"{uri!r} is not inside this store ({root})")
        try:
            key = _checked_key(uri[len(root) :], reading=reading)
        except ValueError as exc:
            raise BadInput("unsafe_key", str(exc)) from exc
        # Sent, S3 answered KeyTooLongError, a 400 the store cannot tell from a deployment's fault: the
        # stage retried the event for ever.
        if len(key.encode("utf-8")) > self._key_room:
            raise BadInput(
                "unsafe_key",
                f"key is longer than the {self._key_room} bytes S3 takes under {self.base_uri}/ "
                f"({MAX_KEY_BYTES} with the prefix)",
            )
        return key

    def _to_key(self, uri_or_key: str) -> str:
        """The key to read at a URI of this store or a key (``_check_readable``)."""
        # A checked key never contains "://" (that would be an empty segment), so this is unambiguous.
        if "://" in uri_or_key:
            return self._key_of(uri_or_key, reading=True)
        return self._check_readable(uri_or_key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_uri!r})"


def _replace(tmp_name: str, path: Path) -> bool:
    os.replace(tmp_name, path)
    return True


def _link_new(tmp_name: str, path: Path) -> bool:
    """Link ``tmp_name`` at ``path`` unless something is there: link(), unlike replace(), fails when the
    name exists, so an object is created whole or not at all (``put_new``)."""
    try:
        os.link(tmp_name, path)
    except FileExistsError:
        return False
    return True


class FileStore(ObjectStore):
    """Objects as files under ``root``; URIs are ``file://`` + the absolute root path + '/' + key.

    Writes go to a temporary file in the target directory, are fsynced and then renamed over
    the target, so readers and crashes only ever see a whole old or a whole new object.
    A missing file is ``ObjectMissing``, and so is one that is no regular file (a folder, a named
    pipe, which is refused unopened rather than waited on); any other OS failure (full disk, I/O error,
    permissions, a vanished mount) is ``TransientError``: it is the machine's fault, never
    the input's, and an operator can fix it while the runtime retries. The exception is a
    key that clashes with the layout on disk (a file where a directory is needed or the
    reverse): ``BadInput('key_conflict')``, since no retry can fix it.
    """

    def __init__(self, root: Path | str) -> None:
        # abspath, not resolve: URIs must keep the configured path even when it is a symlink,
        # or services that mount the same volume elsewhere would see each other's URIs as foreign.
        self.root = Path(os.path.abspath(root))
        self._real_root = os.path.realpath(self.root)
        self.base_uri = "file://" + self.root.as_posix().rstrip("/")
        # The root as given where it was relative (the default file://./var/store), for
        # ``note_relative_root``: a root resolved against the working directory, said once.
        self.relative_root = None if Path(root).is_absolute() else str(root)
        self._relative_root_noted = False

    def note_relative_root(self) -> None:
        """Log, once, the root this store resolved a relative path to: two services started in different
        folders with the same relative setting wrote under two roots (each event's URIs naming its own),
        and nothing said where either was."""
        if self.relative_root is None or self._relative_root_noted:
            return
        self._relative_root_noted = True
        log.info(
            "object store root %s is relative: resolved against the working directory, it is %s; a "
            "service started in another folder uses another root (give an absolute path to share one)",
            self.relative_root,
            self.base_uri,
            extra={"store": self.base_uri},
        )

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*key.split("/"))
        # Key checks stop '..'; this stops a symlink inside the store pointing outside it.
        if not self._inside(str(path)):
            raise BadInput("unsafe_key", f"{key!r} resolves outside the store root")
        return path

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        self._place(key, data, _replace)

    def _write_new(self, key: str, data: bytes, content_type: str) -> bool:
        return self._place(key, data, _link_new)

    def _replace_if(self, key: str, data: bytes, version: str, content_type: str) -> bool:
        with self._compare_and_swap(key):
            return self._current_version(key) == version and self._place(key, data, _replace)

    def _delete_if(self, key: str, version: str) -> bool:
        with self._compare_and_swap(key):
            if self._current_version(key) != version:
                return False
            self._delete(key)
            return True

    def _holds(self, key: str, data: bytes) -> bool:
        try:
            with self._mapped_read_errors(key), self._open_object(key) as handle:
                if os.fstat(handle.fileno()).st_size != len(data):
                    return False
                digest = hashlib.sha256()
                for block in iter(lambda: handle.read(_READ_CHUNK_BYTES), b""):
                    digest.update(block)
        except ObjectMissing:
            return False
        return digest.hexdigest() == sha256_hex(data)

    def _current_version(self, key: str) -> str | None:
        try:
            return self._read_versioned(key)[1]
        except ObjectMissing:
            return None

    @contextlib.contextmanager
    def _compare_and_swap(self, key: str) -> Iterator[None]:
        """Hold ``key``'s compare-and-swap lock, an exclusive ``flock`` on a hidden file beside it: the
        ``replace_if`` and ``delete_if`` of one key run one at a time, so none changes the object between
        another's compare and its swap. ``put_new`` needs none: its link fails while an object is there,
        and a swap never leaves the name empty (a rename over it).

        The guard stays, one empty file per key ever swapped (a lock's), hidden from every listing:
        removed, a process that opened it before the removal would lock the removed file while the next
        locks a new one under its name, two swaps at once (only were every process, older versions too,
        to check after locking that the name is still its file would that be safe), and on NFS a file
        removed while open is renamed ``.nfs*``, which listings would name."""
        path = self._path(key)
        # Hashed: the key's own name may already be the longest a folder takes.
        guard = path.parent / f"{_TMP_PREFIX}cas-{hashlib.sha256(path.name.encode()).hexdigest()[:32]}"
        cannot_lock = f"cannot lock {self._uri_shown(key)} to compare and swap it"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(guard, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise TransientError(f"{cannot_lock}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            # ENOLCK: an NFS mount without its lock daemon. A bare OSError went past the callers that
            # handle this store's errors (the DLQ replay lock's takeover and release: a traceback).
            os.close(fd)
            raise TransientError(f"{cannot_lock}: {exc}") from exc
        try:
            yield
        finally:
            os.close(fd)  # which releases the flock

    def _place(self, key: str, data: bytes, put: Callable[[str, Path], bool]) -> bool:
        """Write ``data`` whole to a temporary file beside ``key``'s path, and ``put`` it at that path
        (``_replace``; ``_link_new``, which leaves an object already there and says False)."""
        uri = self.uri_for(key)
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                # mkstemp makes 0600 files; other services (other users) read these objects.
                os.chmod(tmp_name, 0o644)
                placed = put(tmp_name, path)
            finally:
                with contextlib.suppress(OSError):  # gone once replaced; left by a link
                    os.unlink(tmp_name)
            fsync_dir(path.parent)
        except OSError as exc:
            if exc.errno in _KEY_CONFLICT_ERRNOS:
                raise BadInput("key_conflict", f"cannot write {uri}: {exc}") from exc
            raise TransientError(f"cannot write {uri}: {exc}") from exc
        return placed

    def _read(self, key: str) -> bytes:
        with self._mapped_read_errors(key), self._open_object(key) as handle:
            return handle.read()

    def _read_at_most(self, key: str, max_bytes: int) -> bytes:
        with self._mapped_read_errors(key), self._open_object(key) as handle:
            # The size of the file opened, not of whatever the name points at a moment later.
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise _ObjectTooLarge(f"{size} bytes")
            return _read_within(handle, size, max_bytes)

    def _read_blocks(self, key: str) -> Iterator[bytes]:
        with self._mapped_read_errors(key), self._open_object(key) as handle:
            yield from iter(lambda: handle.read(_READ_CHUNK_BYTES), b"")

    def _open_object(self, key: str) -> BinaryIO:
        """The regular file under ``key``, opened to be read; anything else there is no object.

        Opened without waiting: a named pipe under the root, opened as usual, waits for a writer
        that may never come, and its reader (a stage, a scene load) hung on it for good. A socket
        is not opened at all (ENXIO): no object either, not an outage for a stage to retry.
        """
        not_regular = "not a regular file (a pipe, socket or device)"
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a socket (or a device with no driver) is never opened
                raise ObjectMissing(self._uri_shown(key), not_regular) from exc
            if exc.errno == errno.ELOOP:
                # A link loop never resolves (``_exists`` says no object): as an outage, a stage
                # retried the event for good and its partition stalled behind it.
                raise ObjectMissing(self._uri_shown(key), os.strerror(exc.errno)) from exc
            raise
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise ObjectMissing(self._uri_shown(key), "a folder, not a file")
            if not stat.S_ISREG(mode):
                raise ObjectMissing(self._uri_shown(key), not_regular)
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    @contextlib.contextmanager
    def _mapped_read_errors(self, key: str) -> Iterator[None]:
        uri = self._uri_shown(key)
        try:
            yield
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectMissing(uri) from exc
        except OSError as exc:
            raise TransientError(f"cannot read {uri}: {exc}") from exc

    def _exists(self, key: str) -> bool:
        path = self._path(key)
        try:
            return stat.S_ISREG(path.stat().st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a link loop is no object (is_file() said False), not an outage
                return False
            # is_file() raised EACCES, EIO or ESTALE (NFS) bare, where every other call of this store
            # says TransientError: a stage dead-lettered good events as handler errors over it.
            raise TransientError(f"cannot look up {self._uri_shown(key)}: {exc}") from exc

    def _list(self, prefix: str) -> Iterator[str]:
        """Every key under the root, except below a symlinked folder.

        A symlinked folder below the root is neither listed nor walked (the root itself is listed as
        configured, symlink or not): reads refuse what such a link leads to outside the store, and
        one leading inside names objects already listed, or loops. A listing with a prefix is the
        whole listing cut to that prefix, as on S3. Any other name is listed, symlinks to files
        included, and reading it decides (a link out of the store is refused there as unsafe_key).
        """
        directory, _, _ = prefix.rpartition("/")
        parts = directory.split("/") if directory else []
        start = self.root.joinpath(*parts)
        if os.path.realpath(start) != os.path.join(self._real_root, *parts):
            return  # the prefix's folder is reached through a symlink
        keys: list[str] = []
        folders = [(start, directory)]
        while folders:
            folder, relative = folders.pop()
            try:
                with os.scandir(folder) as scan:
                    entries = list(scan)
            except (FileNotFoundError, NotADirectoryError):
                continue  # no such prefix, or removed while listed
            except OSError as exc:
                raise TransientError(f"cannot list {self.base_uri}/{prefix}: {exc}") from exc
            for entry in entries:
                key = f"{relative}/{entry.name}" if relative else entry.name
                # A folder whose key does not start with the prefix holds no key that does.
                if not key.startswith(prefix) or entry.name.startswith(_TMP_PREFIX):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    folders.append((Path(entry.path), key))
                elif not (entry.is_symlink() and os.path.isdir(entry.path)):
                    keys.append(key)
        # Sorted like S3 lists (by code point), not in directory-walk order.
        yield from sorted(keys)

    def _modified_at(self, key: str) -> datetime:
        with self._mapped_read_errors(key):
            return datetime.fromtimestamp(self._path(key).stat().st_mtime, UTC)

    def _inside(self, path: str) -> bool:
        """Whether ``path``, symlinks resolved, is under the store's root."""
        real = os.path.realpath(path)
        return os.path.commonpath([real, self._real_root]) == self._real_root

    def _delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except (IsADirectoryError, NotADirectoryError):
            return
        except OSError as exc:
            raise TransientError(f"cannot delete {self._uri_shown(key)}: {exc}") from exc


class S3Store(ObjectStore):
    """Objects in an S3 bucket under an optional prefix; works with any S3-compatible endpoint.

    Error mapping: a missing key is ``ObjectMissing``; connection failures, timeouts,
    throttling and 5xx answers are ``TransientError`` (after botocore's own standard-mode
    retries). Access denied, a missing bucket, and missing, bad or expired credentials are
    ``StoreMisconfigured`` (a ``TransientError`` whose message says what to check): the
    deployment's fault, so the partition pauses and retries, and no good input is dead-lettered.
    Those messages name ``uri_from``, where the bucket and prefix were set (as ``open_store``'s), and
    ``writes`` is ``open_store``'s.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        client: S3Client | None = None,
        *,
        uri_from: str,
        writes: bool = True,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 5,
    ) -> None:
        prefix = s3_location(bucket, prefix, writes=writes)
        self.bucket = bucket
        self._uri_from = uri_from
        self._check_deployment = _CHECK_DEPLOYMENT.format(uri_from=uri_from)
        self.prefix = prefix
        self._key_prefix = f"{prefix}/" if prefix else ""
        self._key_room = MAX_KEY_BYTES - len(self._key_prefix.encode("utf-8"))
        self.base_uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        if client is None:
            config = Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": max_attempts, "mode": "standard"},
                # Custom endpoints (MinIO, Ceph, moto, IP addresses) rarely do virtual-host buckets.
                s3={"addressing_style": "path" if endpoint_url else "auto"},
                # Only send/check the newer CRC checksums when S3 requires them: many
                # S3-compatible servers reject them, and read_verified checks sha256 anyway.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self.client: S3Client = client

    def _mapped_key_errors(self, key: str) -> contextlib.AbstractContextManager[None]:
        """``_mapped_errors`` of a call on ``key``: its URI named escaped (``_uri_shown``), its bytes
        counted as sent."""
        return self._mapped_errors(self._uri_shown(key), key=key)

    @contextlib.contextmanager
    def _mapped_errors(self, uri: str, *, key: str | None = None) -> Iterator[None]:
        """S3's answers as this store's errors, naming ``uri``; ``key``: the key the call sent, whose
        bytes a KeyTooLongError counts (else the end of ``uri``, which may be escaped)."""
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in _S3_REFUSED_CODES or status in _S3_REFUSED_STATUS:
                raise StoreMisconfigured(
                    f"S3 refused {uri}: {code or status} (HTTP {status}); {self._check_deployment}"
                ) from exc
            if code in _S3_MISSING_CODES or status == 404:
                raise ObjectMissing(uri) from exc
            if status >= 500 or status in _S3_TRANSIENT_STATUS or code in _S3_TRANSIENT_CODES:
                raise TransientError(
                    f"S3 answered {code or status} for {uri} (from {self._uri_from})"
                ) from exc
            if code in _S3_EXISTS_CODES:
                raise  # a conditional write's condition failed: ``_conditional`` says so
            if code == "KeyTooLongError":
                # Every key past S3's 1024 with the prefix is refused unsent (``check_room``): this is a
                # server that takes fewer, the deployment's, retried. Told as an answer the store does not
                # know, it sent an operator to check conditional writes.
                # Counted from the key sent: the URI named is escaped ("\\u202e", six characters for three
                # bytes) when a key written before review 48 is read.
                sent = self._key_prefix + (uri.removeprefix(self.base_uri + "/") if key is None else key)
                raise StoreMisconfigured(
                    f"S3 refused {uri}: KeyTooLongError, its key is {len(sent.encode('utf-8'))} bytes with "
                    f"the prefix {self._key_prefix!r}, past the {MAX_KEY_BYTES} S3 takes; the prefix in "
                    f"{self._uri_from} leaves keys {self._key_room} bytes"
                ) from exc
            # Raised bare, a caller other than the replay lock got a botocore traceback: a 400 of an
            # S3-compatible server that takes no conditional headers. The deployment's, never the input's:
            # an input's key too long is refused unsent (key_for), and the other 400s, an archived object
            # (InvalidObjectState), a body over a proxy's limit (EntityTooLarge), a header or argument the
            # server does not take (InvalidArgument, InvalidRequest), clear once the deployment is fixed.
            raise StoreMisconfigured(
                f"S3 refused {uri}: {code or status} (HTTP {status}: {error.get('Message', '')}), an answer "
                "this store does not know; check that the server at SKUFORGE_S3_ENDPOINT_URL is an S3 this "
                f"store works with (conditional writes: If-None-Match, If-Match) and the bucket name in "
                f"{self._uri_from}"
            ) from exc
        except _CREDENTIAL_ERRORS as exc:
            raise StoreMisconfigured(
                f"no usable S3 credentials for {uri}: {exc}; {self._check_deployment}"
            ) from exc
        except (BotoConnectionError, HTTPClientError, IncompleteReadError) as exc:
            # Where the URI came from, for the endpoint or bucket to check: not always SKUFORGE_STORE_URI.
            raise TransientError(f"S3 unreachable for {uri} (from {self._uri_from}): {exc}") from exc

    def _write(self, key: str, data: bytes, content_type: str) -> None:
        with self._mapped_key_errors(key):
            self.client.put_object(
                Bucket=self.bucket, Key=self._key_prefix + key, Body=data, ContentType=content_type
            )

    def _write_new(self, key: str, data: bytes, content_type: str) -> bool:
        return self._conditional(
            key,
            lambda: self.client.put_object(
                Bucket=self.bucket,
                Key=self._key_prefix + key,
                Body=data,
                ContentType=content_type,
                IfNoneMatch="*",  # S3's conditional write: 412 when the key exists
            ),
        )

    def _read(self, key: str) -> bytes:
        return self._read_versioned(key)[0]

    def _read_versioned(self, key: str) -> tuple[bytes, str]:
        with self._mapped_key_errors(key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._key_prefix + key)
            body = response["Body"]
            try:
                return body.read(), response["ETag"]
            finally:
                body.close()

    def _replace_if(self, key: str, data: bytes, version: str, content_type: str) -> bool:
        return self._conditional(
            key,
            lambda: self.client.put_object(
                Bucket=self.bucket,
                Key=self._key_prefix + key,
                Body=data,
                ContentType=content_type,
                IfMatch=version,
            ),
        )

    def _delete_if(self, key: str, version: str) -> bool:
        return self._conditional(
            key,
            lambda: self.client.delete_object(
                Bucket=self.bucket, Key=self._key_prefix + key, IfMatch=version
            ),
        )

    def _conditional(self, key: str, request: Callable[[], object]) -> bool:
        """``request``, a conditional write (If-None-Match: *, or If-Match: the ETag read): False when S3
        answers that its condition failed (412: the object is there, or changed), that the object is gone
        (404, If-Match), or that another conditional write to it is under way (409)."""
        try:
            with self._mapped_key_errors(key):
                request()
        except ObjectMissing:
            return False
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _S3_EXISTS_CODES:
                return False
            raise
        return True

    def _read_at_most(self, key: str, max_bytes: int) -> bytes:
        with self._mapped_key_errors(key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._key_prefix + key)
            body = response["Body"]
            try:
                size = response.get("ContentLength", 0)  # absent: unknown, read up to max_bytes + 1
                if size > max_bytes:
                    # Refused unread: closing the body drops its connection instead of downloading it.
                    raise _ObjectTooLarge(f"{size} bytes")
                return _read_within(body, size, max_bytes)
            finally:
                body.close()

    def _read_blocks(self, key: str) -> Iterator[bytes]:
        with self._mapped_key_errors(key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key_prefix + key)["Body"]
            try:
                yield from body.iter_chunks(_READ_CHUNK_BYTES)
            finally:
                body.close()

    def _exists(self, key: str) -> bool:
        try:
            with self._mapped_key_errors(key):
                self.client.head_object(Bucket=self.bucket, Key=self._key_prefix + key)
        except ObjectMissing:
            return False
        return True

    def _holds(self, key: str, data: bytes) -> bool:
        """By the HEAD's size and ETag, S3's MD5 of the bytes it stored from one ``put_object`` (as this
        store writes). The ETag of a multipart upload or an object encrypted with KMS or a customer's key
        is no MD5: such an object is not known to hold ``data``, and is written again."""
        try:
            with self._mapped_key_errors(key):
                head = self.client.head_object(Bucket=self.bucket, Key=self._key_prefix + key)
        except ObjectMissing:
            return False
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        return head.get("ContentLength") == len(data) and head.get("ETag", "").strip('"') == md5

    def _list(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        with self._mapped_errors(f"{self.base_uri}/{prefix}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key_prefix + prefix):
                for item in page.get("Contents", []):
                    key = item.get("Key", "")[len(self._key_prefix) :]
                    # "dir/" placeholder objects made by consoles are not objects to us.
                    if key and not key.endswith("/"):
                        yield key

    def _delete(self, key: str) -> None:
        with self._mapped_key_errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key_prefix + key)

    def _modified_at(self, key: str) -> datetime:
        with self._mapped_key_errors(key):
            head = self.client.head_object(Bucket=self.bucket, Key=self._key_prefix + key)
        return head["LastModified"].astimezone(UTC)


def open_store(
    uri: str,
    *,
    uri_from: str,
    s3_endpoint_url: str | None = None,
    s3_region: str = "us-east-1",
    writes: bool = True,
) -> ObjectStore:
    """Open the store a URI names.

    ``file:///abs/dir``, ``file://./rel/dir`` or ``file://rel/dir`` (relative to the current
    directory) and plain paths give a ``FileStore``; ``s3://bucket`` or ``s3://bucket/prefix``
    gives an ``S3Store`` at ``s3_endpoint_url`` (``None``: AWS). Other schemes raise ``ValueError``.
    ``uri_from`` is where ``uri`` was set (a setting, an option): what an S3 refusal says to check. No
    default: SKUFORGE_STORE_URI's was blamed for the refusals of stores it never named. A ``ValueError``
    names it too: not every URI opened is a setting checked at start-up (``<SKUFORGE_STORE_URI>/adapters``).
    ``writes=False`` opens a store only read (a model's folder): its S3 prefix need not leave the flow's
    keys ``MIN_KEY_ROOM_BYTES``, as the keys read are in S3 already (a folder of over 511 bytes was refused).
    """
    try:
        scheme, rest = check_store_uri(uri, writes=writes)
    except ValueError as exc:
        raise ValueError(f"{exc} (from {uri_from})") from None
    if scheme == "":
        return FileStore(Path(uri))
    if scheme == "file":
        return FileStore(Path(rest))
    bucket, _, prefix = rest.partition("/")
    return S3Store(
        bucket, prefix, endpoint_url=s3_endpoint_url, region=s3_region, uri_from=uri_from, writes=writes
    )


def open_settings_store(settings: Settings) -> ObjectStore:
    """The store SKUFORGE_STORE_URI names, at the settings' S3 endpoint and region: what the stages, the
    commands and the console read and write."""
    return open_store(
        settings.store_uri,
        s3_endpoint_url=settings.s3_endpoint_url,
        s3_region=settings.s3_region,
        uri_from="SKUFORGE_STORE_URI",
    )


def s3_location(bucket: str, prefix: str, *, writes: bool = True) -> str:
    """``prefix`` without its outer '/', once ``bucket`` is a valid S3 bucket name and the prefix a
    safe key (or empty) that leaves keys ``MIN_KEY_ROOM_BYTES`` (unless the store is only read: not
    ``writes``); ``ValueError`` saying which is not."""
    if not _BUCKET_NAME.fullmatch(bucket):
        raise ValueError(f"invalid S3 bucket name {bucket!r}")
    prefix = prefix.strip("/")
    if not prefix:
        return prefix
    if writes and (size := len(prefix.encode("utf-8")) + 1) > MAX_KEY_BYTES - MIN_KEY_ROOM_BYTES:
        raise ValueError(
            f"prefix is {size} bytes with its '/'; S3 takes {MAX_KEY_BYTES} for a prefix and a key "
            f"together, and the flow's keys need {MIN_KEY_ROOM_BYTES} of them: at most "
            f"{MAX_KEY_BYTES - MIN_KEY_ROOM_BYTES}"
        )
    return check_key(prefix)


# What starts a URI's scheme (RFC 3986: a letter, then letters, digits, '+', '-', '.'), and its colon.
_SCHEME_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def check_store_uri(uri: str, *, writes: bool = True, what: str = "object-store") -> tuple[str, str]:
    """(scheme, the path or bucket/prefix) of an object-store URI (scheme "" for a plain path), or
    ``ValueError`` saying
    what is wrong with it: what ``open_store`` accepts, checked without opening anything (settings
    check their URIs with it at start-up); ``writes`` is ``open_store``'s. ``what`` is what the text
    names, for its refusals ("model": "model path contains ...")."""
    # Called what was given: a model file's path was refused as an "object-store URI".
    given = f"{what} {'URI' if '://' in uri else 'path'}"
    if not uri:
        raise ValueError(f"{what} URI is empty")
    # Every object's uri in an event is this root and a key, and the contract refuses a control character,
    # a line separator or a bidi control there: a root holding one passed start-up, and then every event
    # the stage built was refused, one by one. The character is named, not echoed.
    try:
        check_one_line(uri)
    except ValueError as exc:
        raise ValueError(f"{given} {exc}") from None
    if "://" not in uri:
        # "s3:/bucket" or "file:/data/store" (a '/' short) read as a folder of that name: each stage wrote
        # its own local copy, and on separate machines the next stage found none of the objects.
        if _SCHEME_LIKE.match(uri):
            raise ValueError(
                f"{uri!r} is no URI: a scheme takes '://' (s3://bucket/prefix, file:///data/store); "
                f"for a local folder so named, write ./{uri}"
            )
        return "", uri
    scheme, _, rest = uri.partition("://")
    scheme = scheme.lower()
    if scheme == "file":
        if rest.startswith("localhost/"):
            rest = rest[len("localhost") :]
        if not rest:
            raise ValueError(f"file URI {uri!r} names no directory")
        return scheme, rest
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ValueError(f"s3 URI {uri!r} names no bucket")
        try:
            s3_location(bucket, prefix, writes=writes)  # what S3Store refuses, said at start-up
        except ValueError as exc:
            raise ValueError(f"s3 URI {uri!r}: {exc}") from None
        return scheme, rest
    raise ValueError(
        f"unsupported object-store scheme {scheme!r} in {uri!r}; accepted: file://, s3:// or a plain path"
    )
