"""A refusal to reach Kafka names the last connection error of its own client (review 46).

kafka-python's bootstrap gives up saying only "Unable to bootstrap from ...", so the refusal
(``shared.bus.unreachable``) adds the connection error kafka-python logged last. That was kept for the
whole process: a client that could not resolve its broker's name was said to have been refused a
connection, when another client, to another address, had been refused within the last 30 s.
"""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError

from shared.bus import Publisher, unreachable
from shared.config import load_settings
from shared.errors import TransientError

CLOSED = "127.0.0.1:1"  # nothing listens on port 1: every connection is refused (ECONNREFUSED)
NO_SUCH_HOST = "kafka.invalid:9092"  # .invalid never resolves (RFC 6761)


def _refusal(bootstrap: str, client_id: str) -> str:
    """What a skuforge command says when an admin client ``client_id`` at ``bootstrap`` gives up."""
    with pytest.raises(KafkaError) as raised:
        KafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id, bootstrap_timeout_ms=1_000)
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
    monkeypatch.setitem(KafkaProducer.DEFAULT_CONFIG, "bootstrap_timeout_ms", 1_000)
    with pytest.raises(TransientError) as raised:
        Publisher(load_settings(kafka_bootstrap=CLOSED), "review46")
    _refusal(NO_SUCH_HOST, "skuforge-review46-later")

    assert str(raised.value).startswith(f"cannot reach Kafka at {CLOSED} (connection refused; ")
    again = unreachable(
        load_settings(kafka_bootstrap=CLOSED), KafkaError("gave up"), client_id="skuforge-review46"
    )
    assert again.startswith(f"cannot reach Kafka at {CLOSED} (connection refused; ")
