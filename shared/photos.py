"""What skuforge takes as a photo file, and the smallest photo it uses.

One answer for every reader of a folder of photos (``skuforge ingest``, the scene library,
``skuforge evaluate``'s held-out photos), so a photo one of them takes is never skipped by another;
and one minimum size (``SKUFORGE_MIN_PHOTO_SIDE_PX``, at the captioner's working size too) for ingest
and the captioner.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath

from shared.config import WORKING_SIDE_PX
from shared.errors import ImageRejected
from shared.images import PHOTO_SUFFIXES

__all__ = ["WORKING_SIDE_PX"]  # shared.config's, where the settings bound SKUFORGE_MIN_PHOTO_SIDE_PX by it

# The decoder's formats by their file names, plus JPEG under the names Chrome and Windows save it
# with (.jfif, .jpe): photos are identified by content, so these decode as any .jpg. Skipped, they left
# a SKU a photo short, or a held-out photo unused, without a word.
PHOTO_FILE_SUFFIXES: frozenset[str] = PHOTO_SUFFIXES | {".jfif", ".jpe"}
# HEIC/HEIF: an iPhone's photos by default; named with what to do (``HEIC_ADVICE``), not "not a photo".
HEIC_SUFFIXES = frozenset({".heic", ".heif"})
HEIC_ADVICE = "HEIC/HEIF is not read here; export it as JPEG or PNG"
# Not folders of photos, though folders: a zip made on a Mac unpacks with one beside the real
# folders, full of "._NAME" resource forks.
MACOS_ZIP_FOLDERS = frozenset({"__MACOSX"})
# What Windows (thumbnail cache, folder settings) and macOS (a custom folder icon) leave in any folder
# they show, and a zip's "__MACOSX", compared casefolded: never anyone's photo.
DESKTOP_LEFTOVERS = frozenset(
    {"thumbs.db", "desktop.ini", "icon\r", *(name.casefold() for name in MACOS_ZIP_FOLDERS)}
)

# Folders a NAS keeps its thumbnails and index in, inside every folder it shares, compared casefolded:
# Synology's "@eaDir" holds a few resized copies of each photo. Never anyone's photos, but a user who
# copied the share with them (rsync, NFS) may not know, so a reader that leaves them out says so.
NAS_THUMBNAIL_FOLDERS = frozenset({"@eadir"})


def is_nas_thumbnail_folder(name: str) -> bool:
    """Whether a folder called ``name`` is a NAS's thumbnails (``NAS_THUMBNAIL_FOLDERS``)."""
    return name.casefold() in NAS_THUMBNAIL_FOLDERS


def _only_a_photo_suffix(name: str) -> str:
    """The photo's extension, lower-cased, a name that is only one after any dots is (".jpg", "..PNG":
    a DAM's export of a photo with an empty title); "" for any other name."""
    bare = "." + name.lower().lstrip(".")
    return bare if name.startswith(".") and bare in PHOTO_FILE_SUFFIXES | HEIC_SUFFIXES else ""


def photo_suffix(name: str) -> str:
    """The extension of a file called ``name``, lower-cased, that says what kind of photo it is ("" for
    none). A name that is only an extension, after any dots (".jpg", "..png"), is a photo of that kind:
    ``Path(".jpg").suffix`` is "", and it was skipped."""
    return _only_a_photo_suffix(name) or PurePosixPath(name).suffix.lower()


def is_left_out_quietly(name: str, *, is_folder: bool = False) -> bool:
    """Whether a file or folder (``is_folder``) called ``name`` is no one's content: hidden (macOS writes
    an invisible "._NAME" beside each photo on non-Apple volumes), or a desktop's leftover
    (``DESKTOP_LEFTOVERS``). Readers skip these without a word: naming a file its owner cannot see helps
    no one. A file whose name is only a photo's extension (".jpg", ``photo_suffix``) is a photo, not a
    hidden file; a folder so named is hidden, as any other."""
    if not is_folder and _only_a_photo_suffix(name):
        return False
    folded = name.casefold()
    return folded.startswith(".") or folded in DESKTOP_LEFTOVERS


def key_left_out_quietly(parts: Sequence[str]) -> bool:
    """``is_left_out_quietly`` for any part of a path or object key (``__MACOSX/shelves/._a.jpg``): the
    parts before the last are folders."""
    return any(
        is_left_out_quietly(part, is_folder=index < len(parts) - 1) for index, part in enumerate(parts)
    )


def working_size(width: int, height: int) -> tuple[int, int]:
    """The size the captioner masks and measures a ``width`` x ``height`` photo at: as it is when no
    side is over ``WORKING_SIDE_PX``, else its longer side scaled down to that, rounded as Pillow's
    ``Image.thumbnail`` (which the captioner shrinks it with) rounds, so ingest's answer is its."""
    if width <= WORKING_SIDE_PX and height <= WORKING_SIDE_PX:
        return width, height
    aspect = width / height

    def nearest(number: float, error: Callable[[int], float]) -> int:
        return max(min(math.floor(number), math.ceil(number), key=error), 1)

    side = WORKING_SIDE_PX
    if aspect <= 1:  # taller than wide (or square): the height is the working side
        return nearest(side * aspect, lambda n: abs(aspect - n / side)), side
    return side, nearest(side / aspect, lambda n: 0 if n == 0 else abs(aspect - side / n))


def refuse_too_small(
    width: int, height: int, min_side_px: int, *, file_size_px: tuple[int, int] | None = None
) -> None:
    """``ImageRejected('too_small')`` for a photo whose shorter side is below ``min_side_px``, as it is
    or at the captioner's ``working_size`` (a 20000x64 strip is 7 px high at 2048 px long).

    Such a photo decodes, but U2-Net masks at 320 px and the generator composites at hundreds: a
    few pixels blown up to that are flat blocks of colour, a product no one can caption, cut out or
    learn from, and every image made from them would teach the classifier blur. One rule for ingest
    and the captioner, so a photo ingest takes is never one the captioner calls too small.

    ``file_size_px``: the file's own size where ``width`` x ``height`` is the size it was decoded at,
    scaled down (a JPEG over the pixel limit): the refusal names the size its owner sees, and that."""
    size = f"{width}x{height} px"
    if file_size_px is not None and file_size_px != (width, height):
        file_width, file_height = file_size_px
        size = f"{file_width}x{file_height} px, decoded at {size} as it is over SKUFORGE_MAX_IMAGE_PIXELS"
    if min(width, height) < min_side_px:
        raise ImageRejected(
            "too_small",
            f"{size}; the shorter side must be at least {min_side_px} px (SKUFORGE_MIN_PHOTO_SIDE_PX)",
        )
    working_side_px = min(working_size(width, height))
    if working_side_px < min_side_px:
        raise ImageRejected(
            "too_small",
            f"{size}, masked at most {WORKING_SIDE_PX} px long: its shorter side would be "
            f"{working_side_px} px; it must be at least {min_side_px} px there "
            "(SKUFORGE_MIN_PHOTO_SIDE_PX): crop it",
        )
