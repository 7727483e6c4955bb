"""A refused SASL login is named in the refusal, whichever way kafka-python meets it (review 48).

A broker answers a refused SASL login with an error and then closes the connection. kafka-python either
reads the answer first (``SaslAuthenticationFailedError: Authentication failed: ...``) or sees only the
closed socket ("socket disconnected"); which one depends on timing. Only the second was kept as the
connection error that ``skuforge topics create``'s refusal quotes. On a slower machine the refusal
dropped the broker's own reason and said only "Unable to bootstrap".
"""

from __future__ import annotations

import logging

from kafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    SaslAuthenticationFailedError,
    TopicAuthorizationFailedError,
)

from shared.bus import last_connection_error, unreachable
from shared.config import load_settings
from shared.kafka_words import connection_error_words
from shared.observability import kafka_connection_retry
from tests.support.bus import age_last_connection_error, logged_on_the_client_thread

REFUSED = SaslAuthenticationFailedError(
    "SaslAuthenticationFailedError: Authentication failed: Invalid username or password"
)


def test_a_refused_sasl_login_is_read_as_the_brokers_reason() -> None:
    assert connection_error_words(REFUSED) == (
        "SASL login refused: Authentication failed: Invalid username or password"
    )
    # It says a broker is there: the command's stderr shows the line (it is not a retry against nothing).
    line = logging.LogRecord(
        "kafka.net.connection", logging.ERROR, "connection.py", 245, "Connection lost: %s", (REFUSED,), None
    )
    assert kafka_connection_retry(line) is False


def test_the_refusal_quotes_the_brokers_reason_for_a_refused_sasl_login() -> None:
    client_id = "skuforge-review48-sasl"
    logged_on_the_client_thread(client_id, REFUSED)
    assert last_connection_error(client_id) == (
        "SASL login refused: Authentication failed: Invalid username or password"
    )
    settings = load_settings(
        kafka_bootstrap="127.0.0.1:9093",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="trainer",
        kafka_sasl_password="not-the-password",
    )
    gave_up = KafkaTimeoutError("Unable to bootstrap from ['127.0.0.1:9093']")
    message = unreachable(settings, gave_up, client_id=client_id)
    assert message.startswith(
        "cannot reach Kafka at 127.0.0.1:9093 (SASL login refused: Authentication failed: Invalid "
        "username or password; KafkaTimeoutError: Unable to bootstrap"
    )


def test_another_broker_error_is_not_taken_for_a_connection_error() -> None:
    client_id = "skuforge-review48-other"
    logged_on_the_client_thread(client_id, TopicAuthorizationFailedError("skuforge.sku.captioned"))
    assert last_connection_error(client_id) is None


def test_a_refused_login_without_words_or_over_lines_reads_as_one_plain_line() -> None:
    """Review 48 (second opinion): a broker's empty answer left kafka-python's error name in the words
    ("SASL login refused: SaslAuthenticationFailedError: "), and one over several lines went into the
    refusal as it came."""
    for said in ("SaslAuthenticationFailedError: ", "SaslAuthenticationFailedError: None"):
        assert connection_error_words(SaslAuthenticationFailedError(said)) == "SASL login refused"
    assert connection_error_words(SaslAuthenticationFailedError()) == "SASL login refused"
    over_lines = SaslAuthenticationFailedError(
        "SaslAuthenticationFailedError: Authentication failed:\n bad\tpassword"
    )
    assert connection_error_words(over_lines) == "SASL login refused: Authentication failed: bad password"


def test_the_closed_connection_after_a_refused_login_does_not_hide_the_refusal() -> None:
    """Review 48 (second opinion): kafka-python may log the closed socket after it read the broker's
    answer; the later, vaguer "socket disconnected" replaced the broker's reason."""
    client_id = "skuforge-review48-then-dropped"
    logged_on_the_client_thread(client_id, REFUSED)
    logged_on_the_client_thread(client_id, KafkaConnectionError("socket disconnected"))
    assert last_connection_error(client_id) == (
        "SASL login refused: Authentication failed: Invalid username or password"
    )
    # Another kind of error after it is this client's news, and replaces it.
    logged_on_the_client_thread(client_id, KafkaConnectionError("111 ECONNREFUSED"))
    assert last_connection_error(client_id) == "connection refused"


def test_a_closed_connection_long_after_a_refused_login_is_its_own_news() -> None:
    client_id = "skuforge-review48-dropped-later"
    logged_on_the_client_thread(client_id, REFUSED)
    age_last_connection_error(client_id, 10.0)  # as if another connection dropped ten seconds later
    logged_on_the_client_thread(client_id, KafkaConnectionError("socket disconnected"))
    assert last_connection_error(client_id) == "socket disconnected"
