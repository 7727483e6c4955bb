"""Memory Python holds while something runs, as tracemalloc counts it (numpy arrays and bytes are
counted; Pillow's own image buffers are not)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable


def peak_traced_bytes(action: Callable[[], object]) -> int:
    """The most memory Python held at once, above what it held before, while ``action`` ran."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
