"""A real S3 server for tests: moto's HTTP server on loopback, spoken to by boto3 over HTTP.

moto's in-process ``mock_aws`` patches botocore itself, so it would hide exactly what
these tests are for (timeouts, retries, error codes, URIs, addressing style).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from shared.config import Settings
from shared.store import FileStore, ObjectStore, open_store
from tests.support.bus import isolated_settings

# Dummy credentials (forced, not defaulted, so real ones are never used by tests) and no
# user AWS config files, whose region or S3 settings could change what the tests see.
_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
_UNSET_ENV = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Running:
    """The session's server, so outage tests can stop and restart it on the same port."""

    server: ThreadedMotoServer | None = None
    port: int = 0


def stop_s3_server() -> None:
    """Take the S3 server away (connections are refused) until restart_s3_server()."""
    if _Running.server is not None:
        _Running.server.stop()
        _Running.server = None


def restart_s3_server() -> None:
    """Bring the S3 server back on the same port; moto keeps its buckets in process memory."""
    if _Running.server is None:
        _Running.server = ThreadedMotoServer(ip_address="127.0.0.1", port=_Running.port, verbose=False)
        _Running.server.start()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Start moto's S3 server on loopback for the session and yield its endpoint URL."""
    saved = {name: os.environ.get(name) for name in (*_TEST_ENV, *_UNSET_ENV)}
    os.environ.update(_TEST_ENV)
    for name in _UNSET_ENV:
        os.environ.pop(name, None)
    _Running.port = free_port()
    restart_s3_server()
    try:
        yield f"http://127.0.0.1:{_Running.port}"
    finally:
        stop_s3_server()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def other_s3_endpoint(s3_endpoint: str) -> Iterator[str]:
    """A second S3 server, in a process of its own: its buckets are not the session server's, and
    nothing it does is counted in this process's memory. Yields its endpoint URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server on port {port} did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def s3_store(s3_endpoint: str) -> Iterator[ObjectStore]:
    """A store on a fresh, uniquely named bucket of the session's S3 server, under prefix ``pfx``."""
    bucket = f"test-{uuid.uuid4().hex[:20]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    yield open_store(f"s3://{bucket}/pfx", s3_endpoint_url=s3_endpoint, uri_from="the test")
    # Empty and drop the bucket so a long session does not pile objects up in moto's memory.
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)


def file_or_s3_store(request: pytest.FixtureRequest, folder: Path, kind: str | None = None) -> ObjectStore:
    """The store of a fixture parametrised ``["file", "s3"]``: a FileStore in ``folder``, or ``s3_store``
    (started only for the "s3" runs), so a test proves its behaviour on both kinds of store. ``kind``
    ("file" or "s3") stands for the fixture's parameter in a test parametrised itself."""
    if (kind or request.param) == "file":
        return FileStore(folder)
    s3: ObjectStore = request.getfixturevalue("s3_store")
    return s3


def isolated_settings_on(store: ObjectStore, bootstrap: str, request: pytest.FixtureRequest) -> Settings:
    """``isolated_settings`` whose store is ``store`` (``file_or_s3_store``'s): an S3 one is reached on
    the session's S3 server."""
    if isinstance(store, FileStore):
        return isolated_settings(bootstrap, store.base_uri)
    return isolated_settings(
        bootstrap, store.base_uri, s3_endpoint_url=request.getfixturevalue("s3_endpoint")
    )
