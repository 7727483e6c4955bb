"""A refusal to reach Kafka names the last connection error of its own client (review 46).

kafka-python's bootstrap gives up saying only "Unable to bootstrap from ...", so the refusal
(``shared.bus.unreachable``) adds the connection error kafka-python logged last. That was kept for the
whole process: a client that could not resolve its broker's name was said to have been refused a
connection, when another client, to another address, had been refused within the last 30 s.
"""

from __future__ import annotations

import logging

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaConnectionError, KafkaError

from shared.bus import Publisher, unreachable
from shared.config import load_settings
from shared.errors import TransientError
from shared.kafka_words import short_connection_error
from shared.observability import kafka_connection_retry

CLOSED = "127.0.0.1:1"  # nothing listens on port 1: every connection is refused (ECONNREFUSED)
NO_SUCH_HOST = "kafka.invalid:9092"  # .invalid never resolves (RFC 6761)


# How long each client here bootstraps before it gives up (kafka-python's own is 30 s). The refusal names
# a connection error only if one was logged before the deadline, and kafka-python starts no connection
# after it: with 1 s, a loaded machine that stalled a client's first attempt past it read "connection
# timed out", not "connection refused" (tests/test_cli_review45.py met it first).
BOOTSTRAP_TIMEOUT_MS = 5_000


def _refusal(bootstrap: str, client_id: str) -> str:
    """What a skuforge command says when an admin client ``client_id`` at ``bootstrap`` gives up."""
    with pytest.raises(KafkaError) as raised:
        KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id=client_id, bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS
        )
    return unreachable(load_settings(kafka_bootstrap=bootstrap), raised.value, client_id=client_id)


def test_a_refusal_names_its_own_clients_connection_error_not_a_later_ones() -> None:
    unresolved = "skuforge-review46-unresolved"
    no_such_host = _refusal(NO_SUCH_HOST, unresolved)
    refused = _refusal(CLOSED, "skuforge-review46-refused")  # later, and within 30 s

    assert refused.startswith(f"cannot reach Kafka at {CLOSED} (connection refused; ")
    assert no_such_host.startswith(
        f"cannot reach Kafka at {NO_SUCH_HOST} (DNS lookup failed for kafka.invalid: "
    )
    # Asked again now, the first client's refusal still names its own error. Before, it named the
    # other client's "connection refused", the last one kafka-python logged in the process.
    again = unreachable(
        load_settings(kafka_bootstrap=NO_SUCH_HOST), KafkaError("gave up"), client_id=unresolved
    )
    assert again.startswith(f"cannot reach Kafka at {NO_SUCH_HOST} (DNS lookup failed for kafka.invalid: ")


def test_a_producers_refusal_names_its_own_connection_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A producer bootstraps on the thread that makes it, not on a network thread named after it."""
    monkeypatch.setitem(KafkaProducer.DEFAULT_CONFIG, "bootstrap_timeout_ms", BOOTSTRAP_TIMEOUT_MS)
    with pytest.raises(TransientError) as raised:
        Publisher(load_settings(kafka_bootstrap=CLOSED), "review46")
    _refusal(NO_SUCH_HOST, "skuforge-review46-later")

    assert str(raised.value).startswith(f"cannot reach Kafka at {CLOSED} (connection refused; ")
    again = unreachable(
        load_settings(kafka_bootstrap=CLOSED), KafkaError("gave up"), client_id="skuforge-review46"
    )
    assert again.startswith(f"cannot reach Kafka at {CLOSED} (connection refused; ")


# kafka-python 3.0.12's words for a failed connection, as logged, and what each is read as: a line the
# command's stderr leaves to DEBUG (no broker there), and the words a refusal quotes.
KAFKA_WORDS = [
    ("111 ECONNREFUSED", True, "connection refused"),
    ("113 EHOSTUNREACH", True, "no route to host"),
    (
        "unable to connect: [Errno 99] Cannot assign requested address",
        True,
        "cannot assign requested address",
    ),
    ("Connection timed out", True, "connection timed out"),
    ("DNS Resolution failure", True, "DNS Resolution failure"),
    ("Unable to bootstrap from ['127.0.0.1:1']", True, "unable to bootstrap from ['127.0.0.1:1']"),
    ("socket disconnected", False, "socket disconnected"),
    ("SSL: CERTIFICATE_VERIFY_FAILED", False, "SSL: CERTIFICATE_VERIFY_FAILED"),
]


@pytest.mark.parametrize(("words", "no_broker", "quoted"), KAFKA_WORDS)
def test_the_log_filter_and_the_refusal_read_kafka_pythons_words_alike(
    words: str, no_broker: bool, quoted: str
) -> None:
    line = logging.LogRecord(
        "kafka.net.manager",
        logging.ERROR,
        "manager.py",
        248,
        "Connection failed: %s",
        (KafkaConnectionError(words),),
        None,
    )
    assert kafka_connection_retry(line) is no_broker
    assert short_connection_error(words) == quoted
