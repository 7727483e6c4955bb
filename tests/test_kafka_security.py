"""skuforge's Kafka clients reach a cluster that asks for SASL and TLS, as managed Kafka does.

One real broker of its own (the session broker stays plaintext) with four listeners: PLAINTEXT (its
readiness check), SASL_PLAINTEXT (PLAIN), SSL and SASL_SSL, the TLS ones with a certificate signed by
a CA made here. Every client goes through ``shared.bus.kafka_connection``: topics are created, an
event is published and a stage's consumer reads it, over SASL and over TLS; a wrong password or an
unknown CA fails with an error that names the setting, not "no brokers available" alone.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kafka import KafkaProducer
from kafka.structs import TopicPartition

from bench import bus as bench_bus
from bench import scale
from bench.replicas import count_records, group_assignment, member_env
from devstack.broker import LocalKafka, free_port
from schemas.common import ImageRef
from schemas.events import ReferencePhoto, SkuIngested, SkuMetadata
from schemas.topics import SKU_INGESTED
from shared.bus import Publisher, ensure_topics, kafka_connection, make_consumer, read_envelope
from shared.config import ConfigError, Settings, load_settings
from shared.errors import TransientError

pytestmark = pytest.mark.kafka

USER, PASSWORD = "skuforge", "s3cret-for-tests"


@dataclass(frozen=True)
class SecureBroker:
    sasl: str  # host:port of each listener
    ssl: str
    sasl_ssl: str
    cafile: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificates(folder: Path) -> tuple[Path, Path]:
    """A CA, and a broker key + certificate for 127.0.0.1 signed by it: (CA file, broker PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("skuforge test CA"))
        .issuer_name(_name("skuforge test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cafile = folder / "ca.pem"
    cafile.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    broker_pem = folder / "broker.pem"
    broker_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        + cert.public_bytes(serialization.Encoding.PEM)
        + ca.public_bytes(serialization.Encoding.PEM)
    )
    return cafile, broker_pem


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    folder = tmp_path_factory.mktemp("secure-kafka")
    cafile, broker_pem = _certificates(folder)
    ports: set[int] = set()
    while len(ports) < 5:
        ports.add(free_port())
    plain, controller, sasl, ssl, sasl_ssl = sorted(ports)
    jaas = f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{USER}="{PASSWORD}";'
    tls = {"ssl.keystore.type": "PEM", "ssl.keystore.location": str(broker_pem)}
    listeners = {
        "PLAINTEXT": plain,
        "SASL_PLAINTEXT": sasl,
        "SSL": ssl,
        "SASL_SSL": sasl_ssl,
    }
    properties = {
        "listeners": ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items())
        + f",CONTROLLER://127.0.0.1:{controller}",
        "advertised.listeners": ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items()),
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
        "SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL",
        "sasl.enabled.mechanisms": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas,
        "listener.name.sasl_ssl.plain.sasl.jaas.config": jaas,
        **{f"listener.name.ssl.{key}": value for key, value in tls.items()},
        **{f"listener.name.sasl_ssl.{key}": value for key, value in tls.items()},
    }
    broker = LocalKafka(
        folder / "broker", port=plain, controller_port=controller, extra_properties=properties
    )
    broker.start()
    try:
        yield SecureBroker(
            sasl=f"127.0.0.1:{sasl}", ssl=f"127.0.0.1:{ssl}", sasl_ssl=f"127.0.0.1:{sasl_ssl}", cafile=cafile
        )
    finally:
        broker.stop()


def _round_trip(settings: Settings) -> None:
    """Create a topic, publish one event to it and read it back as a stage's consumer would."""
    ensure_topics(settings, [SKU_INGESTED], partitions=1, with_dlq=False)
    image = ImageRef(uri="file:///store/p1.png", sha256="0" * 64, bytes=1, width=1, height=1)
    payload = SkuIngested(
        sku=SkuMetadata(sku_id="SKU-TLS", name="Oat drink", category="carton"),
        photos=[ReferencePhoto(photo_id="p1", image=image, original_filename="p1.png")],
    )
    publisher = Publisher(settings, "security-test")
    try:
        sent = publisher.publish(SKU_INGESTED, payload, sku_id="SKU-TLS")
    finally:
        publisher.close()
    consumer = make_consumer(settings, f"g-{uuid.uuid4().hex[:8]}", "security-test")
    try:
        consumer.subscribe([settings.topic_name(SKU_INGESTED)])
        seen: list[str] = []
        for _ in range(60):
            for records in consumer.poll(timeout_ms=500).values():
                seen += [read_envelope(SKU_INGESTED, record.value).event_id for record in records]
            if sent.event_id in seen:
                return
        raise AssertionError(f"event {sent.event_id} not read back; read {seen}")
    finally:
        consumer.close()


def _settings(**overrides: object) -> Settings:
    return load_settings(topic_namespace=f"sec{uuid.uuid4().hex[:6]}.", **overrides)


def test_sasl_plain_over_plaintext_and_over_tls(secure_broker: SecureBroker) -> None:
    common = {"kafka_sasl_username": USER, "kafka_sasl_password": PASSWORD}
    _round_trip(
        _settings(kafka_bootstrap=secure_broker.sasl, kafka_security_protocol="SASL_PLAINTEXT", **common)
    )
    _round_trip(
        _settings(
            kafka_bootstrap=secure_broker.sasl_ssl,
            kafka_security_protocol="SASL_SSL",
            kafka_ssl_cafile=str(secure_broker.cafile),
            **common,
        )
    )


def test_tls_with_the_cluster_ca(secure_broker: SecureBroker) -> None:
    _round_trip(
        _settings(
            kafka_bootstrap=secure_broker.ssl,
            kafka_security_protocol="SSL",
            kafka_ssl_cafile=str(secure_broker.cafile),
        )
    )


def test_a_wrong_password_or_an_unknown_ca_is_an_error_naming_the_settings(
    secure_broker: SecureBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kafka-python tries bootstrapping for 30 s; a refused login fails the same way sooner.
    monkeypatch.setitem(KafkaProducer.DEFAULT_CONFIG, "bootstrap_timeout_ms", 3_000)
    wrong_password = _settings(
        kafka_bootstrap=secure_broker.sasl,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username=USER,
        kafka_sasl_password="not-it",
        flush_timeout_s=5.0,
    )
    with pytest.raises(TransientError, match="SKUFORGE_KAFKA_SASL_USERNAME"):
        Publisher(wrong_password, "security-test")
    unknown_ca = _settings(
        kafka_bootstrap=secure_broker.ssl, kafka_security_protocol="SSL", flush_timeout_s=5.0
    )
    with pytest.raises(TransientError, match="SKUFORGE_KAFKA_SSL_CAFILE"):
        Publisher(unknown_ca, "security-test")


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (
            {"kafka_security_protocol": "SASL_SSL"},
            "needs SKUFORGE_KAFKA_SASL_USERNAME and SKUFORGE_KAFKA_SASL_PASSWORD",
        ),
        ({"kafka_sasl_username": "u", "kafka_sasl_password": "p"}, "set it to SASL_SSL"),
        ({"kafka_ssl_cafile": __file__}, "set it to SSL or SASL_SSL"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/no/such/ca.pem"}, "is not a readable file"),
        ({"kafka_security_protocol": "TLS"}, "SKUFORGE_KAFKA_SECURITY_PROTOCOL"),
    ],
)
def test_incomplete_security_settings_stop_at_start_up(overrides: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_settings(**overrides)


def test_empty_variables_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose and Helm pass an unset variable as an empty one."""
    for name in ("USERNAME", "PASSWORD"):
        monkeypatch.setenv(f"SKUFORGE_KAFKA_SASL_{name}", "")
    monkeypatch.setenv("SKUFORGE_KAFKA_SSL_CAFILE", "")
    settings = load_settings()
    assert (settings.kafka_sasl_username, settings.kafka_sasl_password, settings.kafka_ssl_cafile) == (
        None,
    ) * 3


def test_the_benches_read_a_secured_cluster_with_the_services_settings(secure_broker: SecureBroker) -> None:
    """bench/replicas.py, bench/scale.py and bench/bus.py counted records, read topics and asked the
    group coordinator with clients given the bootstrap servers alone: against a cluster that asks for
    SASL over TLS they could not bootstrap, so no bench ran there. They take the settings now."""
    settings = _settings(
        kafka_bootstrap=secure_broker.sasl_ssl,
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_cafile=str(secure_broker.cafile),
        kafka_sasl_username=USER,
        kafka_sasl_password=PASSWORD,
    )
    _round_trip(settings)
    topic = settings.topic_name(SKU_INGESTED)
    assert count_records(settings, [topic]) == 1
    assert scale._input_partitions(settings, topic) == {b"SKU-TLS": 0}
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = make_consumer(settings, group, "security-test")
    try:
        consumer.subscribe([topic])
        for _ in range(60):
            consumer.poll(timeout_ms=500)
            if consumer.assignment():
                break
        held = group_assignment(settings, group)
    finally:
        consumer.close()
    assert list(held.values()) == [{TopicPartition(topic, 0)}]


def test_a_bench_member_process_gets_the_whole_kafka_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bench's member process (bench/replicas.py) was given SKUFORGE_KAFKA_BOOTSTRAP alone, every
    other SKUFORGE_* of the shell taken away: on a secured cluster it could not join its group."""
    settings = load_settings(
        kafka_bootstrap="broker-1:9096,broker-2:9096",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=USER,
        kafka_sasl_password=PASSWORD,
        kafka_ssl_cafile=__file__,
    )
    env = member_env(settings, instance_id="matting-1", metrics_port=free_port())
    for name in [name for name in os.environ if name.startswith("SKUFORGE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert kafka_connection(load_settings()) == kafka_connection(settings)


def test_a_bench_with_a_broker_of_its_own_reaches_it_whatever_the_shell_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bench/bus.py, and bench/scale.py without SKUFORGE_KAFKA_BOOTSTRAP, start a PLAINTEXT broker of
    their own; their settings took the shell's protocol and SASL login, set for the services' cluster,
    and every client of theirs failed to bootstrap from that broker."""
    for name, value in {
        "SECURITY_PROTOCOL": "SASL_SSL",
        "SASL_USERNAME": USER,
        "SASL_PASSWORD": PASSWORD,
    }.items():
        monkeypatch.setenv(f"SKUFORGE_KAFKA_{name}", value)
    monkeypatch.setenv("SKUFORGE_KAFKA_SSL_CAFILE", __file__)
    broker = LocalKafka(tmp_path / "kafka", port=free_port(), controller_port=free_port())  # never started
    own = {"bootstrap_servers": [broker.bootstrap], "security_protocol": "PLAINTEXT"}
    assert kafka_connection(bench_bus._settings(broker, "file:///store", 10)) == own
    assert kafka_connection(scale._settings(broker.connection, "file:///store", 10_000)) == own
    assert kafka_connection(scale._settings({}, "file:///store", 10_000))["security_protocol"] == "SASL_SSL"
