"""Fixtures shared by the whole suite, each started once per session: the real Kafka broker, a moto S3
server on loopback, a Triton server with the generation model, a U2-NetP ONNX. Per test module that asks
for it: a Kafka broker that authorises by ACL (SASL/PLAIN). And per test: the
logging set-up and the torch thread count a test leaves behind are undone; LoRA training stubbed for
the tests that ask for it; a tiny SD inpainting pipeline per test module that asks for one."""

import logging
from collections.abc import Iterator

import pytest

from shared.observability import JsonFormatter, TextFormatter
from tests.support.acl_kafka import acl_broker  # noqa: F401
from tests.support.kafka import kafka_bootstrap, new_topic  # noqa: F401
from tests.support.lora import stub_training, tiny_model  # noqa: F401
from tests.support.matting import random_u2netp_onnx  # noqa: F401
from tests.support.prometheus import amtool_bin, prometheus_bin, promtool_bin  # noqa: F401
from tests.support.s3 import other_s3_endpoint, s3_endpoint, s3_store  # noqa: F401
from tests.support.signals import restore_signal_handlers, signals_as_from_a_shell  # noqa: F401
from tests.support.threads import torch_threads_as_before  # noqa: F401 (autouse)
from tests.support.triton import triton  # noqa: F401


@pytest.fixture(autouse=True)
def logging_as_before() -> Iterator[None]:
    """A stage's ``main`` run in-process calls ``configure_logging``, which sets the root logger to INFO
    and gives it a handler on the stderr pytest was capturing then. Both outlived the test: a later
    test's caplog held INFO records it never asked for, and the handler wrote "--- Logging error ---"
    to a closed stream. Undone here (pytest's own capture handlers are left to pytest)."""
    root = logging.getLogger()
    before, level, kafka_level = list(root.handlers), root.level, logging.getLogger("kafka").level
    yield
    for handler in list(root.handlers):
        if handler not in before and isinstance(handler.formatter, JsonFormatter | TextFormatter):
            root.removeHandler(handler)
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(kafka_level)
