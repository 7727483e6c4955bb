"""Triton servers for tests: ``TritonServerProcess`` (bench/triton.py's, which bench/generation.py runs
too) is ``skuforge serve generator`` as a subprocess. The ``triton`` fixture is one server
(composite backend) for the whole test session, started by the first test that asks for it; tests
that need another configuration (diffusion, a tiny queue) start their own ``TritonServerProcess``.
``poisoned_triton`` serves, in the test's own process, a composite backend that fails on given seeds
and records the seeds it painted: how many times Triton drew each variant. ``trickling_link`` puts a
slow network between a client and such a server (``Link``).
"""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.triton import TritonServerProcess as TritonServerProcess
from bench.triton import max_batch_executed as max_batch_executed
from devstack.broker import free_port
from shared.errors import TransientError
from shared.generation.backend import GenerationRequest, RowOutcome
from shared.generation.composite import CompositeBackend


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


def tiny_diffusion_env(work: Path, *, adapters: dict[str, int] | None = None) -> dict[str, str]:
    """Environment of a CPU diffusion backend on the tiny config-built pipeline (no downloads).

    ``adapters`` maps a series to a tiny LoRA seed: each is registered as ``lora-<series>``
    (kind ``specialized``) in the store the backend's registry reads.
    """
    from bench.tiny_diffusion import TINY_BASE_MODEL, build_tiny_inpaint_pipeline, make_tiny_lora
    from shared.generation.adapters import AdapterRegistry
    from shared.store import FileStore

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
    protocol: str = "grpc",
    port: int | None = None,
) -> Iterator[tuple[str, PoisonedComposite]]:
    """A Triton server in this process serving ``backend`` (default: failing on seed 13, away on 17) as
    the composite model (and as each other backend of ``models``): its address for ``protocol`` (gRPC or
    HTTP), on ``port`` if given (another server swapped in behind a client's address), and the backend."""
    from services.generator import server as server_module
    from shared.config import Settings
    from shared.generation.settings import GenerationSettings

    served = backend or PoisonedComposite()
    monkeypatch.setattr(server_module, "open_backend", lambda name, **_: served)
    generation = GenerationSettings(
        generation_server_address="127.0.0.1",
        generation_server_http_port=port if port and protocol == "http" else free_port(),
        generation_server_grpc_port=port if port and protocol == "grpc" else free_port(),
        generation_server_metrics_port=free_port(),
        generation_batch_delay_us=200_000,  # so the poisoned row and the good ones share a batch
    )
    # A short workspace: PyTriton's sockets live under it, and AF_UNIX paths are limited to 108 bytes.
    workspace = str(Path(tempfile.mkdtemp(prefix="tw", dir="/tmp")) / "w")
    triton = server_module.build_triton(generation, list(models), shared=Settings(), workspace=workspace)
    triton.run()
    try:
        http = protocol == "http"
        port = generation.generation_server_http_port if http else generation.generation_server_grpc_port
        yield f"127.0.0.1:{port}", served
    finally:
        triton.stop()


@dataclass(frozen=True)
class Link:
    """A relay's address (host:port); ``trickling`` is set once an answer is slowed, and once ``steady``
    is set, answers pass at once."""

    address: str
    trickling: threading.Event = field(default_factory=threading.Event)
    steady: threading.Event = field(default_factory=threading.Event)


@contextmanager
def trickling_link(upstream: str, slowed: bytes, *, byte_every_s: float = 0.5) -> Iterator[Link]:
    """A relay to ``upstream`` (host:port) that passes requests on at once, and the answers to those whose
    request line starts with ``slowed`` (``b"POST "``: inferences) one byte every ``byte_every_s``: a
    real Triton behind a slow link, whose client never waits a socket timeout for a byte, yet an answer
    takes hours. Every connection is closed on leaving, which ends a call still reading one."""
    host, port = upstream.rsplit(":", 1)
    listener = socket.create_server(("127.0.0.1", 0))
    link, closing = Link(f"127.0.0.1:{listener.getsockname()[1]}"), threading.Event()
    connections: list[socket.socket] = []

    def relay_requests(client: socket.socket, server: socket.socket, line: list[bytes]) -> None:
        while chunk := client.recv(1 << 16):
            if chunk.startswith((b"GET ", b"POST ")):  # a request's head: tritonclient sends it first
                line[0] = chunk
            server.sendall(chunk)

    def relay_answers(server: socket.socket, client: socket.socket, line: list[bytes]) -> None:
        while chunk := server.recv(1 << 16):
            if link.steady.is_set() or not line[0].startswith(slowed):
                client.sendall(chunk)
                continue
            link.trickling.set()
            for at in range(len(chunk)):
                if link.steady.is_set():
                    client.sendall(chunk[at:])
                    break
                if closing.wait(byte_every_s):
                    return
                client.sendall(chunk[at : at + 1])

    def quietly(relay: Callable[..., None], *sockets: object) -> None:
        with suppress(OSError):  # a side closed, or the link is closing
            relay(*sockets)

    def accept() -> None:
        while not closing.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection((host, int(port)))
            connections.extend((client, server))
            line = [b""]
            for relay in (
                threading.Thread(target=quietly, args=(relay_requests, client, server, line), daemon=True),
                threading.Thread(target=quietly, args=(relay_answers, server, client, line), daemon=True),
            ):
                relay.start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield link
    finally:
        closing.set()
        for held in (listener, *connections):
            with suppress(OSError):  # not connected (any more)
                held.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it; close alone does not
            held.close()
