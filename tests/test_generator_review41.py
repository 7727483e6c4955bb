"""The Triton client's workers over HTTP: a client that cannot be built leaves no gevent hub behind."""

from __future__ import annotations

import pytest
from gevent._hub_local import get_hub_if_exists

from services.generator.client import TritonGenerator


def test_a_client_that_cannot_be_built_leaves_no_gevent_hub_on_its_worker() -> None:
    """The request's timeout made the worker's gevent hub (its event loop: 2 descriptors) before the
    client was built; when building it raised, no client was there for ``close`` to destroy the hub
    with, and each worker that tried kept one."""
    client = TritonGenerator("localhost:not-a-port", protocol="http", concurrency=1)
    try:
        with pytest.raises(ValueError, match="Port"):
            client.generate("composite", [])
        worker = client._pool("composite")  # the one worker that tried to build the client
        assert worker.submit(get_hub_if_exists).result() is None
    finally:
        client.close()
