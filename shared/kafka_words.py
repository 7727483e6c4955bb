"""What kafka-python 3 (kafka/net/inet.py, kafka/net/manager.py) says when a connection fails, read in
one place: by the refusal that names a client's last connection error (``shared.bus.unreachable``) and
by the filter that keeps its connection retries off a command's stderr
(``shared.observability.kafka_connection_retry``). Its words, not an API: tests/test_cli_review45.py
and tests/test_followups_review45.py meet them on a closed port and an unknown host, and fail if a
kafka-python release rewords them.
"""

from __future__ import annotations

import os
import re

from kafka.errors import KafkaConnectionError, KafkaTimeoutError, SaslAuthenticationFailedError

# A connection refused or unreachable: an errno and its name ("111 ECONNREFUSED").
ERRNO_FAILURE = re.compile(r"(\d+) E[A-Z]+")
# A connect() that raised: "unable to connect: [Errno 99] Cannot assign requested address".
UNABLE_TO_CONNECT = re.compile(r"unable to connect: (\[Errno \d+\] )?")
CONNECTION_TIMED_OUT = "Connection timed out"
# A name that does not resolve: a warning naming the host, then an error saying only this.
DNS_RESOLUTION_FAILURE = "DNS Resolution failure"
DNS_LOOKUP_FAILED = re.compile(r"DNS lookup failed for (.*):\d+, gaierror\(-?\d+, '(.*)'\)")
# Bootstrapping given up (``bootstrap_timeout_ms``): the error a client's constructor raises.
BOOTSTRAP_GAVE_UP = "Unable to bootstrap from "


# A broker's answer to a refused SASL login, as kafka-python words its error: the broker's error name,
# then its message ("SaslAuthenticationFailedError: Authentication failed: Invalid username or password"),
# "None" where the broker gave none.
SASL_ANSWER = re.compile(r"(?:[A-Za-z]+Error:)?(.*)", re.DOTALL)
SASL_LOGIN_REFUSED = "SASL login refused"
# What kafka-python says of a connection it found closed: after a refused login, it says less than the
# broker's answer before it (``shared.bus`` keeps the answer).
SOCKET_DISCONNECTED = "socket disconnected"


def connection_error_words(arg: object) -> str | None:
    """The words of ``arg`` (an argument of a line kafka-python logged) when it is a connection error
    (a ``KafkaConnectionError`` or ``KafkaTimeoutError``, a subclass included, with a message) or a
    broker's refusal of a SASL login ("SASL login refused: Authentication failed: ..."). A broker answers
    a refused login and closes the connection: kafka-python reads the answer, or on a busier machine sees
    only the closed socket ("socket disconnected"), so either may be the last error a client met."""
    if isinstance(arg, KafkaConnectionError | KafkaTimeoutError) and arg.args:
        return str(arg.args[0])
    if isinstance(arg, SaslAuthenticationFailedError):
        answer = SASL_ANSWER.fullmatch(str(arg.args[0]) if arg.args else "")
        said = " ".join(answer[1].split()) if answer is not None else ""  # one line, as a refusal quotes it
        return f"{SASL_LOGIN_REFUSED}: {said}" if said and said != "None" else SASL_LOGIN_REFUSED
    return None


def no_broker_there(words: str) -> bool:
    """Whether a connection error's ``words`` say that no broker took a connection at an address:
    refused or unreachable, "unable to connect", timed out, a name that does not resolve, bootstrapping
    given up. Not a broker that dropped the connection ("socket disconnected", as after it refuses a SASL
    login), nor a TLS handshake that failed: those say that a broker is there."""
    return (
        ERRNO_FAILURE.fullmatch(words) is not None
        or UNABLE_TO_CONNECT.match(words) is not None
        or words in (CONNECTION_TIMED_OUT, DNS_RESOLUTION_FAILURE)
        or words.startswith(BOOTSTRAP_GAVE_UP)
    )


def short_connection_error(words: str) -> str:
    """A connection error's ``words`` as a refusal quotes them: "connection refused" for "111
    ECONNREFUSED", without "unable to connect: [Errno N]", lower-cased unless an acronym leads."""
    if (failed := ERRNO_FAILURE.fullmatch(words)) is not None:
        words = os.strerror(int(failed[1]))  # "Connection refused", "No route to host"
    if (prefix := UNABLE_TO_CONNECT.match(words)) is not None:
        words = words[prefix.end() :]
    if words.split(" ", 1)[0].isupper():  # "DNS", "SSL"
        return words
    return words[:1].lower() + words[1:]
