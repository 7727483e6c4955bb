"""Review 45 leftovers: a NaN dict key in a results file, a photo's name rule in one place, the
official weights' refusal in one line, and every bench script's main under run_command."""

from __future__ import annotations

import pytest

from shared.argtypes import NonFiniteFigure, json_file_text


@pytest.mark.parametrize("key", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_key_is_refused_naming_it(key: float) -> None:
    # json.dumps(allow_nan=False) refuses a float key JSON has not as it refuses such a value.
    with pytest.raises(NonFiniteFigure, match=rf"bench: a key of per_sku\.Kiwi is {key}, which JSON has not"):
        json_file_text({"per_sku": {"Kiwi": {key: 1.0}}}, label="bench")
    with pytest.raises(NonFiniteFigure, match=rf"bench: a key of the document is {key}"):
        json_file_text({key: 1.0}, label="bench")
