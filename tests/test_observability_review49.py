"""Review 49: a health server started twice, or after it was stopped."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from shared.observability import HealthServer

# A bound on a hang, not a speed: a local answer comes at once or never.
_ANSWER_DEADLINE_S = 60.0


def test_a_health_server_started_twice_keeps_serving() -> None:
    # The second start() raised the thread's own "threads can only be started once".
    server = HealthServer(CollectorRegistry(), port=0).start()
    try:
        assert server.start() is server
        answer = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=_ANSWER_DEADLINE_S)
        assert answer.status == 200
    finally:
        server.stop()


@pytest.mark.parametrize("started", [True, False])
def test_a_stopped_health_server_refuses_to_start_saying_to_make_a_new_one(started: bool) -> None:
    # Stopped once started, start() raised "threads can only be started once"; stopped before it ever
    # started, start() returned and its thread died on the closed socket: nothing served, not a word.
    server = HealthServer(CollectorRegistry(), port=0)
    if started:
        server.start()
    server.stop()
    with pytest.raises(RuntimeError, match=r"was stopped.*make a new HealthServer"):
        server.start()
