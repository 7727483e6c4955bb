"""Follow-ups of review 45.

A command's "cannot reach Kafka at ..." refusal names the last connection error kafka-python met: its
retry lines show only at ``SKUFORGE_LOG_LEVEL=DEBUG`` now, and a mistyped host or a refused port left
the user the address alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from skuforge_cli.main import main as skuforge_main

CLOSED = "127.0.0.1:1"  # nothing listens on port 1: every connection is refused (ECONNREFUSED)
NO_SUCH_HOST = "kafka.invalid:9092"  # .invalid never resolves (RFC 6761)


def _kafka_at(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """kafka-python's clients against ``address``, giving up after 1 s instead of 30 s; the log level
    as a user who set none has it."""
    for client in (KafkaProducer, KafkaAdminClient, KafkaConsumer):
        monkeypatch.setitem(client.DEFAULT_CONFIG, "bootstrap_timeout_ms", 1_000)
    monkeypatch.setenv("SKUFORGE_KAFKA_BOOTSTRAP", address)
    monkeypatch.delenv("SKUFORGE_LOG_LEVEL", raising=False)


def test_topics_create_against_a_closed_port_says_the_connection_was_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _kafka_at(CLOSED, monkeypatch)
    assert skuforge_main(["topics", "create"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"skuforge topics create: cannot create the topics: cannot reach Kafka at {CLOSED} "
        f"(connection refused; KafkaTimeoutError: Unable to bootstrap from ['{CLOSED}']); "
        "is it running? (`make kafka-up`, or set SKUFORGE_KAFKA_BOOTSTRAP)"
    ]


def test_topics_create_against_a_host_that_does_not_resolve_names_the_host(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _kafka_at(NO_SUCH_HOST, monkeypatch)
    assert skuforge_main(["topics", "create"]) == 1
    (refusal,) = capsys.readouterr().err.splitlines()
    # The resolver's own words follow ("Name or service not known", or "Temporary failure in name
    # resolution" where no DNS server answers).
    assert refusal.startswith(
        f"skuforge topics create: cannot create the topics: cannot reach Kafka at {NO_SUCH_HOST} "
        "(DNS lookup failed for kafka.invalid: "
    )
    assert refusal.endswith(
        f"; KafkaTimeoutError: Unable to bootstrap from ['{NO_SUCH_HOST}']); "
        "is it running? (`make kafka-up`, or set SKUFORGE_KAFKA_BOOTSTRAP)"
    )


def test_evaluate_refuses_an_empty_scenes_uri_as_it_parses_its_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--scenes "$SKUFORGE_SCENES_URI"` with the variable unset, as docs/evaluation.md runs it: before,
    # the refusal came only after the backbone loaded and the photos were read (here: a held-out folder
    # that is not there was refused first).
    for empty in ("", "  "):
        with pytest.raises(SystemExit) as exited:
            skuforge_main(
                [
                    "evaluate",
                    "--heldout",
                    str(tmp_path / "no-such-heldout"),
                    "--out",
                    str(tmp_path / "eval"),
                    "--max-synthetic-per-real",
                    "2",
                    "--scenes",
                    empty,
                ]
            )
        assert exited.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            "skuforge evaluate: error: argument --scenes: the URI is empty (is SKUFORGE_SCENES_URI set?); "
            "give the scene library's URI, or leave --scenes out to skip the scene check"
        )
