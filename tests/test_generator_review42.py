"""The Triton client: a client that cannot be built leaves nothing for Python to finalize with an error."""

from __future__ import annotations

import gc

import pytest

from services.generator.client import TritonGenerator


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_client_that_cannot_be_built_leaves_no_error_for_its_finalizer() -> None:
    """tritonclient's ``__del__`` closes what its ``__init__`` made: of one whose ``__init__`` raised (a
    port that is no number), it raised AttributeError, which Python can only print ("Exception ignored
    in"), once per worker that tried, beside the clear error the stage logs."""
    client = TritonGenerator("localhost:not-a-port", protocol="http", concurrency=1)
    try:
        with pytest.raises(ValueError, match="Port"):
            client.generate("composite", [])
    finally:
        client.close()
    gc.collect()  # the half-built client, held by the traceback until now
