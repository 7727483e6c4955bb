"""The docs (review 41): the settings table says which SKUFORGE_TRAINSTORE_PREFIX values are refused."""

from __future__ import annotations

import pytest

from shared.config import ConfigError, load_settings
from shared.keys import Folder
from shared.trainstore.settings import TrainstoreSettings
from tests.support.docs import README, settings_table_in


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
