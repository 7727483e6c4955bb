"""A real Triton server (PyTriton) with the generation model, in its own process: ``skuforge serve
generator`` exactly as in production, on free loopback ports, for bench/generation.py and the tests
(tests/support/triton.py builds its fixtures on it: a bench does not import the test tree).

``stop()`` and ``start()`` let a caller take it down and bring it back mid-run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack.broker import free_ports
from services.generator.protocol import model_name

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

    def start(self, *, preexec_fn: Callable[[], None] | None = None) -> TritonServerProcess:
        """Start the server (``preexec_fn`` run in the child before it does) and wait until every model
        is ready."""
        import tritonclient.grpc as grpcclient

        command = [sys.executable, "-m", "skuforge_cli", "serve", "generator"]
        for backend in self.backends:
            command += ["--backend", backend]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn
            )
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


def max_batch_executed(stats: dict[str, Any]) -> int:
    """The largest batch size Triton executed, from its statistics."""
    sizes = [
        int(entry["batch_size"]) for model in stats["model_stats"] for entry in model.get("batch_stats", [])
    ]
    return max(sizes, default=0)
