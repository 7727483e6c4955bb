"""Review 48: `skuforge topics create` and a topic whose configs it could not read.

With ``SKUFORGE_TOPIC_REPLICATION`` at 3 or more the command compares each existing topic's
``min.insync.replicas`` with the 2 it sets. A topic whose configs the principal may not read (no
DescribeConfigs) was only logged as a warning and the command exited 0, which its --help says means
"the topics are as the settings ask": the Helm topics Job passed with that check not made. Now it exits
3 (running again does not help: a grant does), naming the topic and the broker's error.

The broker's side (that such a topic is reported ``unchecked``) is tested on a real broker that
authorises by ACL in tests/test_topics_review47.py; here the command's answer to that report.
"""

from __future__ import annotations

import pytest

import shared.bus
from shared.bus import TopicsReport
from skuforge_cli.main import main as skuforge_main

DENIED = "TopicAuthorizationFailedError: Topic authorization failed."


def test_a_topic_whose_configs_were_not_read_makes_topics_create_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKUFORGE_TOPIC_REPLICATION", "3")
    monkeypatch.setenv("SKUFORGE_TOPIC_NAMESPACE", "review48.")
    topic = "review48.sku.ingested.v1"

    def synced(*args: object, **kwargs: object) -> TopicsReport:
        return TopicsReport(created=[], grown={}, short=[], unchecked={topic: DENIED})

    monkeypatch.setattr(shared.bus, "sync_topics", synced)
    assert skuforge_main(["topics", "create"]) == 3
    out, err = capsys.readouterr()
    assert out.strip() == '{"created": [], "grown": {}}'
    assert err.splitlines() == [
        f"skuforge topics create: could not read the configs of topic {topic} ({DENIED}): the "
        "min.insync.replicas check was not made (grant the principal DescribeConfigs on it, or check it "
        "with kafka-configs.sh --describe)"
    ]


def test_topics_create_that_could_read_every_topic_still_exits_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def synced(*args: object, **kwargs: object) -> TopicsReport:
        return TopicsReport(created=["a"], grown={}, short=[])

    monkeypatch.setattr(shared.bus, "sync_topics", synced)
    assert skuforge_main(["topics", "create"]) == 0
    assert capsys.readouterr().err == ""
