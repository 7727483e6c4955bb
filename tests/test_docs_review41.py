"""The docs (review 41): the settings table says which SKUFORGE_TRAINSTORE_PREFIX values are refused;
docs/delivery.md says what else than a failing heartbeat stops a DLQ replay."""

from __future__ import annotations

import pytest

from shared.config import ConfigError, load_settings
from shared.keys import Folder
from shared.trainstore.settings import TrainstoreSettings
from tests.support.docs import README, ROOT, settings_table_in


@pytest.mark.parametrize("folder", list(Folder))
def test_the_prefix_row_names_each_flow_folder_the_prefix_is_refused_inside(folder: Folder) -> None:
    # docs/ops.md says a prefix inside a flow folder is refused (its lifecycle rule would expire the
    # store); the settings table, where a prefix is chosen, said only "root of the retraining store".
    with pytest.raises(ConfigError, match=folder.value):
        load_settings(TrainstoreSettings, trainstore_prefix=f"{folder.value}store")
    (row,) = (
        line for line in settings_table_in(README).splitlines() if "`SKUFORGE_TRAINSTORE_PREFIX`" in line
    )
    assert folder.value in row and "docs/ops.md" in row


def test_delivery_says_a_replay_that_cannot_read_its_lock_stops_and_says_so() -> None:
    # A replay's heartbeat thread reads its lock, then writes the heartbeat; since 077c6bb a look that
    # keeps failing stops the replay too, saying the lock "could not be read". The doc named the
    # heartbeat write alone, so an operator who read that message found it nowhere.
    delivery = " ".join((ROOT / "docs" / "delivery.md").read_text(encoding="utf-8").split())
    told = delivery.partition("`LOCK_GIVE_UP_S`")[2].partition("`--dry-run`")[0]
    assert "could not be read" in told and "could not write its heartbeat" in told
    assert "test_a_replay_that_cannot_read_its_lock_gives_up_as_when_its_heartbeat_fails" in told
