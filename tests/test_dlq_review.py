"""`skuforge dlq` on letters and stores it did not expect: a clear error and exit 1, never a traceback."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.events import write_dead_letters
from devstack.broker import free_port
from schemas.envelope import Envelope
from schemas.events import SkuIngested
from schemas.topics import PASSTHROUGH_OUT, SKU_INGESTED
from services.passthrough.stage import build_stage as build_passthrough
from shared.bus import create_topic_names
from shared.config import Settings, load_settings
from shared.dlq import REPLAY_STAGE_HEADER, DlqError, resolve_topics
from shared.errors import BadInput
from shared.runtime import REPLAY_FOR_OTHER_STAGE, Context, Emit, Stage
from shared.store import open_store
from skuforge_cli.dlq import main as dlq_main
from tests.support.bus import (
    create_topics,
    file_store_uri,
    isolated_settings,
    produce,
    read_topic,
    record_count,
    running,
    sku_ingested_payloads,
)
from tests.support.dlq import ingested_letter, write_letters
from tests.support.polling import wait_for


@pytest.mark.kafka
def test_letters_with_a_naive_failed_at_are_selected_by_since(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The contract takes a time without an offset (another writer's letter); --since compared it with
    an aware time and the command died with a TypeError traceback."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    now = datetime.now(UTC).replace(tzinfo=None)
    write_letters(
        settings,
        ingested_letter(settings, failed_at=now.isoformat()),
        ingested_letter(settings, failed_at=(now - timedelta(days=3)).isoformat()),
    )
    code = dlq_main(["list", settings.topic_name(SKU_INGESTED), "--since", "2h", "--json"], settings=settings)
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out)
    assert summary["dead_letters"] == 1  # naive = UTC: the recent one only
    assert summary["reasons"]["object_missing"]["samples"][0]["failed_at"].endswith("+00:00")


@pytest.mark.kafka
@pytest.mark.parametrize(
    "bad_value",
    [
        "not*base64!",
        # Non-ASCII: b64decode's ValueError (not a binascii.Error) was a traceback, and nothing replayed.
        "eyJ4Ijox\u00e9",
        # Trailing garbage: decoded leniently, this replayed {"x": 1} as if it were the record.
        base64.b64encode(b'{"x": 1}').decode() + "!!garbage",
    ],
)
def test_a_letter_whose_original_is_not_base64_is_a_clear_error_and_the_others_replay(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], bad_value: str
) -> None:
    """Before, the first unreadable original stopped the replay: no other letter went out either."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    good = base64.b64encode(b'{"good": 1}').decode()
    write_letters(
        settings,
        ingested_letter(settings, original_value_b64=bad_value),
        ingested_letter(settings, original_offset=1, original_value_b64=good),
    )
    # A dry run reads the originals too: it said "would replay 2" of which one could not be sent.
    code = dlq_main(["replay", settings.topic_name(SKU_INGESTED), "--dry-run"], settings=settings)
    captured = capsys.readouterr()
    assert code == 1 and "would replay 1 dead letters" in captured.out
    assert "1 dead letter would not be replayed, the others would" in captured.err
    assert "not valid base64" in captured.err
    code = dlq_main(["replay", settings.topic_name(SKU_INGESTED)], settings=settings)
    captured = capsys.readouterr()
    assert code == 1 and "replayed 1 dead letters" in captured.out
    refused = "skuforge dlq replay: 1 dead letter was not replayed, the others were: cannot replay"
    assert refused in captured.err
    assert "not valid base64" in captured.err
    (replayed,) = read_topic(kafka_bootstrap, settings.topic_name(SKU_INGESTED), expect=1, timeout_s=30)
    assert replayed.value == b'{"good": 1}'
    # The unreadable one stays unmarked and is named again; the replayed one is not sent twice.
    code = dlq_main(["replay", settings.topic_name(SKU_INGESTED)], settings=settings)
    captured = capsys.readouterr()
    assert code == 1 and "replayed 0 dead letters" in captured.out and "1 already replayed" in captured.out
    assert "not valid base64" in captured.err


@pytest.mark.kafka
def test_replay_markers_the_store_refuses_are_a_clear_error_that_says_what_was_sent(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sends were acknowledged, then the marker write failed: the operator must learn that the
    letters went out unmarked (a second replay sends them again), not read a traceback."""
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "dlq-replays").write_bytes(b"")  # every marker write under it fails
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "store"))
    create_topics(settings, SKU_INGESTED, partitions=1)
    write_letters(settings, ingested_letter(settings))
    code = dlq_main(
        ["replay", settings.topic_name(SKU_INGESTED)],
        settings=settings,
        store=open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI"),
    )
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert (
        "republished 1 dead letters" in captured.err
        and "could not write their replay markers" in captured.err
    )
    assert [r.value for r in read_topic(kafka_bootstrap, settings.topic_name(SKU_INGESTED), expect=1)] == [
        b'{"x": 1}'
    ]


@pytest.mark.kafka
def test_an_unreachable_store_is_a_clear_error(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    write_letters(settings, ingested_letter(settings))
    nobody = f"http://127.0.0.1:{free_port()}"
    store = open_store("s3://skuforge/dlq", s3_endpoint_url=nobody, uri_from="the test")
    code = dlq_main(["list", settings.topic_name(SKU_INGESTED)], settings=settings, store=store)
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err.startswith("skuforge dlq list: S3 unreachable")


def test_a_topic_name_resolves_to_this_environments_namespace_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a `staging.` environment, `sku.ingested.v1` found another environment's un-namespaced DLQ
    first and `dlq replay` replayed it (review repro r3)."""
    staging = load_settings(topic_namespace="staging.")
    both = {"sku.ingested.v1.dlq", "staging.sku.ingested.v1.dlq"}
    monkeypatch.setattr("shared.dlq._list_topics", lambda settings: both)
    assert resolve_topics(staging, "sku.ingested.v1") == (
        "staging.sku.ingested.v1",
        "staging.sku.ingested.v1.dlq",
    )
    assert resolve_topics(staging, "staging.sku.ingested.v1.dlq")[1] == "staging.sku.ingested.v1.dlq"
    # Only the other environment's exists: refused, unless asked for on purpose.
    monkeypatch.setattr("shared.dlq._list_topics", lambda settings: {"sku.ingested.v1.dlq"})
    with pytest.raises(DlqError, match=r"outside this environment's namespace 'staging\.'.*--any-namespace"):
        resolve_topics(staging, "sku.ingested.v1")
    assert resolve_topics(staging, "sku.ingested.v1", any_namespace=True)[1] == "sku.ingested.v1.dlq"
    # A namespace the flow's plain name happens to start with: the plain name is still outside it.
    sku = load_settings(topic_namespace="sku")
    monkeypatch.setattr(
        "shared.dlq._list_topics", lambda settings: {"sku.ingested.v1.dlq", "skusku.ingested.v1.dlq"}
    )
    assert resolve_topics(sku, "sku.ingested.v1")[1] == "skusku.ingested.v1.dlq"
    monkeypatch.setattr("shared.dlq._list_topics", lambda settings: {"sku.ingested.v1.dlq"})
    with pytest.raises(DlqError, match="outside this environment's namespace"):
        resolve_topics(sku, "sku.ingested.v1")
    # No namespace here: a flow topic under another environment's was used, its markers written here.
    plain = load_settings(topic_namespace="")
    monkeypatch.setattr("shared.dlq._list_topics", lambda settings: {"staging.sku.ingested.v1.dlq"})
    with pytest.raises(DlqError, match=r"another environment's topic.*--any-namespace"):
        resolve_topics(plain, "staging.sku.ingested.v1")
    assert (
        resolve_topics(plain, "staging.sku.ingested.v1", any_namespace=True)[0] == "staging.sku.ingested.v1"
    )
    passthrough = "passthrough.sku.ingested.v1"
    monkeypatch.setattr(
        "shared.dlq._list_topics", lambda settings: {"sku.ingested.v1.dlq", passthrough + ".dlq"}
    )
    assert resolve_topics(plain, "sku.ingested.v1")[0] == "sku.ingested.v1"


@pytest.mark.kafka
def test_replay_reads_this_environments_dlq_and_refuses_another_namespace_unless_asked(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "mine"))
    other = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "other"))
    create_topics(other, SKU_INGESTED, partitions=1)
    other_topic = other.topic_name(SKU_INGESTED)  # what an operator of the other environment types
    # This environment's topic of the same given name: its namespace + that name.
    create_topic_names(
        mine, [mine.topic_namespace + other_topic, mine.topic_namespace + other_topic + ".dlq"], partitions=1
    )
    write_dead_letters(
        kafka_bootstrap, mine.topic_namespace + other_topic + ".dlq", [ingested_letter(mine, reason="mine")]
    )
    write_dead_letters(
        kafka_bootstrap, other.dlq_name(SKU_INGESTED), [ingested_letter(other, reason="theirs")]
    )

    assert dlq_main(["list", other_topic, "--json"], settings=mine) == 0
    assert list(json.loads(capsys.readouterr().out)["reasons"]) == ["mine"]

    # Another namespace's name, given as such: refused, then used when asked for explicitly.
    foreign = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path / "foreign"))
    code = dlq_main(["list", other_topic], settings=foreign)
    captured = capsys.readouterr()
    assert code == 1 and f"{other_topic + '.dlq'!r} is outside this environment's namespace" in captured.err
    assert len(captured.err.splitlines()) == 1 and captured.out == ""
    assert dlq_main(["list", other_topic, "--any-namespace", "--json"], settings=foreign) == 0
    assert list(json.loads(capsys.readouterr().out)["reasons"]) == ["theirs"]


@pytest.mark.kafka
def test_a_reason_no_letter_has_is_refused_naming_the_reasons_present(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--reason object-missing` (for object_missing) replayed 0 letters and exited 0."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    write_letters(
        settings,
        ingested_letter(settings),
        ingested_letter(settings),
        ingested_letter(settings, reason="not_json"),
    )
    topic = settings.topic_name(SKU_INGESTED)
    for action in ("replay", "list"):
        code = dlq_main([action, topic, "--reason", "object-missing"], settings=settings)
        captured = capsys.readouterr()
        assert code == 1 and captured.out == ""
        assert captured.err == (
            f"skuforge dlq {action}: no dead letter has reason 'object-missing'; "
            "reasons present: not_json (1), object_missing (2)\n"
        )
    assert record_count(kafka_bootstrap, topic) == 0  # nothing republished (the command has ended)
    assert dlq_main(["replay", topic, "--reason", "object_missing"], settings=settings) == 0
    assert "replayed 2 dead letters" in capsys.readouterr().out


@pytest.mark.kafka
def test_a_replay_is_handled_again_only_by_the_stage_that_dead_lettered_it(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A replay goes to the topic, which every group of it reads: a letter of one stage (trainstore on
    sku.captioned) made another (the generator) handle the event again. Two stages on one topic here:
    passthrough handles the event, `picky` dead-letters it; after the replay only `picky` sees it."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, PASSTHROUGH_OUT, partitions=1)
    topic, output = settings.topic_name(SKU_INGESTED), settings.topic_name(PASSTHROUGH_OUT)
    picky_handled: list[str] = []
    broken = {"yes"}

    def picky_stage() -> Stage:
        stage = Stage("picky", settings=settings)

        @stage.handler(SKU_INGESTED)
        def handle(event: Envelope[SkuIngested], ctx: Context) -> list[Emit]:
            if broken:
                raise BadInput("object_missing", "its caption is not there yet")
            picky_handled.append(event.sku_id)
            return []

        return stage

    passthrough = build_passthrough(settings=settings)
    produce(settings, SKU_INGESTED, sku_ingested_payloads(passthrough.store, 1, prefix="BOTH"))
    with running(passthrough), running(picky_stage()):
        assert len(read_topic(kafka_bootstrap, output, expect=1, timeout_s=60)) == 1
        read_topic(kafka_bootstrap, settings.dlq_name(SKU_INGESTED), expect=1, timeout_s=60)

    broken.clear()  # the cause is fixed
    assert dlq_main(["replay", topic], settings=settings) == 0
    assert "replayed 1 dead letters" in capsys.readouterr().out
    replayed = read_topic(kafka_bootstrap, topic, expect=2, timeout_s=30)[-1]
    assert dict(replayed.headers)[REPLAY_STAGE_HEADER] == b"picky"

    # Fresh members: no in-process memory of the event_id, as after a restart or on another replica.
    passthrough = build_passthrough(settings=settings)
    with running(passthrough), running(picky_stage()):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (picky_handled and _messages(passthrough, topic)):
            time.sleep(0.2)
        assert picky_handled == ["BOTH-00000"]
        assert _messages(passthrough, topic) == 1, "passthrough never reached the replayed record"
        assert len(read_topic(kafka_bootstrap, output, expect=1, timeout_s=30)) == 1, (
            "passthrough handled a replay meant for picky"
        )
        assert _messages(passthrough, topic, REPLAY_FOR_OTHER_STAGE) == 1


def _messages(stage: Stage, topic: str, outcome: str | None = None) -> float:
    """skuforge_messages_total of ``stage`` on ``topic``: of ``outcome``, or of every outcome."""
    total = 0.0
    for metric in stage.metrics.registry.collect():
        for sample in metric.samples:
            if (
                sample.name == "skuforge_messages_total"
                and sample.labels.get("topic") == topic
                and (outcome is None or sample.labels.get("outcome") == outcome)
            ):
                total += sample.value
    return total


@pytest.mark.kafka
def test_a_record_dead_lettered_twice_is_replayed_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A batch rewound after its letter was sent dead-letters the record again: two letters, one
    original. Both were republished, and the stage handled the record twice."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    write_letters(settings, ingested_letter(settings), ingested_letter(settings, failed_at=later))
    store = open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI")
    assert dlq_main(["replay", settings.topic_name(SKU_INGESTED)], settings=settings, store=store) == 0
    assert len(read_topic(kafka_bootstrap, settings.topic_name(SKU_INGESTED), expect=1, timeout_s=30)) == 1
    assert len(list(store.list_keys("dlq-replays/"))) == 2  # both letters marked
    assert dlq_main(["replay", settings.topic_name(SKU_INGESTED)], settings=settings, store=store) == 0
    assert len(read_topic(kafka_bootstrap, settings.topic_name(SKU_INGESTED), expect=1, timeout_s=30)) == 1


@pytest.mark.kafka
def test_a_replay_that_fails_part_way_marks_what_was_sent(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ "nothing marked" was said while the records sent before the failure were delivered: the next run
    republished them."""
    from kafka.admin import ConfigResource, ConfigResourceType

    from tests.support.kafka import session_admin

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path), flush_timeout_s=5.0)
    create_topics(settings, SKU_INGESTED, partitions=1)
    original = settings.topic_name(SKU_INGESTED)

    def limit(max_message_bytes: str) -> None:
        admin = session_admin(kafka_bootstrap)
        resource = ConfigResource(
            ConfigResourceType.TOPIC, original, configs={"max.message.bytes": max_message_bytes}
        )
        admin.alter_configs([resource])

        def broker_shows() -> bool:
            asked = ConfigResource(ConfigResourceType.TOPIC, original, configs={"max.message.bytes": None})
            configs = admin.describe_configs([asked], config_filter="all")["topic"][original]
            return bool(configs["max.message.bytes"]["value"] == max_message_bytes)

        # The controller answers once the change is committed; the broker applies it when it reads the
        # metadata log, later. A fixed 1 s sleep was too short on a loaded machine: the 3000-byte record
        # was taken (exit 0, not 1), or after the limit was raised again still refused.
        wait_for(f"the broker to show max.message.bytes={max_message_bytes}", broker_shows, timeout_s=60)

    large = base64.b64encode(b"y" * 3000).decode()
    write_letters(
        settings,
        ingested_letter(settings),
        ingested_letter(settings, original_offset=1, original_value_b64=large),
    )
    store = open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI")
    limit("1000")
    assert dlq_main(["replay", original], settings=settings, store=store) == 1
    err = capsys.readouterr().err
    assert "1 of 2 records were not acknowledged" in err
    # The broker's reason, not the flush's "Future not done" that kafka-python raises when it splits the
    # batch the refused record was in.
    assert "MessageSizeTooLarge" in err, err
    limit("1048588")
    assert dlq_main(["replay", original], settings=settings, store=store) == 0
    values = [record.value for record in read_topic(kafka_bootstrap, original, expect=2, timeout_s=30)]
    assert sorted(len(value) for value in values) == [8, 3000]  # each once


@pytest.mark.kafka
def test_a_dlq_that_takes_longer_than_the_timeout_to_read_is_read_while_letters_keep_coming(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole read had one fixed deadline (30 s): a DLQ of thousands of letters with inline originals
    could never be listed or replayed. The deadline is for progress now: it gives up only when nothing
    comes. Here each letter comes alone and takes 1 s more on the read's clock: ten letters, a 5 s
    timeout. (Before, 0.2 s real per letter against a 1 s timeout: a first fetch slower than ~0.6 s on a
    loaded machine read as no progress.)"""
    from types import SimpleNamespace

    from kafka import KafkaConsumer

    from shared import dlq as dlq_module
    from shared.dlq import read_dead_letters

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    write_letters(settings, *(ingested_letter(settings, original_offset=offset) for offset in range(10)))
    per_letter_s = 1.0
    letters_read = [0]
    read_clock = SimpleNamespace(
        monotonic=lambda: time.monotonic() + per_letter_s * letters_read[0], sleep=time.sleep
    )

    class SlowConsumer(KafkaConsumer):
        def poll(
            self, timeout_ms: int = 0, max_records: int | None = None, update_offsets: bool = True
        ) -> Any:
            batch = super().poll(timeout_ms=timeout_ms, max_records=1, update_offsets=update_offsets)
            letters_read[0] += sum(len(records) for records in batch.values())
            return batch

    monkeypatch.setattr(dlq_module, "KafkaConsumer", SlowConsumer)
    monkeypatch.setattr(dlq_module, "time", read_clock)
    dead = read_dead_letters(settings, settings.topic_name(SKU_INGESTED), timeout_s=5.0)
    assert letters_read[0] * per_letter_s > 5.0  # longer than the timeout in all
    assert sorted(stored.original_offset for stored in dead.letters) == list(range(10))


def _ctrl_c() -> None:
    raise KeyboardInterrupt  # what SIGINT raises in the main thread while the replay's flush() waits


def _sigterm() -> None:
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        raise AssertionError("a SIGTERM here would end the replay before its markers")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler runs in this thread, at once


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("stop", "code", "said"),
    [(_ctrl_c, 130, "interrupted"), (_sigterm, 128 + signal.SIGTERM, "stopped by SIGTERM")],
    ids=["ctrl-c", "sigterm"],
)
def test_a_replay_stopped_while_it_flushes_marks_what_was_delivered(
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stop: Any,
    code: int,
    said: str,
) -> None:
    """Ctrl-C while the replay waited for its acknowledgements: closing the producer still delivered the
    records, but the interrupt skipped the markers, and the next replay republished every one of them.
    `kill`, `timeout` or a dropped SSH session (SIGTERM, SIGHUP) ended it before the markers outright."""
    from shared import dlq as dlq_module
    from shared.bus import make_producer

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    original = settings.topic_name(SKU_INGESTED)
    write_letters(settings, *(ingested_letter(settings, original_offset=offset) for offset in range(3)))

    def stopped_producer(settings: Settings, client_id: str) -> Any:
        producer = make_producer(settings, client_id)
        real_flush = producer.flush

        def flush(timeout: float | None = None) -> None:
            producer.flush = real_flush  # close() flushes again, uninterrupted, and delivers the records
            stop()

        producer.flush = flush
        return producer

    store = open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI")
    monkeypatch.setattr(dlq_module, "make_producer", stopped_producer)
    try:
        exited = dlq_main(["replay", original], settings=settings, store=store)
    except KeyboardInterrupt:
        exited = None  # a traceback, as before; what matters is what the next run sends
    err = capsys.readouterr().err
    monkeypatch.setattr(dlq_module, "make_producer", make_producer)
    again = dlq_main(["replay", original], settings=settings, store=store)
    assert len(read_topic(kafka_bootstrap, original, expect=3, timeout_s=30)) == 3  # each once
    assert again == 0 and "replayed 0 dead letters" in capsys.readouterr().out
    assert exited == code
    assert f"{said}: 3 of 3 records were acknowledged and are marked" in err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # left as it was


@pytest.mark.kafka
def test_dlq_list_escapes_control_characters_an_outside_writer_put_in_a_letter(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A letter's fields come from whoever wrote to the DLQ: `dlq list` printed them as they were, so an
    escape sequence (clear the screen, retitle the terminal) or a forged line reached the operator."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    write_letters(
        settings,
        ingested_letter(
            settings,
            reason="object_missing\x1b[2J",
            detail="gone\r\nobject_missing: 0 (0 replayed)\x1b]0;owned\x07",
            stage="passthrough\x9b31m",
            event_id="e1\u2028forged",
        ),
    )
    code = dlq_main(["list", settings.topic_name(SKU_INGESTED)], settings=settings)
    out = capsys.readouterr().out
    assert code == 0
    assert not any(ch in out for ch in "\x1b\x07\r\x9b\u2028")
    assert len(out.splitlines()) == 3  # the head, the reason, the sample: no forged line
    assert "object_missing\\x1b[2J" in out
    assert "gone\\r\\nobject_missing: 0 (0 replayed)\\x1b]0;owned\\x07" in out
    # The replay names the letter's reason too (a reason it does not know is permanent, and left).
    code = dlq_main(["replay", settings.topic_name(SKU_INGESTED), "--dry-run"], settings=settings)
    out = capsys.readouterr().out
    assert code == 0
    assert "\x1b" not in out
    assert "(object_missing\\x1b[2J: 1)" in out


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("first", "twin"),
    [
        (["--since", "1h"], {"failed_at": (datetime.now(UTC) - timedelta(hours=2)).isoformat()}),
        (["--reason", "handler_error"], {"reason": "object_missing"}),
    ],
    ids=["since", "reason"],
)
def test_a_record_dead_lettered_twice_is_replayed_once_across_runs_that_pick_one_letter_each(
    kafka_bootstrap: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    first: list[str],
    twin: dict[str, Any],
) -> None:
    """Letters of one record were sent once only when one run picked both: a run with --since (or
    --reason) that picked the later letter replayed the record, and a plain run after it replayed the
    earlier letter, the same record, again; the stage handled it twice."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    topic = settings.topic_name(SKU_INGESTED)
    write_letters(
        settings, ingested_letter(settings, **twin), ingested_letter(settings, reason="handler_error")
    )
    assert dlq_main(["replay", topic, *first], settings=settings) == 0
    assert "replayed 1 dead letters" in capsys.readouterr().out
    assert dlq_main(["replay", topic], settings=settings) == 0
    assert "replayed 0 dead letters" in capsys.readouterr().out
    assert len(read_topic(kafka_bootstrap, topic, expect=1, timeout_s=30)) == 1
    # `dlq list` counts the twin replayed too: the record is.
    assert dlq_main(["list", topic, "--json"], settings=settings) == 0
    assert json.loads(capsys.readouterr().out)["replayed"] == 2


@pytest.mark.kafka
@pytest.mark.parametrize("when", ["closing", "marking"])
@pytest.mark.parametrize(
    ("signum", "said"),
    [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "stopped by SIGTERM")],
    ids=["int", "term"],
)
def test_a_replay_stopped_after_its_flush_still_marks_what_was_delivered(
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signals_as_from_a_shell: None,
    when: str,
    signum: int,
    said: str,
) -> None:
    """Ctrl-C (a second one, or the first) or SIGTERM while the producer closed or the markers were
    written: the records were acknowledged, the interrupt ended the command before (some of) their
    markers, and the next replay republished them. Writing thousands of markers to S3 is the longest
    part of a large replay, the one an operator stops."""
    from schemas.common import ObjectRef
    from shared import dlq as dlq_module
    from shared.bus import make_producer
    from shared.store import FileStore

    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    original = settings.topic_name(SKU_INGESTED)
    write_letters(settings, *(ingested_letter(settings, original_offset=offset) for offset in range(3)))
    sent: list[int] = []

    def stop_once() -> None:
        if not sent:
            sent.append(signum)
            os.kill(os.getpid(), signum)  # its handler runs in this thread, at once

    class StoppedStore(FileStore):
        def put_json(self, key: str, obj: Any) -> ObjectRef:
            if when == "marking" and key.startswith("dlq-replays/"):
                stop_once()
            return super().put_json(key, obj)

    def stopped_producer(settings: Settings, client_id: str) -> Any:
        producer = make_producer(settings, client_id)
        real_close = producer.close

        def close(timeout: float | None = None, **more: Any) -> None:
            if when == "closing":
                stop_once()
            real_close(timeout=timeout, **more)

        producer.close = close
        return producer

    store = StoppedStore(tmp_path)
    monkeypatch.setattr(dlq_module, "make_producer", stopped_producer)
    try:
        exited = dlq_main(["replay", original], settings=settings, store=store)
    except KeyboardInterrupt:
        exited = None  # a traceback, as before; what matters is what the next run sends
    err = capsys.readouterr().err
    assert sent == [signum]
    monkeypatch.setattr(dlq_module, "make_producer", make_producer)
    again = dlq_main(["replay", original], settings=settings, store=store)
    assert len(read_topic(kafka_bootstrap, original, expect=3, timeout_s=30)) == 3  # each once
    assert again == 0 and "replayed 0 dead letters" in capsys.readouterr().out
    assert exited == 128 + signum
    assert f"{said}: 3 of 3 records were acknowledged and are marked" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # left as they were
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.kafka
def test_a_reason_no_letter_has_names_the_reasons_present_escaped(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The refusal of an unknown --reason listed the letters' reasons as their writer put them: an
    escape sequence in one (clear the screen) or a forged line reached the operator's terminal."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    write_letters(
        settings, ingested_letter(settings, reason="object_missing\x1b[2J\nskuforge dlq list: all fine")
    )
    for action in ("list", "replay"):
        code = dlq_main([action, settings.topic_name(SKU_INGESTED), "--reason", "nope"], settings=settings)
        err = capsys.readouterr().err
        assert code == 1 and "\x1b" not in err and len(err.splitlines()) == 1
        assert "reasons present: object_missing\\x1b[2J\\nskuforge dlq list: all fine (1)" in err


def _letters_with_stored_originals(
    settings: Settings, store: Any, topic: str, count: int
) -> tuple[list[bytes], list[dict[str, Any]]]:
    """``count`` originals of 300 kB kept under dlq-originals/ (too large to ride in their letters), and
    a letter for each, at offsets 0, 1, ...; the letters are not written."""
    originals = [bytes([offset]) * 300_000 for offset in range(count)]
    letters = []
    for offset, value in enumerate(originals):
        ref = store.put_bytes(f"dlq-originals/{topic}/0-{offset}-x.value", value)
        letters.append(
            ingested_letter(
                settings, original_offset=offset, original_value_b64="", original_value_ref=ref.model_dump()
            )
        )
    return originals, letters


@pytest.mark.kafka
def test_a_replay_sends_each_original_kept_in_the_store_before_it_reads_the_next(
    kafka_bootstrap: str, s3_store: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The replay read every selected letter's original (up to 1 MB each, from dlq-originals/) into
    memory before it sent the first: a large DLQ held them all at once. Each is sent before the next
    is read now; the record dead-lettered twice is still sent once, and every letter marked."""
    from shared import dlq as dlq_module
    from shared.bus import make_producer
    from shared.store import S3Store

    assert isinstance(s3_store, S3Store)
    fetched: list[str] = []
    held_at_send: list[int] = []  # originals read and not yet handed to the producer, at each send

    class CountingStore(S3Store):
        def read_verified(self, ref: Any) -> bytes:
            fetched.append(ref.uri)
            return super().read_verified(ref)

    def counting_producer(settings: Settings, client_id: str) -> Any:
        producer = make_producer(settings, client_id)
        real_send = producer.send

        def send(topic: str, *args: Any, **kwargs: Any) -> Any:
            held_at_send.append(len(fetched) - len(held_at_send))
            return real_send(topic, *args, **kwargs)

        producer.send = send
        return producer

    store = CountingStore(s3_store.bucket, s3_store.prefix, client=s3_store.client, uri_from="the test")
    settings = isolated_settings(kafka_bootstrap, store.base_uri)
    create_topics(settings, SKU_INGESTED, partitions=1)
    topic = settings.topic_name(SKU_INGESTED)
    originals, letters = _letters_with_stored_originals(settings, store, topic, 4)
    twice = dict(letters[0], failed_at=(datetime.now(UTC) + timedelta(seconds=1)).isoformat())
    write_letters(settings, *letters, twice)
    monkeypatch.setattr(dlq_module, "make_producer", counting_producer)

    assert dlq_main(["replay", topic], settings=settings, store=store) == 0
    assert "replayed 5 dead letters" in capsys.readouterr().out
    assert len(fetched) == 4  # one read per record: the twin is not read again
    assert held_at_send == [1, 1, 1, 1], "originals were read ahead of their sends"
    replayed = read_topic(kafka_bootstrap, topic, expect=4, timeout_s=30)
    assert sorted(record.value for record in replayed) == originals  # each once, whole
    assert len(list(store.list_keys(f"dlq-replays/{topic}.dlq/"))) == 5
    assert dlq_main(["replay", topic], settings=settings, store=store) == 0
    assert "replayed 0 dead letters" in capsys.readouterr().out and len(fetched) == 4


@pytest.mark.kafka
def test_an_original_too_large_for_the_producer_does_not_stop_the_letters_after_it(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An original over the producer's 1 MiB request limit (read off a topic whose max.message.bytes
    was raised, kept under dlq-originals/) made send() raise at once: the replay stopped there, and no
    letter after it was ever sent, at every run. It is one record not acknowledged now; the others go."""
    settings = isolated_settings(kafka_bootstrap, file_store_uri(tmp_path))
    create_topics(settings, SKU_INGESTED, partitions=1)
    topic = settings.topic_name(SKU_INGESTED)
    store = open_store(settings.store_uri, uri_from="SKUFORGE_STORE_URI")
    large = store.put_bytes(f"dlq-originals/{topic}/0-0-x.value", b"z" * (1024 * 1024 + 1000))
    write_letters(
        settings,
        ingested_letter(settings, original_value_b64="", original_value_ref=large.model_dump(mode="json")),
        ingested_letter(settings, original_offset=1),
    )
    assert dlq_main(["replay", topic], settings=settings, store=store) == 1
    err = capsys.readouterr().err
    assert "1 of 2 records were not acknowledged" in err and "MessageSizeTooLargeError" in err
    assert [record.value for record in read_topic(kafka_bootstrap, topic, expect=1, timeout_s=30)] == [
        b'{"x": 1}'
    ]
    # The one sent is marked; the next run tries only the large one again.
    assert dlq_main(["replay", topic], settings=settings, store=store) == 1
    assert "1 of 1 records were not acknowledged" in capsys.readouterr().err
    assert len(read_topic(kafka_bootstrap, topic, expect=1, timeout_s=30)) == 1


@pytest.mark.kafka
def test_a_store_that_goes_away_mid_replay_stops_it_with_what_was_sent_marked(
    kafka_bootstrap: str, s3_store: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The originals are read as the replay goes: the store away at the second one stops the replay
    there, and the first, already acknowledged, is marked (not sent again by the next run)."""
    from shared.store import S3Store
    from tests.support.s3 import restart_s3_server, stop_s3_server

    assert isinstance(s3_store, S3Store)
    reads: list[str] = []

    class FlakyStore(S3Store):
        def read_verified(self, ref: Any) -> bytes:
            reads.append(ref.uri)
            if len(reads) != 2:
                return super().read_verified(ref)
            stop_s3_server()
            try:
                return super().read_verified(ref)
            finally:
                restart_s3_server()

    store = FlakyStore(
        s3_store.bucket, s3_store.prefix, client=s3_store.client, max_attempts=1, uri_from="the test"
    )
    settings = isolated_settings(kafka_bootstrap, store.base_uri)
    create_topics(settings, SKU_INGESTED, partitions=1)
    topic = settings.topic_name(SKU_INGESTED)
    originals, letters = _letters_with_stored_originals(settings, store, topic, 2)
    write_letters(settings, *letters)

    assert dlq_main(["replay", topic], settings=settings, store=store) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(
        "skuforge dlq replay: replay stopped: cannot replay"
    )
    assert "the 1 records acknowledged before are marked" in captured.err
    assert [r.value for r in read_topic(kafka_bootstrap, topic, expect=1, timeout_s=30)] == originals[:1]
    assert dlq_main(["replay", topic], settings=settings, store=store) == 0
    assert "replayed 1 dead letters" in capsys.readouterr().out
    replayed = read_topic(kafka_bootstrap, topic, expect=2, timeout_s=30)
    assert sorted(r.value for r in replayed) == originals  # each once
