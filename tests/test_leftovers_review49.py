"""Small leftovers: a health server stopped before it started, an escaped missing-object URI,
the console's hint about a local stack, and a null console service type in the chart."""

from __future__ import annotations

import socket
import threading

from prometheus_client import CollectorRegistry

from shared.observability import HealthServer

# A generous deadline: stop() either returns at once or never (it used to wait forever for a
# serve_forever that never ran), so this bounds a hang, not a speed.
_HANG_DEADLINE_S = 60.0


def _stop_in_a_thread(server: HealthServer) -> threading.Thread:
    stopper = threading.Thread(target=server.stop, name="stop-health-server", daemon=True)
    stopper.start()
    stopper.join(_HANG_DEADLINE_S)
    return stopper


def test_a_health_server_stopped_before_start_returns_and_frees_its_port() -> None:
    server = HealthServer(CollectorRegistry(), port=0)
    port = server.port
    stopper = _stop_in_a_thread(server)
    assert not stopper.is_alive(), f"stop() before start() still waiting after {_HANG_DEADLINE_S}s"
    with socket.socket() as probe:  # the port is released: binding it again works
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_a_health_server_stopped_twice_returns() -> None:
    server = HealthServer(CollectorRegistry(), port=0).start()
    assert not _stop_in_a_thread(server).is_alive()
    assert not _stop_in_a_thread(server).is_alive(), "a second stop() did not return"
