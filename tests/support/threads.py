"""torch's CPU thread count, which is the whole process's: ``one_torch_thread``, an autouse fixture a
test module takes by importing it, runs each of its tests on one thread; ``torch_threads_as_before``
(the suite's, in conftest) gives any test's change back, as a stage's start-up in a test makes one
(``SKUFORGE_LORA_THREADS``, ``SKUFORGE_DIFFUSION_THREADS``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Small-tensor work on the shared 2-core machine (beside ONNX Runtime's pool and the Kafka broker):
    with two threads, OpenMP spin-waiting made it 5-10x slower than with one. The count is given back."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def torch_threads_as_before() -> Iterator[None]:
    """The thread count a test leaves behind is undone, when torch is loaded (it is not imported here:
    most tests never need it)."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    yield
    if torch is not None and threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
