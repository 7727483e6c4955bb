"""The diffusion backend on a stand-in pipeline, for the tests of which adapter it serves.

``RecordingPipe`` stands in for diffusers: it records the bytes of every adapter file it is asked to
load, and the adapters it is asked to delete, and paints grey. ``backend_on`` puts it behind a
``DiffusionBackend`` on a registry, and ``served_adapter`` says which adapter that backend used for a
Cola request. ``OtherRegistration`` is another process registering an adapter at once.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import load_settings
from shared.generation.adapters import AdapterRegistry
from shared.generation.backend import GeneratedSample, GenerationRequest
from shared.generation.diffusion import DiffusionBackend, DiffusionSettings
from shared.store import ObjectStore


class RecordingPipe:
    """Stands in for diffusers: ``loaded`` is the bytes of every adapter file it was asked to load,
    ``deleted`` the adapter names it was asked to delete (unload)."""

    def __init__(self) -> None:
        self.loaded: list[bytes] = []
        self.deleted: list[str] = []

    def load_lora_weights(self, directory: str, *, weight_name: str, **_: Any) -> None:
        self.loaded.append((Path(directory) / weight_name).read_bytes())

    def delete_adapters(self, adapter_names: list[str] | str) -> None:
        self.deleted.extend([adapter_names] if isinstance(adapter_names, str) else adapter_names)

    def enable_lora(self) -> None:
        pass

    def disable_lora(self) -> None:
        pass

    def set_adapters(self, *_: Any, **__: Any) -> None:
        pass

    def __call__(self, *, image: list[Any], height: int, width: int, **_: Any) -> Any:
        images = [np.full((height, width, 3), 0.5, np.float32) for _ in image]
        return type("Output", (), {"images": images})()


def backend_on(
    registry: AdapterRegistry, tmp_path: Path, refresh_s: float = 30.0, *, cache_dir: Path | None = None
) -> DiffusionBackend:
    """A backend on ``registry`` that copies adapters into ``cache_dir`` (default ``tmp_path/cache``)."""
    settings = load_settings(DiffusionSettings, diffusion_adapter_refresh_s=refresh_s)
    return DiffusionBackend(
        RecordingPipe(),
        model_id="m",
        registry=registry,
        settings=settings,
        cache_dir=cache_dir or tmp_path / "cache",
        device="cpu",  # type: ignore[arg-type]
    )


def cola_request() -> GenerationRequest:
    reference = np.full((64, 64, 3), 200, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    return GenerationRequest(
        reference=reference,
        mask=mask,
        prompt="a photo of shs can",
        negative_prompt="",
        seed=1,
        n=1,
        parameters={},
        series="Cola",
        size=64,
    )


def served_adapter(backend: DiffusionBackend) -> str | None:
    (outcome,) = backend.generate_many([cola_request()])
    assert isinstance(outcome, list), outcome
    (sample,) = outcome
    assert isinstance(sample, GeneratedSample)
    return sample.adapter_id


class OtherRegistration:
    """Another process registering ``cola-v`` with ``weights``, in a thread started from inside the
    first registration (``meanwhile``), which goes on once this one has finished or waits its turn."""

    def __init__(self, store: ObjectStore, weights: bytes) -> None:
        self.store = copy.copy(store)  # the same store, seen by another process
        self.weights = weights
        self.finished_or_waiting = threading.Event()
        self.thread = threading.Thread(target=self._register)
        put_new = self.store.put_new

        def refused_says_waiting(key: str, data: bytes, content_type: str = "application/json") -> bool:
            placed = put_new(key, data, content_type)
            if not placed:
                self.finished_or_waiting.set()
            return placed

        self.store.put_new = refused_says_waiting  # type: ignore[method-assign]

    def _register(self) -> None:
        try:
            AdapterRegistry(self.store).register(
                "cola-v", self.weights, kind="specialized", series="Cola", base_model="sd15"
            )
        finally:
            self.finished_or_waiting.set()

    def meanwhile(self) -> None:
        """Run it, once, until it has finished or waits for the first."""
        if self.thread.ident is None:
            self.thread.start()
            self.finished_or_waiting.wait(timeout=60)
