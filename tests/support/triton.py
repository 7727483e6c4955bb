"""A real Triton server (PyTriton) with the generation model, in its own process, for tests.

``skuforge serve generator`` runs exactly as in production, on free loopback ports; ``stop()`` and
``start()`` let a test take it down and bring it back mid-run. The ``triton`` fixture is one server
(composite backend) for the whole test session, started by the first test that asks for it; tests
that need another configuration (diffusion, a tiny queue) start their own ``TritonServerProcess``.
``poisoned_triton`` serves, in the test's own process, a composite backend that fails on given seeds
and records the seeds it painted: how many times Triton drew each variant.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from devstack.broker import free_port, free_ports
from services.generator.protocol import model_name
from shared.errors import TransientError
from shared.generation.backend import GenerationRequest, RowOutcome
from shared.generation.composite import CompositeBackend

START_TIMEOUT_S = 180.0


class TritonServerProcess:
    """``skuforge serve generator`` as a subprocess; settings via SKUFORGE_GENERATION_* overrides."""

    def __init__(
        self,
        log_dir: Path,
        *,
        backends: tuple[str, ...] = ("composite",),
        extra_env: dict[str, str] | None = None,
        **settings: Any,
    ) -> None:
        self.backends = backends
        # The process's own /metrics (server_metrics_port) beside Triton's three: four distinct ports
        # (four free_port() calls in a row may return one twice, which the server refuses to start with).
        self.grpc_port, self.http_port, self.metrics_port, self.server_metrics_port = free_ports(4)
        self.env = {
            **os.environ,
            "SKUFORGE_GENERATION_SERVER_GRPC_PORT": str(self.grpc_port),
            "SKUFORGE_GENERATION_SERVER_HTTP_PORT": str(self.http_port),
            "SKUFORGE_GENERATION_SERVER_METRICS_PORT": str(self.metrics_port),
            "SKUFORGE_METRICS_PORT": str(self.server_metrics_port),
            "SKUFORGE_LOG_FORMAT": "text",
        }
        self.env.update({f"SKUFORGE_GENERATION_{key.upper()}": str(value) for key, value in settings.items()})
        self.env.update(extra_env or {})
        self.log_path = log_dir / f"triton-{self.grpc_port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def server_metrics(self) -> str:
        """The exposition text of the process's own /metrics (not Triton's)."""
        url = f"http://127.0.0.1:{self.server_metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text: str = response.read().decode()
        return text

    def start(self) -> TritonServerProcess:
        """Start the server and wait until every model is ready."""
        import tritonclient.grpc as grpcclient

        command = [sys.executable, "-m", "skuforge_cli", "serve", "generator"]
        for backend in self.backends:
            command += ["--backend", backend]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        client = grpcclient.InferenceServerClient(self.grpc_url)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Triton exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if all(client.is_model_ready(model_name(b)) for b in self.backends):
                    return self
            except Exception:  # not listening yet
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"Triton not ready within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, as an orchestrator would; kill if it does not exit within 60 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def statistics(self, backend: str = "composite") -> dict[str, Any]:
        """Triton's inference statistics of ``backend``'s model (JSON form)."""
        import tritonclient.grpc as grpcclient

        stats: dict[str, Any] = grpcclient.InferenceServerClient(self.grpc_url).get_inference_statistics(
            model_name(backend), as_json=True
        )
        return stats


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServerProcess]:
    """One Triton with the composite backend for the session; batches of up to 8, held 50 ms to fill."""
    server = TritonServerProcess(
        tmp_path_factory.mktemp("triton"), max_batch_size=8, batch_delay_us=50_000, max_queue_size=64
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def max_batch_executed(stats: dict[str, Any]) -> int:
    """The largest batch size Triton executed, from its statistics."""
    sizes = [
        int(entry["batch_size"]) for model in stats["model_stats"] for entry in model.get("batch_stats", [])
    ]
    return max(sizes, default=0)


def tiny_diffusion_env(work: Path, *, adapters: dict[str, int] | None = None) -> dict[str, str]:
    """Environment of a CPU diffusion backend on the tiny config-built pipeline (no downloads).

    ``adapters`` maps a series to a tiny LoRA seed: each is registered as ``lora-<series>``
    (kind ``specialized``) in the store the backend's registry reads.
    """
    from shared.generation.adapters import AdapterRegistry
    from shared.store import FileStore
    from tests.support.diffusion import TINY_BASE_MODEL, build_tiny_inpaint_pipeline, make_tiny_lora

    model_dir = build_tiny_inpaint_pipeline(work / "tiny-sd-inpaint")
    store_root = work / "store"
    registry = AdapterRegistry(FileStore(store_root / "adapters"))
    for series, seed in (adapters or {}).items():
        weights = make_tiny_lora(model_dir, work / f"lora-{series}", seed=seed)
        registry.register(
            f"lora-{series}", weights, kind="specialized", series=series, base_model=TINY_BASE_MODEL
        )
    return {
        "SKUFORGE_DIFFUSION_MODEL": str(model_dir),
        "SKUFORGE_DIFFUSION_DEVICE": "cpu",
        "SKUFORGE_DIFFUSION_THREADS": "1",
        "SKUFORGE_DIFFUSION_STEPS": "2",
        "SKUFORGE_DIFFUSION_ADAPTER_REFRESH_S": "0",
        "SKUFORGE_DIFFUSION_CACHE_DIR": str(work / "cache"),
        "SKUFORGE_STORE_URI": f"file://{store_root}",
    }


class PoisonedComposite(CompositeBackend):
    """The real composite backend, with a bug on some inputs: any batch holding a seed of ``failing``
    raises, one holding a seed of ``away`` raises as if the store it reads were away. The seeds of the
    rows it painted are in ``painted``."""

    def __init__(self, failing: Collection[int] = (13,), away: Collection[int] = (17,)) -> None:
        super().__init__()
        self.failing, self.away = frozenset(failing), frozenset(away)
        self.painted: list[int] = []

    def generate_many(self, requests: list[GenerationRequest]) -> list[RowOutcome]:
        if any(request.seed in self.failing for request in requests):
            raise ZeroDivisionError("a bug on this input")
        if any(request.seed in self.away for request in requests):
            raise TransientError("S3 unreachable: the adapter registry is away")
        outcomes = super().generate_many(requests)
        self.painted.extend(request.seed for request in requests)
        return outcomes


@contextmanager
def poisoned_triton(
    monkeypatch: pytest.MonkeyPatch,
    backend: PoisonedComposite | None = None,
    *,
    models: Sequence[str] = ("composite",),
) -> Iterator[tuple[str, PoisonedComposite]]:
    """A Triton server in this process serving ``backend`` (default: failing on seed 13, away on 17) as
    the composite model (and as each other backend of ``models``): its gRPC address, and the backend."""
    from services.generator import server as server_module
    from shared.config import Settings
    from shared.generation.settings import GenerationSettings

    served = backend or PoisonedComposite()
    monkeypatch.setattr(server_module, "open_backend", lambda name, **_: served)
    generation = GenerationSettings(
        generation_server_address="127.0.0.1",
        generation_server_http_port=free_port(),
        generation_server_grpc_port=free_port(),
        generation_server_metrics_port=free_port(),
        generation_batch_delay_us=200_000,  # so the poisoned row and the good ones share a batch
    )
    # A short workspace: PyTriton's sockets live under it, and AF_UNIX paths are limited to 108 bytes.
    workspace = str(Path(tempfile.mkdtemp(prefix="tw", dir="/tmp")) / "w")
    triton = server_module.build_triton(generation, list(models), shared=Settings(), workspace=workspace)
    triton.run()
    try:
        yield f"127.0.0.1:{generation.generation_server_grpc_port}", served
    finally:
        triton.stop()
