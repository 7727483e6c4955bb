"""Waiting for the broker's metadata after creating topics or adding partitions: one loop for both,
each naming what never showed. A fake admin client stands in for the broker, so the timeouts are
exercised in a fraction of a second."""

from __future__ import annotations

from typing import Any

import pytest

from shared.bus import TopicShortfall, _grow, _wait_for_metadata
from shared.errors import TransientError


class SlowMetadataAdmin:
    """An admin client whose metadata shows created topics and added partitions only after
    ``shows_after`` polls (never, if None)."""

    def __init__(self, shows_after: int | None) -> None:
        self.shows_after = shows_after
        self.polls = 0

    def _shown(self) -> bool:
        self.polls += 1
        return self.shows_after is not None and self.polls > self.shows_after

    def list_topics(self) -> list[str]:
        return ["old", "new"] if self._shown() else ["old"]

    def create_partitions(self, wanted: dict[str, int], timeout_ms: int) -> None:
        pass

    def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        shown = self._shown()
        leader = 0 if shown else -1  # the partitions are listed before they have a leader
        return [{"name": name, "partitions": [{"leader_id": leader}] * 4} for name in names]


def test_created_topics_are_waited_for_until_listed() -> None:
    admin = SlowMetadataAdmin(shows_after=2)
    _wait_for_metadata(admin, ["new", "old"], timeout_s=5)
    assert admin.polls == 3


def test_topics_never_listed_are_named_after_the_timeout() -> None:
    with pytest.raises(TransientError, match=r"^topics not visible after 0.2s: \['new'\]$"):
        _wait_for_metadata(SlowMetadataAdmin(shows_after=None), ["old", "new"], timeout_s=0.2)


def test_nothing_to_wait_for_asks_the_broker_nothing() -> None:
    admin = SlowMetadataAdmin(shows_after=None)
    _wait_for_metadata(admin, [], timeout_s=0.2)
    assert _grow(admin, [], timeout_s=0.2) == {}
    assert admin.polls == 0


def _short(name: str) -> TopicShortfall:
    return TopicShortfall(name, partitions=2, wanted_partitions=4, replication=1, wanted_replication=1)


def test_added_partitions_are_waited_for_until_they_have_leaders() -> None:
    admin = SlowMetadataAdmin(shows_after=1)
    assert _grow(admin, [_short("b"), _short("a")], timeout_s=5) == {"b": (2, 4), "a": (2, 4)}
    assert admin.polls == 2


def test_added_partitions_never_shown_are_named_after_the_timeout() -> None:
    with pytest.raises(TransientError, match=r"^added partitions not visible after 0.2s: \['a', 'b'\]$"):
        _grow(SlowMetadataAdmin(shows_after=None), [_short("b"), _short("a")], timeout_s=0.2)
