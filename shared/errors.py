"""The two kinds of failure a stage can meet, and how the runtime treats them.

``BadInput`` is the input's fault: retrying cannot help, so the message goes to the
dead-letter topic with the reason and the stream goes on. ``TransientError`` is the
world's fault (broker, object store, model server): the runtime backs off and retries,
pausing the partition, and commits nothing for that message meanwhile.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class BadInput(Exception):
    """The input can never be processed; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its message and attributes, not by calling __init__ with the message: the
        # subclasses take other arguments (a ChecksumMismatch did not rebuild; pickle and copy alike).
        return _rebuilt, (type(self), self.args), self.__dict__


def _rebuilt(kind: type[BadInput], args: tuple[Any, ...]) -> BadInput:
    """A ``kind`` with ``args`` and no attributes yet (``BadInput.__reduce__`` sets them)."""
    return kind.__new__(kind, *args)


class ObjectMissing(BadInput):
    """An object the event points at does not exist; ``why`` says what is there instead, if anything."""

    why = ""  # a subclass with its own detail may not call this __init__

    def __init__(self, uri: str, why: str = "") -> None:
        super().__init__("object_missing", f"no object at {uri}: {why}" if why else f"no object at {uri}")
        self.why = why


class ChecksumMismatch(BadInput):
    """The stored bytes do not match the sha256 the event carries; ``why`` says what to do, if known."""

    def __init__(self, uri: str, expected: str, actual: str, why: str = "") -> None:
        found = f"{uri}: expected sha256 {expected}, found {actual}"
        super().__init__("checksum_mismatch", f"{found}: {why}" if why else found)
        self.uri, self.expected, self.actual = uri, expected, actual


class ImageRejected(BadInput):
    """The bytes are not an image we accept (corrupt, too large, wrong format...). ``setting``: the
    setting whose limit refused them, which raised lets them through; None where none does (bytes no
    decoder takes, an image past Pillow's own limit). Advice reads it, not the detail's wording."""

    def __init__(self, reason: str, detail: str = "", *, setting: str | None = None) -> None:
        super().__init__(reason, detail)
        self.setting = setting


@contextmanager
def naming(name: str, uri: str) -> Iterator[None]:
    """A ``BadInput`` raised inside is raised again naming the object it refused (``name`` and its
    ``uri``): an event points at several objects, and ``truncated`` alone does not say which."""
    try:
        yield
    except BadInput as refusal:
        raise named(refusal, name, uri) from None


def named(refusal: BadInput, name: str, uri: str) -> BadInput:
    """``refusal`` naming the object it refused, as ``naming`` raises it: for a refusal returned, not
    raised (one image of a batch the model refused). Its type and attributes kept (``with_detail``)."""
    detail = refusal.detail or refusal.reason
    # object_missing and checksum_mismatch name the uri already.
    where = name if uri in detail else f"{name} {uri}"
    return with_detail(refusal, f"{where}: {detail}")


def with_detail(refusal: BadInput, detail: str) -> BadInput:
    """``refusal`` with ``detail`` for its own: a copy of its type and attributes (an ``ImageRejected``'s
    ``setting``; a dead letter's ``error_class``), which ``BadInput(refusal.reason, detail)`` lost."""
    copied = copy.copy(refusal)
    BadInput.__init__(copied, refusal.reason, detail)
    return copied


class TransientError(Exception):
    """A fault outside the input that may clear by itself; the runtime retries with back-off."""


class StoreMisconfigured(TransientError):
    """The object store refuses this service (credentials, permissions, bucket, endpoint).

    The deployment's fault, never the input's: dead-lettering would lose good events, so the
    runtime retries like any transient fault until a credential refresh or a fixed setting clears it.
    """
