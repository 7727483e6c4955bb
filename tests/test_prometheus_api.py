"""``api_get``, which ``skuforge dashboard render`` and the tests ask Prometheus through: an error answer
says Prometheus's own reason, and an address that is no Prometheus says so, in one line each."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.broker import free_port
from devstack.prometheus import PrometheusServer, api_get, scrape_config


@pytest.fixture
def prometheus(prometheus_bin: str, tmp_path: Path) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path / "prometheus", scrape_config({}, rule_files=[])).start()
    try:
        yield server
    finally:
        server.stop()


def test_a_query_prometheus_refuses_says_prometheuss_reason(prometheus: PrometheusServer) -> None:
    # Prometheus answers a bad query with 400 and its reason in the JSON body; that was urllib's
    # "HTTP Error 400: Bad Request", the reason unread.
    with pytest.raises(RuntimeError) as refused:
        api_get(prometheus.url, "query", query="sum(")
    message = str(refused.value)
    assert message.startswith("Prometheus refused the query (bad_data): ")
    assert "parse error" in message
    assert "\n" not in message


@pytest.fixture
def not_prometheus() -> Iterator[str]:
    """An HTTP server that answers every GET with a web page, as a proxy or another service would."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html><body>Welcome</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_address_that_is_no_prometheus_is_said_to_be_none(not_prometheus: str) -> None:
    # Before: json's "Expecting value: line 1 column 1 (char 0)".
    with pytest.raises(RuntimeError) as refused:
        api_get(not_prometheus, "query", query="up")
    assert str(refused.value) == (
        "what answered /api/v1/query is no Prometheus (200, text/html, not its JSON)"
    )


@pytest.fixture
def not_http() -> Iterator[str]:
    """A port that answers in another protocol (a broker's, say) with a line that is no HTTP status."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.recv(4096)
                connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_an_address_that_answers_no_http_is_said_to_be_no_prometheus(not_http: str) -> None:
    # Before: http.client's BadStatusLine, which `skuforge dashboard render` did not catch (a traceback).
    with pytest.raises(RuntimeError) as refused:
        api_get(not_http, "query", query="up")
    assert str(refused.value).startswith("what answered /api/v1/query is no Prometheus (not HTTP: ")
