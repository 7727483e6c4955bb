"""Real background photos for the composite backend: the scene library (``SKUFORGE_SCENES_URI``).

A folder or object-store prefix of photos (shelves, counters, baskets, hands). Photos are the files
``skuforge ingest`` takes as photos (``shared/photos.py``: .png .jpg .jpeg .jpe .jfif .webp .bmp .tif
.tiff). Each is decoded once at start-up, shrunk to ``max_side_px`` and kept in memory as uint8. A file
that does not decode (corrupt, truncated, not an image, too many pixels) is skipped, and so is one of
more than ``max_bytes`` (``SKUFORGE_MAX_IMAGE_BYTES``: ``too_large_bytes``, refused by its size, unread)
and one with another suffix (``not_a_photo_suffix``: a GIF, a README): the reason is logged and counted in
``skuforge_generator_scenes_skipped_total{reason}``; the library never fails because of one file.
So is a key the store refuses (``shelves//a.jpg`` in S3, a file name with a backslash or a newline)
and, in a local folder, a file the OS will not read (permission denied, a symlink loop) or one
that is no regular file (a named pipe, which would keep the load waiting for a writer). Only a
remote store that fails mid-load fails start-up: then the store is down, not one file. Hidden files
and folders (macOS's "._NAME" beside each photo), ``__MACOSX`` and the files desktops leave
(``Thumbs.db``) are no one's scenes: they are left out without a word, and not counted. Neither are a
NAS's thumbnail folders (Synology's ``@eaDir``, resized copies of each photo): left out, not counted,
and said in one log line, as ``skuforge evaluate`` notes them.

A scene's *tag* is the first folder of its key (``shelves/a.jpg`` → ``shelves``; top level → no tag).
A SKU never gets a scene tagged like its series, its category or its product name, compared on the
letters and digits of any script only (case, accents, spaces and punctuation ignored; see
``series_tag``), whole tag against whole tag (a folder ``lemons`` is not a product "Lemon"'s): series
"Fizzo Zero" matches folder ``fizzo-zero``, "Café Crème" matches ``CAFE_CREME``, "可口可乐" matches
``可口可乐``. A library built from photos of a catalogue's other products puts each product's own
photos in a folder named like its series or its name (the samples' folders are named like the
product: ``Lemon/``), so a product is never composited onto photos of itself (a pile of lemons
outside a lemon's expected mask would teach the classifier the wrong thing), even when its series is
empty.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import numpy.typing as npt
from PIL import Image
from prometheus_client import Counter

from shared.errors import BadInput, ImageRejected, ObjectMissing, TransientError
from shared.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_image, pixel_array
from shared.photos import (
    HEIC_ADVICE,
    HEIC_SUFFIXES,
    PHOTO_FILE_SUFFIXES,
    is_nas_thumbnail_folder,
    key_left_out_quietly,
    photo_suffix,
)
from shared.store import FileStore, ObjectStore, check_key

log = logging.getLogger(__name__)

SCENES_SKIPPED = Counter(
    "skuforge_generator_scenes_skipped_total",
    "Scene-library files skipped at load (bad key, not decodable or unreadable), by reason",
    ["reason"],
)


class NoScenePhotos(ValueError):
    """The library's folder or prefix is missing or holds no usable photo: a configuration mistake."""


@dataclass(frozen=True)
class Scene:
    """One background photo."""

    key: str  # its key under the library's prefix
    tag: str  # series_tag of the key's first folder; "" at top level
    pixels: npt.NDArray[np.uint8]  # H x W x 3 RGB, longer side <= the library's max_side_px


class SceneLibrary:
    """Background photos by key; ``keys_for`` lists those a SKU may use: none tagged like its series,
    category or name."""

    def __init__(self, scenes: list[Scene], skipped: dict[str, str] | None = None) -> None:
        if not scenes:
            raise ValueError("a scene library needs at least one usable photo")
        self._by_key = {scene.key: scene for scene in sorted(scenes, key=lambda scene: scene.key)}
        self.skipped = dict(skipped or {})

    @classmethod
    def load(
        cls,
        store: ObjectStore,
        *,
        max_side_px: int = 512,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> SceneLibrary:
        """Every photo under ``store`` (by suffix); bad keys, other suffixes and unusable files (one of
        more than ``max_bytes`` refused by its size, unread) are skipped, reason logged; hidden files,
        ``__MACOSX`` and desktop leftovers are left out quietly, NAS thumbnail folders with one log line.

        Raises ``TransientError`` when a remote store fails mid-load, ``NoScenePhotos`` (a ``ValueError``)
        when a local folder does not exist or no photo is usable.
        """
        if isinstance(store, FileStore) and not store.root.is_dir():
            # Listed, a missing folder is empty: "no usable scene photo (0 skipped)" hid a mistyped path.
            missing = "does not exist" if not store.root.exists() else "is not a folder"
            raise NoScenePhotos(
                f"{store.base_uri} {missing}: set SKUFORGE_SCENES_URI to the scene photos' folder"
            )
        scenes: list[Scene] = []
        skipped: dict[str, str] = {}
        keys, thumbnails = library_keys(store)
        for key in keys:
            image = _read_scene(store, key, max_pixels=max_pixels, max_bytes=max_bytes)
            if isinstance(image, str):
                skipped[key] = reason = image
                SCENES_SKIPPED.labels(reason=reason.split(":", 1)[0]).inc()
                # uri_for would refuse a bad key again; its repr shows what is odd in it (a '\', a newline).
                location = f"{store.base_uri}/{key!r}" if reason.startswith("bad_key") else store.uri_for(key)
                log.warning("scene %s skipped: %s", location, reason)
                continue
            image.thumbnail((max_side_px, max_side_px), Image.Resampling.LANCZOS)
            tag = series_tag(key.split("/", 1)[0]) if "/" in key else ""
            scenes.append(Scene(key, tag, pixel_array(image)))
        if thumbnails:
            log.info(
                "scene library: %d file(s) in NAS thumbnail folders (@eaDir) left out: a NAS's copies of "
                "the photos, not scenes",
                thumbnails,
            )
        if not scenes:
            raise NoScenePhotos(
                f"no usable scene photo under {store.base_uri} ({len(skipped)} skipped); "
                f"put {', '.join(sorted(PHOTO_FILE_SUFFIXES))} files there or unset SKUFORGE_SCENES_URI"
            )
        log.info("scene library: %d photos from %s, %d skipped", len(scenes), store.base_uri, len(skipped))
        return cls(scenes, skipped)

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def get(self, key: str) -> Scene:
        """The scene stored under ``key``; ``KeyError`` names a few known keys."""
        try:
            return self._by_key[key]
        except KeyError:
            known = ", ".join(list(self._by_key)[:3])
            raise KeyError(f"no scene {key!r} in the library (e.g. {known})") from None

    def keys_for(self, *own_names: str | None) -> list[str]:
        """Keys a SKU may use, in key order: all, minus those tagged like any of ``own_names`` (its
        series, category, product name; ``None`` and "" stand for no name).

        The whole tag must match (``series_tag``), not a part of it: "Lemon" excludes ``Lemon/`` and
        ``lemon/``, not ``lemons/`` or ``lemon-tea/``.
        """
        own = _own_tags(own_names)
        return [key for key, scene in self._by_key.items() if scene.tag not in own]

    def tagged_like(self, key: str, *own_names: str | None) -> bool:
        """Whether the scene under ``key`` is tagged like any of ``own_names``: one ``keys_for`` leaves
        out, which a request naming it must not get either."""
        return self.get(key).tag in _own_tags(own_names)


def _own_tags(own_names: tuple[str | None, ...]) -> set[str]:
    """The tags of a SKU's names; a blank name ("  ") has an empty tag, which is the top level's: it
    excludes nothing."""
    return {series_tag(name) for name in own_names if name} - {""}


def series_tag(name: str) -> str:
    """The letters and digits of ``name``, of any script, case-folded; accents and all else dropped.

    "Café Crème", "cafe-creme" and "CAFE_CREME" all give ``cafecreme``; "Dr Pepper's" and "Dr Peppers"
    give ``drpeppers``; "Кока-Кола" gives ``кокакола``. A name with no letter or digit at all (``★★``)
    is kept whole, case-folded, so that even such a series never gets its own folder's scenes.
    """
    # NFKD splits accents off their letters, so composed and decomposed names (macOS writes the
    # latter) compare equal; accents, like spaces and punctuation, are not alphanumeric and go.
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    tag = "".join(char for char in decomposed if char.isalnum())
    return tag or unicodedata.normalize("NFKC", name.casefold()).strip()


def library_keys(store: ObjectStore) -> tuple[list[str], int]:
    """The keys under ``store`` that the library reads at load, sorted, and how many it leaves out as a
    NAS's thumbnails; hidden files and folders, ``__MACOSX`` and desktop leftovers are left out uncounted.
    One listing for the library and for ``skuforge evaluate``'s scene check, so the check covers what
    can be in a scene."""
    keys: list[str] = []
    thumbnails = 0
    for key in sorted(store.list_keys()):
        parts = key.split("/")
        if key_left_out_quietly(parts):
            continue
        if any(is_nas_thumbnail_folder(folder) for folder in parts[:-1]):
            thumbnails += 1
            continue
        keys.append(key)
    return keys, thumbnails


def _read_scene(store: ObjectStore, key: str, *, max_pixels: int, max_bytes: int) -> Image.Image | str:
    """The decoded photo under ``key``, or why it is skipped (``reason`` or ``reason: detail``)."""
    data = scene_file_bytes(store, key, max_bytes=max_bytes)
    if isinstance(data, str):
        return data
    try:
        return decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes)
    except ImageRejected as exc:
        return exc.reason
    except (BadInput, OSError) as exc:
        return f"unreadable: {_why(exc)}"


def scene_file_bytes(store: ObjectStore, key: str, *, max_bytes: int) -> bytes | str:
    """The bytes of the scene-library file under ``key``, undecoded, or why the library skips it at load
    before decoding (``bad_key: ...``, ``not_a_photo_suffix: ...``, ``unreadable: ...``, and past
    ``max_bytes`` ``too_large_bytes: ...``, refused by its size, unread): what ``skuforge evaluate``
    checks the library by. ``TransientError`` when an object store (not a folder) is away."""
    bad_key = _bad_key(key)
    if bad_key is not None:
        return bad_key
    suffix = photo_suffix(PurePosixPath(key).name)
    if suffix in HEIC_SUFFIXES:  # an iPhone's: what to do, as ingest says it
        return f"not_a_photo_suffix: {suffix}: {HEIC_ADVICE}"
    if suffix not in PHOTO_FILE_SUFFIXES:
        # Named, not ignored: .tif and .jfif scenes once loaded as nothing, without a word.
        accepted = ", ".join(sorted(PHOTO_FILE_SUFFIXES))
        return f"not_a_photo_suffix: {suffix or 'no suffix'} (scene photos are {accepted})"
    return _scene_bytes(store, key, max_bytes)


def _bad_key(key: str) -> str | None:
    """Why ``key`` cannot be read (``bad_key: ...``), or None."""
    try:
        check_key(key)
    except ValueError as exc:
        # S3 lists keys this store will not read (``a//b.jpg``), and a folder may hold such file names.
        return f"bad_key: {exc}"
    return None


def _scene_bytes(store: ObjectStore, key: str, max_bytes: int) -> bytes | str:
    """The bytes under a valid ``key``, or why they cannot be read (``unreadable: ...``, and past
    ``max_bytes`` ``too_large_bytes: ...``, refused by the stored size before any byte is read)."""
    try:
        return store.get_bytes_at_most(key, max_bytes)
    except TransientError as exc:
        if not isinstance(store, FileStore):
            # The store is down, not the file: fail start-up rather than silently lose scenes.
            raise TransientError(f"scene library {store.base_uri} unreadable at {key}: {exc}") from exc
        # A folder whose listing just worked is not down: this one file is unreadable (permission
        # denied, a symlink loop), which FileStore reports, like any OSError but "not found", as transient.
        return f"unreadable: {_os_error_detail(exc)}"
    except ObjectMissing as exc:
        # The file store refuses a named pipe (socket, device) unopened, saying what is there: read, a
        # pipe waited for a writer, and start-up hung on it for good.
        return f"unreadable: {exc.why or type(exc).__name__}"
    except BadInput as exc:
        if exc.reason == "too_large_bytes":
            return f"{exc.reason}: {exc.detail}"
        # The store's own words (a symlink "resolves outside the store root"): the type alone,
        # "unreadable: BadInput", left the reader to guess what is wrong with a photo that opens fine.
        return f"unreadable: {_why(exc)}"
    except OSError as exc:
        return f"unreadable: {_why(exc)}"


def _why(exc: BadInput | OSError) -> str:
    """What ``exc`` says is wrong with the file: a ``BadInput``'s detail (else its reason), an
    ``OSError``'s ``strerror``; its type's name only where it says nothing."""
    if isinstance(exc, BadInput):
        return exc.detail or exc.reason
    return exc.strerror or str(exc) or type(exc).__name__


def _os_error_detail(exc: TransientError) -> str:
    """What the OS said about the file (``Permission denied``), from the ``OSError`` behind ``exc``."""
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return type(cause or exc).__name__
