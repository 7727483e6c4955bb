"""Fixtures shared by the whole suite, each started once per session: the real Kafka broker, a moto S3
server on loopback, a Triton server with the generation model, a U2-NetP ONNX."""

from tests.support.kafka import kafka_bootstrap, new_topic  # noqa: F401
from tests.support.matting import random_u2netp_onnx  # noqa: F401
from tests.support.prometheus import amtool_bin, prometheus_bin, promtool_bin  # noqa: F401
from tests.support.s3 import other_s3_endpoint, s3_endpoint, s3_store  # noqa: F401
from tests.support.triton import triton  # noqa: F401
