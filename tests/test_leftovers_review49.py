"""Small leftovers: a health server stopped before it started, an escaped missing-object URI,
the console's hint about a local stack, and a null console service type in the chart."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.trainstore.evaluation import EvaluateRefused, streamed_sha256s
from shared.observability import HealthServer
from shared.store import FileStore
from shared.trainstore.manifest import ManifestRow, ManifestStore
from skuforge_cli.main import main as cli_main
from tests.support.console import console_defaults_fixture
from tests.support.helm import render, require_helm, values_file

defaults = console_defaults_fixture()

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


@pytest.mark.parametrize("image", ["images/a\nb.jpg", "images/a\x1b[31mb.jpg", "images/a\u202eb.jpg"])
def test_evaluate_refuses_a_row_whose_image_key_no_store_reads_naming_it_escaped(
    tmp_path: Path, image: str
) -> None:
    # A row written by hand or by another tool: evaluate reads an image with no sha256 for its hash.
    # The store refuses the first two keys (a bare ValueError before: a traceback, not a refusal with
    # exit 2); the third it reads since review 49, and no object is there: either way the refusal names
    # the row and shows its key escaped.
    manifests = ManifestStore(FileStore(tmp_path), "trainstore")
    row = ManifestRow(
        item_id="i1", sku_id="apple", category="fruit", source="real", status="accepted", image=image
    )
    with pytest.raises(EvaluateRefused) as refused:
        streamed_sha256s(manifests, [row])
    message = str(refused.value)
    assert "apple/i1" in message
    assert image not in message and "\n" not in message and "\x1b" not in message and "\u202e" not in message
    assert image.encode("unicode_escape").decode("ascii") in message


@pytest.fixture(scope="module")
def helm() -> str:
    return require_helm()


def _console_service(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (service,) = [
        doc for doc in docs if doc["kind"] == "Service" and doc["metadata"]["name"] == "rel-skuforge-console"
    ]
    return service


def test_a_null_console_service_type_renders_no_empty_type(helm: str, tmp_path: Path) -> None:
    """`type: null` (a values file's way to say "the default") rendered `type:` with nothing after it,
    which the API server refuses; now no type line, and Kubernetes makes it a ClusterIP."""
    docs = render(helm, files=[values_file(tmp_path, "console.service.type", None)])
    spec = _console_service(docs)["spec"]
    assert "type" not in spec, spec
    assert spec["ports"][0]["name"] == "http"


def test_the_console_refusal_says_where_a_stack_of_another_workdir_keeps_its_table(
    defaults: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `skuforge up --workdir elsewhere`: its table is at elsewhere/console/tasks.sqlite3, which nothing in
    # this folder says. The refusal said only "set SKUFORGE_CONSOLE_DB_PATH", as if no stack could help.
    assert cli_main(["console", "refused"]) == 2
    err = capsys.readouterr().err
    assert "no task table at var/console/tasks.sqlite3" in err
    assert "skuforge up --workdir DIR" in err and "DIR/console/tasks.sqlite3" in err, err


def test_the_console_refusal_says_the_stack_it_names_is_the_default_workdirs(
    defaults: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = defaults / "var" / "up" / "console" / "tasks.sqlite3"
    table.parent.mkdir(parents=True)
    table.write_bytes(b"not empty")  # the hint looks for the file only
    assert cli_main(["console", "refused"]) == 2
    err = capsys.readouterr().err
    assert "SKUFORGE_CONSOLE_DB_PATH=var/up/console/tasks.sqlite3" in err
    assert "default --workdir" in err, err
