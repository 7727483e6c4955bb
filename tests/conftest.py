"""Fixtures shared by the whole suite: the real Kafka broker and a moto S3 server on loopback."""

from tests.support.kafka import kafka_bootstrap, new_topic  # noqa: F401
from tests.support.s3 import s3_endpoint, s3_store  # noqa: F401
