"""A refusal quotes why the broker could not be reached, not the deadline that ended the trying (review 49).

kafka-python's last bootstrap attempt is given what is left of its deadline: when none is left, its
connect gives up at once and logs "Connection timed out", after every earlier attempt had logged
"connection refused". That later timeout was kept as the client's last connection error, so `skuforge
topics list` against a Kafka that is down could say "connection timed out" (is the host away? a
firewall?) instead of "connection refused" (nothing listens there). The log lines are fed to the
collector in their order here, so the test does not depend on which attempt the deadline cuts short.
"""

from __future__ import annotations

from kafka.errors import KafkaConnectionError, KafkaTimeoutError

from shared import bus
from shared.bus import CONNECTION_ERROR_RECENT_S, last_connection_error, unreachable
from shared.config import load_settings
from tests.support.bus import age_last_connection_error, logged_on_the_client_thread

REFUSED = KafkaConnectionError("111 ECONNREFUSED")
TIMED_OUT = KafkaConnectionError("Connection timed out")


def test_a_timeout_after_a_refused_connection_does_not_hide_the_refusal() -> None:
    client_id = "skuforge-review49-refused-then-deadline"
    logged_on_the_client_thread(client_id, REFUSED)
    logged_on_the_client_thread(client_id, TIMED_OUT)
    assert last_connection_error(client_id) == "connection refused"

    gave_up = KafkaTimeoutError("Unable to bootstrap from ['127.0.0.1:1']")
    message = unreachable(load_settings(kafka_bootstrap="127.0.0.1:1"), gave_up, client_id=client_id)
    assert message.startswith("cannot reach Kafka at 127.0.0.1:1 (connection refused; KafkaTimeoutError")


def test_a_timeout_is_quoted_where_it_is_all_the_client_met() -> None:
    client_id = "skuforge-review49-only-timed-out"
    logged_on_the_client_thread(client_id, TIMED_OUT)
    assert last_connection_error(client_id) == "connection timed out"


def test_a_timeout_long_after_a_refusal_is_its_own_news() -> None:
    client_id = "skuforge-review49-timed-out-later"
    logged_on_the_client_thread(client_id, REFUSED)
    age_last_connection_error(client_id, CONNECTION_ERROR_RECENT_S + 1.0)  # an earlier bootstrap's refusal
    logged_on_the_client_thread(client_id, TIMED_OUT)
    assert last_connection_error(client_id) == "connection timed out"


def test_a_more_specific_error_after_a_timeout_still_replaces_it() -> None:
    client_id = "skuforge-review49-timed-out-then-refused"
    logged_on_the_client_thread(client_id, TIMED_OUT)
    logged_on_the_client_thread(client_id, REFUSED)
    assert last_connection_error(client_id) == "connection refused"


def test_a_timeout_after_a_timeout_is_kept_as_the_newer() -> None:
    client_id = "skuforge-review49-timed-out-twice"
    logged_on_the_client_thread(client_id, TIMED_OUT)
    when = age_last_connection_error(client_id, 20.0)  # the first attempt's, twenty seconds before
    logged_on_the_client_thread(client_id, TIMED_OUT)
    # The newer one is kept: still recent when the client gives up.
    assert bus._last_connection_error.last[client_id][0] > when - 20.0
    assert last_connection_error(client_id) == "connection timed out"
